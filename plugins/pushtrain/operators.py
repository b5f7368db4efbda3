"""DockerOperator subclasses that run pushtrain's training and evaluation containers.

The stock ``DockerOperator`` lacks what untrusted model code needs (a real CPU quota, a pids limit, a
read-only root, dropped capabilities, no-new-privileges), would pull a missing image from a registry, and
takes results from pickled files or the last log line. ``SandboxedDockerOperator`` keeps its hook,
connection handling and templating, and runs the container through ``pushtrain.sandbox`` instead: the
same sandbox the local ``python -m pushtrain train`` uses, fixed container names per (run, attempt), and
adoption of a container that is still running when a task is retried.

Results travel as files in the attempt's output dir, validated against the runner contract.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout

from pushtrain import health, images, pipeline, settings
from pushtrain.runner import contract
from pushtrain.sandbox import (
    RESULT_FILE_LABEL,
    ROLE_LABEL,
    RUN_KEY_LABEL,
    STATE_DIR_LABEL,
    ContainerOutcome,
    ContainerSpec,
    Lease,
    Sandbox,
    prepare_output_dir,
    remove_container,
    run_container,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

MODEL_MOUNT = "/workspace/model"
DATA_MOUNT = "/data"
OUT_MOUNT = "/out"
# SIGTERM, then SIGKILL after this: a trapped SIGTERM cannot keep a container alive, and the whole stop fits
# in the few seconds Airflow's supervisor grants on_kill before it kills the task process.
STOP_TIMEOUT_S = 2


class SandboxedDockerOperator(DockerOperator):
    """Run a container in pushtrain's sandbox; fail with the runner's own message when it fails.

    :param sandbox: resource limits; defaults come from the ``PUSHTRAIN_CONTAINER_*`` environment.
    """

    def __init__(self, *, sandbox: Sandbox | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("network_mode", "none")
        kwargs.setdefault("mount_tmp_dir", False)
        kwargs.setdefault("auto_remove", "force")
        kwargs.setdefault("do_xcom_push", True)
        kwargs.setdefault("docker_url", settings.docker_url())  # the engine container_health watches too
        super().__init__(**kwargs)
        self.sandbox = sandbox or Sandbox()
        self.container_wall_seconds = 0.0
        self.lease: Lease | None = None  # set by subclasses that let container_health restart the container

    def execute(self, context: Context) -> Any:
        self._normalize_mounts()
        if not self.cli.images(name=self.image):
            raise AirflowException(f"training image {self.image} is not built on this Docker engine: run "
                                   "`make images` (or `python -m pushtrain images`) where the engine runs")
        try:
            return self._run_image()
        except AirflowTaskTimeout:
            # The container is already removed (run_container's clean-up ran on the way out). A retry would
            # run into the same limit, so the attempt fails for good.
            raise AirflowFailException(f"{self.task_id} exceeded its execution_timeout of {self.execution_timeout}; "
                                       "container stopped and removed, not retried (raise "
                                       "PUSHTRAIN_TRAINING_TIMEOUT_SECONDS or make training cheaper)") from None

    def _run_image_with_mounts(self, target_mounts: list, add_tmp_variable: bool) -> ContainerOutcome:
        spec = ContainerSpec(name=self.container_name, image=self.image, command=self.format_command(self.command),
                             mounts=target_mounts, labels=self.labels or {}, environment=self.environment)
        started = time.monotonic()
        outcome = run_container(self.cli, spec, self.sandbox, self.log.info,
                                remove=self.auto_remove != "never", on_start=self._remember, lease=self.lease)
        self.container_wall_seconds = time.monotonic() - started
        return outcome

    def _remember(self, container_id: str) -> None:
        self.container = {"Id": container_id}

    def on_kill(self) -> None:
        """Marked failed or timed out: stop the container (SIGKILL after a grace period) and remove it."""
        if self.lease:  # first, so container_health never restarts it and removes it should we be cut short
            health.mark_cancelled(self.lease.out_dir, self.lease.role, f"{self.task_id} was stopped")
        if self.container is None:
            return
        from docker.errors import NotFound

        self.log.info("stopping container %s", self.container_name)
        try:
            self.cli.stop(self.container["Id"], timeout=STOP_TIMEOUT_S)
        except NotFound:
            pass  # already removed
        finally:
            remove_container(self.cli, self.container["Id"])


def _lease(context: Context, out_dir: Path, role: str) -> Lease:
    ti = context["ti"]
    return Lease(out_dir, role, holder=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/try-{ti.try_number}/pid-{os.getpid()}")


def _prepared_attempt(context: Context) -> tuple[str, int, dict[str, Any]]:
    """Pipeline id, attempt number and the whole summary that ``prepare_attempt`` pushed to XCom."""
    prepared = context["ti"].xcom_pull(task_ids="prepare_attempt")
    return prepared["pipeline_id"], int(prepared["attempt"]), prepared


def _failure_message(outcome: ContainerOutcome, out_dir: Path) -> str:
    message = outcome.describe()
    error_file = out_dir / contract.ERROR_FILE
    if error_file.exists() and not outcome.oom_killed:
        message += f"\n{json.loads(error_file.read_text())['message']}"
    return message


class TrainAttemptOperator(SandboxedDockerOperator):
    """Train one attempt of a pipeline in the image of its model kind.

    The attempt comes from the ``prepare_attempt`` task; the model code is mounted read-only, the training
    split read-only, and the attempt's own output dir writable. Returns a small summary for XCom; the full
    metrics stay in ``metrics.json``.

    :param kind: the model kind this task trains (one task per kind, chosen by a branch).
    """

    def __init__(self, *, kind: str, **kwargs: Any) -> None:
        super().__init__(image=images.image_for_kind(kind), **kwargs)
        self.kind = kind

    def execute(self, context: Context) -> dict[str, Any]:
        from docker.types import Mount

        from pushtrain import datasets
        from pushtrain.localrun import WARM_START_MOUNT, training_command

        pipeline_id, attempt, prepared = _prepared_attempt(context)
        run = pipeline.Pipeline.load(pipeline_id)
        attempt_dir = pipeline.attempt_dir(pipeline_id, attempt)
        out_dir = pipeline.output_dir(pipeline_id, attempt)
        entry = Path(run.config.entry)
        manifest = datasets.ensure_dataset(run.config.dataset)
        prepare_output_dir(out_dir)
        # No clean-up of earlier output here: the runner's checkpoint key tells a retry of the same attempt
        # (resume, or nothing to do once complete) from different code (train anew, overwrite).
        run_key = f"{pipeline_id}/attempt-{attempt}"
        self.container_name = pipeline.container_name(pipeline_id, attempt, "train")
        warm_start_from = prepared.get("warm_start_from")
        self.command = training_command(str(entry), {}, self.kind, run_key, warm_start=bool(warm_start_from))
        self.mounts = [Mount(MODEL_MOUNT, str(attempt_dir / "code"), type="bind", read_only=True),
                       Mount(DATA_MOUNT, str(manifest.train_dir), type="bind", read_only=True),
                       Mount(OUT_MOUNT, str(out_dir), type="bind")]
        if warm_start_from:
            self.mounts.append(Mount(WARM_START_MOUNT, str(pipeline.output_dir(pipeline_id, warm_start_from)),
                                     type="bind", read_only=True))
        self.labels = {ROLE_LABEL: "train", RUN_KEY_LABEL: run_key, STATE_DIR_LABEL: str(attempt_dir),
                       RESULT_FILE_LABEL: str(out_dir / contract.METRICS_FILE)}
        self.lease = _lease(context, attempt_dir, "train")
        health.clear_cancelled(attempt_dir, "train")
        outcome = super().execute(context)
        if not outcome.succeeded:
            raise AirflowException(_failure_message(outcome, out_dir))
        try:
            metrics = contract.read_metrics(out_dir)
        except ValueError as exc:
            raise AirflowException(f"training finished but its output is invalid: {exc}") from None
        return {
            "pipeline_id": pipeline_id,
            "attempt": attempt,
            "kind": self.kind,
            "image": self.image,
            "image_id": self.cli.inspect_image(self.image)["Id"],
            "container_wall_seconds": round(self.container_wall_seconds, 3),
            "container_restarts": outcome.restarts,
            "train_seconds": metrics["train_seconds"],
            "validation_accuracy": metrics["accuracy"],
            "hparams": metrics["hparams"],
            "dataset_sha256": metrics["dataset_sha256"],
            "code_sha256": metrics["code_sha256"],
        }


class EvaluateAttemptOperator(SandboxedDockerOperator):
    """Score the attempt's saved model on the held-out split, in a fresh sandboxed container.

    The held-out images are mounted only here, so the gate's number is not one user code could print.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(image="pushtrain/unresolved", **kwargs)  # the kind is known only at run time

    def execute(self, context: Context) -> dict[str, Any]:
        from docker.types import Mount

        from pushtrain import datasets
        from pushtrain.runner.evaluate import EVALUATION_FILE

        pipeline_id, attempt, _ = _prepared_attempt(context)
        run = pipeline.Pipeline.load(pipeline_id)
        attempt_dir = pipeline.attempt_dir(pipeline_id, attempt)
        evaluation_dir = pipeline.evaluation_dir(pipeline_id, attempt)
        prepare_output_dir(evaluation_dir)
        (evaluation_dir / EVALUATION_FILE).unlink(missing_ok=True)
        manifest = datasets.ensure_dataset(run.config.dataset)

        run_key = f"{pipeline_id}/attempt-{attempt}"
        self.image = images.image_for_kind(run.kind)
        self.container_name = pipeline.container_name(pipeline_id, attempt, "evaluate")
        self.command = ["evaluate", "--model-dir", f"{OUT_MOUNT}/model", "--data", DATA_MOUNT,
                        "--out", f"{OUT_MOUNT}/evaluation", "--model", f"{MODEL_MOUNT}/{run.config.entry}"]
        self.mounts = [Mount(MODEL_MOUNT, str(attempt_dir / "code"), type="bind", read_only=True),
                       Mount(f"{OUT_MOUNT}/model", str(pipeline.output_dir(pipeline_id, attempt) / contract.MODEL_DIR),
                             type="bind", read_only=True),
                       Mount(f"{OUT_MOUNT}/evaluation", str(evaluation_dir), type="bind"),
                       Mount(DATA_MOUNT, str(manifest.test_dir), type="bind", read_only=True)]
        self.labels = {ROLE_LABEL: "evaluate", RUN_KEY_LABEL: run_key, STATE_DIR_LABEL: str(attempt_dir),
                       RESULT_FILE_LABEL: str(evaluation_dir / EVALUATION_FILE)}
        self.lease = _lease(context, attempt_dir, "evaluate")
        health.clear_cancelled(attempt_dir, "evaluate")
        outcome = super().execute(context)
        if not outcome.succeeded:
            raise AirflowException(_failure_message(outcome, evaluation_dir))
        evaluation = json.loads((evaluation_dir / EVALUATION_FILE).read_text())
        problems = [p for p in contract.validate_metrics({**_TRAINING_ONLY_FIELDS, **evaluation})]
        if problems or evaluation["dataset_sha256"] != manifest.test_sha256:
            raise AirflowException(f"evaluation output is invalid: {problems or 'held-out data hash differs'}")
        return {"accuracy": evaluation["accuracy"], "precision": evaluation["precision"],
                "recall": evaluation["recall"], "f1": evaluation["f1"], "loss": evaluation["loss"],
                "n_evaluated": evaluation["n_evaluated"], "dataset_sha256": evaluation["dataset_sha256"],
                "container_wall_seconds": round(self.container_wall_seconds, 3)}


# evaluation.json shares the metric fields of metrics.json; these training-only fields are filled in so the
# one schema validates both.
_TRAINING_ONLY_FIELDS = {"n_train": 0, "epochs_run": 0, "resumed_from_epoch": 0, "train_seconds": 0.0,
                         "history": [], "hparams": {}, "code_sha256": "", "versions": {}}
