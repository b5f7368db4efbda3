"""What the pipeline and registry pages show, read from pushtrain's records, with every id checked first.

The pages read the same files the DAGs write (``pushtrain.pipeline``'s typed records and the registry);
nothing here writes. Two rules keep a page from reading what it should not:

- **Ids are names, never paths.** A pipeline id, model name or run id from a URL must match a strict
  pattern (letters, digits, ``-``, ``_``; no dots, no slashes) before it is joined to a directory, and the
  directory it names must resolve inside the data dir and not be a symbolic link (``InvalidId``,
  ``NotFound``).
- **Files a container wrote are untrusted.** ``output/metrics.json`` and ``output/progress.log`` sit in the
  directory the training container writes: they are opened without following links, only as regular files,
  and only up to a size cap; their numbers are checked before they are drawn. The confusion matrix comes
  from the attempt's own record, which the platform scored.

A running attempt (``attempt.json`` still ``prepared``) shows the epochs its container has logged so far in
``progress.log``; a finished one shows the history in ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pushtrain import pipeline, settings
from pushtrain.pipeline import Attempt, Pipeline, RecordError, Summary
from pushtrain.registry import CHAMPION, ModelRegistry, RegistryError
from pushtrain.runner import contract

TRAIN_DAG_ID = "train_on_push"
RETRAIN_DAG_ID = "tweak_and_retrain"
PIPELINE_DAG_IDS = (TRAIN_DAG_ID, RETRAIN_DAG_ID)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # the registry's, less the dots
RETRAIN_RUN_PATTERN = re.compile(
    r"pushtrain__(?P<pipeline>[A-Za-z0-9][A-Za-z0-9_-]{0,99})__attempt-(?P<n>[1-9]\d{0,3})"
)
ATTEMPT_DIR_PATTERN = re.compile(r"attempt-([1-9]\d{0,3})")
EPOCH_LINE = re.compile(
    r"^(?:\[pushtrain\] )?epoch (?P<epoch>\d{1,6})/(?P<total>\d{1,6})(?P<scores>(?: [a-z_]+=\S+)*)$"
)
MAX_CONTAINER_FILE_BYTES = 4 * 1024 * 1024
PROGRESS_TAIL_BYTES = 512 * 1024  # a long training's log: its last epochs are what a live page needs
MAX_PIPELINES_LISTED = 200
MAX_CLASSES_DRAWN = 100
SCORE_NAMES = ("accuracy", "val_accuracy", "loss", "val_loss")
# Hosts whose commit pages have a known address; any other repository shows the commit without a link.
COMMIT_PAGES = {
    "github.com": "{base}/commit/{sha}",
    "gitlab.com": "{base}/-/commit/{sha}",
    "codeberg.org": "{base}/commit/{sha}",
    "bitbucket.org": "{base}/commits/{sha}",
}


class InvalidId(ValueError):
    """An id from a URL is not a plain name: it could reach outside the data dir."""


class NotFound(LookupError):
    """The id is well-formed but names nothing (or something that is not ours to show)."""


# --- ids and safe reading ----------------------------------------------------------------------------


def check_id(value: str, what: str, pattern: re.Pattern[str] = ID_PATTERN) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidId(f"{what} {value!r} is not a valid id")
    return value


def _inside(root: Path, name: str, what: str) -> Path:
    """``root/name`` if it is a real directory (not a link) inside ``root``; else NotFound."""
    folder = root / name
    if folder.is_symlink() or not folder.is_dir():
        raise NotFound(f"no {what} {name}")
    if not folder.resolve().is_relative_to(root.resolve()):
        raise NotFound(f"no {what} {name}")
    return folder


def pipeline_folder(pipeline_id: str) -> Path:
    check_id(pipeline_id, "pipeline id")
    return _inside(settings.runs_dir(), pipeline_id, "pipeline")


def read_untrusted(path: Path, limit: int = MAX_CONTAINER_FILE_BYTES, *, tail: bool = False) -> bytes | None:
    """A regular file's bytes, never through a link; None if absent, not regular, or (unless ``tail``) too big.

    With ``tail``, a file over ``limit`` gives its last ``limit`` bytes instead.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > limit:
            if not tail:
                return None
            handle.seek(info.st_size - limit)
        return handle.read(limit)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --- per-epoch history ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Epoch:
    epoch: int
    scores: dict[str, float]  # accuracy, val_accuracy, loss, val_loss: those the runner reported
    seconds: float | None = None


def _history_from_metrics(document: Any) -> list[Epoch]:
    if not isinstance(document, dict) or not isinstance(document.get("history"), list):
        return []
    epochs = []
    for entry in document["history"][:10_000]:
        if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
            continue
        scores = {name: value for name in SCORE_NAMES if (value := _finite(entry.get(name))) is not None}
        epochs.append(Epoch(entry["epoch"], scores, _finite(entry.get("seconds"))))
    return epochs


def parse_progress(text: str) -> tuple[list[Epoch], int | None]:
    """The epochs a training container logged so far, and the epochs it will run (None if not said yet)."""
    epochs: dict[int, Epoch] = {}
    total = None
    for line in text.splitlines():
        match = EPOCH_LINE.match(line.strip())
        if not match:
            continue
        values = dict(pair.split("=", 1) for pair in match["scores"].split() if "=" in pair)
        scores = {}
        for name in SCORE_NAMES:
            try:
                number = float(values[name])
            except (KeyError, ValueError):
                continue
            if math.isfinite(number):
                scores[name] = number
        seconds = None
        try:
            seconds = float(values["seconds"])
        except (KeyError, ValueError):
            pass
        epoch = int(match["epoch"])
        epochs[epoch] = Epoch(
            epoch, scores, seconds
        )  # a resumed container logs an epoch again: keep the last
        total = int(match["total"])
    return [epochs[n] for n in sorted(epochs)], total


def attempt_history(pipeline_id: str, attempt: int) -> tuple[list[Epoch], int | None, bool]:
    """(epochs, total epochs, complete): from metrics.json once training completed, else progress.log."""
    output = pipeline.output_dir(pipeline_id, attempt)
    raw = read_untrusted(output / contract.METRICS_FILE)
    if raw is not None:
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        history = _history_from_metrics(document)
        if history:
            return history, len(history), True
    raw = read_untrusted(output / contract.PROGRESS_FILE, PROGRESS_TAIL_BYTES, tail=True)
    if raw is None:
        return [], None, False
    epochs, total = parse_progress(raw.decode("utf-8", "replace"))
    return epochs, total, False


# --- the confusion matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    attempt: int
    labels: list[str]
    matrix: list[list[int]]


def confusion_of(record: Attempt) -> Confusion | None:
    """The attempt's confusion matrix, as the platform scored it, when its evaluation recorded one."""
    evaluation = record.evaluation
    matrix = evaluation.confusion_matrix if evaluation else None
    labels = evaluation.class_names if evaluation else None
    if not matrix or not labels or len(labels) != len(matrix) or len(labels) > MAX_CLASSES_DRAWN:
        return None
    if any(len(row) != len(labels) or any(count < 0 for count in row) for row in matrix):
        return None
    return Confusion(record.attempt, [label[:40] for label in labels], [list(row) for row in matrix])


# --- the pipeline page ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptRow:
    """One line of the leaderboard."""

    attempt: int
    status: str  # running | met | below | failed
    detail: str  # why it failed, or what a running attempt is doing
    record: Attempt
    move: str  # what the strategy changed, against the attempt it started from
    epochs: list[Epoch]
    epochs_total: int | None
    dag_id: str
    run_id: str

    @property
    def accuracy(self) -> float | None:
        return self.record.accuracy

    @property
    def train_seconds(self) -> float | None:
        return self.record.timings.train_seconds if self.record.timings else None


@dataclass(frozen=True)
class PipelineView:
    run: Pipeline
    summary: Summary | None
    rows: list[AttemptRow]
    confusion: Confusion | None
    adaptation_diff: str = ""
    problems: list[str] = field(default_factory=list)  # records that could not be read, by path

    @property
    def state(self) -> str:
        """running, or how it ended: met, stop or failed."""
        return self.summary.outcome if self.summary else "running"

    @property
    def live(self) -> bool:
        return self.summary is None

    @property
    def best(self) -> AttemptRow | None:
        return best_row(self.rows)

    @property
    def commit_url(self) -> str | None:
        return commit_url(self.run.repo_url, self.run.commit)


def best_row(rows: list[AttemptRow]) -> AttemptRow | None:
    """The evaluated attempt with the highest accuracy, the earlier one on a tie (as the pipeline decides)."""
    judged = [row for row in rows if row.accuracy is not None]
    return max(judged, key=lambda row: (row.accuracy, -row.attempt), default=None)


def run_of_attempt(run: Pipeline, attempt: int) -> tuple[str, str]:
    """The DAG run that trains ``attempt``: attempt 1 is the run that started the pipeline."""
    if attempt == 1:
        return TRAIN_DAG_ID, run.origin_dag_run_id
    return RETRAIN_DAG_ID, pipeline.trigger_run_id(run.pipeline_id, attempt)


def describe_move(record: Attempt, earlier: dict[int, Attempt]) -> str:
    """What the strategy changed: ``epochs 1 -> 12, filters 2 -> 16 (from attempt 1)``."""
    if record.attempt == 1:
        return "as committed"
    if not record.tweak_updates:
        return "no change"
    base = earlier.get(record.based_on_attempt or 0)
    changes = []
    for knob, value in sorted(record.tweak_updates.items()):
        before = base.hparams.get(knob, "?") if base else "?"
        changes.append(f"{knob} {before} -> {value}")
    origin = f" (from attempt {record.based_on_attempt})" if record.based_on_attempt else ""
    why = f": {record.tweak_reason}" if record.tweak_reason else ""
    return ", ".join(changes) + origin + why


def _status(
    record: Attempt, summary: Summary | None, target: float, epochs: list[Epoch], total: int | None
) -> tuple[str, str]:
    if record.status == "failed":
        return "failed", record.reason
    if record.status == "evaluated":
        met = record.accuracy is not None and record.accuracy >= target
        return ("met" if met else "below"), ""
    if summary is not None:  # prepared, but the pipeline ended: a task of this attempt failed
        return "failed", summary.reason
    if epochs:
        return "running", f"training: epoch {epochs[-1].epoch} of {total or '?'}"
    return "running", "preparing or starting its container"


def _extra_text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def pipeline_view(pipeline_id: str) -> PipelineView:
    """Everything the pipeline page shows; raises InvalidId/NotFound for a bad or unknown id."""
    folder = pipeline_folder(pipeline_id)
    try:
        run = Pipeline.load(pipeline_id)
    except FileNotFoundError:
        raise NotFound(f"pipeline {pipeline_id} has no pipeline.json yet") from None
    summary = Summary.load(pipeline_id)
    problems, records = [], {}
    for entry in folder.iterdir():
        match = ATTEMPT_DIR_PATTERN.fullmatch(entry.name)
        if not match or entry.is_symlink() or not (entry / pipeline.ATTEMPT_FILE).is_file():
            continue
        try:
            records[int(match[1])] = Attempt.load(pipeline_id, int(match[1]))
        except (RecordError, OSError) as exc:
            problems.append(str(exc))
    rows = []
    for number in sorted(records):
        record = records[number]
        epochs, total, _ = attempt_history(pipeline_id, number)
        status, detail = _status(record, summary, run.config.target, epochs, total)
        dag_id, run_id = (
            (record.airflow.dag_id, record.airflow.run_id) if record.airflow else run_of_attempt(run, number)
        )
        rows.append(
            AttemptRow(
                number, status, detail, record, describe_move(record, records), epochs, total, dag_id, run_id
            )
        )
    best = best_row(rows)
    confusion = confusion_of(best.record) if best else None
    return PipelineView(
        run, summary, rows, confusion, _extra_text(run.model_dump(), "adaptation_diff"), problems
    )


@dataclass(frozen=True)
class PipelineSummaryRow:
    run: Pipeline
    state: str
    attempts: int
    best_accuracy: float | None
    started: float  # pipeline.json's modification time (epoch seconds)


def list_pipelines(limit: int = MAX_PIPELINES_LISTED) -> list[PipelineSummaryRow]:
    """The newest pipelines first; a folder whose records cannot be read is left out."""
    root = settings.runs_dir()
    if not root.is_dir():
        return []
    candidates = []
    for folder in root.iterdir():
        if not ID_PATTERN.fullmatch(folder.name) or folder.is_symlink():
            continue
        try:
            candidates.append((folder.joinpath(pipeline.PIPELINE_FILE).stat().st_mtime, folder.name))
        except OSError:
            continue
    rows = []
    for started, pipeline_id in sorted(candidates, reverse=True)[:limit]:
        try:
            run = Pipeline.load(pipeline_id)
            summary = Summary.load(pipeline_id)
            judged = pipeline.attempt_records(pipeline_id)
        except (RecordError, OSError):
            continue
        best = pipeline.best_record(judged)
        attempts = len(list(pipeline.pipeline_dir(pipeline_id).glob(f"attempt-*/{pipeline.ATTEMPT_FILE}")))
        rows.append(
            PipelineSummaryRow(
                run,
                summary.outcome if summary else "running",
                attempts,
                best.accuracy if best else None,
                started,
            )
        )
    return rows


def pipeline_for_run(dag_id: str, run_id: str) -> str | None:
    """The pipeline a DAG run belongs to, or None (another DAG, or a run that has not started one yet)."""
    if dag_id == RETRAIN_DAG_ID:
        match = RETRAIN_RUN_PATTERN.fullmatch(run_id)
        if not match:
            return None
        try:
            pipeline_folder(match["pipeline"])
        except NotFound:
            return None
        return match["pipeline"]
    if dag_id != TRAIN_DAG_ID:
        return None
    # pipeline_id_for(commit, run id) ends in a hash of the run id: only those folders can be this run's.
    suffix = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    root = settings.runs_dir()
    for folder in sorted(root.glob(f"*-{suffix}")) if root.is_dir() else []:
        if not ID_PATTERN.fullmatch(folder.name) or folder.is_symlink():
            continue
        try:
            if Pipeline.load(folder.name).origin_dag_run_id == run_id:
                return folder.name
        except (RecordError, OSError):
            continue
    return None


def commit_url(repo_url: str, sha: str) -> str | None:
    """The commit's web page when the repository lives on a host whose page addresses are known."""
    if not re.fullmatch(r"[0-9a-f]{7,64}", sha):
        return None
    text = repo_url.strip()
    scp = re.fullmatch(r"(?:[\w.-]+@)?([\w.-]+):(?!//)([\w./-]+)", text)  # git@host:owner/repo.git
    if scp:
        host, path = scp[1].lower(), scp[2]
    else:
        parts = urlsplit(text)
        if parts.scheme not in ("https", "http", "ssh", "git"):
            return None
        host, path = (parts.hostname or "").lower(), parts.path
    path = path.strip("/").removesuffix(".git")
    if host not in COMMIT_PAGES or not re.fullmatch(r"[\w.-]+(?:/[\w.-]+)+", path) or ".." in path:
        return None
    return COMMIT_PAGES[host].format(base=f"https://{host}/{path}", sha=sha)


# --- the registry page ---------------------------------------------------------------------------------


def _text(document: Any, *keys: str) -> str:
    """A string found by following ``keys`` through nested dicts; empty when any step is missing."""
    for key in keys:
        document = document.get(key) if isinstance(document, dict) else None
    return document if isinstance(document, str) else ""


@dataclass(frozen=True)
class VersionRow:
    number: int
    created_at: str
    metric: str
    metric_value: float
    scores: dict[str, float]
    lineage: dict[str, Any]
    pipeline_id: str
    aliases: list[str]  # the aliases that name this version (champion, challenger, serving, ...)
    tags: dict[str, str]

    @property
    def repo_url(self) -> str:
        return _text(self.lineage, "repo_url")

    @property
    def commit(self) -> str:
        return _text(self.lineage, "commit")

    @property
    def commit_url(self) -> str | None:
        return commit_url(self.repo_url, self.commit)

    @property
    def dataset(self) -> str:
        return " ".join(
            filter(
                None,
                (_text(self.lineage, "dataset", "name"), _text(self.lineage, "dataset", "split_version")),
            )
        )

    @property
    def dataset_sha256(self) -> str:
        return _text(self.lineage, "dataset", "test_sha256")

    @property
    def image(self) -> str:
        return _text(self.lineage, "image")

    @property
    def image_id(self) -> str:
        return _text(self.lineage, "image_id")

    @property
    def airflow_run(self) -> tuple[str, str] | None:
        dag_id, run_id = _text(self.lineage, "airflow", "dag_id"), _text(self.lineage, "airflow", "run_id")
        return (dag_id, run_id) if dag_id and run_id else None

    @property
    def has_pipeline_page(self) -> bool:
        return bool(ID_PATTERN.fullmatch(self.pipeline_id))


@dataclass(frozen=True)
class Serving:
    """What the model's stable endpoint serves, from the serving records (no call to the endpoint)."""

    url: str
    version: int | None  # the ``serving`` alias: what answers now
    champion: int | None  # what should answer; differs while a deployment is pending or was refused


@dataclass(frozen=True)
class ModelView:
    name: str
    versions: list[VersionRow]
    aliases: dict[str, int]
    history: list[dict[str, Any]]  # alias moves, newest first: at, alias, from, to, reason, by, rollback
    serving: Serving | None
    problems: list[str] = field(default_factory=list)


def _serving(name: str, aliases: dict[str, int]) -> Serving | None:
    from pushtrain import serving

    try:
        endpoint = serving.endpoint(name)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if endpoint is None:
        return None
    return Serving(f"{endpoint.url}/invocations", aliases.get(serving.SERVING_ALIAS), aliases.get(CHAMPION))


def registry_view() -> list[ModelView]:
    """Every model with its versions (newest first), aliases and their history, and serving status."""
    root = settings.registry_dir()
    registry = ModelRegistry(root)
    models = []
    for name in registry.model_names():
        if (root / name).is_symlink():
            continue
        problems: list[str] = []
        try:
            aliases = registry.aliases(name)
            history = [move.to_json() for move in reversed(registry.history(name))]
            versions = registry.versions(name)
        except (RegistryError, OSError, ValueError) as exc:
            models.append(ModelView(name, [], {}, [], None, [str(exc)]))
            continue
        rows = []
        for version in reversed(versions):
            try:
                metrics, lineage, tags = version.metrics, version.lineage, registry.tags(name, version)
            except (RegistryError, OSError, ValueError) as exc:
                problems.append(str(exc))
                metrics, lineage, tags = {}, {}, {}
            scores = {
                score: value
                for score in ("accuracy", "precision", "recall", "f1")
                if (value := _finite(metrics.get(score))) is not None
            }
            rows.append(
                VersionRow(
                    version.number,
                    version.created_at.isoformat(timespec="seconds"),
                    version.metric,
                    version.metric_value,
                    scores,
                    lineage,
                    version.pipeline_run_id,
                    sorted(alias for alias, number in aliases.items() if number == version.number),
                    tags,
                )
            )
        models.append(ModelView(name, rows, aliases, history, _serving(name, aliases), problems))
    return models
