"""Tweak strategies: which hyperparameters the next attempt tries after one missed its target.

The retrain loop (``tweak_and_retrain``) is a chain of DAG runs, each one attempt, so a strategy must be a
pure function of what the chain already knows: the kind of model, every earlier attempt (its hparams,
accuracy and training time) and a seed. It keeps no state of its own, which makes an attempt re-runnable
and its choice explainable from the attempt records alone.

Every strategy obeys two invariants the loop relies on:

* it stays inside the knob bounds that the model templates document (the kinds table in
  ``pushtrain.kinds`` copies those tables; a value outside them could crash the training container or run
  for hours), and
* it never proposes hyperparameters an earlier attempt already trained, so no attempt of the bounded
  budget is wasted on a repeat.

Three strategies exist: ``escalate`` reproduces the fixed escalation of the student projects this
descends from (a baseline to compare against), ``random`` samples the knob space, and ``default`` is a
greedy coordinate search from the best attempt so far: one jump into the region where such models work,
then the cheapest move first (more epochs, which the platform trains on from the best model instead of
from scratch). benchmarks/search_efficiency.py measures the three against KerasTuner's Hyperband.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pushtrain import kinds
from pushtrain.kinds import BOOL, CHOICE, INT, Knob, Move

# Floats a strategy writes into a user's file keep 3 significant digits: the diff shows 0.002, not
# 0.0020000000000000005, and finer steps than that change nothing a training run can measure.
_PROPOSAL_DIGITS = 3
# Two attempts whose floats agree to this many digits count as the same attempt.
_SAME_ATTEMPT_DIGITS = 6
_RANDOM_TRIES = 500
_MAX_ENUMERATED_COMBINATIONS = 200_000


@dataclass(frozen=True)
class AttemptRecord:
    """What a strategy may know about one finished attempt. Attempt 1 is the user's file as committed."""

    attempt: int
    hparams: dict[str, Any]
    accuracy: float
    train_seconds: float = 0.0
    # What metrics.json adds, for strategies that read the evidence (``adaptive``); empty where unknown.
    # ``history``: one dict per epoch (epoch, accuracy, val_accuracy, loss, seconds), the warm-started
    # epochs included; ``warm_start_epochs``: how many of them an earlier attempt trained; ``n_train``: images.
    history: tuple[dict[str, Any], ...] = ()
    warm_start_epochs: int = 0
    n_train: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the lineage a DAG run passes on in ``conf``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptRecord:
        return cls(
            attempt=int(data["attempt"]),
            hparams=dict(data["hparams"]),
            accuracy=float(data["accuracy"]),
            train_seconds=float(data.get("train_seconds", 0.0)),
            history=tuple(dict(epoch) for epoch in data.get("history") or ()),
            warm_start_epochs=int(data.get("warm_start_epochs") or 0),
            n_train=int(data.get("n_train") or 0),
        )


Strategy = Callable[[str, Sequence[AttemptRecord], int], dict[str, Any]]


class Proposal(dict):
    """The updates a strategy proposes, with ``reason``: one line saying why, for the mail and the pages.

    A plain dict to everything that merges or writes the updates; read the reason with ``proposal_reason``.
    """

    def __init__(self, updates: Mapping[str, Any], reason: str = "") -> None:
        super().__init__(updates)
        self.reason = reason


def proposal_reason(updates: Mapping[str, Any]) -> str:
    """The one-line reason a strategy gave for ``updates``; "" for a strategy that gives none."""
    return getattr(updates, "reason", "")


class StrategyExhaustedError(RuntimeError):
    """Every combination of the tunable knobs has been trained already; nothing new is left to try."""


# --------------------------------------------------------------------------------------------------- bounds


def clamp(kind: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``hparams`` with every known knob of ``kind`` coerced to its type and clipped to its bounds.

    Keys that are not knobs of ``kind`` pass through untouched: they are the user's, not ours to judge.
    A value that cannot be coerced (text for a number, an unknown choice, NaN) raises ValueError rather
    than being replaced by a guess.
    """
    space = kinds.kind(kind).knobs
    return {
        name: _coerce(name, space[name], value) if name in space else value for name, value in hparams.items()
    }


def _coerce(name: str, knob: Knob, value: Any) -> Any:
    if knob.type == BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name} must be True or False, got {value!r}")
    if knob.type == CHOICE:
        if value in knob.choices and isinstance(value, type(knob.choices[0])):
            return value
        raise ValueError(f"{name} must be one of {', '.join(map(repr, knob.choices))}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    low = -math.inf if knob.low is None else knob.low
    high = math.inf if knob.high is None else knob.high
    clipped = min(max(value, low), high)
    if knob.type == INT:
        if math.isinf(clipped):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return int(round(clipped))
    return float(clipped)


def _foreign(kind: str, hparams: Mapping[str, Any]) -> set[str]:
    """Knobs of ``kind`` whose value in ``hparams`` the knob cannot hold: the user's choice, left alone.

    A hand-written file may say ``"kernel": "precomputed"`` or ``"gamma": "scale"``; no move changes such a
    knob (a move has nothing to step from) and clamping does not refuse the rest of the file because of it.
    """
    space = kinds.kind(kind).knobs
    foreign = set()
    for name, value in hparams.items():
        if name in space:
            try:
                _coerce(name, space[name], value)
            except ValueError:
                foreign.add(name)
    return foreign


def _clamp_movable(kind: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``clamp`` of every knob but the foreign ones (``_foreign``), which keep their values."""
    foreign = _foreign(kind, hparams)
    clamped = clamp(kind, {name: value for name, value in hparams.items() if name not in foreign})
    return {name: hparams[name] if name in foreign else clamped[name] for name in hparams}


def within_bounds(kind: str, hparams: Mapping[str, Any]) -> bool:
    """True when clamping would change nothing (used by tests and as a last check before training)."""
    try:
        clamped = clamp(kind, hparams)
    except ValueError:
        return False
    return all(
        type(clamped[name]) is type(hparams[name]) and _same(clamped[name], hparams[name]) for name in hparams
    )


# ---------------------------------------------------------------------------------------------------- moves


# The operations of a Move, per knob: ``("mul", f)`` multiply; ``("add", d)`` add; ``("set", v)`` set;
# ``("atleast", v)`` raise to v if below; ``("flip",)`` negate a bool, mirror an int in its range (1 <-> 2)
# or take the next choice; ``("toward", lo, hi, f)`` multiply (or divide) by f towards the band [lo, hi] and
# stop inside it (a value already inside stays). ``strength`` < 1 softens mul/add/toward steps: a gentler
# retry of a bold move that did not pay.


def _apply(kind: str, hparams: Mapping[str, Any], move: Move, strength: float = 1.0) -> dict[str, Any] | None:
    """``hparams`` after ``move``, within bounds; None when the move changes nothing (e.g. at a bound)."""
    space = kinds.kind(kind).knobs
    proposed = dict(hparams)
    foreign = _foreign(kind, hparams)
    for name, operation in move.changes.items():
        knob = space.get(name)
        if knob is None or not knob.tuned or name not in hparams or name in foreign:
            continue  # the user's file does not have this knob (their model does not read it), or not ours
        proposed[name] = _step(knob, hparams[name], operation, strength)
    proposed = _clamp_movable(kind, proposed)
    if all(_same(proposed[name], hparams[name]) for name in hparams):
        return None
    return proposed


def _step(knob: Knob, value: Any, operation: tuple[Any, ...], strength: float) -> Any:
    op = operation[0]
    if op == "set":
        return operation[1]
    if op == "atleast":
        return max(value, operation[1])
    if op == "flip":
        if knob.type == BOOL:
            return not value
        if knob.type == INT and knob.low is not None and knob.high is not None:
            return int(knob.low + knob.high - value)  # the mirror image in the range: 1 <-> 2 for p
        choices = knob.choices
        return choices[(choices.index(value) + 1) % len(choices)] if value in choices else choices[0]
    if op == "mul":
        factor = operation[1] ** strength
        raw = value * factor
        direction = 1 if factor > 1 else -1
    elif op == "add":
        delta = operation[1] * strength
        if knob.type == INT:
            delta = math.copysign(max(1, round(abs(delta))), delta)
        raw = value + delta
        direction = 1 if delta > 0 else -1
    elif op == "toward":
        low, high, factor = operation[1], operation[2], operation[3] ** strength
        if value < low:
            raw, direction = min(value * factor, high), 1
        elif value > high:
            raw, direction = max(value / factor, low), -1
        else:
            return value
    else:
        raise ValueError(f"unknown move operation {op!r}")
    if knob.type == INT:
        stepped = int(round(raw))
        # A multiplicative step that rounds back to the same int still has to move, or the search stalls.
        return stepped if stepped != value else value + direction
    return _round_sig(raw, _PROPOSAL_DIGITS)


def _round_sig(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}") if value else 0.0


# -------------------------------------------------------------------------------------------------- history


def _validated(kind: str, history: Sequence[AttemptRecord]) -> list[AttemptRecord]:
    kinds.kind(kind)
    if not history:
        raise ValueError("history is empty; it must hold at least attempt 1 (the hparams as committed)")
    return sorted(history, key=lambda record: record.attempt)


def _score(record: AttemptRecord) -> float:
    """Accuracy, with a failed attempt (NaN) ranked below every real one."""
    return record.accuracy if record.accuracy == record.accuracy else -math.inf


def _best(records: Sequence[AttemptRecord]) -> AttemptRecord:
    # On a tie the earlier attempt wins: a change that gained nothing is not worth keeping.
    return max(records, key=lambda record: (_score(record), -record.attempt))


def _fingerprint(hparams: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A comparable form of hparams in which 0 and 0.0, or 0.001 and 0.0010000000001, are the same attempt."""

    def normal(value: Any) -> Any:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return (type(value).__name__, value)
        if isinstance(value, float) and math.isfinite(value):
            rounded = _round_sig(value, _SAME_ATTEMPT_DIGITS)
            return ("number", int(rounded) if rounded.is_integer() else rounded)
        if isinstance(value, int):
            return ("number", value)
        if isinstance(value, list | tuple):
            return ("sequence", tuple(normal(item) for item in value))
        return (type(value).__name__, repr(value))

    return tuple(sorted((name, normal(value)) for name, value in hparams.items()))


def _same(a: Any, b: Any) -> bool:
    return _fingerprint({"v": a}) == _fingerprint({"v": b})


def _updates(records: Sequence[AttemptRecord], proposed: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``proposed`` that differ from the latest attempt, the best one or attempt 1.

    Merged into any of the three (the file the last attempt trained, the best attempt's file that the
    pipeline tweaks, or the file as committed), the result is ``proposed``; the tweak's diff stays minimal
    because equal values are not rewritten.
    """
    bases = [records[0].hparams, records[-1].hparams, _best(records).hparams]
    missing = object()
    return {
        name: value
        for name, value in proposed.items()
        if any(not _same(base.get(name, missing), value) for base in bases)
    }


def _unseen(candidate: Mapping[str, Any] | None, seen: set[tuple]) -> bool:
    return candidate is not None and _fingerprint(candidate) not in seen


def _tuned_names(kind: str, hparams: Mapping[str, Any]) -> list[str]:
    space = kinds.kind(kind).knobs
    foreign = _foreign(kind, hparams)
    return [name for name, knob in space.items() if knob.tuned and name in hparams and name not in foreign]


def _sample(kind: str, base: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """A uniform draw over the tuned knobs of ``base`` (log-uniform for log knobs); other keys kept."""
    space = kinds.kind(kind).knobs
    drawn = dict(base)
    for name in _tuned_names(kind, base):
        knob = space[name]
        if knob.type == BOOL:
            drawn[name] = rng.random() < 0.5
        elif knob.type == CHOICE:
            drawn[name] = rng.choice(knob.choices)
        else:
            low, high = knob.low, knob.high
            if knob.log and low is not None and low > 0:
                raw = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                raw = rng.uniform(low, high)
            drawn[name] = int(round(raw)) if knob.type == INT else _round_sig(raw, _PROPOSAL_DIGITS)
    return _clamp_movable(kind, drawn)


def _anything_new(kind: str, base: Mapping[str, Any], seen: set[tuple], rng: random.Random) -> dict[str, Any]:
    """Last resort when a strategy's own ideas are all tried: a random draw, else any untried combination."""
    for _ in range(_RANDOM_TRIES):
        candidate = _sample(kind, base, rng)
        if _unseen(candidate, seen):
            return candidate
    # Only small, fully discrete spaces get here; walk them in order to find what is left.
    space = kinds.kind(kind).knobs
    names = _tuned_names(kind, base)
    domains = []
    for name in names:
        knob = space[name]
        if knob.type == BOOL:
            domains.append((False, True))
        elif knob.type == CHOICE:
            domains.append(knob.choices)
        elif knob.type == INT and knob.low is not None and knob.high is not None:
            domains.append(range(int(knob.low), int(knob.high) + 1))
        else:
            domains.append(None)
    if all(domain is not None for domain in domains) and math.prod(map(len, domains)) <= (
        _MAX_ENUMERATED_COMBINATIONS
    ):
        for values in itertools.product(*domains):
            candidate = _clamp_movable(kind, {**base, **dict(zip(names, values, strict=True))})
            if _unseen(candidate, seen):
                return candidate
    if not names:
        tunable = ", ".join(name for name, knob in space.items() if knob.tuned)
        raise StrategyExhaustedError(
            f"HPARAMS has none of the {kind} knobs a strategy can move ({tunable}): nothing to tweak; add "
            "one of them to HPARAMS and read it from hp in the builder"
        )
    raise StrategyExhaustedError(
        f"every combination of the {kind} knobs {', '.join(names)} has been tried; stop the loop or widen "
        f"the search by adding knobs to HPARAMS"
    )


def _finish(
    kind: str,
    records: Sequence[AttemptRecord],
    candidates: Iterator[dict[str, Any] | None],
    rng: random.Random,
    fallback_base: Mapping[str, Any],
) -> dict[str, Any]:
    seen = {_fingerprint(record.hparams) for record in records}
    proposed = next((candidate for candidate in candidates if _unseen(candidate, seen)), None)
    if proposed is None:
        proposed = _anything_new(kind, fallback_base, seen, rng)
    return _updates(records, proposed)


# ------------------------------------------------------------------------------------------------- escalate


def escalate(kind: str, history: Sequence[AttemptRecord], rng_seed: int) -> dict[str, Any]:
    """The fixed ladder from the latest attempt, whatever the results were (a baseline, not a search).

    The ladder is the kind's ``escalation`` (the student projects' rungs); a kind that rotates takes rung
    n-1 at attempt n, skipping rungs at their bound, one that does not takes the first rung that still
    changes something.
    """
    records = _validated(kind, history)
    latest = records[-1]
    spec = kinds.kind(kind)
    rungs = spec.escalation or _generic_moves(spec.knobs)
    start = (len(records) - 1) % len(rungs) if spec.escalation_rotates else 0
    ordered = rungs[start:] + rungs[:start]
    candidates = (_apply(kind, latest.hparams, move) for move in ordered)
    # Deterministic even in the fallback: the seed comes from the history, not from the caller.
    rng = random.Random(f"escalate:{kind}:{latest.attempt}")
    return _finish(kind, records, candidates, rng, latest.hparams)


# --------------------------------------------------------------------------------------------------- random


def random_search(kind: str, history: Sequence[AttemptRecord], rng_seed: int) -> dict[str, Any]:
    """A fresh uniform draw over the knob space, reproducible from (rng_seed, next attempt number)."""
    records = _validated(kind, history)
    latest = records[-1]
    rng = random.Random(f"{rng_seed}:{latest.attempt + 1}")
    candidates = (_sample(kind, latest.hparams, rng) for _ in range(_RANDOM_TRIES))
    return _finish(kind, records, candidates, rng, latest.hparams)


# -------------------------------------------------------------------------------------------------- default

# The default strategy tries a kind's ``default_moves`` in order from the best attempt. Each table kind's
# first move is a one-off jump into the region where such models are known to work (for cnn: two conv
# blocks, 16+ filters, learning rate 1e-3..3e-3, 12+ epochs; for knn: a handful of distance-weighted
# neighbours). Every attempt costs a DAG run, two containers and TensorFlow's start-up (about 20 s here)
# before any learning, so one jump that usually lands beats several small steps. After it, the cheapest
# move comes first: "epochs x2" changes nothing else, so the platform continues the best model
# (``warm_start_parent``) and pays only for the new epochs. Measured in benchmarks/search_efficiency.py
# against the fixed escalation, random search, KerasTuner's Hyperband and Optuna's TPE.
_BOLD, _GENTLE = 1.0, 0.5


def _generic_moves(knobs: Mapping[str, Knob]) -> tuple[Move, ...]:
    """Moves for a kind that names none of its own: each tuned knob up, then each down; bools and choices flip.

    Multiplicative steps (x2, /2) for log knobs and epochs; +-1 for other ints and a quarter of the range
    for other floats. More epochs come first, being the cheapest move (warm start).
    """
    ups, downs = [], []
    for name, knob in knobs.items():
        if not knob.tuned:
            continue
        if knob.type in (BOOL, CHOICE):
            ups.append(Move(f"other {name}", {name: ("flip",)}))
        elif knob.log or name == "epochs":
            ups.append(Move(f"{name} x2", {name: ("mul", 2)}))
            downs.append(Move(f"{name} /2", {name: ("mul", 0.5)}))
        else:
            step = 1 if knob.type == INT else (knob.high - knob.low) / 4
            ups.append(Move(f"{name} +{step:g}", {name: ("add", step)}))
            downs.append(Move(f"{name} -{step:g}", {name: ("add", -step)}))
    ups.sort(key=lambda move: "epochs" not in move.changes)
    return (*ups, *downs)


def _default_plan(kind: str) -> list[tuple[Move, float]]:
    spec = kinds.kind(kind)
    moves = spec.default_moves or _generic_moves(spec.knobs)
    return [(move, _BOLD) for move in moves] + [(move, _GENTLE) for move in moves]


def _move_that_made(
    kind: str, records: Sequence[AttemptRecord], best: AttemptRecord
) -> tuple[Move, float] | None:
    """The move that turned the best attempt's predecessor-best into it, if it gained; else None."""
    earlier = [record for record in records if record.attempt < best.attempt]
    if not earlier:
        return None
    parent = _best(earlier)
    if _score(best) <= _score(parent):
        return None
    target = _fingerprint(best.hparams)
    for move, strength in _default_plan(kind):
        result = _apply(kind, parent.hparams, move, strength)
        if result is not None and _fingerprint(result) == target:
            return move, strength
    return None


def default(kind: str, history: Sequence[AttemptRecord], rng_seed: int) -> dict[str, Any]:
    """Greedy coordinate search: from the best attempt, repeat a move that gained, else try the next move."""
    records = _validated(kind, history)
    best = _best(records)
    plan = _default_plan(kind)
    if best.attempt != records[0].attempt:
        # The one-off jumps lead away from the file as committed; from a better attempt they would overshoot.
        plan = [step for step in plan if step[0].repeat]
    momentum = _move_that_made(kind, records, best)
    if momentum is not None and momentum[0].repeat:
        plan = [momentum] + [step for step in plan if step != momentum]
    # A move tried from this best and not kept is now "seen", so the loop below backs off to the next one.
    candidates = (_apply(kind, best.hparams, move, strength) for move, strength in plan)
    rng = random.Random(f"{rng_seed}:{records[-1].attempt + 1}")
    return _finish(kind, records, candidates, rng, best.hparams)


# ------------------------------------------------------------------------------------------------- adaptive

# The adaptive strategy starts from where the user's model is, not from where the templates are: it reads
# the best attempt's per-epoch history (metrics.json) for evidence, turns the evidence into relative moves
# from that model, sized by the distance to the target, and of the moves the evidence supports tries the
# one expected to cost least first. Cost: a fixed overhead per attempt (a DAG run, two containers, the
# framework's start-up) plus training, estimated as work per image x images x epochs still to train (an
# attempt that only adds epochs continues the best model), calibrated by the seconds measured so far.

# What one attempt costs before any training (bench_pipeline_loop.py measured about 21 s on 2 cores).
ATTEMPT_OVERHEAD_SECONDS = 20.0
# A validation accuracy that rose by more than this over the last epoch is still rising.
_RISING = 0.002
# Training accuracy this far above validation accuracy is overfitting (a one-fit model, whose training
# accuracy is often 1.0 by construction, needs a wider margin).
_OVERFIT_MARGIN = 0.05
_OVERFIT_MARGIN_ONE_FIT = 0.2
# Gains per extra epoch are assumed to shrink by this ratio when extrapolating a rising curve.
_EPOCH_GAIN_DECAY = 0.7
# Work per image of one training step whatever the model's size, in the CNN estimate's units.
_STEP_WORK = 1e5
# A jump whose estimated training seconds exceed this many times what the best attempt cost (overhead
# included) waits behind the moves that do not: a big model is tried only when smaller steps are used up.
_MAX_JUMP_COST = 8.0
# A learning rate band in which Adam-trained models of every size usually learn.
_LEARNING_RATE_BAND = (3e-4, 3e-3)

# How a knob's value scales the training work per image and epoch, as a power (knobs not named: no effect).
# A CNN (conv_blocks/filters/kernel_size) gets its own estimate in ``_work``.
_WORK_EXPONENTS = {
    "dense_units": 1.0,
    "n_estimators": 1.0,
    "max_depth": 0.5,
    "C": 0.2,
    "batch_size": -0.3,  # smaller batches: more steps per epoch
}
# Relative moves per knob name, by what they do to the model; a kind moves only the knobs it has.
_REGULARISE = {
    "dropout": ("add", 0.15),
    "alpha": ("mul", 10),
    "C": ("mul", 1 / 3),
    "gamma": ("mul", 1 / 3),
    "n_neighbors": ("mul", 2),
    "n_estimators": ("mul", 2),  # more trees average away variance
}
_LESS_REGULARISATION = {"dropout": ("add", -0.15), "alpha": ("mul", 0.1)}


def _capacity(factor: float) -> tuple[dict[str, tuple[Any, ...]], ...]:
    """Moves that give a model more capacity, about ``factor`` times; each kind has the knobs of some."""
    return (
        {"filters": ("mul", factor), "dense_units": ("mul", factor)},
        {"dense_units": ("mul", factor)},
        {"n_estimators": ("mul", factor), "max_depth": ("mul", 2)},
        {"C": ("mul", factor * 2.5)},
        {"gamma": ("mul", factor * 2.5)},
        {"weights": ("set", "distance")},
        {"alpha": ("mul", 1 / (factor * 2.5))},
        {"n_neighbors": ("mul", 1 / factor)},
    )


@dataclass(frozen=True)
class _Evidence:
    """What the best attempt's per-epoch history says; fields are None where it says nothing."""

    epochs: int  # epochs in the history (0: no history)
    val: float | None = None
    train: float | None = None
    slope: float | None = None  # val accuracy gained over the last epoch
    rising: bool | None = None
    diverging: str = ""  # why the loss looks diverging; "" when it does not
    one_fit: bool = False  # a model fitted once (no epochs knob): its history is a single record


def _evidence(kind: str, record: AttemptRecord) -> _Evidence:
    history = [epoch for epoch in record.history if isinstance(epoch, Mapping)]
    one_fit = "epochs" not in kinds.kind(kind).knobs or "epochs" not in record.hparams
    if not history:
        return _Evidence(0, one_fit=one_fit)

    def series(key: str) -> list[float]:
        return [float(epoch[key]) for epoch in history if isinstance(epoch.get(key), int | float)]

    val, train, loss = series("val_accuracy"), series("accuracy"), series("loss")
    diverging = ""
    if any(not math.isfinite(value) for value in loss):
        diverging = "training loss is not finite"
    elif len(loss) >= 2 and loss[-1] > 1.2 * min(loss) and loss[-1] > loss[0]:
        diverging = f"training loss rose from {min(loss):.3g} to {loss[-1]:.3g}"
    elif len(train) >= 2 and train[-1] < 0.3 and train[-1] <= train[0] + 0.01:
        diverging = f"training accuracy stuck at {train[-1]:.2f}"
    slope = val[-1] - val[-2] if len(val) >= 2 else None
    rising = None if slope is None else (slope > _RISING and val[-1] >= max(val) - 1e-9)
    return _Evidence(
        epochs=len(history),
        val=val[-1] if val else None,
        train=train[-1] if train else None,
        slope=slope,
        rising=rising,
        diverging=diverging,
        one_fit=one_fit,
    )


def _work(hparams: Mapping[str, Any]) -> float:
    """Training work per image and epoch, up to a constant: the size of the model as the knobs tell it."""

    def number(name: str, default: float) -> float:
        value = hparams.get(name, default)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default

    work = 1.0
    if "conv_blocks" in hparams and "filters" in hparams:
        # Multiply-adds of the conv blocks on a nominal 16x16 one-channel image, then the dense layer.
        area, channels, kernel = 256.0, 1.0, number("kernel_size", 3)
        work = 0.0
        for block in range(max(1, int(number("conv_blocks", 1)))):
            out = number("filters", 8) * 2**block
            work += area * kernel**2 * channels * out
            area, channels = max(area / 4, 1.0), out
        work += area * channels * number("dense_units", 32) + 10 * number("dense_units", 32)
        # What a step costs whatever the model's size (the framework's own work per batch), per image:
        # without it a tiny model would look a hundred times cheaper than it trains.
        work += _STEP_WORK
    else:
        for name, exponent in _WORK_EXPONENTS.items():
            if name != "batch_size" and number(name, 0.0) > 0:
                work *= number(name, 1.0) ** exponent
    if number("batch_size", 0.0) > 0:
        work *= (number("batch_size", 64) / 64) ** _WORK_EXPONENTS["batch_size"]
    return work


def _epochs(hparams: Mapping[str, Any]) -> int:
    epochs = hparams.get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0 else 1


class _Cost:
    """Seconds an attempt is expected to cost: the overhead plus work x images x new epochs x a rate.

    The rate is the median measured seconds per unit of work over the attempts so far; with no measured
    seconds the estimate is in units of work alone (no overhead), which still ranks proposals.
    """

    def __init__(self, records: Sequence[AttemptRecord]) -> None:
        self.records = records
        self.n_train = max((record.n_train for record in records), default=0)
        rates = []
        for record in records:
            if record.train_seconds > 0 and _score(record) > -math.inf:
                trained = max(1, _epochs(record.hparams) - record.warm_start_epochs)
                rates.append(record.train_seconds / (self._units(record.hparams) * trained))
        self.rate = statistics.median(rates) if rates else 1.0
        self.overhead = ATTEMPT_OVERHEAD_SECONDS if rates else 0.0

    def _units(self, hparams: Mapping[str, Any]) -> float:
        return _work(hparams) * max(self.n_train, 1)

    def new_epochs(self, hparams: Mapping[str, Any]) -> tuple[int, AttemptRecord | None]:
        parent = warm_start_parent(self.records, hparams)
        total = _epochs(hparams)
        return (total - _epochs(parent.hparams), parent) if parent else (total, None)

    def seconds(self, hparams: Mapping[str, Any], fresh: bool = False) -> float:
        """Estimated seconds of an attempt training ``hparams``; ``fresh``: as if from scratch."""
        epochs = _epochs(hparams) if fresh else self.new_epochs(hparams)[0]
        return self.overhead + self.rate * self._units(hparams) * epochs


def _epochs_to_close(evidence: _Evidence, gap: float) -> int | None:
    """Extra epochs a rising curve needs to gain ``gap`` (with a margin), assuming shrinking gains."""
    if not evidence.slope or evidence.slope <= 0:
        return None
    gained, step = 0.0, evidence.slope
    for extra in range(1, 4 * max(evidence.epochs, 1) + 1):
        step *= _EPOCH_GAIN_DECAY
        gained += step
        if gained >= 1.5 * gap:
            return extra
    return None


def _ideas(
    kind: str, best: AttemptRecord, evidence: _Evidence, gap: float | None, cheap: bool = False
) -> list[tuple[int, str, dict[str, tuple[Any, ...]]]]:
    """(tier, why, changes) the evidence suggests; a lower tier is more likely to close the gap.

    ``why`` is the evidence and the intent; the reason line adds what the changes did to the knobs.
    """
    space = kinds.kind(kind).knobs
    hp = best.hparams
    ideas: list[tuple[int, str, dict[str, tuple[Any, ...]]]] = []
    has_epochs = "epochs" in space and "epochs" in hp
    epochs = _epochs(hp)
    far = gap is None or gap > 0.05
    very_far = gap is None or gap > 0.2
    factor = 2 if gap is not None and gap <= 0.03 else 4 if gap is not None and gap <= 0.1 else 8
    at = f"epoch {evidence.epochs}/{epochs}" if evidence.epochs else f"attempt {best.attempt}"
    short = f", {gap:.3f} short" if gap is not None else ""

    if evidence.diverging:
        how = 10 if "finite" in evidence.diverging else 3
        for knob in ("learning_rate", "eta0"):
            ideas.append((0, f"{evidence.diverging}: learning rate down", {knob: ("mul", 1 / how)}))

    # More epochs: first when the curve, extrapolated, closes the gap (or there is no target to judge by).
    lacking = _epochs_to_close(evidence, gap) if gap is not None and evidence.rising else None
    epochs_close_it = bool(evidence.rising) and (lacking is not None or gap is None)
    if has_epochs and epochs_close_it:
        extra = max(lacking or epochs, 1)
        why = f"val accuracy still rising at {at} (+{evidence.slope:.3f}/epoch{short}): more epochs"
        ideas.append((1, why, {"epochs": ("add", extra)}))
    elif has_epochs and (evidence.rising or (evidence.epochs <= 1 and epochs < 5)):
        # Rising but too slowly for the gap, or one epoch that shows no trend yet: epochs help but may not
        # be enough; behind capacity when the target is far.
        why = (
            "val accuracy rising too slowly"
            if evidence.rising
            else "one epoch shows no trend"
            if evidence.epochs
            else "no per-epoch history"
        )
        ideas.append(
            (2 if far else 1, f"{why} at {at}{short}: more epochs", {"epochs": ("mul", 4 if far else 2)})
        )

    margin = _OVERFIT_MARGIN_ONE_FIT if evidence.one_fit else _OVERFIT_MARGIN
    overfitting = (
        evidence.train is not None
        and evidence.val is not None
        and evidence.train - evidence.val > margin
        and not evidence.rising
    )
    if overfitting:
        why = f"overfitting at {at} (train {evidence.train:.3f}, val {evidence.val:.3f}{short}): regularise"
        for knob, (operation, amount) in _REGULARISE.items():
            # A wide gap takes a bolder step: x10 instead of x3, +0.3 dropout instead of +0.15.
            if far:
                amount = amount * 2 if operation == "add" else amount ** (math.log(10) / math.log(3))
            ideas.append((1, why, {knob: (operation, amount)}))
        return ideas

    if epochs_close_it:
        return ideas  # the cheap move is enough; capacity only if it fails (the fallback moves)
    # Training accuracy low (or unknown): the learning rate into its band, or more capacity.
    train_is = f"training accuracy {evidence.train:.3f}" if evidence.train is not None else "no history"
    learning_rate = hp.get("learning_rate")
    low, high = _LEARNING_RATE_BAND
    if isinstance(learning_rate, float) and not low <= learning_rate <= high and not evidence.diverging:
        why = f"{train_is} at {at}{short}: learning rate into {low:g}..{high:g}"
        ideas.append((1, why, {"learning_rate": ("toward", low, high, 4)}))
    # Far from the target: one jump sized by the gap, with the epochs a bigger model needs (one attempt,
    # not two), and a x2 step behind it for when the jump would cost too much (see ``adaptive``).
    steps = ((1, factor), (2, 2)) if far and factor > 2 else ((1, factor),)
    for tier, size in steps:
        moves = []
        for changes in _capacity(size):
            if not any(knob in hp for knob in changes) or ("filters" in hp and "filters" not in changes):
                continue  # not this model's knobs; a CNN grows its convolutions with its dense layer
            if far and has_epochs:
                changes = {**changes, "epochs": ("mul", 4 if very_far and tier == 1 else 2)}
                if very_far and tier == 1:
                    changes["conv_blocks"] = ("add", 1)
            moves.append(changes)
        why = f"{train_is} at {at}{short}: more capacity"
        if cheap and len(moves) > 1:
            # Training costs little beside an attempt's overhead: attempts are the cost, so every capacity
            # knob moves at once; one at a time is the step behind it.
            merged = {knob: operation for changes in moves for knob, operation in changes.items()}
            ideas.append((tier, f"{why}, all at once (training is cheap beside an attempt)", merged))
            tier += 1
        ideas.extend((tier, why, changes) for changes in moves)
    if not far:
        ideas.append((2, f"{train_is} at {at}{short}: more capacity", {"conv_blocks": ("add", 1)}))
    if evidence.train is not None and gap is not None and evidence.train >= best.accuracy + gap:
        # The model fits the training images well enough but does not generalise: loosen regularisation.
        ideas.extend(
            (2, f"{train_is} at {at}{short}: less regularisation", {knob: operation})
            for knob, operation in _LESS_REGULARISATION.items()
        )
    return ideas


def _direction(before: Mapping[str, Any], after: Mapping[str, Any]) -> frozenset[tuple[str, Any]]:
    """Which way a proposal moves each knob but epochs (up, down, or to a value): what a move *is*,
    wherever it starts from."""
    moved = set()
    for name, value in after.items():
        old = before.get(name)
        if name == "epochs" or _same(old, value):
            continue
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, value))
        moved.add((name, (1 if value > old else -1) if numbers else ("to", repr(value))))
    return frozenset(moved)


def _lost_directions(records: Sequence[AttemptRecord]) -> set[frozenset[tuple[str, Any]]]:
    """The directions of the attempts that did not beat the best attempt before them (or failed)."""
    lost = set()
    for index in range(1, len(records)):
        base = _best(records[:index])
        if _score(records[index]) <= _score(base):
            direction = _direction(base.hparams, records[index].hparams)
            if direction:
                lost.add(direction)
    return lost


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """``epochs 3 -> 6, dropout 0.0 -> 0.15``: what a proposal changes, for its reason line."""
    return ", ".join(
        f"{name} {before.get(name)!r} -> {value!r}".replace("'", "")
        for name, value in after.items()
        if not _same(before.get(name), value)
    )


def adaptive(
    kind: str, history: Sequence[AttemptRecord], rng_seed: int, *, target: float | None = None
) -> Proposal:
    """Cost-aware moves from the best model, sized by its distance to ``target`` and its per-epoch evidence.

    Evidence from the best attempt's history: loss diverging -> learning rate down; validation accuracy still
    rising at the last epoch -> more epochs (the platform continues the best model); training accuracy well
    above validation -> regularise; training accuracy low -> learning rate into its usual band, or more
    capacity. Within a tier of equally supported moves the cheapest estimated comes first; when the evidence
    is used up, the kind's own moves follow, cheapest first. ``target`` (the pipeline's) sizes the jumps;
    without it they are moderate. The result carries its one-line reason (``proposal_reason``).
    """
    records = _validated(kind, history)
    best = _best(records)
    cost = _Cost(records)
    gap = None
    if target is not None and _score(best) > -math.inf:
        gap = max(float(target) - best.accuracy, 0.0)
    evidence = _evidence(kind, best)
    seen = {_fingerprint(record.hparams) for record in records}

    ranked: list[tuple[int, float, int, str, dict[str, Any]]] = []
    # A direction that lost from an earlier best (alpha down, dropout up) waits behind everything else.
    lost = _lost_directions(records)

    def tier_of(tier: int, proposed: dict[str, Any]) -> int:
        return tier + (20 if _direction(best.hparams, proposed) in lost else 0)

    affordable = _MAX_JUMP_COST * cost.seconds({**best.hparams, "epochs": _epochs(best.hparams)}, fresh=True)
    # Training that costs under a quarter of an attempt's overhead: fewer attempts beat smaller steps.
    cheap = 0 < cost.seconds(best.hparams, fresh=True) - cost.overhead < 0.25 * cost.overhead
    for order, (tier, why, changes) in enumerate(_ideas(kind, best, evidence, gap, cheap)):
        proposed = _apply(kind, best.hparams, Move(why, changes))
        if _unseen(proposed, seen):
            seconds = cost.seconds(proposed)
            ranked.append(
                (tier_of(tier + 3 * (seconds > affordable), proposed), seconds, order, why, proposed)
            )
    # When the evidence is used up: the kind's repeatable moves, bold then gentle, cheapest first.
    fallback = [step for step in _default_plan(kind) if step[0].repeat]
    for order, (move, strength) in enumerate(fallback, start=len(ranked)):
        proposed = _apply(kind, best.hparams, move, strength)
        if _unseen(proposed, seen):
            why = f"evidence used up, cheapest untried move ({move.name}{'' if strength == _BOLD else ', half'})"
            tier = 9 if strength == _BOLD else 10  # the bold step first, then the half step
            ranked.append((tier_of(tier, proposed), cost.seconds(proposed), order, why, proposed))
    if ranked:
        _, seconds, _, why, proposed = min(ranked, key=lambda entry: entry[:3])
    else:
        rng = random.Random(f"{rng_seed}:{records[-1].attempt + 1}")
        proposed = _anything_new(kind, best.hparams, seen, rng)
        seconds, why = (
            cost.seconds(proposed),
            "every move from the best attempt tried: an untried combination",
        )
    reason = f"{why}: {_changed(best.hparams, proposed)}"
    _, parent = cost.new_epochs(proposed)
    if parent is not None:
        reason += f", continued from attempt {parent.attempt}"
    unit = "s" if cost.overhead else "units of work"
    return Proposal(_updates(records, proposed), f"{reason} (est. {seconds:.3g} {unit})")


# ----------------------------------------------------------------------------------------------- warm start


def warm_start_parent(history: Sequence[AttemptRecord], hparams: Mapping[str, Any]) -> AttemptRecord | None:
    """The earlier attempt whose model the next one can continue instead of training from scratch.

    That is an attempt with the same hyperparameters but fewer ``epochs``: training it on for the missing
    epochs is the same as training the longer run, at a fraction of the compute. Of several, the one with
    the most epochs wins (the least left to train); None when ``hparams`` has no epochs knob or no earlier
    attempt qualifies. The runner checks the same rule again before it loads the model.
    """
    epochs = hparams.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        return None
    rest = _fingerprint({k: v for k, v in hparams.items() if k != "epochs"})
    candidates = [
        record
        for record in history
        if record.accuracy == record.accuracy  # a failed attempt left no model to continue
        and isinstance(record.hparams.get("epochs"), int)
        and record.hparams["epochs"] < epochs
        and _fingerprint({k: v for k, v in record.hparams.items() if k != "epochs"}) == rest
    ]
    return max(candidates, key=lambda record: (record.hparams["epochs"], record.attempt), default=None)


# ------------------------------------------------------------------------------------------------- registry

STRATEGIES: dict[str, Strategy] = {
    "escalate": escalate,
    "random": random_search,
    "default": default,
    "adaptive": adaptive,
}


# Strategies that size their moves by the pipeline's target (keyword ``target``); the others ignore it.
TARGET_AWARE = frozenset({"adaptive"})


def propose(
    name: str, kind: str, history: Sequence[AttemptRecord], rng_seed: int, *, target: float | None = None
) -> dict[str, Any]:
    """The next attempt's updates from strategy ``name``; the target goes to the strategies that use it."""
    strategy = get_strategy(name)
    if name in TARGET_AWARE:
        return strategy(kind, history, rng_seed, target=target)
    return strategy(kind, history, rng_seed)


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``, or a ValueError listing the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown tweak strategy {name!r}; valid names: {', '.join(sorted(STRATEGIES))}"
        ) from None


def no_real_gain(history: Sequence[AttemptRecord], k: int, min_gain: float) -> bool:
    """True when each of the last ``k`` attempts raised the best accuracy so far by less than ``min_gain``.

    Needs ``k`` attempts that had a predecessor (so at least k + 1 in all): with fewer there is not yet
    evidence of a plateau and the loop should go on.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    records = sorted(history, key=lambda record: record.attempt)
    if len(records) < k + 1:
        return False
    for index in range(len(records) - k, len(records)):
        best_before = max(_score(record) for record in records[:index])
        if _score(records[index]) - best_before >= min_gain:
            return False
    return True
