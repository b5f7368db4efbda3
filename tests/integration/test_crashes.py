"""Crashes of the reliability list: a kill in the middle of a promotion, a disk that fills up, and the
scheduler killed in the middle of an attempt's training.

* **Kill during promotion**: the registration and the production move run in a child process, killed
  (``os._exit``, as a kill) at each of the registry's ``FAULT_POINTS``. Whatever the moment, readers find
  only complete versions and a pointer that names one; the retry registers exactly once and cleans up.
* **Disk full** on a small tmpfs: while the registry copies a version, while it moves the pointer, and while
  a training container writes its checkpoints. Each fails with "disk full" and what to free, leaves the
  earlier versions (and checkpoints) intact, and succeeds once space is freed.
* **Scheduler killed** (``kill -9`` of the scheduler and every process under it) during training under
  Airflow standalone, started again a minute later: the attempt completes once, its container adopted, no
  second container, one registry version, one mail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_pipeline_e2e import (
    Scenario,
    free_port,
    holder_parts,
    lease_of,
    mails_about,
    progress_reached,
    task_instance,
    trigger,
    wait_until,
)

from pushtrain import datasets, localrun, pipeline, settings
from pushtrain.demo import wait_for_pipeline
from pushtrain.mailsink import MailSink
from pushtrain.registry import (
    FAULT_EXIT_CODE,
    FAULT_INJECTION_ENV,
    FAULT_POINTS,
    DiskFullError,
    ModelRegistry,
)
from pushtrain.runner import contract
from pushtrain.standalone import VENV_BIN, EmbeddedAirflow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = PROJECT_ROOT / "include" / "model_templates"
MODEL = "digits-cnn"
REGISTER_AND_PROMOTE = """
import json, sys
from pathlib import Path
from pushtrain.registry import ModelRegistry

root, artifact, run_id, accuracy = sys.argv[1:]
registry = ModelRegistry(Path(root))
version = registry.register("digits-cnn", Path(artifact), {"accuracy": float(accuracy)},
                            {"commit": "0123abcd" * 5, "attempt": 2}, pipeline_run_id=run_id)
promotion = registry.promote_if_not_worse("digits-cnn", version)
print(json.dumps({"version": version.number, "moved": promotion.moved}))
"""


def make_artifact(directory: Path, size: int, seed: bytes) -> Path:
    directory.mkdir(parents=True)
    block = hashlib.sha256(seed).digest()
    (directory / "model.joblib").write_bytes((block * (size // len(block) + 1))[:size])
    (directory / "signature.json").write_text(json.dumps({"kind": "cnn", "file": "model.joblib"}))
    return directory


def register_in_a_child(
    root: Path, artifact: Path, run_id: str, accuracy: float, fault: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "plugins")}
    env.pop(FAULT_INJECTION_ENV, None)
    if fault:
        env[FAULT_INJECTION_ENV] = fault
    return subprocess.run(
        [sys.executable, "-c", REGISTER_AND_PROMOTE, str(root), str(artifact), run_id, str(accuracy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_whole(registry: ModelRegistry) -> None:
    """What a reader may rely on at any moment: complete versions only, and a pointer that names one."""
    versions_dir = registry.root / MODEL / "versions"
    assert sorted(p.name for p in versions_dir.iterdir()) == [
        f"{v.number:04d}" for v in registry.versions(MODEL)
    ]
    for version in registry.versions(MODEL):
        assert version.metrics["accuracy"] == version.metric_value
        assert version.lineage["commit"]
        stored = {
            p.relative_to(version.artifact_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in version.artifact_dir.rglob("*")
            if p.is_file()
        }
        assert stored == dict(version.artifact_sha256), f"{version.label} is not whole"
    production = registry.champion(MODEL)  # raises if the pointer is torn or names a missing version
    assert production is not None


@pytest.fixture
def registry_with_production(tmp_path: Path) -> tuple[ModelRegistry, Path]:
    registry = ModelRegistry(tmp_path / "registry")
    first = registry.register(
        MODEL,
        make_artifact(tmp_path / "v1", 50_000, b"v1"),
        {"accuracy": 0.80},
        {"commit": "f" * 40, "attempt": 1},
        pipeline_run_id="run-1",
    )
    registry.promote_if_not_worse(MODEL, first)
    return registry, make_artifact(tmp_path / "candidate", 400_000, b"candidate")


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_a_kill_at_any_step_of_a_promotion_leaves_the_registry_whole_and_the_retry_registers_once(
    registry_with_production, fault: str
) -> None:
    registry, candidate = registry_with_production

    killed = register_in_a_child(registry.root, candidate, "run-2", 0.93, fault)

    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    assert_whole(registry)
    published = fault in (
        "register:published",
        "promote:decided",
        "promote:pointer-written",
        "promote:pointer-moved",
    )
    assert [v.number for v in registry.versions(MODEL)] == ([1, 2] if published else [1])
    assert registry.champion(MODEL).number == (2 if fault == "promote:pointer-moved" else 1)

    retried = register_in_a_child(registry.root, candidate, "run-2", 0.93)

    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"version": 2, "moved": fault != "promote:pointer-moved"}
    assert_whole(registry)
    assert [(v.number, v.pipeline_run_id) for v in registry.versions(MODEL)] == [(1, "run-1"), (2, "run-2")]
    assert registry.champion(MODEL).number == 2
    assert list((registry.root / MODEL / ".staging").iterdir()) == []  # the killed one's staging dir is gone
    assert not list((registry.root / MODEL).glob(".aliases.json.*"))  # and its pointer temp file


# ------------------------------------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs, as a data dir on a nearly full disk; skipped only where this host forbids mounts."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (as uid {os.getuid()}): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Take the disk's free space, down to ``leave`` bytes, as the outputs of other runs would."""
    filler = disk / "other-runs.bin"
    with filler.open("ab") as handle:
        for chunk in (1 << 20, 1 << 16, 1 << 12):
            while shutil.disk_usage(disk).free - leave >= chunk:
                try:
                    handle.write(bytes(chunk))
                    handle.flush()
                except OSError:
                    break
    return filler


def test_disk_full_while_registering_keeps_the_earlier_versions_and_a_retry_after_freeing_succeeds(
    small_disk: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(small_disk / "registry")
    first = registry.register(
        MODEL,
        make_artifact(tmp_path / "v1", 50_000, b"v1"),
        {"accuracy": 0.8},
        {"commit": "f" * 40},
        pipeline_run_id="run-1",
    )
    registry.promote_if_not_worse(MODEL, first)
    filler = fill(small_disk, leave=1_000_000)
    candidate = make_artifact(tmp_path / "v2", 1_500_000, b"v2")

    with pytest.raises(DiskFullError) as caught:
        registry.register(MODEL, candidate, {"accuracy": 0.9}, {"commit": "e" * 40}, pipeline_run_id="run-2")

    message = str(caught.value)
    assert message.startswith(
        f"disk full (No space left on device) while registering a new version of {MODEL}: "
        "the artifact needs 1.5 MB, "
    )
    assert "MB free on the disk of" in message and "runs/" in message and "retry the task" in message
    assert [v.number for v in registry.versions(MODEL)] == [1] and registry.champion(MODEL).number == 1
    assert_whole(registry)
    assert list((registry.root / MODEL / ".staging").iterdir()) == []

    filler.unlink()  # an operator frees space
    second = registry.register(
        MODEL, candidate, {"accuracy": 0.9}, {"commit": "e" * 40}, pipeline_run_id="run-2"
    )
    assert second.number == 2 and registry.promote_if_not_worse(MODEL, second).moved
    assert_whole(registry)


def test_disk_full_while_moving_the_pointer_keeps_production_and_a_retry_moves_it(
    small_disk: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(small_disk / "registry")
    for n, accuracy in ((1, 0.8), (2, 0.9)):
        version = registry.register(
            MODEL,
            make_artifact(tmp_path / f"v{n}", 20_000, b"%d" % n),
            {"accuracy": accuracy},
            {"commit": f"{n}" * 40},
            pipeline_run_id=f"run-{n}",
        )
    registry.promote_if_not_worse(MODEL, 1)
    filler = fill(small_disk)

    with pytest.raises(
        DiskFullError, match="while moving digits-cnn's aliases: .* the aliases are as they were"
    ):
        registry.promote_if_not_worse(MODEL, version)

    assert registry.champion(MODEL).number == 1
    assert not list((registry.root / MODEL).glob(".aliases.json.*"))
    filler.unlink()
    assert registry.promote_if_not_worse(MODEL, version).moved and registry.champion(MODEL).number == 2


def test_disk_full_while_training_fails_the_attempt_with_what_to_free_and_the_retry_resumes(
    small_disk: Path, digits, training_images
) -> None:
    out = small_disk / "runs" / "attempt-1" / "output"
    model = small_disk.parent / "repo" / "model.py"
    model.parent.mkdir(mode=0o755)  # the container's user reads it
    shutil.copyfile(TEMPLATES / "linear_sklearn.py", model)
    hparams = {"epochs": 40, "alpha": 1e-4, "eta0": 0.05, "average": True}
    progress = out / contract.PROGRESS_FILE
    filled: list[Path] = []
    training_ended = threading.Event()

    def fill_the_disk_at_epoch_5() -> None:
        while not training_ended.is_set():
            if progress.exists() and "epoch 5/40 " in progress.read_text():
                filled.append(fill(small_disk))
                return
            time.sleep(0.02)

    filler_thread = threading.Thread(target=fill_the_disk_at_epoch_5, daemon=True)
    filler_thread.start()
    try:
        failed = localrun.train(
            model=model, data=digits.train_dir, out=out, hparams=hparams, kind="linear", log=lambda line: None
        )
    finally:
        training_ended.set()
        filler_thread.join()

    assert filled, f"the training ended before the disk could be filled: {failed.summary()}"
    summary = failed.summary()
    assert (summary["exit_code"], summary["category"], summary["healable"]) == (
        contract.EXIT_DISK_FULL,
        "disk",
        False,
    ), summary
    assert summary["message"].startswith("disk full") and "MB free on the disk" in summary["message"]
    assert "free space on the disk that holds pushtrain's data dir" in summary["fix"]
    state_file = next((out / contract.CHECKPOINT_DIR).glob("*/state.json"))
    state = json.loads(state_file.read_text())  # the last checkpoint is whole and named by the state
    assert state["epoch"] >= 5 and (state_file.parent / state["file"]).is_file()
    assert not list(state_file.parent.glob(".tmp-*"))

    filled[0].unlink()  # space freed
    resumed = localrun.train(
        model=model, data=digits.train_dir, out=out, hparams=hparams, kind="linear", log=lambda line: None
    )

    assert resumed.succeeded, resumed.summary()
    assert resumed.metrics["resumed_from_epoch"] == state["epoch"]
    assert resumed.metrics["epochs_run"] == 40
    assert not (out / contract.CHECKPOINT_DIR / ".space-reserve").exists()


# ------------------------------------------------------------------------------------------ scheduler killed

# One pass a second whatever the machine: the attempt outlasts the kill, the minute's wait and the restarted
# scheduler's start-up, at which it resets the dead scheduler's task and its retry adopts the container (80 s
# after the kill, measured on a loaded machine). sleep costs no CPU.
PACED_EPOCHS = 170
PACED_MODEL = f'''"""A linear model that learns one pass a second: slow enough to kill the scheduler in the middle."""

import time

from sklearn.linear_model import SGDClassifier

HPARAMS = {{"epochs": {PACED_EPOCHS}, "alpha": 0.0001, "eta0": 0.05, "average": True, "seed": 0}}


class PacedSGDClassifier(SGDClassifier):
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        time.sleep(1.0)
        return super().partial_fit(X, y, classes=classes, sample_weight=sample_weight)


def build_estimator(hp):
    return PacedSGDClassifier(loss="log_loss", alpha=hp["alpha"], learning_rate="adaptive", eta0=hp["eta0"],
                              average=hp["average"], random_state=hp["seed"])
'''
KILL_AT_EPOCH = 3
RESTART_AFTER_S = 60
HEARTBEAT_TIMEOUT_S = 40  # should the start-up reset miss the task, this finds it (the default waits 300 s)
PIPELINE_TIMEOUT_S = 600


def process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def descendants(pid: int) -> list[int]:
    tree, found, todo = process_tree(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_scheduler(airflow: EmbeddedAirflow) -> list[int]:
    """kill -9 standalone's scheduler and everything under it (executor workers, task processes), as the loss
    of its host would; the api-server, dag-processor and triggerer stay up."""
    schedulers = [
        pid
        for pid in process_tree().get(airflow.process.pid, [])
        if b"scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]
    assert len(schedulers) == 1, schedulers
    victims = [schedulers[0], *descendants(schedulers[0])]  # all collected before any dies and is reparented
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


@pytest.mark.slow
def test_the_scheduler_killed_mid_training_and_restarted_a_minute_later_completes_the_attempt_once(
    tmp_path_factory, training_images, docker, monkeypatch
) -> None:
    root = tmp_path_factory.mktemp("scheduler-killed")
    data_dir = root / "data"
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(data_dir))
    datasets.ensure_dataset("digits")
    paced = Scenario(
        root, "paced-repo", "linear_sklearn.py", {"dataset": "digits", "target": 0.5, "max_attempts": 1}
    )
    (paced.work / "model.py").write_text(PACED_MODEL)
    smtp_port = free_port()
    airflow = EmbeddedAirflow(
        home=root / "airflow",
        data_dir=data_dir,
        repo_url=str(paced.bare),
        smtp_port=smtp_port,
        port=free_port(),
        watch_interval_minutes=1,
        # Ports of its own for everything that listens, so it cannot meet another Airflow on this machine.
        extra_env={
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        },
    )
    restarted: subprocess.Popen | None = None
    with MailSink(root / "mail", port=smtp_port) as sink:
        airflow.start(root / "standalone.log")
        try:
            airflow.wait_until_healthy(timeout=360)  # minutes on a busy machine
            airflow.wait_for_dags(["train_on_push", "container_health"], timeout=360)
            airflow.unpause("train_on_push", "container_health")
            trigger(airflow, paced)
            lease = wait_until(
                lambda: progress_reached(paced, f"epoch {KILL_AT_EPOCH}/{PACED_EPOCHS} ") and lease_of(paced),
                PIPELINE_TIMEOUT_S,
                "the paced training",
                poll=0.2,
            )
            task, container = holder_parts(lease), lease["container"]

            killed = kill_scheduler(airflow)
            assert task["pid"] in killed  # the training task's own process went with it
            containers_seen: set[str] = set()

            def one_container() -> None:
                found = docker.containers(all=True, filters={"name": container})
                assert len(found) <= 1, found  # never two containers for the attempt
                containers_seen.update(c["Id"] for c in found)

            deadline = time.monotonic() + RESTART_AFTER_S
            while time.monotonic() < deadline:
                one_container()
                time.sleep(2)
            with open(root / "scheduler-restarted.log", "ab") as log:
                restarted = subprocess.Popen(
                    [str(VENV_BIN / "airflow"), "scheduler"],
                    env=airflow.environment(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

            def pipeline_ended():
                one_container()
                found = list(settings.runs_dir().glob(f"{paced.commit[:8]}-*"))
                return found and pipeline.Summary.load(found[0].name)

            wait_until(pipeline_ended, PIPELINE_TIMEOUT_S, "the pipeline to end after the restart", poll=2)
            summary = wait_for_pipeline(paced.commit, 60, report=lambda _: None)
            mails = wait_until(lambda: mails_about(sink, paced.commit), 60, "the mail")
            time.sleep(5)  # a second mail, were there one, would come about now
            mails = mails_about(sink, paced.commit)
            state = task_instance(airflow, task["dag_id"], task["run_id"], task["task_id"])
        finally:
            if restarted is not None:
                os.killpg(restarted.pid, signal.SIGTERM)
                try:
                    restarted.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(restarted.pid, signal.SIGKILL)
                    restarted.wait()
            airflow.stop()

    assert summary.outcome == "met", summary
    assert len(containers_seen) == 1, "the retry started a second container instead of adopting the first"
    assert (state["state"], state["try_number"]) == ("success", 2), state
    task_logs = (root / "airflow" / "logs").rglob("attempt=2.log")
    assert any(f"adopting container {container}" in log.read_text() for log in task_logs)
    epochs = re.findall(
        rf"\] epoch (\d+)/{PACED_EPOCHS} ",
        next(settings.runs_dir().glob(f"{paced.commit[:8]}-*/attempt-1/output/progress.log")).read_text(),
    )
    assert sorted(set(epochs), key=int) == [str(n) for n in range(1, PACED_EPOCHS + 1)]
    assert len(epochs) - PACED_EPOCHS <= 1  # at most one epoch trained twice
    assert [r.attempt for r in pipeline.attempt_records(summary.pipeline_id)] == [1]
    assert len(ModelRegistry(data_dir / "registry").versions("paced-repo")) == 1
    assert [m["subject"] for m in mails if "target met" in m["subject"]] == [mails[0]["subject"]]
    assert len(mails) == 1, [m["subject"] for m in mails]
