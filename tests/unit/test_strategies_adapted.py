"""Strategies on the HPARAMS of adapted scripts: files that have only some of their kind's knobs, or values
that no knob can hold.

``pushtrain adapt`` lifts the knobs an estimator takes (``C`` and ``max_iter`` of a LogisticRegression), not
the ones of the kind's template (the SGD template's epochs, alpha, eta0, average). A strategy must move the
knobs the file has, never inject one it lacks, and leave alone a value it cannot step from.
"""

from __future__ import annotations

import pytest

from pushtrain import kinds
from pushtrain.strategies import (
    STRATEGIES,
    AttemptRecord,
    StrategyExhaustedError,
    default,
    escalate,
    get_strategy,
    within_bounds,
)
from pushtrain.tweak import read_hparams

LOGISTIC = {"C": 1.0, "max_iter": 100}


def loop(name: str, kind: str, start: dict, steps: int, accuracy=lambda hparams: 0.5) -> list[dict]:
    history = [AttemptRecord(1, dict(start), accuracy(start), 1.0)]
    for attempt in range(2, steps + 2):
        updates = get_strategy(name)(kind, list(history), 0)
        hparams = {**history[-1].hparams, **updates}
        history.append(AttemptRecord(attempt, hparams, accuracy(hparams), 1.0))
    return [record.hparams for record in history]


def test_a_logistic_regression_gets_a_real_tweak():
    updates = default("linear", [AttemptRecord(1, dict(LOGISTIC), 0.9, 2.0)], 0)
    assert dict(updates) == {"C": 10.0}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_moves_only_the_knobs_a_logistic_regression_has(name):
    for hparams in loop(name, "linear", LOGISTIC, 8):
        assert set(hparams) == set(LOGISTIC)  # no epochs, alpha, eta0 or average injected
        assert within_bounds("linear", hparams)
    assert len({tuple(sorted(hparams.items())) for hparams in loop(name, "linear", LOGISTIC, 8)}) == 9


def test_default_walks_c_and_max_iter_of_a_logistic_regression():
    # C x10 gained, so it is repeated; that lost, so the next move from the best is more iterations.
    walked = loop(
        "default", "linear", LOGISTIC, 3, accuracy=lambda hp: {1.0: 0.8, 10.0: 0.9}.get(hp["C"], 0.85)
    )
    assert walked[1:] == [
        {"C": 10.0, "max_iter": 100},
        {"C": 100.0, "max_iter": 100},
        {"C": 10.0, "max_iter": 300},
    ]


def test_the_sgd_template_keeps_its_moves(templates_dir):
    start = read_hparams((templates_dir / kinds.kind("linear").template).read_text())
    assert "C" not in start and "max_iter" not in start
    first = default("linear", [AttemptRecord(1, dict(start), 0.8, 1.0)], 0)
    assert dict(first) == {"epochs": 3, "alpha": 0.01, "eta0": 0.01, "average": True}
    # From a better attempt the bold move is gone and the next move is the cheap one, as before.
    history = [AttemptRecord(1, dict(start), 0.8, 1.0), AttemptRecord(2, {**start, **first}, 0.9, 1.0)]
    assert {**history[-1].hparams, **default("linear", history, 0)} == {**start, **first, "epochs": 6}
    assert dict(escalate("linear", [AttemptRecord(1, dict(start), 0.8, 1.0)], 0)) == {"epochs": 2}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("kernel", ["precomputed", "RBF"])
def test_a_kernel_outside_the_choices_is_left_alone(name, kernel):
    start = {"C": 1.0, "kernel": kernel, "gamma": 0.01}
    for hparams in loop(name, "svm", start, 6):
        assert hparams["kernel"] == kernel
        assert set(hparams) == set(start)
    assert len({tuple(sorted(hparams.items())) for hparams in loop(name, "svm", start, 6)}) == 7


def test_a_text_gamma_is_left_alone_and_c_still_moves():
    updates = default("svm", [AttemptRecord(1, {"C": 1.0, "kernel": "rbf", "gamma": "scale"}, 0.9, 1.0)], 0)
    assert dict(updates) == {"C": 10.0}


def test_a_file_without_movable_knobs_says_what_to_add():
    with pytest.raises(
        StrategyExhaustedError, match=r"none of the forest knobs .*\(n_estimators, max_depth\)"
    ):
        default("forest", [AttemptRecord(1, {"seed": 0}, 0.8, 1.0)], 0)
    with pytest.raises(StrategyExhaustedError, match="none of the svm knobs"):
        default("svm", [AttemptRecord(1, {"kernel": "precomputed"}, 0.8, 1.0)], 0)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_decision_tree_in_the_forest_kind_moves_its_depth_only(name):
    walked = loop(name, "forest", {"max_depth": 8, "seed": 0}, 4)
    assert all(set(hparams) == {"max_depth", "seed"} and hparams["seed"] == 0 for hparams in walked)
    assert len({hparams["max_depth"] for hparams in walked}) == 5
    if name == "default":
        assert walked[1] == {"max_depth": 32, "seed": 0}
