"""scikit-learn k-nearest-neighbours template for pushtrain (kind: ``knn``).

The platform imports this file only inside the training container. It reads two names:

* ``HPARAMS``: one literal dict of knobs. A tweak rewrites these values in place and nothing else.
* ``build_estimator(hp)``: returns an unfitted scikit-learn classifier. KNN has no epochs: one fit is
  the whole training, checkpointed once.

Pixels arrive flattened and scaled to [0, 1].

Knobs a tweak may change (bounds the tweak strategy respects):

=================  =======================================================  ==================
knob               meaning                                                  bounds
=================  =======================================================  ==================
``n_neighbors``    neighbours that vote                                     1 .. 100
``weights``        ``"uniform"`` or ``"distance"`` (closer votes count more)  enum
``p``              Minkowski power: 1 = Manhattan, 2 = Euclidean            1 .. 2
=================  =======================================================  ==================

Stated figures (pushtrain's fixed split v1): these weak defaults reach about 0.80-0.90 on digits;
``n_neighbors=3, weights="distance", p=2`` reaches >= 0.97.
"""

HPARAMS = {
    "n_neighbors": 75,
    "weights": "uniform",
    "p": 1,
}


def build_estimator(hp):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=hp["n_neighbors"], weights=hp["weights"], p=hp["p"])
