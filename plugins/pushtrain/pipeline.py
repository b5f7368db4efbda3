"""The pipeline's state: one pipeline run per commit, attempts 1..N, every write keyed on (run, attempt).

A pipeline run spans several DAG runs (``train_on_push`` for attempt 1, then one ``tweak_and_retrain`` run
per further attempt), so its state lives in files under the data dir, not in the scheduler:

    <data>/runs/<pipeline_id>/pipeline.json          repo, commit, author, kind, the resolved config
    <data>/runs/<pipeline_id>/attempt-<n>/           one attempt; containers write only where marked (rw)
        code/           the model repository as trained (attempt 1: the checkout; later: tweaked copies), ro
        output/         the training container's (rw): checkpoints/ (removed when the pipeline ends),
                        model/, metrics.json, progress.log, error.json
        evaluation/     the evaluation container's (rw): evaluation.json
        attempt.json tweak.diff .lease-*.json .restarts-*.json   the platform's own records, never mounted
    <data>/workspaces/<pipeline_id>/repo             the git checkout (removed when the pipeline ends)

The DAG runs pass only ``{"pipeline_id", "attempt"}`` in ``conf``; everything else is read from here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tomllib
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pushtrain import settings
from pushtrain.gitops import safe_name
from pushtrain.runner.contract import KINDS, write_json_atomic
from pushtrain.strategies import STRATEGIES, AttemptRecord, no_real_gain

CONFIG_FILE = "pushtrain.toml"
DATASETS = ("digits", "mnist5k")
# The registry's rule for a model name (a folder name there), checked here so a bad name fails at checkout,
# not after the whole training loop when the winner is registered.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """``pushtrain.toml`` or a Param is invalid; the message names the key and the allowed values."""


@dataclass(frozen=True)
class PipelineConfig:
    """What a model repository asks for, from ``pushtrain.toml`` (all optional) and the run's Params."""

    target: float = 0.80  # accuracy on the held-out split that counts as success
    metric: str = "accuracy"
    max_attempts: int = 5
    dataset: str = "mnist5k"
    entry: str = "model.py"
    kind: str = "auto"  # "auto" detects it from the code
    strategy: str = "default"
    patience: int = 3  # stop early after this many attempts in a row without real gain...
    min_gain: float = 0.005  # ...where real means at least this much accuracy
    model_name: str = ""  # registry name; default: the repository's name
    commit_back: bool = True  # push the tuned model file to pushtrain/<short-sha>

    def validated(self) -> PipelineConfig:
        problems = []
        if not 0.0 < self.target <= 1.0:
            problems.append(f"target must be in (0, 1], got {self.target}")
        if self.metric != "accuracy":
            problems.append(f"metric {self.metric!r} is not supported; use \"accuracy\"")
        if not 1 <= self.max_attempts <= 50:
            problems.append(f"max_attempts must be 1..50, got {self.max_attempts}")
        if self.dataset not in DATASETS:
            problems.append(f"dataset {self.dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
        if self.kind not in ("auto", *KINDS):
            problems.append(f"kind {self.kind!r} is unknown; choose auto or one of {', '.join(KINDS)}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if self.patience < 1:
            problems.append(f"patience must be at least 1, got {self.patience}")
        if not 0.0 <= self.min_gain < 1.0:
            problems.append(f"min_gain must be in [0, 1), got {self.min_gain}")
        if self.model_name and not MODEL_NAME_PATTERN.fullmatch(self.model_name):
            problems.append(f"model_name {self.model_name!r} must be 1-128 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
        if Path(self.entry).is_absolute() or ".." in Path(self.entry).parts:
            problems.append(f"entry {self.entry!r} must be a path inside the repository")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def load_config(repo_dir: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then ``pushtrain.toml``, then non-empty Params; unknown keys are an error, not ignored."""
    values: dict[str, Any] = {}
    path = repo_dir / CONFIG_FILE
    if path.exists():
        try:
            document = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{CONFIG_FILE} is not valid TOML: {exc}") from None
        table = document.get("pushtrain", document)
        if not isinstance(table, dict):
            raise ConfigError(f"{CONFIG_FILE}: `pushtrain` must be a table ([pushtrain]), got {table!r}")
        values.update(table)
    for key, value in (overrides or {}).items():
        if value is None or value == "" or (key == "kind" and value == "auto"):
            continue  # an empty Param keeps what the repository asked for
        values[key] = value
    known = PipelineConfig.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{CONFIG_FILE} has unknown keys {unknown}; known keys: {', '.join(known)}")
    for key, value in values.items():
        expected = type(getattr(PipelineConfig, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {expected.__name__}, got {value!r}")
    config = PipelineConfig(**values)
    return config.validated()


def pipeline_id_for(commit: str, dag_run_id: str) -> str:
    """Stable id of the pipeline a DAG run starts: the short commit plus a hash of the run id."""
    return f"{commit[:8]}-{hashlib.sha256(dag_run_id.encode()).hexdigest()[:8]}"


def pipeline_dir(pipeline_id: str) -> Path:
    return settings.runs_dir() / safe_name(pipeline_id)


def attempt_dir(pipeline_id: str, attempt: int) -> Path:
    return pipeline_dir(pipeline_id) / f"attempt-{attempt}"


def output_dir(pipeline_id: str, attempt: int) -> Path:
    """The one directory the training container may write: user code never reaches the records beside it."""
    return attempt_dir(pipeline_id, attempt) / "output"


def evaluation_dir(pipeline_id: str, attempt: int) -> Path:
    return attempt_dir(pipeline_id, attempt) / "evaluation"


def workspace_dir(pipeline_id: str) -> Path:
    return settings.data_dir() / "workspaces" / safe_name(pipeline_id)


def container_name(pipeline_id: str, attempt: int, role: str) -> str:
    return f"pushtrain-{safe_name(pipeline_id)}-a{attempt}-{role}"


def trigger_run_id(pipeline_id: str, attempt: int) -> str:
    """The run id of the ``tweak_and_retrain`` run for ``attempt``: a retried trigger finds it exists."""
    return f"pushtrain__{safe_name(pipeline_id)}__attempt-{attempt}"


@dataclass
class Pipeline:
    pipeline_id: str
    repo_url: str
    branch: str
    commit: str
    author_name: str
    author_email: str
    commit_message: str
    kind: str
    config: PipelineConfig
    origin_dag_run_id: str
    model_name: str
    detection: list = field(default_factory=list)

    def save(self) -> None:
        document = asdict(self)
        write_json_atomic(pipeline_dir(self.pipeline_id) / "pipeline.json", document)

    @classmethod
    def load(cls, pipeline_id: str) -> Pipeline:
        path = pipeline_dir(pipeline_id) / "pipeline.json"
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"pipeline {pipeline_id} has no {path}: was it cleaned up?") from None
        document["config"] = PipelineConfig(**document["config"])
        return cls(**document)


def write_attempt_record(pipeline_id: str, attempt: int, record: dict[str, Any]) -> Path:
    path = attempt_dir(pipeline_id, attempt) / "attempt.json"
    write_json_atomic(path, record)
    return path


def attempt_records(pipeline_id: str) -> list[dict[str, Any]]:
    """Every evaluated attempt of the pipeline, in attempt order."""
    records = []
    for path in pipeline_dir(pipeline_id).glob("attempt-*/attempt.json"):
        records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda r: r["attempt"])


def strategy_history(records: list[dict[str, Any]]) -> list[AttemptRecord]:
    return [AttemptRecord(r["attempt"], r["hparams"], r["evaluation"]["accuracy"], r["timings"]["train_seconds"])
            for r in records]


class Action(StrEnum):
    MET = "met"
    RETRAIN = "retrain"
    STOP = "stop"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    attempt: int
    accuracy: float
    target: float


def decide(config: PipelineConfig, records: list[dict[str, Any]], attempt: int) -> Decision:
    """Met the target, try again, or stop: the one rule every gate reads."""
    current = next(r for r in records if r["attempt"] == attempt)
    accuracy = current["evaluation"]["accuracy"]
    if accuracy >= config.target:
        return Decision(Action.MET, f"accuracy {accuracy:.4f} >= target {config.target:.4f}", attempt,
                        accuracy, config.target)
    if attempt >= config.max_attempts:
        return Decision(Action.STOP, f"budget spent: {attempt} of {config.max_attempts} attempts, best "
                        f"accuracy {max(r['evaluation']['accuracy'] for r in records):.4f} < target "
                        f"{config.target:.4f}", attempt, accuracy, config.target)
    if no_real_gain(strategy_history(records), config.patience, config.min_gain):
        return Decision(Action.STOP, f"no real gain: the last {config.patience} attempts each improved the "
                        f"best accuracy by less than {config.min_gain}", attempt, accuracy, config.target)
    return Decision(Action.RETRAIN, f"accuracy {accuracy:.4f} < target {config.target:.4f}; attempt "
                    f"{attempt + 1} of {config.max_attempts} next", attempt, accuracy, config.target)


def best_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    return max(records, key=lambda r: (r["evaluation"]["accuracy"], -r["attempt"]))


def cleanup(pipeline_id: str) -> list[str]:
    """Remove what nothing will use again once a pipeline ended: the checkout and every checkpoint."""
    removed = []
    for path in [workspace_dir(pipeline_id), *pipeline_dir(pipeline_id).glob("attempt-*/output/checkpoints")]:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed
