"""Self-healing with real containers: the health check restarts what a waiting task still wants.

The health check runs here in a thread every couple of seconds, calling the same function the
container_health DAG calls; the DAG itself runs under the scheduler in test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from docker.types import Mount

from pushtrain import health, images, localrun
from pushtrain.runner import contract
from pushtrain.sandbox import (
    RESULT_FILE_LABEL,
    ROLE_LABEL,
    RUN_KEY_LABEL,
    STATE_DIR_LABEL,
    ContainerSpec,
    Lease,
    Sandbox,
    docker_client,
    prepare_output_dir,
    run_container,
)

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
            live = Counter(c["Labels"].get(RUN_KEY_LABEL) for c in client.containers(filters={"label": ROLE_LABEL}))
            for key, count in live.items():
                self.worst[key] = max(self.worst[key], count)

    def __enter__(self) -> LiveContainerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def training_spec(name: str, model: Path, data: Path, out: Path, hparams: dict, kind: str) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        image=images.image_for_kind(kind),
        command=localrun.training_command(model.name, hparams, kind, name),
        mounts=[Mount(localrun.MODEL_MOUNT, str(model.parent), type="bind", read_only=True),
                Mount(localrun.DATA_MOUNT, str(data), type="bind", read_only=True),
                Mount(localrun.OUT_MOUNT, str(out), type="bind")],
        labels={ROLE_LABEL: "train", RUN_KEY_LABEL: name, STATE_DIR_LABEL: str(out),
                RESULT_FILE_LABEL: str(out / contract.METRICS_FILE)},
    )


def run_in_thread(spec: ContainerSpec, out: Path, lines: list[str]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        result["outcome"] = run_container(docker_client(), spec, Sandbox(), lines.append,
                                          lease=Lease(out, "train", holder="test"))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_container_is_restarted_and_resumes_with_at_most_one_epoch_redone(
        training_images, mnist5k, templates_dir, tmp_path):
    out = tmp_path / "attempt"
    prepare_output_dir(out)
    # Epochs of about a second: the kill after epoch 3 must land while training is still running.
    spec = training_spec("pushtrain-test-heal-kill", templates_dir / "cnn_keras.py", mnist5k.train_dir, out,
                         {"epochs": 10, "filters": 32, "dense_units": 128}, "cnn")
    lines: list[str] = []
    with LiveContainerSampler() as sampler, HealthLoop() as loop:
        thread, result = run_in_thread(spec, out, lines)
        wait_for(lambda: any(re.search(r"epoch 3/10 ", line) for line in lines), 300, "epoch 3")
        killed_at = time.monotonic()
        subprocess.run(["docker", "kill", spec.name], check=True, capture_output=True)
        wait_for(lambda: any("container restarted by container_health" in line for line in lines), 60,
                 "the restart")
        restarted_after = time.monotonic() - killed_at
        thread.join(timeout=300)
    outcome = result["outcome"]
    assert outcome.succeeded, outcome.describe()
    assert outcome.restarts == 1
    assert restarted_after <= health.health_interval_s() + 30
    metrics = contract.read_metrics(out)
    assert metrics["epochs_run"] == 10
    assert metrics["resumed_from_epoch"] >= 3
    trained_after_restart = [int(m) for m in re.findall(r"epoch (\d+)/10 ", "\n".join(lines))]
    assert len(trained_after_restart) - 10 <= 1  # at most one epoch trained twice
    restarts = json.loads(health.restarts_path(out, "train").read_text())
    assert restarts["host_kills"] == 1 and restarts["crashes"] == 0
    assert any("restarted" in line and spec.name in line for line in loop.lines)
    assert max(sampler.worst.values()) == 1
    assert not health.lease_path(out, "train").exists()  # released when the task ended


def test_crashing_user_code_is_restarted_within_its_budget_then_fails(training_images, digits, tmp_path):
    out = tmp_path / "attempt"
    prepare_output_dir(out)
    spec = training_spec("pushtrain-test-heal-crash", FIXTURES / "builder_raises.py", digits.train_dir, out,
                         {}, "knn")
    lines: list[str] = []
    with HealthLoop() as loop:
        thread, result = run_in_thread(spec, out, lines)
        thread.join(timeout=180)
    outcome = result["outcome"]
    assert outcome.exit_code == contract.EXIT_USER_CODE_ERROR
    assert outcome.restarts == health.CRASH_BUDGET
    assert any("gave up" in line for line in lines)
    assert sum("KeyError: 'n_neigbors'" in line for line in lines) == health.CRASH_BUDGET + 1  # logs kept
    assert sum(": restarted (" in line for line in loop.lines) == health.CRASH_BUDGET


def test_unusable_model_file_is_never_restarted(training_images, digits, tmp_path):
    out = tmp_path / "attempt"
    prepare_output_dir(out)
    spec = training_spec("pushtrain-test-heal-fatal", FIXTURES / "no_builder.py", digits.train_dir, out, {}, "knn")
    lines: list[str] = []
    with HealthLoop():
        thread, result = run_in_thread(spec, out, lines)
        thread.join(timeout=60)
    assert result["outcome"].exit_code == contract.EXIT_CONTRACT_ERROR
    assert result["outcome"].restarts == 0
    assert any("a restart cannot help" in line for line in lines)


def test_health_check_leaves_unwanted_and_removes_finished_containers(training_images, docker, digits,
                                                                       templates_dir, tmp_path):
    finished, orphan = tmp_path / "finished", tmp_path / "orphan"
    for out in (finished, orphan):
        prepare_output_dir(out)
    specs = {
        "finished": training_spec("pushtrain-test-heal-finished", templates_dir / "knn_sklearn.py",
                                  digits.train_dir, finished, {}, "knn"),
        "orphan": training_spec("pushtrain-test-heal-orphan", FIXTURES / "builder_raises.py", digits.train_dir,
                                orphan, {}, "knn"),
    }
    for spec in specs.values():
        container = docker.create_container(image=spec.image, command=spec.command, name=spec.name,
                                            labels=spec.labels, user="10001:10001",
                                            host_config=docker.create_host_config(
                                                **Sandbox().host_config_kwargs(spec.mounts)))
        docker.start(container["Id"])
        docker.wait(container["Id"], timeout=120)
    lines: list[str] = []
    try:
        health.check_containers(docker, log=lines.append)
        names = {c["Names"][0].lstrip("/") for c in docker.containers(all=True, filters={"label": ROLE_LABEL})}
        assert specs["finished"].name not in names  # attempt finished: removed
        assert specs["orphan"].name in names  # died, but no task holds its lease: never restarted
        assert not health.restarts_path(orphan, "train").exists()
        assert any(specs["orphan"].name in line and "no task holds its lease" in line for line in lines)
    finally:
        for spec in specs.values():
            subprocess.run(["docker", "rm", "-f", spec.name], capture_output=True)
