"""A file-based model registry: numbered, never-overwritten versions, aliases moved atomically, tags per version.

Named as MLflow users expect: integer versions from 1; aliases ``champion`` (what is served) and
``challenger`` (the newest version that passed the gate but was not promoted); ``models:/<name>/<version>``
and ``models:/<name>@<alias>`` resolve with :meth:`ModelRegistry.resolve`.

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
        aliases.json             the aliases (alias -> version) and the history of every alias move (when,
                                 alias, from, to, why, by whom); absent until the first move
        tags.json                the tags per version (mutable, unlike the version dirs)
        .staging/                versions being assembled; invisible to readers
        .lock                    flock'ed by every writer of this model

Invariants:

- **Never overwrite.** A version is assembled in ``.staging/`` and appears only through one ``os.rename`` to
  ``versions/<NNNN>``, which fails when that name exists, so a crash midway never leaves a half-written version
  and two registrations never share a number. A version dir is never written again after it appears.
- **Idempotent registration.** Registering again with the same ``pipeline_run_id`` and the same artifact file
  hashes returns the existing version, so an Airflow task retry does not create a duplicate.
- **Atomic aliases.** ``aliases.json`` is replaced with ``os.replace`` of a fsync'ed temp file in the same
  dir, so readers see the old aliases or the new ones, never a torn file, and a move never appears without
  its history record (they share the file). Every move happens under ``.lock`` after re-reading the file, so
  concurrent promotions in other processes cannot interleave their compare and move or lose a record.
  :meth:`ModelRegistry.promote_if_not_worse` moves ``champion`` only to a candidate whose metric is not worse
  than the champion's (ties promote) and makes any other candidate the ``challenger``;
  :meth:`ModelRegistry.set_alias` and :meth:`ModelRegistry.rollback` are a person's decisions and skip the rule.
- **Nothing left behind on error.** A failed registration removes its staging dir. A killed one cannot, so
  every registration holds a lock file beside its staging dir (``.staging/<dir>.owner``) while it works: the
  next registration removes any staging dir whose lock nobody holds any more, and any dir without a lock
  file once it is an hour old. A pointer's temp file left by a killed promotion is removed by the next one.
- **Disk full** is :class:`DiskFullError`: nothing registered, the pointer not moved, the earlier versions
  untouched, and the message says how much space is needed and what to free.
- **Crash tests.** ``PUSHTRAIN_FAULT_INJECT=<point>`` (one of ``FAULT_POINTS``) ends the process at that
  point with ``os._exit``, as a kill would; only tests set it.

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
ALIASES_FILE_NAME = "aliases.json"
TAGS_FILE_NAME = "tags.json"
ARTIFACT_DIR_NAME = "artifact"
METRICS_FILE_NAME = "metrics.json"
LINEAGE_FILE_NAME = "lineage.json"
VERSION_FILE_NAME = "version.json"
VERSION_SCHEMA = 1
ALIASES_SCHEMA = 1
CHAMPION = "champion"
CHALLENGER = "challenger"
# Longer than any real copy of a model artifact, so only a crashed registration's dir is this old.
STALE_STAGING_AGE_S = 3600.0
# A claim file younger than this may belong to a registration that has created it but not yet locked it.
CLAIM_GRACE_S = 10.0
OWNER_SUFFIX = ".owner"
_HASH_CHUNK_BYTES = 1024 * 1024
# The moments of a registration and a promotion at which a crash test kills the process (see the docstring).
FAULT_INJECTION_ENV = "PUSHTRAIN_FAULT_INJECT"
FAULT_EXIT_CODE = 86
FAULT_POINTS = (
    "register:artifact-copied",  # the artifact is in the staging dir
    "register:metadata-written",  # metrics.json and lineage.json too
    "register:version-record-written",  # version.json too: the next step is the rename that publishes
    "register:published",  # renamed into versions/: the version exists
    "promote:decided",  # under the model lock, the comparison made, nothing written
    "promote:pointer-written",  # the new aliases are in their temp file, not yet renamed over aliases.json
    "promote:pointer-moved",  # aliases.json names the new version
)
_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_DIR_PATTERN = re.compile(r"\d{4,}")
_ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_REFERENCE_PATTERN = re.compile(
    r"(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127}?)(?:/(?P<version>\d+)|@(?P<alias>[a-z][a-z0-9_-]{0,63}))"
)


class RegistryError(Exception):
    """The registry on disk is not in the state an operation needs (missing version, damaged file)."""


class InvalidRegistrationError(RegistryError, ValueError):
    """The arguments to :meth:`ModelRegistry.register` cannot make a version; the message says how to fix them."""


class VersionNotFoundError(RegistryError, LookupError):
    """The asked-for model version does not exist."""


class DiskFullError(RegistryError, OSError):
    """The registry's disk is full: nothing was written; the message says how much space is needed and where."""


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

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}/{self.number}"


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move; ``to_version`` None means the alias was deleted, ``from_version`` None new."""

    at: str  # UTC ISO time
    alias: str
    from_version: int | None
    to_version: int | None
    reason: str
    by: str  # "dag_run:<dag_id>/<run_id>" or "user:<name>"
    rollback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "alias": self.alias,
            "from": self.from_version,
            "to": self.to_version,
            "reason": self.reason,
            "by": self.by,
            "rollback": self.rollback,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> AliasMove:
        return cls(
            at=record["at"],
            alias=record["alias"],
            from_version=record["from"],
            to_version=record["to"],
            reason=record["reason"],
            by=record["by"],
            rollback=bool(record.get("rollback", False)),
        )


@dataclass(frozen=True)
class PromotionResult:
    """What :meth:`ModelRegistry.promote_if_not_worse` did and why.

    ``moved`` is true only when this call moved ``champion``; ``champion`` is what it names after the call,
    so a retried promotion task can tell "already champion" (``moved`` false) from "kept the old".
    """

    moved: bool
    reason: str
    candidate: ModelVersion
    previous: ModelVersion | None
    champion: ModelVersion | None

    @property
    def candidate_is_champion(self) -> bool:
        return self.champion is not None and self.champion.number == self.candidate.number


class ModelRegistry:
    """Numbered model versions under ``root/<model_name>/versions``, their aliases, history and tags."""

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

        model_dir = self._model_dir(model_name)
        staging_root = model_dir / STAGING_DIR_NAME
        versions_dir = model_dir / VERSIONS_DIR_NAME
        if staging_root.is_dir():  # before the retry check: a killed registration may have published
            _remove_stale_staging_dirs(staging_root)
        existing = self._find_same_registration(model_name, pipeline_run_id, source_hashes)
        if existing is not None:
            log.info(
                "%s %s already holds run %s's artifact; not registering again",
                model_name,
                existing.label,
                pipeline_run_id,
            )
            return existing

        # Outermost, so that a full disk is measured after the partial copy was removed.
        with _disk_full_is_explained(self.root, f"registering a new version of {model_name}", artifact_dir):
            staging_root.mkdir(parents=True, exist_ok=True)
            versions_dir.mkdir(parents=True, exist_ok=True)
            claim = _StagingClaim.take(staging_root)
            staging_dir = claim.directory
            try:
                _copy_artifact(artifact_dir, staging_dir / ARTIFACT_DIR_NAME, keep_fresh=staging_dir)
                stored_hashes = _hash_artifact_dir(staging_dir / ARTIFACT_DIR_NAME, fsync=True)
                if stored_hashes != source_hashes:
                    raise RegistryError(
                        f"{artifact_dir} changed while it was being copied into the registry; register it "
                        "again once the training task has finished writing it"
                    )
                _fault_point("register:artifact-copied")
                _write_file_durably(staging_dir / METRICS_FILE_NAME, metrics_json)
                _write_file_durably(staging_dir / LINEAGE_FILE_NAME, lineage_json)
                _fault_point("register:metadata-written")
                _make_readable(staging_dir)
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
            finally:
                claim.release()
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
            _fault_point("register:version-record-written")
            try:
                # rename(2) onto an existing non-empty dir fails, which is what makes a number taken for good.
                os.rename(staging_dir, versions_dir / _version_dir_name(number))
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                number = max(number, _highest_version_number(versions_dir)) + 1
                continue
            _fault_point("register:published")
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

    def promote_if_not_worse(
        self,
        model_name: str,
        version: ModelVersion | int,
        *,
        by: str | None = None,
        against: tuple[int, float, str] | None = None,
    ) -> PromotionResult:
        """Make ``version`` the champion if its metric is >= the champion's (or there is none).

        A candidate that is not promoted becomes the challenger instead; either move is recorded in the alias
        history with ``by`` (a DAG run or a user; default: the current user).

        ``against`` = (champion version number, its metric value, where it was measured): compare with that
        figure instead of the champion's recorded one (a champion re-scored on the candidate's held-out
        split). If the champion is no longer that version, the candidate is kept as challenger.
        """
        number = self._number_of(model_name, version)
        actor = by or default_actor()
        with self._lock(model_name):
            # Pointer temp files present while this process holds the lock are a killed promotion's.
            for leftover in self._model_dir(model_name).glob(f".{ALIASES_FILE_NAME}.*.tmp"):
                leftover.unlink(missing_ok=True)
            # Re-read from disk under the lock: the caller's object may be stale, the files are the truth.
            candidate = self.get(model_name, number)
            current = self.champion(model_name)
            if current is not None and current.number == candidate.number:
                return PromotionResult(
                    False, f"{candidate.label} is already champion", candidate, current, current
                )
            if current is not None and current.metric != candidate.metric:
                reason = (
                    f"kept {current.label}: it was promoted on {current.metric} but candidate {candidate.label} "
                    f"reports {candidate.metric}; register the candidate with metric={current.metric!r} to "
                    "compare them"
                )
                self._move_aliases(model_name, {CHALLENGER: candidate.number}, reason, actor)
                return PromotionResult(False, reason, candidate, current, current)
            current_value = current.metric_value if current is not None else 0.0
            measured = ""
            if current is not None and against is not None:
                if current.number != against[0]:
                    reason = (
                        f"kept {current.label}: the candidate {candidate.label} was compared with v{against[0]}, "
                        f"which is no longer the champion"
                    )
                    self._move_aliases(model_name, {CHALLENGER: candidate.number}, reason, actor)
                    return PromotionResult(False, reason, candidate, current, current)
                current_value, measured = float(against[1]), f" on {against[2]}"
            if current is not None and candidate.metric_value < current_value:
                reason = (
                    f"kept {current.label}: its {current.metric} {_fmt(current_value)}{measured} beats "
                    f"candidate {candidate.label}'s {_fmt(candidate.metric_value)}"
                )
                self._move_aliases(model_name, {CHALLENGER: candidate.number}, reason, actor)
                return PromotionResult(False, reason, candidate, current, current)

            if current is None:
                reason = (
                    f"promoted {candidate.label}: no champion yet "
                    f"({candidate.metric} {_fmt(candidate.metric_value)})"
                )
            else:
                relation = "equals" if candidate.metric_value == current_value else "beats"
                reason = (
                    f"promoted {candidate.label}: its {candidate.metric} {_fmt(candidate.metric_value)} "
                    f"{relation} {current.label}'s {_fmt(current_value)}{measured}"
                )
            _fault_point("promote:decided")
            self._move_aliases(model_name, {CHAMPION: candidate.number}, reason, actor)
        log.info("%s: %s", model_name, reason)
        return PromotionResult(True, reason, candidate, current, candidate)

    def set_alias(
        self,
        model_name: str,
        alias: str,
        version: ModelVersion | int | None,
        *,
        reason: str,
        by: str | None = None,
    ) -> AliasMove | None:
        """Point ``alias`` at ``version`` (or delete it with None), whatever the metrics say: a person's call.

        Returns the recorded move, or None when the alias already pointed there.
        """
        _check_alias(alias)
        number = None if version is None else self._number_of(model_name, version)
        with self._lock(model_name):
            if number is not None:
                self.get(model_name, number)  # under the lock: it must exist now
            moves = self._move_aliases(model_name, {alias: number}, reason, by or default_actor())
        return moves[0] if moves else None

    def record_refusal(
        self, model_name: str, alias: str, refused: ModelVersion | int, *, reason: str, by: str | None = None
    ) -> AliasMove:
        """Record that ``alias`` did not move to ``refused`` and why (e.g. it failed its smoke test).

        The record is an entry whose ``from`` and ``to`` are the alias's unchanged version.
        """
        _check_alias(alias)
        number = self._number_of(model_name, refused)
        with self._lock(model_name):
            state = self._read_aliases(model_name)
            stays = state["aliases"].get(alias)
            move = AliasMove(
                at=_utc_now().isoformat(timespec="milliseconds"),
                alias=alias,
                from_version=stays,
                to_version=stays,
                reason=f"refused v{number}: {reason}",
                by=by or default_actor(),
            )
            state["history"].append(move.to_json())
            _replace_file_atomically(
                self._model_dir(model_name) / ALIASES_FILE_NAME, _to_json(state, "aliases")
            )
        return move

    def rollback(
        self, model_name: str, to: int | None = None, *, reason: str = "", by: str | None = None
    ) -> AliasMove:
        """Move ``champion`` back to ``to``, or to the champion before the current one.

        Rollbacks without ``to`` walk back one champion each (v3 -> v2 -> v1), never forth to the version just
        left; that version stays in the alias history (its move's ``from``). Raises :class:`RegistryError`
        when there is no earlier champion to go back to.
        """
        actor = by or default_actor()
        with self._lock(model_name):
            state = self._read_aliases(model_name)
            current = state["aliases"].get(CHAMPION)
            if to is None:
                earlier = _earlier_champions(AliasMove.from_json(move) for move in state["history"])
                if not earlier:
                    raise RegistryError(
                        f"{model_name} has had no champion before v{current}; name the version with --to"
                    )
                to = earlier[-1]
            target = self.get(model_name, to)
            if target.number == current:
                raise RegistryError(f"{model_name} {target.label} is already champion")
            why = f"rollback from v{current} to {target.label}" + (f": {reason}" if reason else "")
            moves = self._move_aliases(model_name, {CHAMPION: target.number}, why, actor, rollback=True)
        log.info("%s: %s", model_name, why)
        return moves[0]

    def set_tag(self, model_name: str, version: ModelVersion | int, key: str, value: str) -> None:
        """Set one tag of a version (``validation_status``, ``model_tests``, ...); tags are mutable."""
        number = self._number_of(model_name, version)
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidRegistrationError(
                f"tags are non-empty str keys with str values, got {key!r}={value!r}"
            )
        with self._lock(model_name):
            self.get(model_name, number)
            path = self._model_dir(model_name) / TAGS_FILE_NAME
            tags = _read_json(path) if path.exists() else {}
            tags.setdefault(str(number), {})[key] = value
            _replace_file_atomically(path, _to_json(tags, "version tags"))

    # ---------------------------------------------------------------------------------------------- reading

    def champion(self, model_name: str) -> ModelVersion | None:
        """The version the ``champion`` alias names (what is served), or None before the first promotion."""
        return self.alias(model_name, CHAMPION)

    def challenger(self, model_name: str) -> ModelVersion | None:
        """The newest version that passed the gate but was not promoted, or None."""
        return self.alias(model_name, CHALLENGER)

    def alias(self, model_name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` points at, or None when the alias is not set."""
        number = self.aliases(model_name).get(alias)
        if number is None:
            return None
        try:
            return self.get(model_name, number)
        except VersionNotFoundError as error:
            raise RegistryError(
                f"{self._model_dir(model_name) / ALIASES_FILE_NAME}: {alias} points at v{number}, which does "
                "not exist"
            ) from error

    def aliases(self, model_name: str) -> dict[str, int]:
        """Every alias of ``model_name`` and the version number it names (empty before the first move)."""
        _check_model_name(model_name)
        return dict(self._read_aliases(model_name)["aliases"])

    def history(self, model_name: str) -> list[AliasMove]:
        """Every alias move of ``model_name``, oldest first: when, which alias, from, to, why, by whom."""
        _check_model_name(model_name)
        return [AliasMove.from_json(move) for move in self._read_aliases(model_name)["history"]]

    def tags(self, model_name: str, version: ModelVersion | int) -> dict[str, str]:
        """The tags of one version (empty when none were set)."""
        number = self._number_of(model_name, version)
        path = self._model_dir(model_name) / TAGS_FILE_NAME
        return dict(_read_json(path).get(str(number), {})) if path.exists() else {}

    def model_names(self) -> list[str]:
        """The names of every model with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if _MODEL_NAME_PATTERN.fullmatch(entry.name) and (entry / VERSIONS_DIR_NAME).is_dir()
        )

    def resolve(self, reference: str) -> ModelVersion:
        """The version a reference names: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, or the
        same without ``models:/``. Raises :class:`VersionNotFoundError` when it names nothing."""
        match = _REFERENCE_PATTERN.fullmatch(reference.strip()) if isinstance(reference, str) else None
        if match is None:
            raise VersionNotFoundError(
                f"{reference!r} is not a model reference; use models:/<name>/<version> or models:/<name>@<alias>"
            )
        name, number, alias = match["name"], match["version"], match["alias"]
        if number is not None:
            return self.get(name, int(number))
        version = self.alias(name, alias)
        if version is None:
            raise VersionNotFoundError(
                f"{name} has no alias {alias!r} (aliases: {self.aliases(name) or 'none'})"
            )
        return version

    def _number_of(self, model_name: str, version: ModelVersion | int) -> int:
        _check_model_name(model_name)
        if isinstance(version, ModelVersion):
            if version.model_name != model_name:
                raise InvalidRegistrationError(
                    f"cannot use {version.model_name} {version.label} as a version of {model_name}; "
                    "pass a version of the same model"
                )
            return version.number
        return version

    def _read_aliases(self, model_name: str) -> dict[str, Any]:
        path = self._model_dir(model_name) / ALIASES_FILE_NAME
        if not path.exists():
            return {"schema": ALIASES_SCHEMA, "model_name": model_name, "aliases": {}, "history": []}
        state = _read_json(path)
        aliases, history = state.get("aliases"), state.get("history")
        if (
            not isinstance(aliases, dict)
            or not isinstance(history, list)
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in aliases.values())
        ):
            raise RegistryError(f"{path} holds no valid aliases and history; it is damaged")
        return state

    def _move_aliases(
        self,
        model_name: str,
        targets: Mapping[str, int | None],
        reason: str,
        by: str,
        *,
        rollback: bool = False,
    ) -> list[AliasMove]:
        """Under the model lock: point each alias at its target and record the moves, in one atomic replace.

        Aliases and history share one file so a move and its record appear together or not at all. A version
        that becomes champion stops being challenger.
        """
        state = self._read_aliases(model_name)
        aliases: dict[str, int] = state["aliases"]
        wanted = dict(targets)
        if wanted.get(CHAMPION) is not None and aliases.get(CHALLENGER) == wanted[CHAMPION]:
            wanted.setdefault(CHALLENGER, None)
        moved_at = _utc_now().isoformat(timespec="milliseconds")
        moves = []
        for alias, number in wanted.items():
            if aliases.get(alias) == number:
                continue
            move = AliasMove(
                at=moved_at,
                alias=alias,
                from_version=aliases.get(alias),
                to_version=number,
                reason=reason,
                by=by,
                rollback=rollback and alias == CHAMPION,
            )
            moves.append(move)
            state["history"].append(move.to_json())
            if number is None:
                aliases.pop(alias, None)
            else:
                aliases[alias] = number
        if not moves:
            return []
        with _disk_full_is_explained(self.root, f"moving {model_name}'s aliases"):
            _replace_file_atomically(
                self._model_dir(model_name) / ALIASES_FILE_NAME,
                _to_json(state, "aliases"),
                fault_point="promote:pointer-written",
            )
        _fault_point("promote:pointer-moved")
        return moves

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


def _earlier_champions(history: Iterator[AliasMove]) -> list[int]:
    """The champions a rollback can return to, the latest last: a stack that promotions push and rollbacks pop."""
    stack: list[int] = []
    for move in history:
        if move.alias != CHAMPION:
            continue
        if move.rollback and move.to_version in stack:
            del stack[stack.index(move.to_version) :]
        elif move.from_version is not None:
            stack.append(move.from_version)
    return stack


def default_actor() -> str:
    """Who moves an alias when the caller does not say: the user running this process."""
    return f"user:{os.environ.get('USER') or os.environ.get('LOGNAME') or os.getuid()}"


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not _ALIAS_PATTERN.fullmatch(alias):
        raise InvalidRegistrationError(
            f"alias {alias!r} is not a valid alias; use 1-64 lowercase letters, digits, '_' or '-', starting "
            "with a letter (e.g. champion, challenger)"
        )


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


@dataclass(frozen=True)
class _StagingClaim:
    """A registration's staging dir and its lock file, locked through ``fd`` for as long as it works."""

    directory: Path
    owner: Path
    fd: int

    @classmethod
    def take(cls, staging_root: Path) -> _StagingClaim:
        # Locked before it gets the name others look for, so no one sees it unlocked while its owner lives.
        fd, claim_name = tempfile.mkstemp(prefix=".claim-", dir=staging_root)
        directory = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            directory = Path(tempfile.mkdtemp(prefix=f"{_utc_now():%Y%m%dT%H%M%S}-", dir=staging_root))
            owner = staging_root / f"{directory.name}{OWNER_SUFFIX}"
            os.replace(claim_name, owner)
        except BaseException:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(claim_name)
            os.close(fd)
            raise
        return cls(directory, owner, fd)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.owner.unlink()
        os.close(self.fd)


def _owner_is_gone(owner: Path) -> bool:
    """True when no live registration holds ``owner``'s lock (its process died, or it finished).

    An ``.owner`` file is locked before it gets that name; a ``.claim-`` file may be caught between its
    creation and its lock, so a young one counts as held.
    """
    try:
        if owner.name.startswith(".claim-") and time.time() - owner.stat().st_mtime < CLAIM_GRACE_S:
            return False
        fd = os.open(owner, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock just taken
    return True


def _remove_stale_staging_dirs(staging_root: Path) -> None:
    """Remove what killed registrations left: dirs whose owner died, and unclaimed dirs an hour old."""
    cutoff = time.time() - STALE_STAGING_AGE_S
    for entry in staging_root.iterdir():
        if entry.name.endswith(OWNER_SUFFIX) or entry.name.startswith(".claim-"):
            if _owner_is_gone(entry) and not entry.with_name(entry.name.removesuffix(OWNER_SUFFIX)).exists():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()  # the lock file of a registration killed after it published
            continue
        owner = entry.with_name(entry.name + OWNER_SUFFIX)
        try:
            is_stale = _owner_is_gone(owner) if owner.exists() else entry.lstat().st_mtime < cutoff
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
        with contextlib.suppress(FileNotFoundError):
            owner.unlink()


def _make_readable(directory: Path) -> None:
    """Folders 0755 and files 0644: a version is read by other users too (a serving container, the UI)."""
    for folder, _, files in os.walk(directory):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder, name), 0o644)


def _write_file_durably(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def _replace_file_atomically(path: Path, text: str, *, fault_point: str | None = None) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        if fault_point:
            _fault_point(fault_point)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _fault_point(point: str) -> None:
    """End the process here, as a kill would, when a crash test asks for this point (never otherwise)."""
    if os.environ.get(FAULT_INJECTION_ENV) == point:
        os._exit(FAULT_EXIT_CODE)


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, shutil.Error):  # copytree gathers its files' errors as text
        return any("No space left" in str(why) or "quota exceeded" in str(why) for *_, why in error.args[0])
    return isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS


@contextlib.contextmanager
def _disk_full_is_explained(root: Path, doing: str, artifact_dir: Path | None = None) -> Iterator[None]:
    """Turn running out of disk space into a :class:`DiskFullError` that says what is needed and what to free."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, shutil.Error) as error:
        if not _is_disk_full(error):
            raise
        usage = shutil.disk_usage(root if root.exists() else root.parent)
        needed = ""
        if artifact_dir is not None:
            size = sum(p.stat().st_size for p in Path(artifact_dir).rglob("*") if p.is_file())
            needed = f"the artifact needs {_megabytes(size)} MB, "
        disk_full = DiskFullError(
            f"disk full (No space left on device) while {doing}: {needed}{_megabytes(usage.free)} MB of "
            f"{_megabytes(usage.total)} MB free on the disk of {root}. Nothing was written: the earlier "
            "versions and the aliases are as they were. Free space on that disk (finished pipelines' "
            "outputs under the data dir's runs/, old versions no alias names) or give the data "
            "dir (PUSHTRAIN_DATA_DIR) a larger disk, then retry the task"
        )
        disk_full.errno = errno.ENOSPC
        raise disk_full from error


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f}"


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
