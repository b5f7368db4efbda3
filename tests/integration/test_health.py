"""Self-healing with real containers: what the health check restarts, and what fails at once instead.

The health check runs here in a thread every couple of seconds, calling the same function the
container_health DAG calls; the DAG itself runs under the scheduler in test_pipeline_e2e.py. Containers are
run by the operators' own ``run_supervised`` (the waiting task's side), or by their ``execute`` on pipelines
made by the pipeline's own steps from a real git repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pushtrain import gitops, health, pipeline, settings, steps, supervision, tweak
from pushtrain.containers import TRAIN, container_spec
from pushtrain.demo import commit_and_push, make_model_repo
from pushtrain.operators import EvaluateAttemptOperator, SandboxedDockerOperator, TrainAttemptOperator
from pushtrain.runner import contract
from pushtrain.sandbox import ContainerSpec, Sandbox, docker_client, prepare_output_dir, start_or_adopt
from pushtrain.supervision import ROLE_LABEL, RUN_KEY_LABEL, Lease

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


@pytest.fixture(autouse=True)
def fast_health_interval(monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_HEALTH_INTERVAL_SECONDS", "5")


class HealthLoop:
    """Calls health.check_containers every ``period`` seconds, as the DAG does every interval."""

    def __init__(self, period: float = 2.0) -> None:
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        client = docker_client()
        while not self._stop.wait(period):
            health.check_containers(client, log=self.lines.append)

    def __enter__(self) -> HealthLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class LiveContainerSampler:
    """Samples every 0.5 s that no attempt (run key) ever has more than one live container."""

    def __init__(self) -> None:
        self.worst: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = docker_client()
        while not self._stop.wait(0.5):
            live = Counter(
                c["Labels"].get(RUN_KEY_LABEL) for c in client.containers(filters={"label": RUN_KEY_LABEL})
            )
            for key, count in live.items():
                self.worst[key] = max(self.worst[key], count)

    def __enter__(self) -> LiveContainerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class TaskLog:
    """The lines an operator logs, as its task log shows them (container lines and its own)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: Any) -> None:
        self.lines.append(str(message) % args if args else str(message))

    warning = error = info


def recorded(operator_class: type[SandboxedDockerOperator], **kwargs: Any) -> tuple[Any, TaskLog]:
    """An operator of ``operator_class`` whose ``log`` is a TaskLog the test reads."""

    class Recorded(operator_class):
        @property
        def log(self):
            return self.__dict__.get("task_log") or super().log

    operator = Recorded(**kwargs)
    operator.task_log = TaskLog()
    return operator, operator.task_log


def training_spec(name: str, model: Path, data: Path, out: Path, hparams: dict, kind: str) -> ContainerSpec:
    return container_spec(
        TRAIN,
        name=name,
        run_key=name,
        kind=kind,
        code_dir=model.parent,
        entry=model.name,
        data_dir=data,
        output_dir=out,
        state_dir=out,
        hparams=hparams,
    )


def run_in_thread(spec: ContainerSpec, out: Path) -> tuple[threading.Thread, dict, TaskLog]:
    """The waiting task's side: the operator runs the container and holds its lease, in a thread."""
    operator, log = recorded(SandboxedDockerOperator, task_id="train", image=spec.image)
    result: dict = {}

    def target() -> None:
        result["outcome"] = operator.run_supervised(spec, Lease(out, "train", holder="test"))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result, log


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------- healed: restarts, budgets


def test_killed_container_is_restarted_and_resumes_with_at_most_one_epoch_redone(
    training_images, mnist5k, templates_dir, tmp_path
):
    out = tmp_path / "attempt"
    prepare_output_dir(out)
    # Epochs of about a second: the kill after epoch 3 must land while training is still running.
    spec = training_spec(
        "pushtrain-test-heal-kill",
        templates_dir / "cnn_keras.py",
        mnist5k.train_dir,
        out,
        {"epochs": 10, "filters": 32, "dense_units": 128},
        "cnn",
    )
    with LiveContainerSampler() as sampler, HealthLoop() as loop:
        thread, result, log = run_in_thread(spec, out)
        wait_for(lambda: any(re.search(r"epoch 3/10 ", line) for line in log.lines), 300, "epoch 3")
        killed_at = time.monotonic()
        subprocess.run(["docker", "kill", spec.name], check=True, capture_output=True)
        wait_for(
            lambda: any("container restarted by container_health" in line for line in log.lines),
            60,
            "the restart",
        )
        restarted_after = time.monotonic() - killed_at
        thread.join(timeout=300)
    outcome = result["outcome"]
    assert outcome.succeeded, outcome.describe()
    assert outcome.restarts == 1
    assert restarted_after <= health.health_interval_s() + 30
    metrics = contract.read_metrics(out)
    assert metrics["epochs_run"] == 10
    assert metrics["resumed_from_epoch"] >= 3
    trained_after_restart = [int(m) for m in re.findall(r"epoch (\d+)/10 ", "\n".join(log.lines))]
    assert len(trained_after_restart) - 10 <= 1  # at most one epoch trained twice
    restarts = supervision.RestartLog.load(out, "train")
    assert restarts.host_kills == 1 and restarts.crashes == 0
    assert any("restarted" in line and spec.name in line for line in loop.lines)
    assert max(sampler.worst.values()) == 1
    assert not supervision.lease_path(out, "train").exists()  # released when the task ended


def test_crash_during_training_is_restarted_within_its_budget_then_fails(training_images, digits, tmp_path):
    out = tmp_path / "attempt"
    prepare_output_dir(out)
    spec = training_spec(
        "pushtrain-test-heal-crash", FIXTURES / "crashes_in_training.py", digits.train_dir, out, {}, "linear"
    )
    with HealthLoop() as loop:
        thread, result, log = run_in_thread(spec, out)
        thread.join(timeout=180)
    outcome = result["outcome"]
    assert outcome.exit_code == contract.EXIT_USER_CODE_ERROR and outcome.healable
    assert outcome.restarts == health.CRASH_BUDGET
    assert any("container_health gave up" in line for line in log.lines)
    crashes = [line for line in log.lines if "RuntimeError: simulated crash in epoch 3" in line]
    assert len(crashes) == health.CRASH_BUDGET + 1  # logs of every run kept
    assert sum("resuming from checkpoint at epoch 2" in line for line in log.lines) == health.CRASH_BUDGET
    assert sum(": restarted (" in line for line in loop.lines) == health.CRASH_BUDGET


# ------------------------------------------------------------------------------ never healed: fail at once


@pytest.mark.parametrize(
    "fixture", ["syntax_error.py", "missing_module.py", "no_builder.py", "builder_raises.py"]
)
def test_health_check_never_restarts_what_cannot_heal(training_images, docker, digits, tmp_path, fixture):
    out = tmp_path / "attempt"
    prepare_output_dir(out)
    spec = training_spec(
        f"pushtrain-test-heal-{fixture.removesuffix('.py').replace('_', '-')}",
        FIXTURES / fixture,
        digits.train_dir,
        out,
        {},
        "knn",
    )
    lease = Lease(out, "train", holder="test")
    container_id, _ = start_or_adopt(docker, spec, Sandbox())
    try:
        lease.renew(spec.name)  # its task still waits: a healable failure would be restarted now
        exit_code = int(docker.wait(container_id, timeout=120)["StatusCode"])
        started_at = docker.inspect_container(container_id)["State"]["StartedAt"]
        lines: list[str] = []
        for _ in range(2):
            health.check_containers(docker, log=lines.append)
        assert not contract.healable(exit_code)
        assert [line for line in lines if spec.name in line] == [
            f"{spec.name}: left ({contract.EXIT_CODE_MEANINGS[exit_code]}: a restart cannot help; its task fails "
            "the attempt and removes it)"
        ] * 2
        assert docker.inspect_container(container_id)["State"]["StartedAt"] == started_at
        assert not supervision.restarts_path(out, "train").exists()
    finally:
        lease.release()
        subprocess.run(["docker", "rm", "-f", spec.name], capture_output=True)


def test_health_check_leaves_unwanted_and_removes_finished_containers(
    training_images, docker, digits, templates_dir, tmp_path
):
    finished, orphan = tmp_path / "finished", tmp_path / "orphan"
    for out in (finished, orphan):
        prepare_output_dir(out)
    specs = {
        "finished": training_spec(
            "pushtrain-test-heal-finished",
            templates_dir / "knn_sklearn.py",
            digits.train_dir,
            finished,
            {},
            "knn",
        ),
        "orphan": training_spec(
            "pushtrain-test-heal-orphan",
            FIXTURES / "crashes_in_training.py",
            digits.train_dir,
            orphan,
            {},
            "linear",
        ),
    }
    for spec in specs.values():
        container = docker.create_container(
            image=spec.image,
            command=spec.command,
            name=spec.name,
            labels=spec.labels,
            user="10001:10001",
            host_config=docker.create_host_config(**Sandbox().host_config_kwargs(spec.mounts)),
        )
        docker.start(container["Id"])
        docker.wait(container["Id"], timeout=120)
    lines: list[str] = []
    try:
        health.check_containers(docker, log=lines.append)
        names = {
            c["Names"][0].lstrip("/") for c in docker.containers(all=True, filters={"label": ROLE_LABEL})
        }
        assert specs["finished"].name not in names  # attempt finished: removed
        assert specs["orphan"].name in names  # crashed, but no task holds its lease: never restarted
        assert not supervision.restarts_path(orphan, "train").exists()
        assert any(specs["orphan"].name in line and "no task holds its lease" in line for line in lines)
    finally:
        for spec in specs.values():
            subprocess.run(["docker", "rm", "-f", spec.name], capture_output=True)


# --------------------------------------------------- the operators on pipelines made by the pipeline's steps


@dataclass
class TaskInstance:
    """What the operators read from the context: the task's identity and its upstream tasks' XComs."""

    xcoms: dict[str, Any]
    task_id: str
    dag_id: str = "train_on_push"
    run_id: str = "manual__2026-11-23T00:00:00+00:00"
    try_number: int = 1
    pushed: dict = field(default_factory=dict)

    def xcom_pull(self, task_ids):
        if isinstance(task_ids, list):
            return [self.xcoms.get(task_id) for task_id in task_ids]
        return self.xcoms.get(task_ids)


@pytest.fixture
def data_dir(tmp_path, monkeypatch, digits) -> Path:
    """A data dir of the test's own for pipelines and registry; the data sets are the project's."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "datasets").symlink_to(settings.datasets_dir(), target_is_directory=True)
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(data))
    return data


def first_attempt(root: Path, model: Path, kind: str) -> dict:
    """Push ``model`` to a fresh repository and prepare attempt 1 with the pipeline's own steps."""
    bare, work = make_model_repo(root, config={"dataset": "digits", "kind": kind})
    shutil.copyfile(model, work / "model.py")
    sha = commit_and_push(work, f"model from {model.name}")
    found = {"repo_url": str(bare), "branch": "main", "commit": sha, "superseded": []}
    params = {"target": None, "max_attempts": None, "kind": None, "strategy": None}
    checked_out = steps.checkout_commit(
        found, params, f"manual__{model.stem}", gitops.GitRemote(url=str(bare))
    )
    steps.detect_model_kind(checked_out["pipeline_id"])
    return steps.prepare_first_attempt(checked_out["pipeline_id"])


def no_containers_of(pipeline_id: str) -> bool:
    names = [c["Names"][0] for c in docker_client().containers(all=True, filters={"label": ROLE_LABEL})]
    return not any(pipeline.container_name(pipeline_id, 1, "train") in name for name in names)


@pytest.mark.parametrize(
    ("fixture", "fix", "detail"),
    [
        (
            "missing_module.py",
            "What to do: add `xgboost` to requirements.txt next to your model file (model.py), "
            "then push again.",
            "model.py, line 2: ModuleNotFoundError: No module named 'xgboost' (while loading the model file)\n"
            "    import xgboost",
        ),
        (
            "missing_name.py",
            "What to do: `sklearn.neighbors` (scikit-learn ",
            "model.py, line 2: ImportError: cannot import name 'KNeighborsClassifer' from 'sklearn.neighbors'",
        ),
        (
            "builder_raises.py",
            "What to do: fix the error below (raised while calling build_estimator()), then push again.",
            "model.py, line 6: KeyError: 'n_neigbors' (while calling build_estimator())",
        ),
    ],
)
def test_training_fails_at_once_without_restart_or_retry_leading_with_the_fix(
    training_images, data_dir, tmp_path, fixture, fix, detail
):
    prepared = first_attempt(tmp_path / "repos", FIXTURES / fixture, "knn")
    pipeline_id = prepared["pipeline_id"]
    operator, log = recorded(TrainAttemptOperator, task_id="train_knn", kind="knn", retries=1)
    context = {"ti": TaskInstance({"prepare_attempt": prepared}, "train_knn")}
    with HealthLoop(period=1.0) as loop:
        started = time.monotonic()
        with pytest.raises(AirflowFailException) as failed:
            operator.execute(context)
        failed_after = time.monotonic() - started
    message = str(failed.value)
    assert message.startswith(fix)
    assert detail in message
    assert message.endswith("a restart cannot help, so the attempt fails now, without retries")
    attempt_dir = pipeline.attempt_dir(pipeline_id, 1)
    assert failed_after < supervision.restart_window_s(attempt_dir, TRAIN)  # it did not wait for a restart
    assert any(
        line.startswith("[pushtrain] what to do:") or "[pushtrain] ERROR" in line for line in log.lines
    )
    assert log.lines[-1] == message  # the task log ends with the same report, what to do first
    assert not any("waiting for the container_health DAG" in line for line in log.lines)
    assert not any(": restarted (" in line for line in loop.lines)
    assert not supervision.restarts_path(attempt_dir, TRAIN).exists()
    assert not supervision.lease_path(attempt_dir, TRAIN).exists()
    assert no_containers_of(pipeline_id)


@pytest.mark.parametrize(
    ("fixture", "says"),
    [
        ("syntax_error.py", "model.py, line 4: the file does not parse: expected ':'"),
        ("no_builder.py", "adapt found no model"),
    ],
)
def test_a_file_the_contract_check_refuses_fails_before_any_container(tmp_path, data_dir, fixture, says):
    """What the runner would refuse in its container (a syntax error, no builder) is refused by the pipeline's
    first step, parsing only, with the line and what to do: no training container is started."""
    bare, work = make_model_repo(tmp_path / "repos", config={"dataset": "digits", "kind": "knn"})
    shutil.copyfile(FIXTURES / fixture, work / "model.py")
    sha = commit_and_push(work, f"model from {fixture}")
    found = {"repo_url": str(bare), "branch": "main", "commit": sha, "superseded": []}
    params = {"target": None, "max_attempts": None, "kind": None, "strategy": None}
    checked_out = steps.checkout_commit(found, params, f"manual__{fixture}", gitops.GitRemote(url=str(bare)))

    with pytest.raises(steps.UserFacingError) as refused:
        steps.detect_model_kind(checked_out["pipeline_id"])

    message = str(refused.value)
    assert says in message and "push again" in message and "no model kind found" not in message
    assert not pipeline.attempt_dir(checked_out["pipeline_id"], 1).exists()
    assert no_containers_of(checked_out["pipeline_id"])


def test_unreadable_data_set_fails_at_once(training_images, data_dir, templates_dir, tmp_path):
    prepared = first_attempt(tmp_path / "repos", templates_dir / "knn_sklearn.py", "knn")
    broken = tmp_path / "broken-digits"
    shutil.copytree(settings.datasets_dir() / "digits" / "v1", broken, ignore=shutil.ignore_patterns("*.png"))
    (broken / "train" / "0" / "broken.png").write_bytes(b"not a png")
    (data_dir / "datasets").unlink()
    (data_dir / "datasets" / "digits").mkdir(parents=True)
    broken.rename(data_dir / "datasets" / "digits" / "v1")
    operator, _ = recorded(TrainAttemptOperator, task_id="train_knn", kind="knn")
    with pytest.raises(AirflowFailException, match=r"cannot read image .*broken\.png"):
        operator.execute({"ti": TaskInstance({"prepare_attempt": prepared}, "train_knn")})
    assert no_containers_of(prepared["pipeline_id"])


def test_a_tweak_that_makes_the_model_unbuildable_is_a_failed_attempt_not_a_failed_task(
    training_images, data_dir, tmp_path
):
    first = first_attempt(tmp_path / "repos", FIXTURES / "cnn_valid_pooling.py", "cnn")
    pipeline_id, updates = first["pipeline_id"], {"conv_blocks": 4}  # 8x8 halved four times: nothing left
    code = pipeline.attempt_dir(pipeline_id, 2) / "code"
    shutil.copytree(pipeline.attempt_dir(pipeline_id, 1) / "code", code)
    (code / "model.py").write_text(tweak.apply_hparams((code / "model.py").read_text(), updates))
    prepared = {**first, "attempt": 2, "updates": updates, "based_on_attempt": 1, "warm_start_from": None}
    with DAG("unbuildable", schedule=None):
        train, log = recorded(TrainAttemptOperator, task_id="train_cnn", kind="cnn")
        evaluate = EvaluateAttemptOperator(task_id="evaluate")
        train >> evaluate

    trained = train.execute({"ti": TaskInstance({"prepare_attempt": prepared}, "train_cnn")})

    assert trained["status"] == "unbuildable"
    assert (trained["pipeline_id"], trained["attempt"], trained["kind"]) == (pipeline_id, 2, "cnn")
    assert "while calling build_model()" in trained["failure"]
    assert "model.py, line 15" in trained["failure"]  # the pooling layer that has nothing left to pool
    assert any("attempt 2 is unbuildable" in line for line in log.lines)
    assert no_containers_of(pipeline_id)
    evaluation = evaluate.execute(
        {"ti": TaskInstance({"prepare_attempt": prepared, "train_cnn": trained}, "evaluate")}
    )
    assert evaluation == {
        "status": "not_evaluated",
        "reason": f"attempt 2 could not be built: {trained['failure']}",
    }
    assert not pipeline.evaluation_dir(pipeline_id, 2).exists()  # no container ran


def test_a_crash_in_training_is_retried_by_airflow_after_the_restart_budget(
    training_images, data_dir, tmp_path
):
    prepared = first_attempt(tmp_path / "repos", FIXTURES / "crashes_in_training.py", "linear")
    operator, log = recorded(TrainAttemptOperator, task_id="train_linear", kind="linear")
    with HealthLoop(period=1.0), pytest.raises(AirflowException) as failed:
        operator.execute({"ti": TaskInstance({"prepare_attempt": prepared}, "train_linear")})
    assert not isinstance(failed.value, AirflowFailException)  # a retry may succeed: it was not certain
    assert "RuntimeError: simulated crash in epoch 3" in str(failed.value)
    attempt_dir = pipeline.attempt_dir(prepared["pipeline_id"], 1)
    assert supervision.RestartLog.load(attempt_dir, TRAIN).crashes == health.CRASH_BUDGET
    restarted = [line for line in log.lines if "container restarted by container_health" in line]
    assert len(restarted) == health.CRASH_BUDGET


def test_a_retry_adopts_the_container_still_running_and_on_kill_removes_it(
    training_images, docker, data_dir, templates_dir, tmp_path
):
    prepared = first_attempt(tmp_path / "repos", templates_dir / "cnn_keras.py", "cnn")
    pipeline_id = prepared["pipeline_id"]
    attempt_dir = pipeline.attempt_dir(pipeline_id, 1)
    model = attempt_dir / "code" / "model.py"
    model.write_text(tweak.apply_hparams(model.read_text(), {"epochs": 400, "filters": 32}))
    # What a first try whose task process was killed leaves behind: its container, still training.
    out = pipeline.output_dir(pipeline_id, 1)
    prepare_output_dir(out)
    left_behind = container_spec(
        TRAIN,
        name=pipeline.container_name(pipeline_id, 1, TRAIN),
        run_key=f"{pipeline_id}/attempt-1",
        kind="cnn",
        code_dir=model.parent,
        entry="model.py",
        data_dir=settings.datasets_dir() / "digits" / "v1" / "train",
        output_dir=out,
        state_dir=attempt_dir,
    )
    container_id, _ = start_or_adopt(docker, left_behind, Sandbox())

    retry, log = recorded(TrainAttemptOperator, task_id="train_cnn", kind="cnn")
    failure: dict = {}

    def run_retry() -> None:
        try:
            retry.execute({"ti": TaskInstance({"prepare_attempt": prepared}, "train_cnn", try_number=2)})
        except AirflowException as exc:
            failure["exception"] = exc

    retry_thread = threading.Thread(target=run_retry, daemon=True)
    retry_thread.start()
    wait_for(lambda: any(re.search(r"epoch 2/400 ", line) for line in log.lines), 120, "epoch 2")
    assert retry.container["Id"] == container_id
    assert any(f"adopting container {left_behind.name}" in line for line in log.lines)
    assert supervision.lease_is_fresh(attempt_dir, TRAIN)

    stopping = time.monotonic()
    retry.on_kill()  # marked failed in the UI
    retry_thread.join(timeout=30)
    assert time.monotonic() - stopping < 10
    assert "exception" in failure  # the task does not pass for a success
    assert supervision.cancelled_because(attempt_dir, TRAIN) == "train_cnn was stopped"
    assert no_containers_of(pipeline_id)
