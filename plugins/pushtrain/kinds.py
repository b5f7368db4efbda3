"""The kinds of model pushtrain trains, in one table that every other module reads.

A kind is a family of models that share a framework (and with it the builder function a model file
defines), a training image, a knob space and the moves the tweak strategies try. Per kind the table says:

* ``framework``: Keras or scikit-learn; it names the builder (``build_model`` / ``build_estimator``) and
  picks the runner's training code,
* ``image``: the training image (``images/<image>/Dockerfile``),
* ``template``: the starting model file in ``include/model_templates/``,
* ``knobs``: the hyperparameters a strategy may set, with the bounds the template documents,
* ``default_moves`` and ``escalation``: the kind's own moves for the ``default`` and ``escalate``
  strategies; a kind without them gets generic moves derived from its knobs,
* ``label``: the edge label of its branch in the DAG graph (derived).

Adding a kind is an entry in ``KINDS``, its detection rule in ``pushtrain.detect`` and, for a new framework,
training code in ``pushtrain.runner.train``; the DAGs, Params, CLI choices, images and strategies follow.

Standard library only: the runner imports this module inside the training images, where there is no
Airflow and no rest of ``pushtrain``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

INT = "int"
FLOAT = "float"
BOOL = "bool"
CHOICE = "choice"

# Operations of a Move and how many arguments each takes; pushtrain.strategies says what they do.
MOVE_OPERATIONS = {"mul": 1, "add": 1, "set": 1, "atleast": 1, "flip": 0, "toward": 3}


@dataclass(frozen=True)
class Framework:
    """A library the runner trains with, and the builder function every model file for it defines."""

    name: str
    title: str
    builder: str
    builder_parameters: str

    @property
    def builder_call(self) -> str:
        return f"{self.builder}({self.builder_parameters})"


KERAS = Framework("keras", "Keras", "build_model", "hp, input_shape, num_classes")
SCIKIT_LEARN = Framework("sklearn", "scikit-learn", "build_estimator", "hp")


@dataclass(frozen=True)
class Knob:
    """One hyperparameter a strategy may set: its type and the bounds the model template documents.

    ``low``/``high`` are inclusive; ``None`` where the template says "any", which only a knob with
    ``tuned=False`` may say: such a knob is one a strategy never changes (a seed: changing it only reshuffles
    luck). ``log`` marks knobs whose useful values span orders of magnitude, so sampling and steps are
    multiplicative.
    """

    type: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    tuned: bool = True

    def __post_init__(self) -> None:
        if self.type not in (INT, FLOAT, BOOL, CHOICE):
            raise ValueError(f"unknown knob type {self.type!r}")
        if self.type == CHOICE and not self.choices:
            raise ValueError("a choice knob needs choices")
        if self.tuned and self.type in (INT, FLOAT) and (self.low is None or self.high is None):
            raise ValueError("a tuned number knob needs low and high: the strategies sample between them")


@dataclass(frozen=True)
class Move:
    """A named change of a few knobs: ``{knob: (operation, *arguments)}``, operations in MOVE_OPERATIONS.

    ``repeat=False`` marks a one-off jump that the ``default`` strategy does not repeat even when it gained.
    """

    name: str
    changes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)
    repeat: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))
        for knob, operation in self.changes.items():
            if not operation or MOVE_OPERATIONS.get(operation[0]) != len(operation) - 1:
                raise ValueError(
                    f"move {self.name!r}: {knob}: {operation!r} is not an operation of "
                    f"{', '.join(MOVE_OPERATIONS)} with its arguments"
                )


@dataclass(frozen=True)
class Kind:
    """One row of the table; see the module docstring for what each field drives."""

    name: str
    framework: Framework
    image: str
    template: str
    knobs: Mapping[str, Knob] = field(hash=False)
    default_moves: tuple[Move, ...] = ()
    escalation: tuple[Move, ...] = ()
    # True: attempt n takes rung n-1 (cyclically); False: always the first rung that still changes something.
    escalation_rotates: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", MappingProxyType(dict(self.knobs)))
        for move in (*self.default_moves, *self.escalation):
            unknown = set(move.changes) - set(self.knobs)
            if unknown:
                raise ValueError(
                    f"kind {self.name!r}: move {move.name!r} changes {', '.join(sorted(unknown))}, "
                    "which are not among its knobs"
                )

    @property
    def builder(self) -> str:
        return self.framework.builder

    @property
    def label(self) -> str:
        return f"{self.name}: {self.framework.title} image"


def _table(*rows: Kind) -> dict[str, Kind]:
    return {row.name: row for row in rows}


# In the order detection, the DAG graph and the Params form list them. Knob bounds are the tables of
# include/model_templates/*.py docstrings, knob for knob (tests/unit/test_strategies.py holds them equal).
KINDS: dict[str, Kind] = _table(
    Kind(
        name="cnn",
        framework=KERAS,
        image="tensorflow",
        template="cnn_keras.py",
        knobs={
            "epochs": Knob(INT, 1, 60),
            "batch_size": Knob(INT, 8, 512, log=True),
            "learning_rate": Knob(FLOAT, 1e-5, 0.05, log=True),
            "conv_blocks": Knob(INT, 1, 4),
            "filters": Knob(INT, 2, 128, log=True),
            "kernel_size": Knob(INT, 2, 5),
            "dense_units": Knob(INT, 4, 512, log=True),
            "dropout": Knob(FLOAT, 0.0, 0.6),
            "seed": Knob(INT, tuned=False),
        },
        # The first move jumps into the region where such models work (two conv blocks, 16+ filters, a
        # learning rate of 1e-3..3e-3, 12+ epochs); pushtrain.strategies says why.
        default_moves=(
            Move(
                "bold: one more conv block, filters and dense units x8, learning rate into 1e-3..3e-3, "
                "at least 12 epochs",
                {
                    "conv_blocks": ("add", 1),
                    "filters": ("mul", 8),
                    "dense_units": ("mul", 8),
                    "learning_rate": ("toward", 0.001, 0.003, 4),
                    "epochs": ("atleast", 12),
                },
                repeat=False,
            ),
            Move("epochs x2 (continues the best model)", {"epochs": ("mul", 2)}),
            Move("filters and dense units x2", {"filters": ("mul", 2), "dense_units": ("mul", 2)}),
            Move("learning rate into 1e-3..3e-3", {"learning_rate": ("toward", 0.001, 0.003, 4)}),
            Move("another conv block", {"conv_blocks": ("add", 1)}),
            Move("learning rate x3", {"learning_rate": ("mul", 3)}),
            Move("learning rate /3", {"learning_rate": ("mul", 1 / 3)}),
            Move("batch size /2", {"batch_size": ("mul", 0.5)}),
            Move("more dropout", {"dropout": ("add", 0.2)}),
            Move("larger kernel", {"kernel_size": ("add", 1)}),
            Move("one conv block fewer", {"conv_blocks": ("add", -1)}),
            Move("batch size x2", {"batch_size": ("mul", 2)}),
            Move("less dropout", {"dropout": ("add", -0.2)}),
            Move("smaller kernel", {"kernel_size": ("add", -1)}),
        ),
        escalation=(
            Move("more epochs", {"epochs": ("mul", 2)}),
            Move("another conv block", {"conv_blocks": ("add", 1)}),
            Move("more filters and dense units", {"filters": ("mul", 2), "dense_units": ("mul", 2)}),
        ),
    ),
    Kind(
        name="linear",
        framework=SCIKIT_LEARN,
        image="sklearn",
        template="linear_sklearn.py",
        knobs={
            "epochs": Knob(INT, 1, 200),
            "alpha": Knob(FLOAT, 1e-7, 1.0, log=True),
            "eta0": Knob(FLOAT, 1e-4, 1.0, log=True),
            "average": Knob(BOOL),
            # Not in the SGD template: what adapt lifts from LogisticRegression, LinearSVC, Perceptron and
            # the like (a file has only the knobs its estimator takes; the strategies move only those).
            "C": Knob(FLOAT, 1e-4, 1e4, log=True),
            "max_iter": Knob(INT, 50, 10000, log=True),
            "seed": Knob(INT, tuned=False),
        },
        default_moves=(
            Move(
                "bold: epochs x3, alpha /10, eta0 into 0.01..0.1, averaged weights",
                {
                    "epochs": ("mul", 3),
                    "alpha": ("mul", 0.1),
                    "eta0": ("toward", 0.01, 0.1, 10),
                    "average": ("set", True),
                },
                repeat=False,
            ),
            Move("epochs x2 (continues the best model)", {"epochs": ("mul", 2)}),
            Move("alpha /10", {"alpha": ("mul", 0.1)}),
            Move("eta0 x3", {"eta0": ("mul", 3)}),
            Move("toggle averaging", {"average": ("flip",)}),
            Move("alpha x10", {"alpha": ("mul", 10)}),
            Move("eta0 /3", {"eta0": ("mul", 1 / 3)}),
            # For adapted LogisticRegression / LinearSVC files (none of these is in the SGD template):
            # a weaker penalty first (pixels in [0, 1] are small features), room to converge, then back.
            Move("C x10", {"C": ("mul", 10)}),
            Move("max_iter x3", {"max_iter": ("mul", 3)}),
            Move("C /10", {"C": ("mul", 0.1)}),
        ),
        escalation=(
            Move("more epochs", {"epochs": ("mul", 2)}),
            Move("lower alpha", {"alpha": ("mul", 0.1)}),
            Move("raise eta0", {"eta0": ("mul", 3)}),
            Move("average weights", {"average": ("set", True)}),
        ),
    ),
    Kind(
        name="knn",
        framework=SCIKIT_LEARN,
        image="sklearn",
        template="knn_sklearn.py",
        knobs={
            "n_neighbors": Knob(INT, 1, 100, log=True),
            "weights": Knob(CHOICE, choices=("uniform", "distance")),
            "p": Knob(INT, 1, 2),
        },
        default_moves=(
            Move(
                "bold: n_neighbors into 1..5, distance weights",
                {"n_neighbors": ("toward", 1, 5, 15), "weights": ("set", "distance")},
                repeat=False,
            ),
            Move("n_neighbors /3", {"n_neighbors": ("mul", 1 / 3)}),
            Move("other Minkowski power", {"p": ("flip",)}),
            Move("n_neighbors x2", {"n_neighbors": ("mul", 2)}),
            Move("toggle distance weights", {"weights": ("flip",)}),
            Move("n_neighbors one lower", {"n_neighbors": ("add", -1)}),
            Move("n_neighbors one higher", {"n_neighbors": ("add", 1)}),
        ),
        # Walks n_neighbors down before it switches to distance weighting.
        escalation=(
            Move("halve n_neighbors down to 5", {"n_neighbors": ("toward", 1, 5, 2)}),
            Move("distance weights", {"weights": ("set", "distance")}),
            Move("n_neighbors one lower", {"n_neighbors": ("add", -1)}),
            Move("other Minkowski power", {"p": ("flip",)}),
        ),
        escalation_rotates=False,
    ),
    # The kinds below are what ordinary training scripts are, once ``pushtrain adapt`` rewrote them: their
    # knobs are exactly the ones adapt lifts into HPARAMS for such a model (a file may have fewer of them;
    # a strategy moves only those it has).
    Kind(
        name="keras",  # any Keras network without a convolution layer: Dense (and Dropout) on the pixels
        framework=KERAS,
        image="tensorflow",
        template="dense_keras.py",
        knobs={
            "epochs": Knob(INT, 1, 60),
            "batch_size": Knob(INT, 8, 512, log=True),
            "learning_rate": Knob(FLOAT, 1e-5, 0.05, log=True),
            "dense_units": Knob(INT, 4, 1024, log=True),
            "dropout": Knob(FLOAT, 0.0, 0.6),
        },
        default_moves=(
            Move(
                "bold: dense units x4, learning rate into 1e-3..3e-3, at least 12 epochs",
                {
                    "dense_units": ("mul", 4),
                    "learning_rate": ("toward", 0.001, 0.003, 4),
                    "epochs": ("atleast", 12),
                },
                repeat=False,
            ),
            Move("epochs x2 (continues the best model)", {"epochs": ("mul", 2)}),
            Move("dense units x2", {"dense_units": ("mul", 2)}),
            Move("learning rate into 1e-3..3e-3", {"learning_rate": ("toward", 0.001, 0.003, 4)}),
            Move("more dropout", {"dropout": ("add", 0.2)}),
            Move("learning rate x3", {"learning_rate": ("mul", 3)}),
            Move("learning rate /3", {"learning_rate": ("mul", 1 / 3)}),
            Move("batch size /2", {"batch_size": ("mul", 0.5)}),
            Move("less dropout", {"dropout": ("add", -0.2)}),
            Move("batch size x2", {"batch_size": ("mul", 2)}),
            Move("dense units /2", {"dense_units": ("mul", 0.5)}),
        ),
        escalation=(
            Move("more epochs", {"epochs": ("mul", 2)}),
            Move("more dense units", {"dense_units": ("mul", 2)}),
        ),
    ),
    Kind(
        name="svm",  # SVC and NuSVC (LinearSVC is `linear`)
        framework=SCIKIT_LEARN,
        image="sklearn",
        template="svm_sklearn.py",
        knobs={
            "C": Knob(FLOAT, 1e-3, 1e3, log=True),
            "kernel": Knob(CHOICE, choices=("rbf", "poly", "sigmoid", "linear")),
            "gamma": Knob(FLOAT, 1e-5, 10.0, log=True),
        },
        # Useful C and gamma span decades, and gamma depends on the data (images arrive in [0, 1], so a gamma
        # tuned for raw pixels is far too small): steps of x10 first, a move that gained is repeated.
        default_moves=(
            Move("C x10", {"C": ("mul", 10)}),
            Move("gamma x10", {"gamma": ("mul", 10)}),
            Move("gamma /10", {"gamma": ("mul", 0.1)}),
            Move("C /10", {"C": ("mul", 0.1)}),
            Move("C x3", {"C": ("mul", 3)}),
            Move("gamma x3", {"gamma": ("mul", 3)}),
            Move("gamma /3", {"gamma": ("mul", 1 / 3)}),
            Move("C /3", {"C": ("mul", 1 / 3)}),
            Move("rbf kernel", {"kernel": ("set", "rbf")}),
            Move("other kernel", {"kernel": ("flip",)}),
        ),
    ),
    Kind(
        name="forest",  # random forests, extra trees and single decision trees (no n_estimators)
        framework=SCIKIT_LEARN,
        image="sklearn",
        template="forest_sklearn.py",
        knobs={
            "n_estimators": Knob(INT, 10, 1000, log=True),
            "max_depth": Knob(INT, 2, 64, log=True),
            "seed": Knob(INT, tuned=False),
        },
        # Forests do best with many deep trees (scikit-learn's own defaults are 100 trees of unlimited depth):
        # one jump there, then depth and trees in steps of x2. No escalation of its own: the generic one.
        default_moves=(
            Move(
                "bold: at least 200 trees, at least depth 32",
                {"n_estimators": ("atleast", 200), "max_depth": ("atleast", 32)},
                repeat=False,
            ),
            Move("max_depth x2", {"max_depth": ("mul", 2)}),
            Move("n_estimators x2", {"n_estimators": ("mul", 2)}),
            Move("max_depth /2", {"max_depth": ("mul", 0.5)}),
            Move("n_estimators /2", {"n_estimators": ("mul", 0.5)}),
        ),
    ),
)


def kind(name: str) -> Kind:
    """The kind called ``name``, or a ValueError naming the kinds there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; known kinds: {', '.join(KINDS)}") from None
