"""scikit-learn random forest template for pushtrain (kind: ``forest``).

The platform imports this file only inside the training container. It reads two names:

* ``HPARAMS``: one literal dict of knobs. A tweak rewrites these values in place and nothing else.
* ``build_estimator(hp)``: returns an unfitted scikit-learn classifier. A forest has no epochs: one fit
  is the whole training, checkpointed once.

Pixels arrive flattened and scaled to [0, 1].

Knobs a tweak may change (bounds the tweak strategy respects):

==================  ===================================================  ==============
knob                meaning                                              bounds
==================  ===================================================  ==============
``n_estimators``    trees in the forest                                  10 .. 1000
``max_depth``       depth limit of every tree                            2 .. 64
``seed``            seed for bootstrap samples and feature draws         any int
==================  ===================================================  ==============

The defaults are deliberately weak (few shallow trees), so that a push of this template shows the
retrain loop at work.
"""

HPARAMS = {
    "n_estimators": 10,
    "max_depth": 3,
    "seed": 0,
}


def build_estimator(hp):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=hp["n_estimators"], max_depth=hp["max_depth"], random_state=hp["seed"], n_jobs=1
    )
