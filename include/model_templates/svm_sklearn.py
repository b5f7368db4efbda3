"""scikit-learn support vector machine template for pushtrain (kind: ``svm``).

The platform imports this file only inside the training container. It reads two names:

* ``HPARAMS``: one literal dict of knobs. A tweak rewrites these values in place and nothing else.
* ``build_estimator(hp)``: returns an unfitted scikit-learn classifier. An SVC has no epochs: one fit
  is the whole training, checkpointed once.

Pixels arrive flattened and scaled to [0, 1], so a ``gamma`` tuned for raw 0-255 (or 0-16) pixels is far
too small here; the strategies move it by factors of 10.

Knobs a tweak may change (bounds the tweak strategy respects):

=================  =======================================================  ==============
knob               meaning                                                  bounds
=================  =======================================================  ==============
``C``              inverse regularisation (higher: a closer fit)            1e-3 .. 1e3
``kernel``         ``"rbf"``, ``"poly"``, ``"sigmoid"`` or ``"linear"``     enum
``gamma``          kernel width of rbf, poly and sigmoid                    1e-5 .. 10.0
=================  =======================================================  ==============

The defaults are deliberately weak (strong regularisation, a too-narrow ``gamma``), so that a push of
this template shows the retrain loop at work.
"""

HPARAMS = {
    "C": 0.01,
    "kernel": "rbf",
    "gamma": 0.001,
}


def build_estimator(hp):
    from sklearn.svm import SVC

    return SVC(C=hp["C"], kernel=hp["kernel"], gamma=hp["gamma"])
