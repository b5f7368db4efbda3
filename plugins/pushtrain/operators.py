"""DockerOperator subclasses that run pushtrain's training and evaluation containers.

The stock ``DockerOperator`` lacks what untrusted model code needs (a real CPU quota, a pids limit, a
read-only root, dropped capabilities, no-new-privileges), would pull a missing image from a registry, and
takes results from pickled files or the last log line. ``SandboxedDockerOperator`` stays a
``DockerOperator`` (so the graph shows the training tasks as such) but overrides ``execute`` and
``on_kill`` completely and uses only the provider's public surface: its hook (``self.hook``, ``self.cli``,
so ``docker_url``, ``docker_conn_id`` and the TLS arguments work as the provider documents them) and the
templated ``image`` and ``environment``, which Airflow renders before ``execute``. Command, mounts, labels
and the fixed container name derive from the attempt at run time (``pushtrain.containers``), so these
operators take no ``command``, ``mounts`` or ``container_name``; the container runs in
``pushtrain.sandbox``, the same sandbox the local ``python -m pushtrain train`` uses.

While its container runs, the task holds a lease (``pushtrain.supervision``). When the container dies:

* a failure the runner calls unhealable (a syntax error, a missing module or name, a builder that raises,
  a contract or data set error: ``contract.UNHEALABLE_EXITS``) fails the task at once with
  ``AirflowFailException``, leading with what to do: no container restart and no Airflow retry;
* any other failure (an exception during training, out of memory, a kill) waits for the container_health
  DAG to restart the container within its budgets, following the restarted container's logs from the
  exact restart time; when container_health gives up, the task fails and Airflow may retry it, which adopts
  a container still running under the attempt's name.

Results travel as files in the attempt's output dir, validated against the runner contract; XCom carries
small summaries (see each operator).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout
from docker.errors import NotFound

from pushtrain import images, pipeline, settings
from pushtrain.containers import EVALUATE, TRAIN, container_spec
from pushtrain.runner import contract
from pushtrain.sandbox import (
    ContainerOutcome,
    ContainerSpec,
    Sandbox,
    follow_logs,
    prepare_output_dir,
    remove_container,
    start_or_adopt,
    started_again,
    wait_for_exit,
)
from pushtrain.supervision import Heartbeat, Lease, RestartLog, cancelled_because, restart_window_s

if TYPE_CHECKING:
    from airflow.sdk import Context

# SIGTERM, then SIGKILL after this: a trapped SIGTERM cannot keep a container alive, and the whole stop fits
# in the few seconds Airflow's supervisor grants on_kill before it kills the task process.
STOP_TIMEOUT_S = 2


class SandboxedDockerOperator(DockerOperator):
    """Run a container in pushtrain's sandbox; fail with the runner's own message, what to do first.

    Subclasses describe their container in ``execute`` and run it with ``run_supervised``.

    :param sandbox: resource limits; defaults come from the ``PUSHTRAIN_CONTAINER_*`` environment.
    """

    template_fields: Sequence[str] = ("image", "environment", "docker_conn_id")

    def __init__(self, *, sandbox: Sandbox | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("docker_url", settings.docker_url())  # the engine container_health watches too
        super().__init__(**kwargs)
        self.sandbox = sandbox or Sandbox()
        self.container_wall_seconds = 0.0
        self.lease: Lease | None = None  # held while the container runs, so container_health may restart it

    def run_supervised(self, spec: ContainerSpec, lease: Lease | None = None) -> ContainerOutcome:
        """Run or adopt the container until it succeeds, fails for good, or container_health gives up.

        With a ``lease``, a container that dies of a healable failure is waited for: container_health
        restarts it (the runner resumes from its checkpoint) and its logs are followed again. The container
        is removed whatever happens.
        """
        if not self.cli.images(name=spec.image):
            raise AirflowException(
                f"training image {spec.image} is not built on this Docker engine: run "
                "`make images` (or `python -m pushtrain images`) where the engine runs"
            )
        self.lease = lease
        if lease:
            lease.clear_cancelled()
        started = time.monotonic()
        container_id, adopted = start_or_adopt(self.cli, spec, self.sandbox)
        self.container = {"Id": container_id}
        if adopted:
            self.log.info("adopting container %s, already running", spec.name)
        heartbeat = Heartbeat(lease, spec.name) if lease else None
        try:
            since = None
            while True:
                follow_logs(self.cli, container_id, self.log.info, since=since)
                outcome = wait_for_exit(self.cli, container_id, spec.name, self.sandbox, adopted)
                if lease:
                    outcome.restarts = RestartLog.load(lease.state_dir, lease.role).total
                if outcome.succeeded or not outcome.healable or lease is None:
                    return outcome
                self.log.warning("%s; waiting for the container_health DAG to restart it", outcome.describe())
                since = self._wait_for_restart(container_id, outcome.started_at, lease)
                if since is None:
                    return outcome
        except NotFound:
            stopped = lease and cancelled_because(lease.state_dir, lease.role)
            raise AirflowException(
                f"container {spec.name} was removed while its task waited for it"
                + (f": {stopped}" if stopped else "")
            ) from None
        except AirflowTaskTimeout:
            # A retry would run into the same limit, so the attempt fails for good.
            raise AirflowFailException(
                f"{self.task_id} exceeded its execution_timeout of {self.execution_timeout}; "
                "container stopped and removed, not retried (raise "
                "PUSHTRAIN_TRAINING_TIMEOUT_SECONDS or make training cheaper)"
            ) from None
        finally:
            if heartbeat:
                heartbeat.stop()
            remove_container(self.cli, container_id)
            self.container_wall_seconds = time.monotonic() - started

    def _wait_for_restart(self, container_id: str, started_at: str, lease: Lease) -> float | None:
        """When the container started again (its new logs begin there), or None if nobody restarted it."""
        deadline = time.monotonic() + restart_window_s(lease.state_dir, lease.role)
        while time.monotonic() < deadline:
            restarted = started_again(self.cli, container_id, started_at)
            if restarted is not None:
                self.log.info(
                    "container restarted by container_health; following it again (it resumes from "
                    "its checkpoint)"
                )
                return restarted
            gave_up = RestartLog.load(lease.state_dir, lease.role).gave_up
            if gave_up:
                self.log.error("container_health gave up: %s", gave_up)
                return None
            if cancelled_because(lease.state_dir, lease.role) is not None:
                return None  # on_kill runs: the task is stopping
            time.sleep(1)
        self.log.error(
            "container_health did not restart the container in time: is the container_health DAG unpaused?"
        )
        return None

    def fail(self, outcome: ContainerOutcome, result_dir: Path) -> NoReturn:
        """Fail the task with what to do first; an unhealable failure is not retried."""
        report = failure_report(outcome, contract.read_error(result_dir, outcome.exit_code))
        self.log.error("%s", report)
        if not outcome.healable:
            raise AirflowFailException(report)
        raise AirflowException(report)

    def on_kill(self) -> None:
        """Marked failed or timed out: stop the container (SIGKILL after a grace period) and remove it."""
        if self.lease:  # first, so container_health never restarts it and removes it should we be cut short
            self.lease.cancel(f"{self.task_id} was stopped")
        if self.container is None:
            return
        self.log.info("stopping container %s", self.container["Id"])
        try:
            self.cli.stop(self.container["Id"], timeout=STOP_TIMEOUT_S)
        except NotFound:
            pass  # already removed
        finally:
            remove_container(self.cli, self.container["Id"])


def failure_report(outcome: ContainerOutcome, error: dict[str, Any] | None) -> str:
    """What to do, what failed (the runner's message, file and line), and what the platform did about it."""
    lines = []
    if error and not outcome.oom_killed:
        if error.get("fix"):
            lines.append(f"What to do: {error['fix']}.")
        lines.append(error["message"])
    lines.append(
        outcome.describe()
        + ("" if outcome.healable else "; a restart cannot help, so the attempt fails now, without retries")
    )
    return "\n".join(lines)


def _lease(context: Context, state_dir: Path, role: str) -> Lease:
    ti = context["ti"]
    return Lease(
        state_dir, role, holder=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/try-{ti.try_number}/pid-{os.getpid()}"
    )


def _prepared_attempt(context: Context) -> tuple[str, int, dict[str, Any]]:
    """Pipeline id, attempt number and the whole summary that ``prepare_attempt`` pushed to XCom."""
    prepared = context["ti"].xcom_pull(task_ids="prepare_attempt")
    return prepared["pipeline_id"], int(prepared["attempt"]), prepared


class TrainAttemptOperator(SandboxedDockerOperator):
    """Train one attempt of a pipeline in the image of its model kind, or the one derived from it for the
    packages the repository declares (``Pipeline.training_image``).

    The attempt comes from the ``prepare_attempt`` task; the model code is mounted read-only, the training
    split read-only, and the attempt's own output dir writable. The full metrics stay in ``metrics.json``.

    Returns (XCom): ``pipeline_id``, ``attempt``, ``kind``, ``image``, ``image_id``,
    ``container_wall_seconds``, ``container_restarts`` and ``status``:

    * ``"trained"``, with ``train_seconds``, ``validation_accuracy``, ``hparams``, ``dataset_sha256``,
      ``code_sha256`` from ``metrics.json``;
    * ``"unbuildable"``, with ``failure`` (the runner's message): the builder, model construction or
      compile raised (exit 7) in a tweaked attempt (``attempt > 1`` or non-empty ``updates`` in the
      ``prepare_attempt`` XCom). The tweak made the model unbuildable; that is a failed attempt, not a
      failed task, and the loop goes on. In attempt 1, the user's own code, it fails the task at once.

    Every other failure fails the task (see the module's docstring for which are retried).

    :param kind: the model kind this task trains (one task per kind, chosen by a branch).
    """

    def __init__(self, *, kind: str, **kwargs: Any) -> None:
        kwargs.setdefault("image", images.image_for_kind(kind))
        super().__init__(**kwargs)
        self.kind = kind

    def execute(self, context: Context) -> dict[str, Any]:
        from pushtrain import datasets

        pipeline_id, attempt, prepared = _prepared_attempt(context)
        run = pipeline.Pipeline.load(pipeline_id)
        attempt_dir = pipeline.attempt_dir(pipeline_id, attempt)
        out_dir = pipeline.output_dir(pipeline_id, attempt)
        manifest = datasets.ensure_dataset(*run.pinned_dataset)
        prepare_output_dir(out_dir)
        # No clean-up of earlier output here: the runner's checkpoint key tells a retry of the same attempt
        # (resume, or nothing to do once complete) from different code (train anew, overwrite).
        warm_start_from = prepared.get("warm_start_from")
        image = run.training_image.get("image") or self.image  # derived for the repository's requirements
        spec = container_spec(
            TRAIN,
            name=pipeline.container_name(pipeline_id, attempt, TRAIN),
            run_key=f"{pipeline_id}/attempt-{attempt}",
            kind=self.kind,
            code_dir=attempt_dir / "code",
            entry=run.config.entry,
            data_dir=manifest.train_dir,
            output_dir=out_dir,
            state_dir=attempt_dir,
            image=image,
            environment=self.environment,
            warm_start=pipeline.output_dir(pipeline_id, warm_start_from) if warm_start_from else None,
        )
        outcome = self.run_supervised(spec, _lease(context, attempt_dir, TRAIN))
        summary = {
            "pipeline_id": pipeline_id,
            "attempt": attempt,
            "kind": self.kind,
            "image": image,
            "image_id": self.cli.inspect_image(image)["Id"],
            "container_wall_seconds": round(self.container_wall_seconds, 3),
            "container_restarts": outcome.restarts,
        }
        if not outcome.succeeded:
            tweaked = attempt > 1 or bool(prepared.get("updates"))
            if outcome.exit_code == contract.EXIT_BUILD_ERROR and tweaked:
                error = contract.read_error(out_dir, outcome.exit_code)
                failure = error["message"] if error else outcome.describe()
                self.log.warning("attempt %s is unbuildable, a failed attempt: %s", attempt, failure)
                return {**summary, "status": "unbuildable", "failure": failure}
            self.fail(outcome, out_dir)
        try:
            metrics = contract.read_metrics(out_dir)
        except ValueError as exc:
            raise AirflowException(f"training finished but its output is invalid: {exc}") from None
        return {
            **summary,
            "status": "trained",
            "train_seconds": metrics["train_seconds"],
            "validation_accuracy": metrics["accuracy"],
            "hparams": metrics["hparams"],
            "dataset_sha256": metrics["dataset_sha256"],
            "code_sha256": metrics["code_sha256"],
        }


class EvaluateAttemptOperator(SandboxedDockerOperator):
    """Score the attempt's saved model on the held-out split without letting the model see a label.

    Loading a saved model can run user code, so the container gets a label-blind view of the held-out split
    (``pushtrain.blind``: images under opaque ids, nothing that carries a class) and writes only
    ``predictions.json``. This task then scores the predictions on the Airflow side, where the answers stay,
    and writes ``attempt-<n>/evaluation.json`` itself. It runs in the image the attempt trained in (the
    training task's XCom ``image``).

    Returns (XCom): ``{"status": "evaluated", "accuracy", "precision", "recall", "f1", "loss",
    "n_evaluated", "dataset_sha256", "container_wall_seconds", "class_names", "per_class",
    "confusion_matrix"}``; or, when the training task reported ``"status": "unbuildable"``,
    ``{"status": "not_evaluated", "reason": ...}`` without running a container. Predictions that are
    incomplete, name ids the view did not have, or come with any other file fail the task for good.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("image", "pushtrain/from-training")  # the training task's image, known at run time
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from pushtrain import blind, datasets

        pipeline_id, attempt, _ = _prepared_attempt(context)
        trained = next(
            (t for t in context["ti"].xcom_pull(task_ids=sorted(self.upstream_task_ids)) or [] if t), {}
        )
        if trained.get("status") == "unbuildable":
            return {
                "status": "not_evaluated",
                "reason": f"attempt {attempt} could not be built: {trained['failure']}",
            }
        run = pipeline.Pipeline.load(pipeline_id)
        attempt_dir = pipeline.attempt_dir(pipeline_id, attempt)
        evaluation_dir = pipeline.evaluation_dir(pipeline_id, attempt)
        view_dir = pipeline.blind_view_dir(pipeline_id, attempt)
        model_dir = pipeline.output_dir(pipeline_id, attempt) / contract.MODEL_DIR
        manifest = datasets.ensure_dataset(*run.pinned_dataset)
        name = pipeline.container_name(pipeline_id, attempt, EVALUATE)
        if self._still_running(name) and (view_dir / blind.ANSWER_KEY_FILE).exists():
            view = blind.BlindEvaluation.load(view_dir)  # a retry adopts the container that reads this view
        else:
            _empty_dir(evaluation_dir)
            view = blind.prepare_blind_evaluation(manifest.test_dir, view_dir)
        prepare_output_dir(evaluation_dir)
        spec = container_spec(
            EVALUATE,
            name=name,
            run_key=f"{pipeline_id}/attempt-{attempt}",
            kind=run.kind,
            code_dir=attempt_dir / "code",
            entry=run.config.entry,
            data_dir=view.data_dir,
            output_dir=pipeline.output_dir(pipeline_id, attempt),
            state_dir=attempt_dir,
            evaluation_dir=evaluation_dir,
            image=trained.get("image"),
            environment=self.environment,
        )
        outcome = self.run_supervised(spec, _lease(context, attempt_dir, EVALUATE))
        if not outcome.succeeded:
            self.fail(outcome, evaluation_dir)
        try:
            evaluation = blind.score(view, evaluation_dir, model_dir)
        except blind.ScoringError as exc:
            raise AirflowFailException(
                f"the evaluation's predictions were rejected: {exc}; nothing is "
                "registered (the model must predict every held-out item once, and its "
                "container may write nothing but predictions.json)"
            ) from None
        finally:
            _remove_tree(view_dir)  # a copy of the held-out split, and the only place its answer key was
        if evaluation["dataset_sha256"] != manifest.test_sha256:
            raise AirflowException(
                f"the held-out split {manifest.test_dir} changed under the evaluation: its "
                f"hash {evaluation['dataset_sha256'][:12]} is not the manifest's "
                f"{manifest.test_sha256[:12]}"
            )
        contract.write_json_atomic(pipeline.evaluation_record_path(pipeline_id, attempt), evaluation)
        return {
            "status": "evaluated",
            **{key: evaluation[key] for key in _XCOM_FIELDS},
            "container_wall_seconds": round(self.container_wall_seconds, 3),
        }

    def _still_running(self, name: str) -> bool:
        try:
            return bool(self.cli.inspect_container(name)["State"]["Running"])
        except NotFound:
            return False


_XCOM_FIELDS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "loss",
    "n_evaluated",
    "dataset_sha256",
    "class_names",
    "per_class",
    "confusion_matrix",
)


def _empty_dir(path: Path) -> None:
    """Remove what an earlier try left: scoring accepts a directory holding predictions.json only."""
    _remove_tree(path)
    path.mkdir(parents=True, exist_ok=True)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
