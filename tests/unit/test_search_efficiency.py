"""The search-efficiency benchmark's bookkeeping: what counts as reaching the target and what it cost."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "search_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _run(bench, strategy, seed, results):
    trials = [bench.Trial(i + 1, {}, accuracy, seconds) for i, (accuracy, seconds) in enumerate(results)]
    return bench.Run("cnn-digits", strategy, seed, trials)


def test_cost_stops_at_the_first_attempt_that_meets_the_target(bench):
    run = _run(bench, "default", 0, [(0.2, 1.0), (0.96, 2.0), (0.99, 50.0)])
    assert run.succeeded and run.attempts == 2 and run.train_seconds == 3.0
    assert run.best_so_far() == [(1.0, 0.2), (3.0, 0.96), (53.0, 0.99)]


def test_a_miss_counts_everything_it_spent_and_a_cut_off_attempt_has_no_accuracy(bench):
    run = _run(bench, "random", 0, [(0.2, 1.0), (float("nan"), 9.0)])
    assert not run.succeeded and run.attempts == 2 and run.train_seconds == 10.0
    assert run.best_accuracy == 0.2


def test_goal_verdicts_compare_medians_at_the_same_success_rate(bench):
    runs = [
        _run(bench, "default", 0, [(0.2, 1.0), (0.96, 1.0)]),
        _run(bench, "default", 1, [(0.2, 1.0), (0.96, 3.0)]),
        _run(bench, "escalate", 0, [(0.2, 1.0), (0.5, 4.0), (0.96, 5.0)]),
        _run(bench, "escalate", 1, [(0.2, 1.0), (0.5, 4.0), (0.96, 5.0)]),
        _run(bench, "hyperband", 0, [(0.2, 1.0), (0.5, 1.0)]),  # a miss: same seconds, lower success
        _run(bench, "hyperband", 1, [(0.96, 3.0)]),
    ]
    rows = bench.summarize(runs, attempt_overhead=10.0)
    by_strategy = {row["strategy"]: row for row in rows}
    assert by_strategy["default"]["train_seconds"]["median"] == 3.0
    assert by_strategy["hyperband"]["success_rate"] == 0.5
    assert by_strategy["escalate"]["estimated_wall_seconds"]["median"] == 40.0
    (verdict,) = bench.goal_verdicts(rows)
    assert verdict["train_seconds_default_over_escalate"] == pytest.approx(0.3)
    assert verdict["train_seconds_goal_vs_escalate_met"]
    assert verdict["train_seconds_default_over_hyperband"] == pytest.approx(3.0 / 2.5)
    assert not verdict["train_seconds_goal_vs_hyperband_met"]
    assert "| cnn-digits | default | 100% |" in bench.markdown_table(rows, 10.0)
    assert not math.isnan(by_strategy["default"]["best_accuracy"]["median"])


def test_the_starting_point_suite_covers_every_kind_within_bounds(bench):
    from pushtrain import kinds, strategies

    assert set(bench.STARTS) == set(kinds.KINDS)
    for kind, starts in bench.STARTS.items():
        assert {"template", "near-miss", "over-sized", "overfitting"} <= set(starts), kind
        knobs = kinds.kind(kind).knobs
        if "learning_rate" in knobs or "eta0" in knobs:
            assert {"diverging", "many-epochs"} <= set(starts), kind
    for task in bench.TASKS.values():
        trainer_hparams = {
            **bench.load_model_file(bench.TEMPLATES / task.template).hparams,
            **dict(task.overrides),
        }
        assert strategies.within_bounds(task.kind, trainer_hparams), task.name
        assert set(dict(task.overrides)) <= set(trainer_hparams)
    assert {"cnn-mnist5k-near-miss", "forest-digits-overfitting"} <= set(bench.TASKS)
    assert set(bench.TEMPLATE_TASKS) <= set(bench.TASKS)


def test_goal_verdicts_judge_adaptive_beside_default(bench):
    runs = [
        _run(bench, "adaptive", 0, [(0.2, 1.0), (0.96, 1.0)]),
        _run(bench, "escalate", 0, [(0.2, 1.0), (0.5, 4.0), (0.96, 5.0)]),
    ]
    (verdict,) = bench.goal_verdicts(bench.summarize(runs, attempt_overhead=10.0))
    assert verdict["train_seconds_adaptive_over_escalate"] == pytest.approx(0.2)
    assert verdict["train_seconds_adaptive_goal_vs_escalate_met"]
    assert verdict["estimated_wall_seconds_adaptive_not_worse_than_escalate"]
