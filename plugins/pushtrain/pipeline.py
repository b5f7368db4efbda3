"""The pipeline's state: one pipeline run per commit, attempts 1..N, every write keyed on (run, attempt).

A pipeline run spans several DAG runs (``train_on_push`` for attempt 1, then one ``tweak_and_retrain`` run
per further attempt), so its state lives in files under the data dir, not in the scheduler:

    <data>/runs/<pipeline_id>/pipeline.json          Pipeline: repo, commit, author, kind, the resolved config
    <data>/runs/<pipeline_id>/summary.json           Summary: how the pipeline ended, once it did
    <data>/runs/<pipeline_id>/attempt-<n>/           one attempt; containers write only where marked (rw)
        code/           the model repository as trained (attempt 1: the checkout; later: tweaked copies), ro
        output/         the training container's (rw): checkpoints/ (removed when the pipeline ends),
                        model/, metrics.json, progress.log, error.json
        evaluation/     the evaluation container's (rw): predictions.json and nothing else
        blind-view/     while evaluated: data/ (the label-blind held-out view, ro) and its answer key (never
                        mounted); removed once scored
        evaluation.json the platform's scores of those predictions (the gate's numbers)
        attempt.json    Attempt: the tweak when prepared, then the lineage and evaluation once judged
        .lease-*.json .restarts-*.json   the supervisor's records; these and attempt.json are never mounted
    <data>/workspaces/<pipeline_id>/repo             the git checkout (removed when the pipeline ends)

Each file is a typed record with one ``load``/``save``, a ``schema_version`` and strict validation on load:
a file that does not fit raises ``RecordError`` naming the file and the field. Between tasks XCom carries
ids and small decisions, typed the same way (``PreparedAttempt``, ``Decision``: ``to_xcom``/``from_xcom``);
the facts stay in the files. The DAG runs pass only ``{"pipeline_id", "attempt"}`` in ``conf``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from pushtrain import settings
from pushtrain.gitops import safe_name
from pushtrain.kinds import KINDS
from pushtrain.runner.contract import write_json_atomic
from pushtrain.strategies import STRATEGIES, AttemptRecord, no_real_gain

CONFIG_FILE = "pushtrain.toml"
DATASETS = ("digits", "mnist5k")  # the bundled data sets (pushtrain.datasets.DATASET_NAMES)
# The keys that say how a ``repo:`` data set is imported (pushtrain.datasets.ImportOptions); empty: from the data.
IMPORT_KEYS = ("image_size", "channels", "label_column", "categorical", "test_fraction")
# The registry's rule for a model name (a folder name there), checked here so a bad name fails at checkout,
# not after the whole training loop when the winner is registered.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PROMOTIONS = ("auto", "approve")  # pushtrain.toml's promotion: the gate's rule, or a person's approval
MAX_APPROVAL_TIMEOUT_HOURS = 24 * 30


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
    adapt: bool = True  # a model file that does not meet the contract is rewritten by `pushtrain adapt`
    model_tests: str = "model_tests.py"  # the repository's model tests, run before registration if present
    # "auto": a version that passed the gate becomes champion if not worse; "approve": it becomes challenger
    # and a person approves or rejects it in Airflow (pushtrain.approval), within approval_timeout_hours.
    promotion: str = "auto"
    approval_timeout_hours: float = 24.0
    # How a ``repo:<folder>`` data set is imported (pushtrain.datasets.ImportOptions); empty: from the data.
    image_size: tuple[int, ...] = ()  # [height, width]; default: the most common size in the data
    channels: int = 0  # 1 grey, 3 colour; default: the most common mode in the data
    label_column: str = ""  # a table's label column; default "label"
    categorical: tuple[str, ...] = ()  # a table's text columns to one-hot encode
    test_fraction: float = 0.2  # of each class held out (pushtrain.datasets.TEST_FRACTION)

    def import_options(self) -> Any:
        """The ``pushtrain.datasets.ImportOptions`` of these keys; raises ``DatasetError`` when invalid."""
        from pushtrain import datasets

        return datasets.ImportOptions(  # empty means "from the data"; test_fraction 0 is an error, not unset
            test_fraction=self.test_fraction,
            image_size=self.image_size or None,
            channels=self.channels or None,
            label_column=self.label_column or None,
            categorical=self.categorical,
        ).validated()

    def _dataset_problems(self) -> list[str]:
        """The ``dataset`` key and the import keys; a named data set's existence is checked at checkout."""
        from pushtrain import datasets
        from pushtrain.dataset_files import DatasetError, safe_relative

        problems = []
        is_repo = self.dataset.startswith(datasets.REPO_PREFIX)
        if is_repo:
            folder = self.dataset.removeprefix(datasets.REPO_PREFIX)
            try:
                relative = safe_relative(folder, self.dataset)
            except DatasetError:
                relative = None
            if relative is None or not relative.parts:
                problems.append(
                    f"dataset {self.dataset!r} must name a folder inside the repository, relative to its "
                    'root and without "..", e.g. "repo:data/pets"'
                )
        elif self.dataset not in DATASETS:
            try:
                datasets.check_name(self.dataset)
            except DatasetError:
                problems.append(
                    f"dataset {self.dataset!r} is unknown; choose one of {', '.join(DATASETS)}, a data set "
                    "added with `python -m pushtrain datasets add NAME PATH` (NAME: 1-64 letters, digits, "
                    "'.', '_' or '-'), or repo:<folder> for a folder of the repository"
                )
        try:
            options = self.import_options()
        except DatasetError as exc:
            return [*problems, f"{exc} (in {CONFIG_FILE})"]
        if not is_repo and options != datasets.ImportOptions():
            given = [key for key in IMPORT_KEYS if getattr(self, key) != getattr(PipelineConfig, key)]
            problems.append(
                f"{', '.join(given)} apply to repo: data sets only; dataset {self.dataset!r} is imported "
                f"already: remove them from {CONFIG_FILE}, or re-add the data set with them "
                "(`python -m pushtrain datasets add NAME PATH --help`)"
            )
        return problems

    def validated(self) -> PipelineConfig:
        problems = []
        if not 0.0 < self.target <= 1.0:
            problems.append(f"target must be in (0, 1], got {self.target}")
        if self.metric != "accuracy":
            problems.append(f'metric {self.metric!r} is not supported; use "accuracy"')
        if not 1 <= self.max_attempts <= 50:
            problems.append(f"max_attempts must be 1..50, got {self.max_attempts}")
        problems.extend(self._dataset_problems())
        if self.kind not in ("auto", *KINDS):
            problems.append(f"kind {self.kind!r} is unknown; choose auto or one of {', '.join(KINDS)}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if self.patience < 1:
            problems.append(f"patience must be at least 1, got {self.patience}")
        if not 0.0 <= self.min_gain < 1.0:
            problems.append(f"min_gain must be in [0, 1), got {self.min_gain}")
        if self.model_name and not MODEL_NAME_PATTERN.fullmatch(self.model_name):
            problems.append(
                f"model_name {self.model_name!r} must be 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if Path(self.entry).is_absolute() or ".." in Path(self.entry).parts:
            problems.append(f"entry {self.entry!r} must be a path inside the repository")
        if (
            not self.model_tests
            or Path(self.model_tests).is_absolute()
            or ".." in Path(self.model_tests).parts
        ):
            problems.append(f"model_tests {self.model_tests!r} must be a path inside the repository")
        if self.promotion not in PROMOTIONS:
            problems.append(f"promotion {self.promotion!r} is unknown; choose one of {', '.join(PROMOTIONS)}")
        if not 0.0 < self.approval_timeout_hours <= MAX_APPROVAL_TIMEOUT_HOURS:
            problems.append(
                f"approval_timeout_hours must be in (0, {MAX_APPROVAL_TIMEOUT_HOURS:g}], got "
                f"{self.approval_timeout_hours}"
            )
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
        elif expected is tuple and isinstance(value, list):  # a TOML array; validated() checks its items
            values[key] = tuple(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            what = "a list ([...])" if expected is tuple else expected.__name__
            raise ConfigError(f"{key} must be {what}, got {value!r}")
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


def blind_view_dir(pipeline_id: str, attempt: int) -> Path:
    """The label-blind view of the held-out split while the attempt is evaluated: ``data/`` is mounted, the
    answer key beside it is not. Removed once scored."""
    return attempt_dir(pipeline_id, attempt) / "blind-view"


def evaluation_record_path(pipeline_id: str, attempt: int) -> Path:
    """``evaluation.json``, written by the platform from the container's predictions (never by a container)."""
    return attempt_dir(pipeline_id, attempt) / "evaluation.json"


def workspace_dir(pipeline_id: str) -> Path:
    return settings.data_dir() / "workspaces" / safe_name(pipeline_id)


def container_name(pipeline_id: str, attempt: int, role: str) -> str:
    return f"pushtrain-{safe_name(pipeline_id)}-a{attempt}-{role}"


def trigger_run_id(pipeline_id: str, attempt: int) -> str:
    """The run id of the ``tweak_and_retrain`` run for ``attempt``: a retried trigger finds it exists."""
    return f"pushtrain__{safe_name(pipeline_id)}__attempt-{attempt}"


# --- records: the files above, and the values tasks hand each other ------------------------------------

PIPELINE_FILE = "pipeline.json"
ATTEMPT_FILE = "attempt.json"
SUMMARY_FILE = "summary.json"


class RecordError(ValueError):
    """A record (a file, or an XCom value) does not fit its type; the message names the source and field."""


class _Typed(BaseModel):
    """A closed, strict shape: unknown keys and wrong types are errors, never coerced ("0.9" is no float)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def parse(cls, value: Any, source: str, *, known_only: bool = False) -> Self:
        """Validate a JSON value read from ``source``; ``known_only`` drops the keys this type does not have."""
        if known_only and isinstance(value, dict):
            value = {key: item for key, item in value.items() if key in cls.model_fields}
        return cls._parse_json(json.dumps(value), source)

    @classmethod
    def _parse_json(cls, text: str | bytes, source: str) -> Self:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(_problem(error) for error in exc.errors())
            raise RecordError(f"{source}: {problems}") from None

    def changed(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated again (pydantic's ``model_copy`` would skip that)."""
        return type(self).model_validate({**dict(self), **changes})


def _problem(error: Any) -> str:
    field_path = ".".join(str(part) for part in error["loc"])
    return f"field {field_path}: {error['msg']}" if field_path else error["msg"]


class _File(_Typed):
    """A record kept as one JSON file; ``schema_version`` says which shape of it the file holds."""

    schema_version: Literal[1] = 1

    @classmethod
    def _read(cls, path: Path) -> Self:
        return cls._parse_json(path.read_bytes(), str(path))

    def _write(self, path: Path) -> None:
        write_json_atomic(path, self.model_dump(mode="json"))


class _Message(_Typed):
    """A small value one task hands the next through XCom, where it travels as JSON."""

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_xcom(cls, value: Any, task_id: str) -> Self:
        if isinstance(value, dict):  # derived fields are in what to_xcom gave, and derived again here
            value = {key: item for key, item in value.items() if key not in cls.model_computed_fields}
        return cls.parse(value, f"the XCom of {task_id}")


class Pipeline(_File):
    """``pipeline.json``: what the pipeline trains and how; ``kind`` is empty until ``detect_kind`` set it."""

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
    detection: list[str] = []
    # Set when the pushed file did not meet the contract and ``pushtrain adapt`` rewrote it (steps.
    # detect_model_kind): the unified diff of the rewrite, and one line per change with the script's line.
    adaptation_diff: str = ""
    adaptation_notes: list[str] = []
    # Set when the repository's requirements.txt needs an image derived from the kind's (pushtrain.userreqs):
    # its tag, id, base and the resolved packages. Empty: the kind's own image.
    training_image: dict[str, Any] = {}
    # The data set version this pipeline trains on, pinned at checkout (pushtrain.datasets.resolve): every
    # attempt, evaluation and registration reads this one, whatever versions are added meanwhile. Empty/0 in
    # a record from before the pin: the config's data set, latest version.
    dataset_name: str = ""
    dataset_version: int = Field(default=0, ge=0)

    @field_validator("config")
    @classmethod
    def _config_is_valid(cls, config: PipelineConfig) -> PipelineConfig:
        return config.validated()

    @property
    def pinned_dataset(self) -> tuple[str, int | None]:
        """(name, version) of the data set every step reads: ``datasets.ensure_dataset(*run.pinned_dataset)``.
        Version None (a record from before the pin) means the latest."""
        return self.dataset_name or self.config.dataset, self.dataset_version or None

    @property
    def dataset_label(self) -> str:
        """``digits v1``; ``repo:data/pets v2 (<store name>)``; for mails and pages."""
        name, version = self.pinned_dataset
        label = f"{self.config.dataset} v{version}" if version else self.config.dataset
        return label if name == self.config.dataset else f"{label} ({name})"

    def save(self) -> None:
        self._write(pipeline_dir(self.pipeline_id) / PIPELINE_FILE)

    @classmethod
    def load(cls, pipeline_id: str) -> Pipeline:
        path = pipeline_dir(pipeline_id) / PIPELINE_FILE
        try:
            return cls._read(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"pipeline {pipeline_id} has no {path}: was it cleaned up?") from None


class DatasetUsed(_Typed):
    name: str
    split_version: str
    split: dict[str, Any]
    train_sha256: str
    test_sha256: str


class TrainingMetrics(_Typed):
    """What the training container measured on its own validation split: informative, never the gate."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    loss: float | None
    evaluated_on: str
    epochs_run: int
    resumed_from_epoch: int


class Evaluation(_Typed):
    """The held-out scores the platform computed from the evaluation container's predictions: the gate's."""

    accuracy: float = Field(ge=0.0, le=1.0)
    precision: float
    recall: float
    f1: float
    loss: float | None
    n_evaluated: int
    dataset_sha256: str
    container_wall_seconds: float
    # Scored by the platform on the label-blind view (pushtrain.blind); absent in records made before it.
    class_names: list[str] | None = None
    per_class: dict[str, dict[str, float | int]] | None = None
    confusion_matrix: list[list[int]] | None = None  # rows: true class, columns: predicted


class Timings(_Typed):
    train_seconds: float  # training proper, summed over restarts
    train_container_seconds: float
    evaluate_container_seconds: float


class AirflowRun(_Typed):
    dag_id: str
    run_id: str


class Attempt(_File):
    """``attempt-<n>/attempt.json``: one attempt's lineage.

    ``prepare_attempt`` writes it as ``prepared`` (the tweak and the hyperparameters it proposes);
    ``judge_attempt`` completes it as ``evaluated`` (with the held-out evaluation) or ``failed`` (a tweak
    whose model could not be built; ``reason`` says why, and there is no accuracy).
    """

    pipeline_id: str
    attempt: int = Field(ge=1)
    status: Literal["prepared", "evaluated", "failed"]
    reason: str = ""
    repo_url: str
    commit: str
    kind: str
    model_file: str
    hparams: dict[str, Any]  # as trained (metrics.json); until then, or if it failed, as the tweak proposed
    tweak_diff: str = ""  # against the code as committed
    tweak_updates: dict[str, Any] = {}
    tweak_reason: str = ""  # the strategy's one-line why, where it gives one
    based_on_attempt: int | None = None
    warm_start_from: int | None = None
    warm_start_epochs: int = 0
    model_file_sha256: str | None = None
    dataset: DatasetUsed | None = None
    image: str | None = None
    image_id: str | None = None
    training_metrics: TrainingMetrics | None = None
    # metrics.json's per-epoch curve and training-set size: the evidence a strategy such as adaptive reads.
    training_history: list[dict[str, Any]] = []
    n_train: int = 0
    evaluation: Evaluation | None = None
    timings: Timings | None = None
    container_restarts: int = 0
    airflow: AirflowRun | None = None
    recorded_at: str | None = None

    @model_validator(mode="after")
    def _complete_for_its_status(self) -> Attempt:
        if self.status == "evaluated":
            missing = [
                name
                for name in ("evaluation", "training_metrics", "timings", "dataset", "airflow")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"an evaluated attempt needs {', '.join(missing)}")
        elif self.evaluation is not None:
            raise ValueError(f"a {self.status} attempt has no evaluation")
        if self.status == "failed" and not self.reason:
            raise ValueError("a failed attempt needs the reason it failed")
        return self

    @property
    def accuracy(self) -> float | None:
        """Held-out accuracy; None unless evaluated."""
        return self.evaluation.accuracy if self.evaluation else None

    def save(self) -> None:
        self._write(attempt_dir(self.pipeline_id, self.attempt) / ATTEMPT_FILE)

    @classmethod
    def load(cls, pipeline_id: str, attempt: int) -> Attempt:
        return cls._read(attempt_dir(pipeline_id, attempt) / ATTEMPT_FILE)

    def lineage(self, run: Pipeline) -> dict[str, Any]:
        """What the registry keeps with a model version: this record and the pipeline it belongs to."""
        return {
            **self.model_dump(mode="json"),
            "pipeline": {
                "branch": run.branch,
                "author_email": run.author_email,
                "origin_dag_run_id": run.origin_dag_run_id,
                "config": run.model_dump(mode="json")["config"],  # as JSON: lists, not tuples
                "training_image": run.training_image,
            },
        }


def attempt_records(pipeline_id: str) -> list[Attempt]:
    """Every judged attempt (evaluated or failed) in attempt order; one still in training is not among them."""
    records = [Attempt._read(path) for path in pipeline_dir(pipeline_id).glob(f"attempt-*/{ATTEMPT_FILE}")]
    return sorted((r for r in records if r.status != "prepared"), key=lambda r: r.attempt)


def best_record(records: list[Attempt]) -> Attempt | None:
    """The evaluated attempt with the highest accuracy (the earlier one on a tie); None if none was."""
    evaluated = [r for r in records if r.accuracy is not None]
    return max(evaluated, key=lambda r: (r.accuracy, -r.attempt), default=None)


def strategy_history(records: list[Attempt]) -> list[AttemptRecord]:
    """The attempts as a strategy sees them; a failed one has NaN accuracy, so it is never best nor repeated."""
    return [
        AttemptRecord(
            r.attempt,
            r.hparams,
            math.nan if r.accuracy is None else r.accuracy,
            r.timings.train_seconds if r.timings else 0.0,
            history=tuple(r.training_history),
            warm_start_epochs=r.warm_start_epochs,
            n_train=r.n_train,
        )
        for r in records
    ]


class Summary(_File):
    """``summary.json``: how the pipeline ended; written once, by the DAG run in which it ended."""

    pipeline_id: str
    outcome: Literal["met", "stop", "failed"]
    reason: str
    ended_after_attempt: int

    def save(self) -> None:
        self._write(pipeline_dir(self.pipeline_id) / SUMMARY_FILE)

    @classmethod
    def load(cls, pipeline_id: str) -> Summary | None:
        """The summary, or None while the pipeline has not ended."""
        path = pipeline_dir(pipeline_id) / SUMMARY_FILE
        return cls._read(path) if path.exists() else None


class PreparedAttempt(_Message):
    """``prepare_attempt``'s XCom: the attempt to train and the image kind, or a stop before training."""

    pipeline_id: str
    attempt: int
    kind: str
    action: Literal["train", "stop"] = "train"
    reason: str = ""  # why there is nothing to train
    warm_start_from: int | None = None  # the earlier attempt whose model this one continues


class Action(StrEnum):
    MET = "met"
    RETRAIN = "retrain"
    STOP = "stop"


class Decision(_Message):
    """``judge_attempt``'s XCom, the one verdict every gate reads: target met, retrain, or stop."""

    pipeline_id: str
    attempt: int  # the last attempt judged
    action: Action
    reason: str
    accuracy: float | None  # that attempt's held-out accuracy; None when it failed or none was made
    target: float

    @computed_field
    @property
    def next_attempt(self) -> int:
        return self.attempt + 1

    @computed_field
    @property
    def next_run_id(self) -> str:
        return trigger_run_id(self.pipeline_id, self.next_attempt)


def decide(config: PipelineConfig, records: list[Attempt], attempt: int) -> Decision:
    """Met the target, try again, or stop: the rule behind every gate. A failed attempt counts as one."""
    current = next(r for r in records if r.attempt == attempt)

    def decision(action: Action, reason: str) -> Decision:
        return Decision(
            pipeline_id=current.pipeline_id,
            attempt=attempt,
            action=action,
            reason=reason,
            accuracy=current.accuracy,
            target=config.target,
        )

    if current.accuracy is not None and current.accuracy >= config.target:
        return decision(Action.MET, f"accuracy {current.accuracy:.4f} >= target {config.target:.4f}")
    if attempt >= config.max_attempts:
        best = best_record(records)
        best_text = f"best accuracy {best.accuracy:.4f}" if best else "no attempt evaluated"
        return decision(
            Action.STOP,
            f"budget spent: {attempt} of {config.max_attempts} attempts, {best_text} "
            f"< target {config.target:.4f}",
        )
    if no_real_gain(strategy_history(records), config.patience, config.min_gain):
        return decision(
            Action.STOP,
            f"no real gain: the last {config.patience} attempts each improved the "
            f"best accuracy by less than {config.min_gain}",
        )
    missed = (
        f"attempt {attempt} failed: {current.reason}"
        if current.accuracy is None
        else f"accuracy {current.accuracy:.4f} < target {config.target:.4f}"
    )
    return decision(Action.RETRAIN, f"{missed}; attempt {attempt + 1} of {config.max_attempts} next")


def cleanup(pipeline_id: str) -> list[str]:
    """Remove what nothing will use again once a pipeline ended: the checkout, every checkpoint, and any
    label-blind view an evaluation that failed half-way left."""
    removed = []
    leftovers = [
        *pipeline_dir(pipeline_id).glob("attempt-*/output/checkpoints"),
        *pipeline_dir(pipeline_id).glob("attempt-*/blind-view"),
    ]
    for path in [workspace_dir(pipeline_id), *leftovers]:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed
