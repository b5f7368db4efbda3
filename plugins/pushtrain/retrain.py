"""Retraining when data changes: a new data set version retrains every champion trained on an older one.

``retrain_on_new_data`` is scheduled on the data set assets (``dataset_assets.DATASETS_ALIAS``). For each
new version an asset event announces (``extra``: name, version, sha256), ``affected_champions`` finds the
models whose champion's lineage names that data set at an older version, and ``prepare_retrain`` makes one
pipeline per model: the champion's repository at the champion's commit, its final HPARAMS written into the
entry file (as a tweak writes them: ``tweak.apply_hparams``), ``max_attempts = 1``, the data set pinned to
the new version. Attempt 1 of that pipeline is prepared here; a ``tweak_and_retrain`` run with
``{"pipeline_id", "attempt": 1}`` then trains, evaluates and judges it with the usual tasks, and the usual
gate (the champion's ``target``) and promotion rule (``registry.promote_if_not_worse``) decide.

A fair comparison: before the retrained model is registered, ``rescore.rescore_champion`` scores the
champion's registered artifact on the new held-out split with the same label-blind evaluation the gate
uses (its evaluation container, ``pushtrain.blind``), and promotion compares the retrained model with that
figure (``promote_if_not_worse(against=...)``). The champion's accuracy on its own (older) split and on the
new one are both kept in ``retrain.json`` beside ``pipeline.json`` and in the new version's lineage. A
champion that cannot be re-scored (its artifact fails to load or predict, or another version became
champion meanwhile) leaves the retrained model registered as challenger, never champion, with the reason.

A run started by hand or by ``python -m pushtrain datasets add`` (``POST /api/v2/dags/retrain_on_new_data/
dagRuns``) has no triggering asset events: its Params ``dataset`` and ``version`` name the new version instead
(``requested_version``; no version: the latest in the store). The CLI triggers the DAG rather than relying on
an asset event it posts, because an event posted through the REST API reaches only DAGs scheduled on the asset
itself, never one scheduled on the alias (Airflow queues alias consumers only for events a task emitted
through the alias): see ``airflow_api.announce``.

A data set that lives in a model repository (``repo:<folder>``) changes with a commit, which the git sensor
trains as any push: such champions are left out here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pushtrain import pipeline, settings
from pushtrain.dataset_assets import ASSET_SCHEME
from pushtrain.rescore import RETRAIN_FILE
from pushtrain.runner.contract import write_json_atomic

log = logging.getLogger(__name__)

ATTEMPT = 1  # a retrain is one attempt: the champion's code and knobs on the new data
_ASSET_PREFIX = f"{ASSET_SCHEME}://"
_MISSING = object()


class RetrainError(Exception):
    """A champion cannot be retrained as it is (its lineage lacks what a retrain needs); the message says why."""


@dataclass(frozen=True)
class NewVersion:
    """A data set version an asset event announced."""

    name: str
    version: int
    sha256: str = ""


@dataclass(frozen=True)
class Champion:
    """A model to retrain: its champion version and what that version's lineage says it was trained on."""

    model_name: str
    version: int
    repo_url: str
    branch: str
    commit: str
    kind: str
    model_file: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    dataset_name: str
    dataset_version: int
    accuracy: float
    pipeline_id: str


def new_versions(triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> list[NewVersion]:
    """The data set versions the triggering asset events announce, each once, by name then version.

    An event is read from its ``extra`` (``name``, ``version``, ``sha256``); the name falls back to the asset
    (``pushtrain-dataset://<name>``), and an event without a version (one a task of your own emitted through
    the alias) means the data set's latest version in the store. Events on other assets are ignored.
    """
    from pushtrain import datasets

    found: dict[tuple[str, int], NewVersion] = {}
    for events in (triggering_asset_events or {}).values():
        for event in events:  # the same event shows under its asset and under the alias it came through
            extra = dict(getattr(event, "extra", None) or {})
            uri = str(getattr(getattr(event, "asset", None), "uri", "") or "")
            name = str(extra.get("name") or "") or (
                uri[len(_ASSET_PREFIX) :] if uri.startswith(_ASSET_PREFIX) else ""
            )
            if not datasets.NAME_PATTERN.fullmatch(name):
                log.warning("ignored an asset event on %r: it names no pushtrain data set", uri)
                continue
            version = extra.get("version")
            if isinstance(version, str) and version.lstrip("v").isdigit():
                version = int(version.lstrip("v"))
            if version is None:
                known = datasets.versions(name)
                if not known:
                    log.warning("ignored an asset event on data set %r: the store has no version of it", name)
                    continue
                version = known[-1]
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                log.warning(
                    "ignored an asset event on data set %r: version %r is not a number >= 1", name, version
                )
                continue
            found.setdefault((name, version), NewVersion(name, version, str(extra.get("sha256") or "")))
    return [found[key] for key in sorted(found)]


def has_events(triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> bool:
    """Whether the run was started by asset events at all (a manual or REST-triggered run has none)."""
    return any(True for events in (triggering_asset_events or {}).values() for _ in events)


def requested_version(dataset: str, version: Any) -> NewVersion:
    """The data set version a run's Params ask for: ``version`` of ``dataset``, or its latest when None.

    These come from a person (the trigger form) or the CLI (``datasets add``), so a name or version the store
    does not hold is an error that says what exists, not a line skipped in the log.
    """
    from pushtrain import datasets

    if not isinstance(dataset, str) or not datasets.NAME_PATTERN.fullmatch(dataset):
        raise RetrainError(
            f"Param dataset {dataset!r} is not a data set name (letters, digits, '.', '_', '-'): "
            "name a data set that `python -m pushtrain datasets list` shows"
        )
    known = datasets.versions(dataset)
    if not known:
        raise RetrainError(
            f"Param dataset {dataset!r}: the store has no version of it; register it first "
            "(`python -m pushtrain datasets add NAME PATH` or the register_dataset DAG)"
        )
    if version is None:
        return NewVersion(dataset, known[-1])
    if isinstance(version, str) and version.lstrip("v").isdigit():
        version = int(version.lstrip("v"))
    if not isinstance(version, int) or isinstance(version, bool) or version not in known:
        raise RetrainError(
            f"Param version {version!r} of data set {dataset!r} is not in the store "
            f"(it has {', '.join(f'v{v}' for v in known)}): give one of those, or leave it empty for the latest"
        )
    return NewVersion(dataset, version)


def versions_to_retrain(
    triggering_asset_events: Mapping[Any, Iterable[Any]] | None,
    dataset: str = "",
    version: Any = None,
    say: Callable[[str], None] = log.info,
) -> list[NewVersion]:
    """The new data versions a run acts on: its triggering asset events, else its Params.

    An asset-triggered run always has the Params' defaults, so Params given beside events can only come from
    a test or a future caller; the events win and a line says the Params were not used.
    """
    if has_events(triggering_asset_events):
        if dataset:
            say(f"Params dataset={dataset!r} version={version!r} not used: the run has asset events")
        return new_versions(triggering_asset_events)
    if not dataset:
        say(
            "no asset events and no Param dataset: nothing to retrain (trigger with "
            '{"dataset": "<name>", "version": <n>} to retrain on a version by hand)'
        )
        return []
    return [requested_version(dataset, version)]


def _version_number(split_version: Any) -> int | None:
    text = str(split_version or "").lstrip("v")
    return int(text) if text.isdigit() else None


def champion_of(registry: Any, model_name: str) -> Champion | None:
    """What the champion of ``model_name`` was trained on, from its lineage; None without a champion."""
    version = registry.champion(model_name)
    if version is None:
        return None
    lineage = version.lineage
    dataset = lineage.get("dataset") or {}
    origin = lineage.get("pipeline") or {}
    number = _version_number(dataset.get("split_version"))
    if not dataset.get("name") or number is None:
        raise RetrainError(f"{model_name} v{version.number}: its lineage names no data set version")
    return Champion(
        model_name=model_name,
        version=version.number,
        repo_url=lineage.get("repo_url", ""),
        branch=origin.get("branch", ""),
        commit=lineage.get("commit", ""),
        kind=lineage.get("kind", ""),
        model_file=lineage.get("model_file", ""),
        hparams=dict(lineage.get("hparams") or {}),
        config=dict(origin.get("config") or {}),
        dataset_name=dataset["name"],
        dataset_version=number,
        accuracy=float(version.metric_value),
        pipeline_id=version.pipeline_run_id,
    )


def affected_champions(
    new: NewVersion, registry: Any, say: Callable[[str], None] = log.info
) -> list[Champion]:
    """Every model whose champion was trained on data set ``new.name`` at a version older than ``new``.

    A champion on the same or a newer version is up to date; one whose data set is a repository folder
    (``repo:``) is retrained by the push that changes it; a champion whose lineage cannot be read is named in
    a line and left out, so one broken record does not hold back the others.
    """
    from pushtrain import datasets

    affected = []
    for model_name in registry.model_names():
        try:
            champion = champion_of(registry, model_name)
        except (RetrainError, OSError, ValueError) as exc:
            say(f"{model_name}: not retrained: {exc}")
            continue
        if champion is None or champion.dataset_name != new.name:
            continue
        if champion.dataset_version >= new.version:
            say(
                f"{model_name}: champion v{champion.version} is on {new.name} v{champion.dataset_version} "
                f"already (event: v{new.version})"
            )
            continue
        if str(champion.config.get("dataset", "")).startswith(datasets.REPO_PREFIX):
            say(
                f"{model_name}: its data set is a folder of its repository ({champion.config['dataset']}): "
                "a push of the changed data retrains it"
            )
            continue
        affected.append(champion)
    return affected


def retrain_pipeline_id(champion: Champion, new: NewVersion, dag_run_id: str) -> str:
    """Stable per (run, model, data version), so a retried task rebuilds the same pipeline, not a second one."""
    key = f"{dag_run_id}:{champion.model_name}:{new.name}:v{new.version}"
    return pipeline.pipeline_id_for(champion.commit, key)


def retrain_config(champion: Champion) -> pipeline.PipelineConfig:
    """The champion's resolved configuration, for one attempt of its own kind and no push back."""
    known = {f.name: f for f in dataclasses.fields(pipeline.PipelineConfig)}
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in champion.config.items()
        if key in known
    }
    config = dataclasses.replace(
        pipeline.PipelineConfig(**values),
        max_attempts=1,
        kind=champion.kind or values.get("kind", "auto"),
        commit_back=False,  # the champion's code and knobs: nothing new to push
        entry=champion.model_file or values.get("entry", "model.py"),
    )
    try:
        return config.validated()
    except pipeline.ConfigError as exc:
        raise RetrainError(f"{champion.model_name} v{champion.version}: its configuration: {exc}") from None


def prepare_retrain(
    champion: Champion, new: NewVersion, dag_run_id: str, remote: Any, say: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Make the retrain pipeline of one champion and prepare its attempt 1; the ``tweak_and_retrain`` conf.

    The champion's commit is checked out into the pipeline's workspace; a file that ``pushtrain adapt``
    rewrote for the champion is rewritten the same way (``steps.detect_model_kind``); attempt 1 copies it and
    gets the champion's final HPARAMS (``tweak.apply_hparams``, the diff recorded as the attempt's tweak).
    """
    from pushtrain import datasets, gitops, steps, tweak

    manifest = datasets.ensure_dataset(new.name, new.version)  # fails here if the version is not in the store
    pipeline_id = retrain_pipeline_id(champion, new, dag_run_id)
    config = retrain_config(champion)
    repo = gitops.fetch(remote)
    gitops.checkout(repo, champion.commit, pipeline.workspace_dir(pipeline_id) / "repo")
    info = gitops.commit_info(repo, champion.commit)
    pipeline.Pipeline(
        pipeline_id=pipeline_id,
        repo_url=champion.repo_url,
        branch=champion.branch,
        commit=champion.commit,
        author_name=info.author_name,
        author_email=info.author_email,
        commit_message=info.message,
        kind="",
        config=config,
        origin_dag_run_id=dag_run_id,
        model_name=champion.model_name,
        dataset_name=manifest.name,
        dataset_version=manifest.version,
    ).save()
    record = {
        "model_name": champion.model_name,
        "champion_version": champion.version,
        "champion_pipeline_id": champion.pipeline_id,
        "dataset": new.name,
        "from_version": champion.dataset_version,
        "to_version": manifest.version,
        "dataset_sha256": manifest.dataset_sha256,
        "champion_accuracy": champion.accuracy,
        "champion_accuracy_measured_on": f"{champion.dataset_name} v{champion.dataset_version}",
        "champion_rescored_on_new_split": False,  # rescore_champion, before registering, sets these
        "champion_accuracy_new_split": None,
    }
    write_json_atomic(pipeline.pipeline_dir(pipeline_id) / RETRAIN_FILE, record)
    steps.detect_model_kind(pipeline_id)  # the adaptation the champion's file had, and its kind
    steps.prepare_first_attempt(pipeline_id)
    entry = pipeline.attempt_dir(pipeline_id, ATTEMPT) / "code" / config.entry
    original = entry.read_text()
    try:
        current = tweak.read_hparams(original)
        updates = {
            key: value for key, value in champion.hparams.items() if current.get(key, _MISSING) != value
        }
        retrained = tweak.apply_hparams(original, updates) if updates else original
    except tweak.TweakError as exc:
        raise RetrainError(f"{champion.model_name}: cannot write the champion's HPARAMS: {exc}") from None
    entry.write_text(retrained)
    attempt = pipeline.Attempt.load(pipeline_id, ATTEMPT)
    attempt.changed(
        hparams=champion.hparams,
        tweak_diff=tweak.unified_diff(original, retrained, config.entry),
        tweak_updates=updates,
    ).save()
    say(
        f"{champion.model_name}: retraining champion v{champion.version} (commit {champion.commit[:8]}, "
        f"{len(updates)} HPARAMS set from its lineage) on {new.name} v{manifest.version} as pipeline "
        f"{pipeline_id}; the champion's accuracy {champion.accuracy:.4f} was measured on {new.name} "
        f"v{champion.dataset_version}'s held-out split: it is re-scored on v{manifest.version}'s before "
        "the retrained model is registered, and promotion compares with that figure"
    )
    return {"pipeline_id": pipeline_id, "attempt": ATTEMPT}


def prepared_attempt(pipeline_id: str) -> dict[str, Any]:
    """``prepare_attempt``'s XCom for a retrain pipeline: its attempt 1, prepared by ``prepare_retrain``."""
    run = pipeline.Pipeline.load(pipeline_id)
    record = pipeline.Attempt.load(pipeline_id, ATTEMPT)
    return pipeline.PreparedAttempt(
        pipeline_id=pipeline_id, attempt=ATTEMPT, kind=run.kind, warm_start_from=record.warm_start_from
    ).to_xcom()


def plan(
    triggering_asset_events: Mapping[Any, Iterable[Any]] | None,
    dag_run_id: str,
    remote_for: Callable[[str], Any],
    say: Callable[[str], None] = log.info,
    *,
    dataset: str = "",
    version: Any = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every retrain the events (else the Params ``dataset``/``version``) call for, prepared: (the
    ``tweak_and_retrain`` confs, the failures).

    A model whose retrain cannot be prepared (its repository unreachable, its lineage incomplete) is a
    failure line; the others are prepared all the same. Params naming no stored version raise RetrainError.
    """
    from pushtrain.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir())
    confs, failures = [], []
    for new in versions_to_retrain(triggering_asset_events, dataset, version, say):
        say(f"new data: {new.name} v{new.version}" + (f" (sha256 {new.sha256[:12]})" if new.sha256 else ""))
        champions = affected_champions(new, registry, say)
        if not champions:
            say(f"{new.name} v{new.version}: no champion was trained on an older version: nothing to retrain")
        for champion in champions:
            try:
                conf = prepare_retrain(champion, new, dag_run_id, remote_for(champion.repo_url), say)
            except Exception as exc:  # noqa: BLE001  (one model's failure is reported; the others go on)
                pipeline.cleanup(retrain_pipeline_id(champion, new, dag_run_id))  # the checkout, if made
                failures.append(f"{champion.model_name} (champion v{champion.version}): {exc}")
                say(f"{champion.model_name}: retrain not prepared: {exc}")
                continue
            confs.append({**conf, "run_id": pipeline.trigger_run_id(conf["pipeline_id"], ATTEMPT)})
    return confs, failures
