"""Unit tests of pushtrain.strategies: bounds, no repeats, determinism, and the stopping rule.

Strategies are driven here against made-up accuracy surfaces, shaped like the templates' stated figures
(more epochs and capacity help, a learning rate near 2e-3 is best), so no training is needed.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re

import pytest

from pushtrain import kinds, strategies
from pushtrain.strategies import (
    STRATEGIES,
    AttemptRecord,
    StrategyExhaustedError,
    clamp,
    default,
    escalate,
    get_strategy,
    no_real_gain,
    random_search,
    within_bounds,
)
from pushtrain.tweak import read_hparams

KINDS = list(kinds.KINDS)
STEPS = 20


def surface(kind: str, hparams: dict) -> float:
    """A smooth, made-up accuracy for hparams of ``kind``, best where the templates say it is."""
    if kind == "cnn":
        score = (
            0.25 * math.log(hparams["epochs"] + 1) / math.log(61)
            + 0.25 * math.log2(hparams["filters"]) / 7
            + 0.2 * math.log2(hparams["dense_units"]) / 9
            + 0.05 * (hparams["conv_blocks"] - 1) / 3
            - 0.1 * abs(math.log10(hparams["learning_rate"] / 0.002))
            - 0.1 * hparams["dropout"] ** 2
            + 0.25
        )
    elif kind == "linear":
        score = (
            0.7
            + 0.1 * math.log(hparams["epochs"]) / math.log(200)
            + 0.1 * min(1.0, -math.log10(hparams["alpha"]) / 4)
            + 0.05 * hparams["average"]
            - 0.05 * abs(math.log10(hparams["eta0"] / 0.05))
        )
    elif kind == "knn":
        score = (
            0.85
            + 0.1 * (1 - abs(hparams["n_neighbors"] - 3) / 100)
            + 0.02 * (hparams["weights"] == "distance")
            + 0.01 * (hparams["p"] == 2)
        )
    elif kind == "keras":
        score = (
            0.25 * math.log(hparams["epochs"] + 1) / math.log(61)
            + 0.3 * math.log2(hparams["dense_units"]) / 10
            - 0.1 * abs(math.log10(hparams["learning_rate"] / 0.002))
            - 0.1 * hparams["dropout"] ** 2
            + 0.4
        )
    elif kind == "svm":  # best near C=10, gamma=0.1 (pixels in [0, 1]) with the rbf kernel
        score = (
            0.97
            - 0.05 * abs(math.log10(hparams["C"] / 10))
            - 0.08 * abs(math.log10(hparams["gamma"] / 0.1))
            - 0.05 * (hparams["kernel"] != "rbf")
        )
    elif kind == "forest":  # more and deeper trees help, with diminishing returns
        score = (
            0.7
            + 0.1 * math.log10(hparams["n_estimators"]) / 3
            + 0.15 * min(1.0, math.log2(hparams["max_depth"]) / 4)
        )
    else:
        raise AssertionError(f"no accuracy surface for kind {kind!r}: add one for a new kind")
    return max(0.0, min(1.0, score))


def template_hparams(templates_dir, kind: str) -> dict:
    return read_hparams((templates_dir / kinds.kind(kind).template).read_text())


def run_loop(
    strategy, kind: str, start: dict, steps: int, seed: int, noise: float = 0.0
) -> list[AttemptRecord]:
    """Drive ``strategy`` the way tweak_and_retrain does: merge its updates into the latest file, train."""
    rng = random.Random(seed)
    history = [AttemptRecord(1, dict(start), surface(kind, start), 1.0)]
    for attempt in range(2, steps + 2):
        updates = strategy(kind, list(history), seed)
        hparams = {**history[-1].hparams, **updates}
        accuracy = surface(kind, hparams) + rng.uniform(-noise, noise)
        history.append(AttemptRecord(attempt, hparams, accuracy, 1.0))
    return history


def fingerprint(hparams: dict) -> tuple:
    return tuple(sorted(hparams.items()))


# ---------------------------------------------------------------------------------------------- knob spaces


def bounds_table(docstring: str) -> dict[str, str]:
    """{knob: bounds cell} from the reStructuredText table of a template's docstring."""
    lines = docstring.splitlines()
    rule = next(line for line in lines if line.startswith("====="))
    last_column = rule.rindex(" ") + 1  # cells start where the separator's runs of "=" start
    rows = {}
    for line in lines:
        if match := re.match(r"``(\w+)``\s", line):
            rows[match[1]] = line[last_column:].strip()
    return rows


@pytest.mark.parametrize("kind", KINDS)
def test_knob_spaces_are_the_templates_tables(templates_dir, kind):
    source = (templates_dir / kinds.kind(kind).template).read_text()
    docstring = ast.get_docstring(ast.parse(source))
    rows = bounds_table(docstring)
    space = kinds.kind(kind).knobs
    assert set(space) == set(rows)
    # A template has the kind's knobs, but for those it marks "not in this template" (the linear kind's C and
    # max_iter, which adapted LogisticRegression files have and the SGD template does not).
    absent = {name for name in rows if re.search(rf"``{name}``.*not in this template", docstring)}
    assert set(read_hparams(source)) == set(space) - absent
    for name, bounds in rows.items():
        knob = space[name]
        if ".." in bounds:
            low, high = (float(part) for part in bounds.split(".."))
            assert (knob.low, knob.high) == (low, high), name
            assert knob.type == ("float" if "." in bounds.replace("..", "") or "e" in bounds else "int"), name
        elif bounds == "any int":
            assert (knob.type, knob.low, knob.high, knob.tuned) == ("int", None, None, False)
        elif bounds == "True / False":
            assert knob.type == "bool"
        else:
            assert bounds == "enum" and knob.type == "choice"
            assert set(knob.choices) == set(re.findall(r'``"(\w+)"``', docstring))


@pytest.mark.parametrize("kind", KINDS)
def test_templates_start_within_bounds(templates_dir, kind):
    assert within_bounds(kind, template_hparams(templates_dir, kind))


# ---------------------------------------------------------------------------------------------------- clamp


def test_clamp_clips_and_fixes_types():
    clamped = clamp(
        "cnn",
        {"epochs": 500, "learning_rate": 1, "filters": 3.6, "dropout": -1, "seed": 12345678901, "mine": "x"},
    )
    assert clamped == {
        "epochs": 60,
        "learning_rate": 0.05,
        "filters": 4,
        "dropout": 0.0,
        "seed": 12345678901,
        "mine": "x",
    }
    assert type(clamped["learning_rate"]) is float and type(clamped["filters"]) is int


def test_clamp_bool_and_choice():
    assert clamp("linear", {"average": 1}) == {"average": True}
    assert clamp("knn", {"weights": "distance", "p": 7}) == {"weights": "distance", "p": 2}


@pytest.mark.parametrize(
    ("kind", "hparams", "message"),
    [
        ("knn", {"weights": "closest"}, "weights must be one of 'uniform', 'distance'"),
        ("linear", {"average": "yes"}, "average must be True or False"),
        ("cnn", {"epochs": "10"}, "epochs must be a number"),
        ("cnn", {"dropout": float("nan")}, "dropout must be a number"),
        ("cnn", {"epochs": True}, "epochs must be a number"),
        ("gbm", {}, "unknown model kind 'gbm'; known kinds: cnn, linear, knn, keras, svm, forest"),
    ],
)
def test_clamp_refuses_what_it_cannot_fix(kind, hparams, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        clamp(kind, hparams)


def test_within_bounds_is_strict_about_types():
    assert not within_bounds("cnn", {"epochs": 61})
    assert not within_bounds("cnn", {"epochs": 10.0})
    assert not within_bounds("knn", {"weights": "closest"})
    assert within_bounds("cnn", {"epochs": 10, "anything": object()})


# ------------------------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("kind", KINDS)
def test_strategy_stays_in_bounds_and_never_repeats(templates_dir, name, kind):
    start = template_hparams(templates_dir, kind)
    for seed in range(4):
        # Noise makes the strategies take different paths (gains and set-backs) for each seed.
        history = run_loop(get_strategy(name), kind, start, STEPS, seed, noise=0.05)
        seen = set()
        for record in history:
            assert within_bounds(kind, record.hparams), (seed, record)
            assert set(record.hparams) == set(start)
            assert fingerprint(record.hparams) not in seen, (seed, record)
            seen.add(fingerprint(record.hparams))
            # Knobs a strategy must leave alone stay as the user committed them.
            assert record.hparams.get("seed") == start.get("seed")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_stays_in_bounds_from_a_wild_start(name):
    start = {
        "epochs": 60,
        "batch_size": 8,
        "learning_rate": 0.05,
        "conv_blocks": 4,
        "filters": 128,
        "kernel_size": 5,
        "dense_units": 512,
        "dropout": 0.6,
        "seed": 3,
    }
    history = run_loop(get_strategy(name), "cnn", start, 10, seed=1)
    assert all(within_bounds("cnn", record.hparams) for record in history)
    assert len({fingerprint(record.hparams) for record in history}) == len(history)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_updates_merge_into_latest_or_committed_file_alike(templates_dir, name):
    start = template_hparams(templates_dir, "cnn")
    history = run_loop(get_strategy(name), "cnn", start, 4, seed=5, noise=0.05)
    updates = get_strategy(name)("cnn", history, 5)
    assert {**history[-1].hparams, **updates} == {**history[0].hparams, **updates}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_is_a_pure_function_of_its_inputs(templates_dir, name):
    start = template_hparams(templates_dir, "linear")
    history = run_loop(get_strategy(name), "linear", start, 5, seed=2, noise=0.05)
    snapshot = json.dumps([record.to_dict() for record in history], sort_keys=True)
    first = get_strategy(name)("linear", history, 2)
    assert get_strategy(name)("linear", list(reversed(history)), 2) == first  # order of records is irrelevant
    assert json.dumps([record.to_dict() for record in history], sort_keys=True) == snapshot  # not mutated


def test_small_space_runs_out_with_a_clear_error():
    history = [AttemptRecord(1, {"p": 1}, 0.5, 1.0), AttemptRecord(2, {"p": 2}, 0.6, 1.0)]
    for strategy in STRATEGIES.values():
        with pytest.raises(StrategyExhaustedError, match="every combination of the knn knobs p"):
            strategy("knn", history, 0)


def test_small_space_is_searched_to_the_last_combination():
    """knn with p and weights only has 4 combinations: the fourth must still be found."""
    tried = [{"p": 1, "weights": "uniform"}, {"p": 2, "weights": "uniform"}, {"p": 1, "weights": "distance"}]
    history = [AttemptRecord(n, hp, 0.5, 1.0) for n, hp in enumerate(tried, start=1)]
    for strategy in STRATEGIES.values():
        updates = strategy("knn", history, 0)
        assert {**tried[-1], **updates} == {"p": 2, "weights": "distance"}


def test_strategies_refuse_empty_history_and_unknown_kind():
    for strategy in STRATEGIES.values():
        with pytest.raises(ValueError, match="attempt 1"):
            strategy("cnn", [], 0)
        with pytest.raises(ValueError, match="unknown model kind"):
            strategy("gbm", [AttemptRecord(1, {}, 0.1, 1.0)], 0)


# A kind with a knob space and nothing else, as a new row of the table would start.
SVC_LIKE = kinds.Kind(
    name="svc_like",
    framework=kinds.SCIKIT_LEARN,
    image="sklearn",
    template="svc_sklearn.py",
    knobs={
        "epochs": kinds.Knob(kinds.INT, 1, 50),
        "C": kinds.Knob(kinds.FLOAT, 1e-3, 1e3, log=True),
        "kernel": kinds.Knob(kinds.CHOICE, choices=("rbf", "linear", "poly")),
        "degree": kinds.Knob(kinds.INT, 2, 5),
        "tol": kinds.Knob(kinds.FLOAT, 0.0, 0.1),
        "shrinking": kinds.Knob(kinds.BOOL),
        "max_iter": kinds.Knob(kinds.INT, 10, 10_000, log=True),
        "seed": kinds.Knob(kinds.INT, tuned=False),
    },
)
SVC_START = {
    "epochs": 2,
    "C": 1.0,
    "kernel": "rbf",
    "degree": 3,
    "tol": 0.001,
    "shrinking": True,
    "max_iter": 100,
    "seed": 7,
}


@pytest.fixture
def svc_like(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, SVC_LIKE.name, SVC_LIKE)
    return SVC_LIKE.name


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_kind_with_only_a_knob_space_gets_moves_that_stay_in_bounds(svc_like, name):
    for seed in range(3):
        rng = random.Random(seed)
        history = [AttemptRecord(1, dict(SVC_START), 0.5, 1.0)]
        for attempt in range(2, 40):
            hparams = {**history[-1].hparams, **get_strategy(name)(svc_like, history, seed)}
            assert within_bounds(svc_like, hparams), (seed, attempt, hparams)
            assert fingerprint(hparams) not in {fingerprint(record.hparams) for record in history}
            assert hparams["seed"] == 7
            history.append(AttemptRecord(attempt, hparams, rng.uniform(0.4, 0.9), 1.0))


def test_generic_default_moves_start_with_more_epochs_and_repeat_what_gained(svc_like):
    first = AttemptRecord(1, dict(SVC_START), 0.5, 1.0)
    assert default(svc_like, [first], 0) == {"epochs": 4}  # the cheap move: the best model trains on
    longer = AttemptRecord(2, SVC_START | {"epochs": 4}, 0.6, 1.0)
    assert default(svc_like, [first, longer], 0) == {"epochs": 8}  # it gained: again
    worse = AttemptRecord(3, SVC_START | {"epochs": 8}, 0.55, 1.0)
    proposed = {**worse.hparams, **default(svc_like, [first, longer, worse], 0)}
    assert proposed == longer.hparams | {"C": 2.0}  # from the best, the next knob's move


def test_generic_escalation_walks_every_tuned_knob(svc_like):
    history = [AttemptRecord(1, dict(SVC_START), 0.5, 1.0)]
    changed = set()
    for attempt in range(2, 10):
        updates = escalate(svc_like, history, 0)
        changed.update(name for name in updates if updates[name] != history[-1].hparams[name])
        history.append(AttemptRecord(attempt, {**history[-1].hparams, **updates}, 0.5, 1.0))
    assert changed == {name for name, knob in SVC_LIKE.knobs.items() if knob.tuned}


def test_get_strategy():
    assert get_strategy("default") is default
    assert get_strategy("escalate") is escalate
    assert get_strategy("random") is random_search
    with pytest.raises(
        ValueError,
        match=re.escape("unknown tweak strategy 'greedy'; valid names: adaptive, default, escalate, random"),
    ):
        get_strategy("greedy")


def test_attempt_record_survives_json():
    record = AttemptRecord(3, {"epochs": 2, "weights": "distance", "average": True}, 0.71, 12.5)
    assert AttemptRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


# ------------------------------------------------------------------------------------------------- escalate


def test_escalate_is_deterministic(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    one = run_loop(escalate, "cnn", start, 8, seed=0, noise=0.1)
    two = run_loop(escalate, "cnn", start, 8, seed=9, noise=0.1)  # other seed, other accuracies
    assert [record.hparams for record in one] == [record.hparams for record in two]


def test_escalate_is_deterministic_when_its_ladder_is_used_up():
    top = {"n_neighbors": 5, "weights": "distance", "p": 1}
    # Every rung from `top` is already taken, so escalate has to fall back on an untried combination.
    history = [
        AttemptRecord(1, top | {"n_neighbors": 4}, 0.9, 1.0),
        AttemptRecord(2, top | {"p": 2}, 0.9, 1.0),
        AttemptRecord(3, top, 0.9, 1.0),
    ]
    proposals = {json.dumps(escalate("knn", history, seed), sort_keys=True) for seed in range(5)}
    assert len(proposals) == 1
    proposed = top | json.loads(proposals.pop())
    assert within_bounds("knn", proposed) and proposed not in [record.hparams for record in history]


def test_escalate_cnn_ladder(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    history = run_loop(escalate, "cnn", start, 4, seed=0)
    changes = [
        {key: value for key, value in after.hparams.items() if before.hparams[key] != value}
        for before, after in zip(history, history[1:], strict=False)
    ]
    assert changes == [
        {"epochs": 2},
        {"conv_blocks": 2},
        {"filters": 4, "dense_units": 16},
        {"epochs": 4},
    ]


def test_escalate_linear_ladder(templates_dir):
    start = template_hparams(templates_dir, "linear")
    history = run_loop(escalate, "linear", start, 5, seed=0)
    assert [record.hparams for record in history[1:]] == [
        {**start, "epochs": 2},
        {**start, "epochs": 2, "alpha": 0.01},
        {**start, "epochs": 2, "alpha": 0.01, "eta0": 0.003},
        {**start, "epochs": 2, "alpha": 0.01, "eta0": 0.003, "average": True},
        {**start, "epochs": 4, "alpha": 0.01, "eta0": 0.003, "average": True},
    ]


def test_escalate_knn_walks_neighbours_down_then_weights(templates_dir):
    start = template_hparams(templates_dir, "knn")
    history = run_loop(escalate, "knn", start, 6, seed=0)
    assert [(r.hparams["n_neighbors"], r.hparams["weights"]) for r in history] == [
        (75, "uniform"),
        (38, "uniform"),
        (19, "uniform"),
        (10, "uniform"),
        (5, "uniform"),
        (5, "distance"),
        (4, "distance"),
    ]


# --------------------------------------------------------------------------------------------------- random


def test_random_is_reproducible_per_seed_and_attempt(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    history = [AttemptRecord(1, start, 0.3, 1.0)]
    assert random_search("cnn", history, 11) == random_search("cnn", history, 11)
    assert random_search("cnn", history, 11) != random_search("cnn", history, 12)
    longer = history + [AttemptRecord(2, start | {"epochs": 5}, 0.3, 1.0)]
    assert random_search("cnn", longer, 11) != random_search("cnn", history, 11)


def test_random_covers_the_space(templates_dir):
    start = template_hparams(templates_dir, "knn")
    history = run_loop(random_search, "knn", start, STEPS, seed=4)
    neighbours = [record.hparams["n_neighbors"] for record in history[1:]]
    assert min(neighbours) < 10 and max(neighbours) > 30
    assert {record.hparams["weights"] for record in history} == {"uniform", "distance"}


# -------------------------------------------------------------------------------------------------- default


def test_default_first_move_is_bold(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    updates = default("cnn", [AttemptRecord(1, start, 0.3, 10.0)], 0)
    assert {**start, **updates} == start | {
        "epochs": 12,
        "conv_blocks": 2,
        "filters": 16,
        "dense_units": 64,
        "learning_rate": 0.002,
    }


def test_default_does_not_repeat_the_bold_jump_but_trains_the_gain_on(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    second = start | {
        "epochs": 12,
        "conv_blocks": 2,
        "filters": 16,
        "dense_units": 64,
        "learning_rate": 0.002,
    }
    history = [AttemptRecord(1, start, 0.3, 10.0), AttemptRecord(2, second, 0.5, 30.0)]
    proposed = {**second, **default("cnn", history, 0)}
    assert proposed == second | {"epochs": 24}
    # Only epochs changed, so the platform continues attempt 2's model instead of training from scratch.
    assert strategies.warm_start_parent(history, proposed).attempt == 2


def test_default_repeats_a_move_that_gained(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    second = start | {
        "epochs": 12,
        "conv_blocks": 2,
        "filters": 16,
        "dense_units": 64,
        "learning_rate": 0.002,
    }
    third = second | {"epochs": 24}
    history = [
        AttemptRecord(1, start, 0.3, 10.0),
        AttemptRecord(2, second, 0.5, 3.0),
        AttemptRecord(3, third, 0.7, 3.0),
    ]
    assert {**third, **default("cnn", history, 0)} == second | {"epochs": 48}


def test_default_keeps_going_in_a_direction_that_gained_after_a_loss(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    bold = start | {"epochs": 12, "conv_blocks": 2, "filters": 16, "dense_units": 64, "learning_rate": 0.002}
    longer = start | {"epochs": 2}
    history = [
        AttemptRecord(1, start, 0.3, 10.0),
        AttemptRecord(2, bold, 0.2, 30.0),  # the bold move lost
        AttemptRecord(3, longer, 0.4, 20.0),  # epochs x2 gained: do it again
    ]
    assert {**longer, **default("cnn", history, 0)} == start | {"epochs": 4}


def test_default_backs_off_from_a_move_that_lost(templates_dir):
    start = template_hparams(templates_dir, "cnn")
    second = start | {
        "epochs": 12,
        "conv_blocks": 2,
        "filters": 16,
        "dense_units": 64,
        "learning_rate": 0.002,
    }
    history = [AttemptRecord(1, start, 0.3, 10.0), AttemptRecord(2, second, 0.2, 30.0)]
    updates = default("cnn", history, 0)
    proposed = {**second, **updates}
    # Back at attempt 1's hparams, with the next move of the list: epochs alone.
    assert proposed == start | {"epochs": 2}


def test_default_starts_from_the_best_attempt_not_the_latest(templates_dir):
    start = template_hparams(templates_dir, "linear")
    good = start | {"epochs": 3, "alpha": 0.01, "eta0": 0.01, "average": True}
    worse = good | {"epochs": 9, "alpha": 0.001}
    history = [
        AttemptRecord(1, start, 0.6, 1.0),
        AttemptRecord(2, good, 0.8, 1.0),
        AttemptRecord(3, worse, 0.7, 1.0),
    ]
    proposed = {**worse, **default("linear", history, 0)}
    differing = {key for key in proposed if proposed[key] != good[key]}
    assert len(differing) == 1, proposed  # one move away from the best, not from the latest


@pytest.mark.parametrize("kind", KINDS)
def test_default_beats_escalate(templates_dir, kind):
    start = template_hparams(templates_dir, kind)
    best_default = max(r.accuracy for r in run_loop(default, kind, start, 5, seed=0))
    best_escalate = max(r.accuracy for r in run_loop(escalate, kind, start, 5, seed=0))
    assert best_default > best_escalate + 0.01


def test_default_reaches_a_working_cnn_region_then_only_adds_epochs(templates_dir):
    """Two conv blocks, 16+ filters and a learning rate of 1e-3..3e-3 in one jump; then cheap epoch doublings."""
    start = template_hparams(templates_dir, "cnn")
    history = run_loop(default, "cnn", start, 4, seed=0)
    second = history[1].hparams
    assert (
        second["conv_blocks"] == 2 and second["filters"] >= 16 and 0.001 <= second["learning_rate"] <= 0.003
    )
    later = [record.hparams for record in history[2:]]
    assert any(strategies.warm_start_parent(history[: i + 2], hparams) for i, hparams in enumerate(later))


# --------------------------------------------------------------------------------------------- no_real_gain


def records(*accuracies: float) -> list[AttemptRecord]:
    return [AttemptRecord(n, {"epochs": n}, accuracy, 1.0) for n, accuracy in enumerate(accuracies, start=1)]


@pytest.mark.parametrize(
    ("accuracies", "k", "min_gain", "expected"),
    [
        ((0.5, 0.6, 0.7), 2, 0.01, False),  # still climbing
        ((0.5, 0.505, 0.508), 2, 0.01, True),  # two tiny gains
        ((0.5, 0.4, 0.45), 2, 0.01, True),  # two set-backs below the best
        ((0.5, 0.6, 0.601, 0.59), 2, 0.01, True),
        ((0.5, 0.6, 0.601, 0.59), 3, 0.01, False),  # the gain to 0.6 is within the last 3
        ((0.5, 0.505), 2, 0.01, False),  # too little history to call a plateau
        ((0.5, 0.505), 1, 0.01, True),
        ((0.5, 0.51), 1, 0.01, False),  # a gain of exactly min_gain counts as real (allowing float error)
        ((0.5, float("nan"), 0.5), 2, 0.01, True),  # a failed attempt gains nothing
    ],
)
def test_no_real_gain(accuracies, k, min_gain, expected):
    assert no_real_gain(records(*accuracies), k, min_gain - 1e-12) is expected


def test_no_real_gain_ignores_record_order_and_checks_k():
    assert no_real_gain(list(reversed(records(0.5, 0.505, 0.508))), 2, 0.01) is True
    with pytest.raises(ValueError, match="k must be at least 1"):
        no_real_gain(records(0.5), 0, 0.01)


# ------------------------------------------------------------------------------------------ warm start


def _record(attempt, accuracy=0.5, **hparams):
    return strategies.AttemptRecord(attempt, hparams, accuracy)


def test_warm_start_parent_is_the_longest_earlier_run_of_the_same_knobs():
    history = [
        _record(1, epochs=2, filters=8, learning_rate=0.002),
        _record(2, epochs=4, filters=8, learning_rate=0.002),
        _record(3, epochs=6, filters=16, learning_rate=0.002),
    ]
    parent = strategies.warm_start_parent(history, {"epochs": 8, "filters": 8, "learning_rate": 0.002})
    assert parent is not None and parent.attempt == 2


def test_warm_start_parent_needs_fewer_epochs_and_otherwise_equal_knobs():
    history = [_record(1, epochs=4, filters=8), _record(2, epochs=8, filters=8)]
    assert strategies.warm_start_parent(history, {"epochs": 8, "filters": 16}) is None  # architecture changed
    assert strategies.warm_start_parent(history, {"epochs": 3, "filters": 8}) is None  # fewer epochs
    assert strategies.warm_start_parent(history, {"n_neighbors": 3}) is None  # no epochs knob (knn)


def test_warm_start_parent_skips_failed_attempts():
    history = [_record(1, accuracy=float("nan"), epochs=4, filters=8)]
    assert strategies.warm_start_parent(history, {"epochs": 8, "filters": 8}) is None
