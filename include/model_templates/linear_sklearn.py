"""scikit-learn linear model template for pushtrain (kind: ``linear``).

The platform imports this file only inside the training container. It reads two names:

* ``HPARAMS``: one literal dict of knobs. A tweak rewrites these values in place and nothing else.
* ``build_estimator(hp)``: returns an unfitted scikit-learn classifier. An estimator with
  ``partial_fit`` is trained one epoch (one pass over the data) at a time and checkpointed after each.

Pixels arrive flattened and scaled to [0, 1].

Knobs a tweak may change (bounds the tweak strategy respects):

=================  ===================================================  ==============
knob               meaning                                              bounds
=================  ===================================================  ==============
``epochs``         passes of ``partial_fit`` over the training images    1 .. 200
``alpha``          L2 regularisation strength                            1e-7 .. 1.0
``eta0``           initial learning rate (``learning_rate="adaptive"``)  1e-4 .. 1.0
``average``        average the weights over updates (smooths SGD)        True / False
``C``              inverse regularisation (not in this template)         1e-4 .. 1e4
``max_iter``       solver iterations (not in this template)              50 .. 10000
``seed``           seed for shuffling                                    any int
=================  ===================================================  ==============

The knobs marked "not in this template" are those that ``pushtrain adapt`` lifts into ``HPARAMS`` from
a ``LogisticRegression`` or ``LinearSVC`` (and ``max_iter`` from an ``SGDClassifier`` or ``Perceptron``
fitted in one go): a file has the knobs its estimator takes, and the strategies move only those.

Stated figures (pushtrain's fixed split v1): these weak defaults reach about 0.75-0.90 on digits;
``epochs=30, alpha=1e-4, eta0=0.05, average=True`` reaches >= 0.93.
"""

HPARAMS = {
    "epochs": 1,
    "alpha": 0.1,
    "eta0": 0.001,
    "average": False,
    "seed": 0,
}


def build_estimator(hp):
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(
        loss="log_loss",
        alpha=hp["alpha"],
        learning_rate="adaptive",
        eta0=hp["eta0"],
        average=hp["average"],
        random_state=hp["seed"],
    )
