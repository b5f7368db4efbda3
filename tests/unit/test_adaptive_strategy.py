"""Unit tests of the ``adaptive`` strategy: evidence from the per-epoch history, cost, bounds and reasons.

Histories are made up, shaped like what the runner writes into metrics.json (one dict per epoch with
accuracy, val_accuracy, loss and seconds; a one-fit scikit-learn model has a single record).
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from pushtrain import kinds, strategies
from pushtrain.strategies import (
    AttemptRecord,
    Proposal,
    adaptive,
    default,
    proposal_reason,
    warm_start_parent,
    within_bounds,
)
from pushtrain.tweak import read_hparams

# A reasonable CNN just below its target (issue 16's MNIST-5k example): two conv blocks of 16 filters,
# 64 dense units, 3 epochs, learning rate 1e-3.
NEAR_MISS = {
    "epochs": 3,
    "batch_size": 64,
    "learning_rate": 0.001,
    "conv_blocks": 2,
    "filters": 16,
    "kernel_size": 3,
    "dense_units": 64,
    "dropout": 0.0,
    "seed": 0,
}


def epochs(*rows: tuple[float, float, float | None], seconds: float = 4.0) -> tuple[dict, ...]:
    """A history from (train accuracy, val accuracy, loss) per epoch."""
    return tuple(
        {"epoch": n, "accuracy": train, "val_accuracy": val, "loss": loss, "seconds": seconds}
        for n, (train, val, loss) in enumerate(rows, start=1)
    )


def near_miss_record() -> AttemptRecord:
    history = epochs((0.90, 0.93, 0.35), (0.95, 0.95, 0.17), (0.962, 0.96, 0.12))
    return AttemptRecord(1, dict(NEAR_MISS), 0.96, 12.0, history, 0, 4500)


def test_a_near_miss_still_rising_adds_epochs_first_and_continues_the_model():
    first = near_miss_record()
    proposal = adaptive("cnn", [first], 0, target=0.97)
    assert set(proposal) == {"epochs"} and proposal["epochs"] > 3
    hparams = {**first.hparams, **proposal}
    assert warm_start_parent([first], hparams) == first
    reason = proposal_reason(proposal)
    assert "rising at epoch 3/3" in reason and "continued from attempt 1" in reason, reason


def test_a_near_miss_costs_far_less_than_defaults_first_jump():
    first = near_miss_record()
    cost = strategies._Cost([first])
    ours = cost.seconds({**first.hparams, **adaptive("cnn", [first], 0, target=0.97)})
    theirs = cost.seconds({**first.hparams, **default("cnn", [first], 0)})
    # Only the epochs it lacks, warm-started: the attempt overhead plus a few seconds of training.
    assert ours < strategies.ATTEMPT_OVERHEAD_SECONDS + first.train_seconds * 2
    assert ours * 5 < theirs


def test_without_a_target_a_rising_curve_still_gets_more_epochs():
    proposal = adaptive("cnn", [near_miss_record()], 0)
    assert set(proposal) == {"epochs"}


def test_a_diverging_loss_lowers_the_learning_rate():
    hparams = {**NEAR_MISS, "learning_rate": 0.05}
    history = epochs((0.11, 0.10, 2.4), (0.10, 0.10, 3.3), (0.10, 0.09, 4.1))
    record = AttemptRecord(1, hparams, 0.10, 12.0, history, 0, 4500)
    proposal = adaptive("cnn", [record], 0, target=0.97)
    assert set(proposal) == {"learning_rate"} and proposal["learning_rate"] < 0.05
    assert "loss rose" in proposal_reason(proposal)


def test_a_loss_that_is_not_finite_lowers_the_learning_rate_tenfold():
    hparams = {**NEAR_MISS, "learning_rate": 0.05}
    history = epochs((0.10, 0.10, math.nan), (0.10, 0.10, math.nan))
    record = AttemptRecord(1, hparams, 0.10, 8.0, history, 0, 4500)
    assert adaptive("cnn", [record], 0, target=0.97) == {"learning_rate": 0.005}


def test_overfitting_regularises():
    history = epochs((0.95, 0.90, 0.2), (0.99, 0.905, 0.05), (1.0, 0.90, 0.01))
    record = AttemptRecord(1, dict(NEAR_MISS), 0.90, 12.0, history, 0, 4500)
    proposal = adaptive("cnn", [record], 0, target=0.97)
    assert set(proposal) == {"dropout"} and proposal["dropout"] > 0
    assert "overfitting" in proposal_reason(proposal)


def test_overfitting_regularises_a_linear_model_and_an_svm():
    linear = {"epochs": 20, "alpha": 1e-6, "eta0": 0.05, "average": True, "seed": 0}
    history = epochs((0.999, 0.90, None), (1.0, 0.90, None), (1.0, 0.899, None), seconds=0.05)
    proposal = adaptive("linear", [AttemptRecord(1, linear, 0.90, 1.0, history, 0, 1400)], 0, target=0.95)
    assert proposal["alpha"] > 1e-6
    svm = {"C": 1.0, "kernel": "rbf", "gamma": 5.0}
    one_fit = ({"epoch": 1, "accuracy": 1.0, "val_accuracy": 0.2, "seconds": 0.5},)
    proposal = adaptive("svm", [AttemptRecord(1, svm, 0.2, 0.5, one_fit, 0, 1400)], 0, target=0.97)
    assert proposal.get("C", 1.0) < 1.0 or proposal.get("gamma", 5.0) < 5.0


def test_low_training_accuracy_far_from_the_target_grows_the_model_in_one_jump():
    weak = {
        "epochs": 1,
        "batch_size": 64,
        "learning_rate": 0.0005,
        "conv_blocks": 1,
        "filters": 2,
        "kernel_size": 3,
        "dense_units": 8,
        "dropout": 0.0,
        "seed": 0,
    }
    record = AttemptRecord(1, weak, 0.3, 2.0, epochs((0.2, 0.3, 2.1)), 0, 4500)
    proposal = adaptive("cnn", [record], 0, target=0.95)
    assert proposal["filters"] > 2 and proposal["dense_units"] > 8 and proposal["epochs"] > 1
    assert "more capacity" in proposal_reason(proposal)


def test_the_reason_says_what_changed_and_the_proposal_is_a_plain_dict():
    proposal = adaptive("cnn", [near_miss_record()], 0, target=0.97)
    assert isinstance(proposal, Proposal) and isinstance(proposal, dict)
    assert json.loads(json.dumps(proposal)) == dict(proposal)
    assert f"epochs 3 -> {proposal['epochs']}" in proposal_reason(proposal)
    assert "\n" not in proposal_reason(proposal)
    assert proposal_reason({"epochs": 2}) == ""  # other strategies give none


def test_attempt_record_with_history_survives_json():
    record = near_miss_record()
    assert AttemptRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


# ------------------------------------------------------------------------------------ every kind, a loop


def simulated(kind: str, attempt: int, hparams: dict, seed: int) -> AttemptRecord:
    """A made-up attempt: accuracy and curve shape are a hash of the hparams, so every kind gets evidence
    of every sort (rising, flat, overfitting, diverging) somewhere along a loop."""
    digest = hashlib.sha256(json.dumps([kind, seed, hparams], sort_keys=True, default=str).encode()).digest()
    final, gap, shape = 0.3 + 0.65 * digest[0] / 255, 0.15 * digest[1] / 255, digest[2] % 4
    count = hparams.get("epochs", 1) if "epochs" in kinds.kind(kind).knobs else 1
    history = []
    for n in range(1, count + 1):
        progress = n / count if shape != 1 else 1.0  # shape 1: flat from the first epoch
        val = final * (0.6 + 0.4 * progress)
        loss = (2.0 * n if shape == 3 else 2.0 / n) if kinds.kind(kind).framework == kinds.KERAS else None
        train = min(1.0, val + (gap if shape == 2 else 0.0))
        history.append({"epoch": n, "accuracy": train, "val_accuracy": val, "loss": loss, "seconds": 0.5})
    return AttemptRecord(attempt, hparams, history[-1]["val_accuracy"], 0.5 * count, tuple(history), 0, 1000)


@pytest.mark.parametrize("kind", list(kinds.KINDS))
@pytest.mark.parametrize("target", [None, 0.97])
def test_every_kind_stays_in_bounds_never_repeats_and_gives_reasons(templates_dir, kind, target):
    start = read_hparams((templates_dir / kinds.kind(kind).template).read_text())
    for seed in range(3):
        history = [simulated(kind, 1, dict(start), seed)]
        for attempt in range(2, 16):
            try:
                proposal = adaptive(kind, list(history), seed, target=target)
            except strategies.StrategyExhaustedError:
                break  # a small space (knn) can run out; that is a clean end
            assert proposal_reason(proposal), (kind, seed, attempt)
            hparams = {**history[-1].hparams, **proposal}
            assert within_bounds(kind, hparams), (kind, seed, attempt, hparams)
            assert set(hparams) == set(start)
            assert hparams.get("seed") == start.get("seed")
            seen = {strategies._fingerprint(record.hparams) for record in history}
            assert strategies._fingerprint(hparams) not in seen, (kind, seed, attempt, proposal)
            history.append(simulated(kind, attempt, hparams, seed))


def test_a_direction_that_lost_from_an_earlier_best_is_not_tried_again_from_the_next():
    """Seen in the benchmark: alpha /10 lost from one best, then was proposed again from each new best."""
    base = {"epochs": 10, "alpha": 1e-5, "eta0": 0.01, "average": True, "seed": 0}
    flat = epochs((0.95, 0.92, None), (0.95, 0.92, None), seconds=0.05)
    records = [
        AttemptRecord(1, dict(base), 0.92, 0.5, flat, 0, 1400),
        AttemptRecord(2, {**base, "alpha": 1e-6}, 0.92, 0.5, flat, 0, 1400),  # lost
        AttemptRecord(3, {**base, "epochs": 20}, 0.93, 0.5, flat, 10, 1400),  # the new best
    ]
    proposal = adaptive("linear", records, 0, target=0.97)
    assert not proposal.get("alpha", 1e-5) < 1e-5, proposal_reason(proposal)
