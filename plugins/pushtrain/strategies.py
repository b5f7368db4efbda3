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
        )


Strategy = Callable[[str, Sequence[AttemptRecord], int], dict[str, Any]]


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
    for name, operation in move.changes.items():
        knob = space.get(name)
        if knob is None or not knob.tuned or name not in hparams:
            continue  # the user's file does not have this knob: their model does not read it
        proposed[name] = _step(knob, hparams[name], operation, strength)
    proposed = clamp(kind, proposed)
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
    return [name for name, knob in space.items() if knob.tuned and name in hparams]


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
    return clamp(kind, drawn)


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
            candidate = clamp(kind, {**base, **dict(zip(names, values, strict=True))})
            if _unseen(candidate, seen):
                return candidate
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
}


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
