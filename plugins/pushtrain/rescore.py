"""The champion of a retrain, scored on the new held-out split before the retrained model is compared with it.

A pipeline ``retrain_on_new_data`` made (``pushtrain.retrain``) has ``retrain.json`` beside ``pipeline.json``:
which champion it retrains, on which data set version, and the champion's accuracy on its own (older) split.
``register_model`` calls ``rescore_champion`` before registering: the champion's registered artifact is run
in the evaluation container on a label-blind view of the new held-out split (``pushtrain.blind``), exactly as
the gate evaluates an attempt, and promotion compares the retrained model with that figure. This module does
not import ``pushtrain.steps`` (``retrain`` does, and ``steps`` imports this).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from typing import Any

from pushtrain import pipeline
from pushtrain.runner.contract import write_json_atomic

log = logging.getLogger(__name__)

RETRAIN_FILE = "retrain.json"  # beside pipeline.json: marks a pipeline as a retrain and says of what
ATTEMPT = 1  # a retrain is one attempt: the champion's code and knobs on the new data


def retrain_record(pipeline_id: str) -> dict[str, Any] | None:
    """``retrain.json`` of a retrain pipeline; None for any other pipeline."""
    path = pipeline.pipeline_dir(pipeline_id) / RETRAIN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_retrain(pipeline_id: str) -> bool:
    return (pipeline.pipeline_dir(pipeline_id) / RETRAIN_FILE).is_file()


class RescoreError(Exception):
    """The champion could not be scored on the new held-out split; the message says why."""


RESCORE_ROLE = "rescore"  # the champion's evaluation container: run and removed here, not by container_health


def rescore_champion(
    pipeline_id: str, registry: Any, evaluate: Callable[[str, Any], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Score the champion ``retrain.json`` names on this pipeline's (new) held-out split; the updated record.

    Once scored, the record is returned as it is (a retried ``register_model``).
    ``evaluate(pipeline_id, champion_version)`` returns the evaluation (``blind.score``'s dict); by default
    the champion's registered artifact is run in the evaluation container, label-blind, as the gate does.
    The record (``retrain.json``) gains ``champion_accuracy_new_split`` and ``champion_rescored_on_new_split``
    on success, ``champion_rescore_failure`` when the champion cannot be scored (``RescoreError`` then).
    """
    record = retrain_record(pipeline_id)
    if record is None:
        raise ValueError(f"pipeline {pipeline_id} is not a retrain: it has no {RETRAIN_FILE}")
    if record.get("champion_rescored_on_new_split"):
        return record  # a retried task: the same artifact on the same split, scored already
    try:
        current = registry.champion(record["model_name"])
        if current is None or current.number != record["champion_version"]:
            now = "it has no champion" if current is None else f"its champion is {current.label}"
            raise RescoreError(
                f"{record['model_name']}: the retrain was planned against champion "
                f"v{record['champion_version']} but {now} now"
            )
        evaluation = (evaluate or _evaluate_in_container)(pipeline_id, current)
        accuracy = float(evaluation["accuracy"])
    except RescoreError as exc:
        updated = {**record, "champion_rescored_on_new_split": False, "champion_rescore_failure": str(exc)}
        write_json_atomic(pipeline.pipeline_dir(pipeline_id) / RETRAIN_FILE, updated)
        raise
    updated = {
        **record,
        "champion_rescored_on_new_split": True,
        "champion_accuracy_new_split": accuracy,
        "champion_accuracy_new_split_measured_on": f"{record['dataset']} v{record['to_version']}",
        "champion_rescore": {
            key: evaluation.get(key) for key in ("n_evaluated", "dataset_sha256", "model_sha256", "f1")
        },
    }
    updated.pop("champion_rescore_failure", None)
    write_json_atomic(pipeline.pipeline_dir(pipeline_id) / RETRAIN_FILE, updated)
    log.info(
        "%s: champion v%s scores %.4f on %s v%s's held-out split (%.4f on v%s's)",
        record["model_name"],
        record["champion_version"],
        accuracy,
        record["dataset"],
        record["to_version"],
        record["champion_accuracy"],
        record["from_version"],
    )
    return updated


def _evaluate_in_container(pipeline_id: str, champion: Any) -> dict[str, Any]:
    """The champion's artifact, predicted label-blind in the evaluation container and scored here.

    The container runs attempt 1's code (the champion's commit with its final HPARAMS, so the champion's own
    model file) in the pipeline's training image, under the sandbox every evaluation gets.
    """
    from pushtrain import blind, datasets, images
    from pushtrain.containers import EVALUATE, container_spec
    from pushtrain.sandbox import Sandbox, docker_client, prepare_output_dir, run_container
    from pushtrain.supervision import ROLE_LABEL, STATE_DIR_LABEL

    run = pipeline.Pipeline.load(pipeline_id)
    manifest = datasets.ensure_dataset(*run.pinned_dataset)
    work = pipeline.pipeline_dir(pipeline_id) / "champion-rescore"
    shutil.rmtree(work, ignore_errors=True)
    evaluation_dir = work / "evaluation"
    try:
        view = blind.prepare_blind_evaluation(manifest.test_dir, work / "view")
        prepare_output_dir(evaluation_dir)
        spec = container_spec(
            EVALUATE,
            name=pipeline.container_name(pipeline_id, ATTEMPT, RESCORE_ROLE),
            run_key=f"{pipeline_id}/champion-v{champion.number}",
            kind=run.kind,
            code_dir=pipeline.attempt_dir(pipeline_id, ATTEMPT) / "code",
            entry=run.config.entry,
            data_dir=view.data_dir,
            output_dir=work,
            state_dir=work,
            evaluation_dir=evaluation_dir,
            image=run.training_image.get("image") or images.image_for_kind(run.kind),
            model_dir=champion.artifact_dir,
        )
        spec = dataclasses.replace(spec, labels={ROLE_LABEL: RESCORE_ROLE, STATE_DIR_LABEL: str(work)})
        outcome = run_container(docker_client(), spec, Sandbox(), log.info)
        if not outcome.succeeded:
            raise RescoreError(f"champion {champion.label}'s evaluation failed: {outcome.describe()}")
        try:
            evaluation = blind.score(view, evaluation_dir, champion.artifact_dir)
        except blind.ScoringError as exc:
            raise RescoreError(f"champion {champion.label}'s predictions were rejected: {exc}") from None
    except blind.BlindViewError as exc:
        raise RescoreError(f"the new held-out split: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the view held the answer key
    if evaluation["dataset_sha256"] != manifest.test_sha256:
        raise RescoreError(f"the held-out split {manifest.test_dir} changed under the champion's evaluation")
    return evaluation
