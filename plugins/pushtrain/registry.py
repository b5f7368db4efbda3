"""A file-based model registry: numbered, never-overwritten versions and an atomically moved production pointer.

Layout under ``root`` (normally ``<data_dir>/registry``)::

    <root>/<model_name>/
        versions/
            0001/
                artifact/        copy of the model artifact dir (model.keras or model.joblib, signature.json, ...)
                metrics.json     the metrics as given
                lineage.json     the caller's lineage dict (repo, commit, hashes, image id, run ids, ...)
                version.json     number, created_at (UTC ISO), pipeline_run_id, promotion metric and value,
                                 sha256 of every artifact file
            0002/ ...
        production.json          the production pointer (absent until the first promotion)
        .staging/                versions being assembled; invisible to readers
        .lock                    flock'ed by every writer of this model

Invariants:

- **Never overwrite.** A version is assembled in ``.staging/`` and appears only through one ``os.rename`` to
  ``versions/<NNNN>``, which fails when that name exists, so a crash midway never leaves a half-written version
  and two registrations never share a number. A version dir is never written again after it appears.
- **Idempotent registration.** Registering again with the same ``pipeline_run_id`` and the same artifact file
  hashes returns the existing version, so an Airflow task retry does not create a duplicate.
- **Atomic pointer.** ``production.json`` is replaced with ``os.replace`` of a fsync'ed temp file in the same
  dir, so readers see the old pointer or the new one, never a torn one. It moves only to a candidate whose
  metric is not worse than the current production version's, under ``.lock`` so two promotions cannot
  interleave their compare and move.
- **Nothing left behind on error.** A failed registration removes its staging dir; a staging dir older than
  an hour can only be a crash leftover and is removed by the next registration.

Standard library only, and nothing else of pushtrain: ``register_model`` is its one caller in the
pipeline, and any other process (a script, a serving container) can use the registry with this module alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSIONS_DIR_NAME = "versions"
STAGING_DIR_NAME = ".staging"
LOCK_FILE_NAME = ".lock"
PRODUCTION_FILE_NAME = "production.json"
ARTIFACT_DIR_NAME = "artifact"
METRICS_FILE_NAME = "metrics.json"
LINEAGE_FILE_NAME = "lineage.json"
VERSION_FILE_NAME = "version.json"
VERSION_SCHEMA = 1
PRODUCTION_SCHEMA = 1
# Longer than any real copy of a model artifact, so only a crashed registration's dir is this old.
STALE_STAGING_AGE_S = 3600.0
_HASH_CHUNK_BYTES = 1024 * 1024
_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_DIR_PATTERN = re.compile(r"\d{4,}")


class RegistryError(Exception):
    """The registry on disk is not in the state an operation needs (missing version, damaged file)."""


class InvalidRegistrationError(RegistryError, ValueError):
    """The arguments to :meth:`ModelRegistry.register` cannot make a version; the message says how to fix them."""


class VersionNotFoundError(RegistryError, LookupError):
    """The asked-for model version does not exist."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered, immutable version of a model; ``lineage`` and ``metrics`` are read from disk on use."""

    model_name: str
    number: int
    path: Path
    metric: str
    metric_value: float
    pipeline_run_id: str
    created_at: datetime
    artifact_sha256: Mapping[str, str] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"v{self.number}"

    @property
    def artifact_dir(self) -> Path:
        return self.path / ARTIFACT_DIR_NAME

    @property
    def metrics(self) -> dict[str, Any]:
        return _read_json(self.path / METRICS_FILE_NAME)

    @property
    def lineage(self) -> dict[str, Any]:
        return _read_json(self.path / LINEAGE_FILE_NAME)


@dataclass(frozen=True)
class PromotionResult:
    """What :meth:`ModelRegistry.promote_if_not_worse` did and why.

    ``moved`` is true only when this call moved the pointer; ``production`` is what the pointer names after
    the call, so a retried promotion task can tell "already production" (``moved`` false) from "kept the old".
    """

    moved: bool
    reason: str
    candidate: ModelVersion
    previous: ModelVersion | None
    production: ModelVersion | None

    @property
    def candidate_is_production(self) -> bool:
        return self.production is not None and self.production.number == self.candidate.number


class ModelRegistry:
    """Numbered model versions under ``root/<model_name>/versions`` and a production pointer per model."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------------------------------- registration

    def register(
        self,
        model_name: str,
        artifact_dir: Path,
        metrics: Mapping[str, Any],
        lineage: Mapping[str, Any],
        *,
        pipeline_run_id: str,
        metric: str = "accuracy",
    ) -> ModelVersion:
        """Store a new version holding a copy of ``artifact_dir`` and return it.

        Returns the existing version instead when one already has this ``pipeline_run_id`` and the same
        artifact file hashes (a task retry). Raises :class:`InvalidRegistrationError` for bad arguments; on any
        error nothing is left in the registry.
        """
        _check_model_name(model_name)
        if not isinstance(pipeline_run_id, str) or not pipeline_run_id.strip():
            raise InvalidRegistrationError(
                f"pipeline_run_id must be a non-empty string, got {pipeline_run_id!r}; pass the Airflow run id "
                "of the pipeline run that trained this model"
            )
        metric_value = _check_metric(metrics, metric)
        metrics_json = _to_json(metrics, "metrics")
        lineage_json = _to_json(lineage, "lineage")
        artifact_dir = Path(artifact_dir)
        source_hashes = _hash_artifact_dir(artifact_dir)

        existing = self._find_same_registration(model_name, pipeline_run_id, source_hashes)
        if existing is not None:
            log.info(
                "%s %s already holds run %s's artifact; not registering again",
                model_name,
                existing.label,
                pipeline_run_id,
            )
            return existing

        model_dir = self._model_dir(model_name)
        staging_root = model_dir / STAGING_DIR_NAME
        versions_dir = model_dir / VERSIONS_DIR_NAME
        staging_root.mkdir(parents=True, exist_ok=True)
        versions_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging_dirs(staging_root)

        staging_dir = Path(tempfile.mkdtemp(prefix=f"{_utc_now():%Y%m%dT%H%M%S}-", dir=staging_root))
        try:
            _copy_artifact(artifact_dir, staging_dir / ARTIFACT_DIR_NAME, keep_fresh=staging_dir)
            stored_hashes = _hash_artifact_dir(staging_dir / ARTIFACT_DIR_NAME, fsync=True)
            if stored_hashes != source_hashes:
                raise RegistryError(
                    f"{artifact_dir} changed while it was being copied into the registry; register it again "
                    "once the training task has finished writing it"
                )
            _write_file_durably(staging_dir / METRICS_FILE_NAME, metrics_json)
            _write_file_durably(staging_dir / LINEAGE_FILE_NAME, lineage_json)
            with self._lock(model_name):
                # Checked again under the lock: a concurrent retry of the same task may have won the race.
                existing = self._find_same_registration(model_name, pipeline_run_id, source_hashes)
                if existing is not None:
                    shutil.rmtree(staging_dir, ignore_errors=True)
                    return existing
                number = self._publish(
                    staging_dir,
                    versions_dir,
                    model_name,
                    pipeline_run_id,
                    metric,
                    metric_value,
                    stored_hashes,
                )
        except BaseException:
            shutil.rmtree(staging_dir, ignore_errors=True)
            raise
        version = self.get(model_name, number)
        log.info(
            "registered %s %s (%s %r) from run %s",
            model_name,
            version.label,
            metric,
            metric_value,
            pipeline_run_id,
        )
        return version

    def _publish(
        self,
        staging_dir: Path,
        versions_dir: Path,
        model_name: str,
        pipeline_run_id: str,
        metric: str,
        metric_value: float,
        artifact_sha256: dict[str, str],
    ) -> int:
        """Rename the staged dir to the next free number; version.json is rewritten per try to match it."""
        number = _highest_version_number(versions_dir) + 1
        while True:
            record = {
                "schema": VERSION_SCHEMA,
                "model_name": model_name,
                "version": number,
                "created_at": _utc_now().isoformat(timespec="milliseconds"),
                "pipeline_run_id": pipeline_run_id,
                "metric": {"name": metric, "value": metric_value},
                "artifact_sha256": artifact_sha256,
            }
            _write_file_durably(staging_dir / VERSION_FILE_NAME, _to_json(record, "version record"))
            try:
                # rename(2) onto an existing non-empty dir fails, which is what makes a number taken for good.
                os.rename(staging_dir, versions_dir / _version_dir_name(number))
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                number = max(number, _highest_version_number(versions_dir)) + 1
                continue
            _fsync_dir(versions_dir)
            return number

    def _find_same_registration(
        self, model_name: str, pipeline_run_id: str, artifact_sha256: Mapping[str, str]
    ) -> ModelVersion | None:
        for version in self.versions(model_name):
            if (
                version.pipeline_run_id == pipeline_run_id
                and dict(version.artifact_sha256) == artifact_sha256
            ):
                return version
        return None

    # -------------------------------------------------------------------------------------------- promotion

    def promote_if_not_worse(self, model_name: str, version: ModelVersion | int) -> PromotionResult:
        """Point production at ``version`` if its metric is >= the production version's (or there is none)."""
        _check_model_name(model_name)
        if isinstance(version, ModelVersion):
            if version.model_name != model_name:
                raise InvalidRegistrationError(
                    f"cannot promote {version.model_name} {version.label} as a version of {model_name}; "
                    "pass a version of the same model"
                )
            number = version.number
        else:
            number = version
        with self._lock(model_name):
            # Re-read from disk under the lock: the caller's object may be stale, the files are the truth.
            candidate = self.get(model_name, number)
            current = self.production(model_name)
            if current is not None and current.number == candidate.number:
                return PromotionResult(
                    False, f"{candidate.label} is already production", candidate, current, current
                )
            if current is not None and current.metric != candidate.metric:
                reason = (
                    f"kept {current.label}: it was promoted on {current.metric} but candidate {candidate.label} "
                    f"reports {candidate.metric}; register the candidate with metric={current.metric!r} to "
                    "compare them"
                )
                return PromotionResult(False, reason, candidate, current, current)
            if current is not None and candidate.metric_value < current.metric_value:
                reason = (
                    f"kept {current.label}: its {current.metric} {_fmt(current.metric_value)} beats candidate "
                    f"{candidate.label}'s {_fmt(candidate.metric_value)}"
                )
                return PromotionResult(False, reason, candidate, current, current)

            if current is None:
                reason = (
                    f"promoted {candidate.label}: no production version yet "
                    f"({candidate.metric} {_fmt(candidate.metric_value)})"
                )
            else:
                relation = "equals" if candidate.metric_value == current.metric_value else "beats"
                reason = (
                    f"promoted {candidate.label}: its {candidate.metric} {_fmt(candidate.metric_value)} "
                    f"{relation} {current.label}'s {_fmt(current.metric_value)}"
                )
            pointer = {
                "schema": PRODUCTION_SCHEMA,
                "model_name": model_name,
                "version": candidate.number,
                "path": f"{VERSIONS_DIR_NAME}/{_version_dir_name(candidate.number)}",
                "metric": {"name": candidate.metric, "value": candidate.metric_value},
                "previous_version": None if current is None else current.number,
                "promoted_at": _utc_now().isoformat(timespec="milliseconds"),
                "reason": reason,
            }
            _replace_file_atomically(
                self._model_dir(model_name) / PRODUCTION_FILE_NAME, _to_json(pointer, "production pointer")
            )
        log.info("%s: %s", model_name, reason)
        return PromotionResult(True, reason, candidate, current, candidate)

    # ---------------------------------------------------------------------------------------------- reading

    def production(self, model_name: str) -> ModelVersion | None:
        """The version the production pointer names, or None before the first promotion."""
        _check_model_name(model_name)
        pointer_path = self._model_dir(model_name) / PRODUCTION_FILE_NAME
        if not pointer_path.exists():
            return None
        pointer = _read_json(pointer_path)
        number = pointer.get("version")
        if not isinstance(number, int) or isinstance(number, bool):
            raise RegistryError(f"{pointer_path} names no version number (got {number!r}); it is damaged")
        try:
            return self.get(model_name, number)
        except VersionNotFoundError as error:
            raise RegistryError(f"{pointer_path} points at v{number}, which does not exist") from error

    def versions(self, model_name: str) -> list[ModelVersion]:
        """Every version of ``model_name``, oldest first; an empty list for an unknown model."""
        _check_model_name(model_name)
        versions_dir = self._model_dir(model_name) / VERSIONS_DIR_NAME
        return [self._load(model_name, number) for number in _version_numbers(versions_dir)]

    def get(self, model_name: str, number: int) -> ModelVersion:
        """Version ``number`` of ``model_name``; raises :class:`VersionNotFoundError` when there is none."""
        _check_model_name(model_name)
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise VersionNotFoundError(f"version numbers are integers from 1, got {number!r}")
        version_dir = self._model_dir(model_name) / VERSIONS_DIR_NAME / _version_dir_name(number)
        if not version_dir.is_dir():
            known = ", ".join(f"v{n}" for n in _version_numbers(version_dir.parent)) or "none"
            raise VersionNotFoundError(f"{model_name} has no v{number} (versions: {known})")
        return self._load(model_name, number)

    def _load(self, model_name: str, number: int) -> ModelVersion:
        version_dir = self._model_dir(model_name) / VERSIONS_DIR_NAME / _version_dir_name(number)
        record_path = version_dir / VERSION_FILE_NAME
        record = _read_json(record_path)
        try:
            if record["version"] != number:
                raise RegistryError(f"{record_path} says version {record['version']} but lives in v{number}")
            return ModelVersion(
                model_name=model_name,
                number=number,
                path=version_dir,
                metric=record["metric"]["name"],
                metric_value=record["metric"]["value"],
                pipeline_run_id=record["pipeline_run_id"],
                created_at=datetime.fromisoformat(record["created_at"]),
                artifact_sha256=dict(record["artifact_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RegistryError(f"{record_path} is damaged: {error!r}") from error

    # ---------------------------------------------------------------------------------------------- helpers

    def _model_dir(self, model_name: str) -> Path:
        return self.root / model_name

    @contextlib.contextmanager
    def _lock(self, model_name: str) -> Iterator[None]:
        model_dir = self._model_dir(model_name)
        model_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(model_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the flock, even when the body raised.
            os.close(fd)


def _check_model_name(model_name: str) -> None:
    if not isinstance(model_name, str) or not _MODEL_NAME_PATTERN.fullmatch(model_name):
        raise InvalidRegistrationError(
            f"model name {model_name!r} cannot be a folder name in the registry; use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )


def _check_metric(metrics: Mapping[str, Any], metric: str) -> float:
    if not isinstance(metrics, Mapping):
        raise InvalidRegistrationError(
            f"metrics must be a dict of metric name to value, got {type(metrics).__name__}"
        )
    if metric not in metrics:
        present = ", ".join(sorted(map(str, metrics))) or "none"
        raise InvalidRegistrationError(
            f"metric {metric!r} is missing from metrics (present: {present}); pass metric= one of those, or "
            f"have the training script report {metric!r}"
        )
    value = metrics[metric]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRegistrationError(
            f"metric {metric!r} must be a finite number to compare versions by, got {value!r}"
        )
    return float(value)


def _to_json(value: Any, what: str) -> str:
    if not isinstance(value, Mapping):
        raise InvalidRegistrationError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other tools must be able to read these files.
        return json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise InvalidRegistrationError(
            f"{what} is not JSON-serialisable ({error}); convert its values to str, int, float, bool, None, "
            "list or dict first (e.g. datetimes to ISO strings, paths to str)"
        ) from error


def _hash_artifact_dir(directory: Path, *, fsync: bool = False) -> dict[str, str]:
    """sha256 of every file under ``directory`` by POSIX relative path; validates it is a usable artifact."""
    if not directory.exists():
        raise InvalidRegistrationError(
            f"artifact dir {directory} does not exist; pass the folder the training task saved the model into"
        )
    if not directory.is_dir():
        raise InvalidRegistrationError(
            f"artifact dir {directory} is a file, not a folder; pass the folder that holds the model files"
        )
    hashes: dict[str, str] = {}
    # followlinks=True matches shutil.copytree(symlinks=False), which copies what links point at.
    for folder, subfolders, files in os.walk(directory, followlinks=True):
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder, name)
            relative = path.relative_to(directory).as_posix()
            if not path.is_file():
                raise InvalidRegistrationError(
                    f"artifact file {relative} in {directory} is not a regular file (a broken link, pipe or "
                    "device); leave only model files and folders in the artifact dir"
                )
            try:
                hashes[relative] = _hash_file(path, fsync=fsync)
            except OSError as error:
                raise InvalidRegistrationError(
                    f"cannot read artifact file {relative} in {directory}: {error.strerror}; fix its "
                    "permissions or remove it"
                ) from error
    if not hashes:
        raise InvalidRegistrationError(
            f"artifact dir {directory} holds no files; the training task did not save the model there"
        )
    return hashes


def _hash_file(path: Path, *, fsync: bool) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
        if fsync:
            # The copy must be on disk before the rename makes it visible as a version.
            os.fsync(stream.fileno())
    return digest.hexdigest()


def _copy_artifact(source: Path, destination: Path, *, keep_fresh: Path) -> None:
    def copy_and_touch(src: str, dst: str) -> Any:
        # shutil.copy2 is looked up per call so tests can make it fail; touching the staging dir keeps a
        # long copy from looking like a stale crash leftover to a concurrent registration's clean-up.
        result = shutil.copy2(src, dst)
        os.utime(keep_fresh)
        return result

    shutil.copytree(source, destination, symlinks=False, copy_function=copy_and_touch)


def _remove_stale_staging_dirs(staging_root: Path) -> None:
    cutoff = time.time() - STALE_STAGING_AGE_S
    for entry in staging_root.iterdir():
        try:
            is_stale = entry.lstat().st_mtime < cutoff
        except FileNotFoundError:
            continue  # another registration removed or published it meanwhile
        if not is_stale:
            continue
        log.warning("removing staging leftover %s of a crashed registration", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _write_file_durably(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def _replace_file_atomically(path: Path, text: str) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes a rename durable: without it a power cut can forget the new directory entry.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RegistryError(f"{path} is missing") from error
    except (OSError, ValueError) as error:
        raise RegistryError(f"{path} cannot be read as JSON: {error}") from error
    if not isinstance(value, dict):
        raise RegistryError(f"{path} holds a {type(value).__name__}, expected a JSON object")
    return value


def _version_numbers(versions_dir: Path) -> list[int]:
    if not versions_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in versions_dir.iterdir()
        if _VERSION_DIR_PATTERN.fullmatch(entry.name) and entry.is_dir()
    )


def _highest_version_number(versions_dir: Path) -> int:
    return max(_version_numbers(versions_dir), default=0)


def _version_dir_name(number: int) -> str:
    return f"{number:04d}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fmt(value: float) -> str:
    # repr gives the shortest text that round-trips, so two values that print alike are equal.
    return repr(value)
