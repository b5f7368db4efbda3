"""The training images and the runner, exercised through real containers on the real offline data sets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pushtrain import images, localrun
from pushtrain.containers import LOCAL, container_spec
from pushtrain.runner import contract
from pushtrain.sandbox import ContainerSpec, Sandbox, prepare_output_dir, remove_container, start_or_adopt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
STRONG_CNN = {"epochs": 10, "filters": 16, "dense_units": 64, "learning_rate": 0.003}


def train(model: Path, data: Path, out: Path, **kwargs) -> localrun.LocalRunResult:
    lines: list[str] = []
    result = localrun.train(model=model, data=data, out=out, log=lines.append, **kwargs)
    result.lines = lines
    return result


def test_image_labels_and_user(training_images, docker):
    for name, tag in training_images.items():
        config = docker.inspect_image(tag)["Config"]
        assert config["Labels"]["io.pushtrain.image"] == name
        assert config["Labels"]["io.pushtrain.content-key"] == images.source_key(name)
        assert config["User"] == "10001:10001"
        assert config["Entrypoint"][-2:] == ["-m", "pushtrain.runner"]


def test_keras_attempt_on_digits_meets_the_templates_stated_figure(
    training_images, digits, templates_dir, tmp_path
):
    result = train(templates_dir / "cnn_keras.py", digits.train_dir, tmp_path / "a1", hparams=STRONG_CNN)
    assert result.succeeded, result.summary()
    metrics = contract.read_metrics(tmp_path / "a1")
    assert metrics["kind"] == "cnn"
    assert metrics["accuracy"] >= 0.90
    assert metrics["epochs_run"] == 10 and metrics["resumed_from_epoch"] == 0
    assert len(metrics["history"]) == 10
    assert metrics["dataset_sha256"] == digits.train_sha256
    assert set(metrics["per_class"]) == set(digits.class_names)
    assert "tensorflow" in metrics["versions"] and "keras" in metrics["versions"]
    assert (tmp_path / "a1" / "model" / "model.keras").stat().st_size > 0
    epoch_lines = [line for line in result.lines if re.search(r"\bepoch \d+/10\b", line)]
    assert len(epoch_lines) == 10
    assert not any("\r" in line or "\x1b" in line or "━" in line for line in result.lines)


def test_weak_cnn_template_is_weak(training_images, digits, templates_dir, tmp_path):
    result = train(templates_dir / "cnn_keras.py", digits.train_dir, tmp_path / "weak")
    assert result.succeeded, result.summary()
    assert result.metrics["accuracy"] < 0.6


@pytest.mark.parametrize(
    ("template", "kind", "strong", "strong_floor", "weak_ceiling"),
    [
        (
            "linear_sklearn.py",
            "linear",
            {"epochs": 30, "alpha": 1e-4, "eta0": 0.05, "average": True},
            0.93,
            0.93,
        ),
        ("knn_sklearn.py", "knn", {"n_neighbors": 3, "weights": "distance", "p": 2}, 0.97, 0.93),
    ],
)
def test_sklearn_templates_meet_their_stated_figures(
    training_images, digits, templates_dir, tmp_path, template, kind, strong, strong_floor, weak_ceiling
):
    weak = train(templates_dir / template, digits.train_dir, tmp_path / "weak", kind=kind)
    strong_run = train(
        templates_dir / template, digits.train_dir, tmp_path / "strong", kind=kind, hparams=strong
    )
    assert weak.succeeded and strong_run.succeeded, (weak.summary(), strong_run.summary())
    assert weak.metrics["kind"] == kind
    assert weak.metrics["accuracy"] < weak_ceiling
    assert strong_run.metrics["accuracy"] >= strong_floor
    assert "sklearn" in strong_run.metrics["versions"]
    assert (tmp_path / "strong" / "model" / "model.joblib").exists()


def _spec(name: str, model: Path, data: Path, out: Path, hparams: dict, kind: str) -> ContainerSpec:
    return container_spec(
        LOCAL,
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


def _wait_for_line(name: str, pattern: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
        match = re.search(pattern, logs)
        if match:
            return match.group(0)
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared in the logs of {name}")


def _wait_exit(docker, name: str, timeout: float = 300) -> int:
    return int(docker.wait(name, timeout=timeout)["StatusCode"])


def test_killed_container_resumes_from_last_completed_epoch(
    training_images, docker, mnist5k, templates_dir, tmp_path
):
    name = "pushtrain-test-resume"
    out = tmp_path / "resume"
    prepare_output_dir(out)
    hparams = {"epochs": 6, "filters": 8, "dense_units": 32}
    spec = _spec(name, templates_dir / "cnn_keras.py", mnist5k.train_dir, out, hparams, "cnn")
    container_id, adopted = start_or_adopt(docker, spec, Sandbox())
    assert not adopted
    try:
        _wait_for_line(name, r"epoch 2/6 ")
        subprocess.run(["docker", "kill", name], check=True, capture_output=True)
        assert _wait_exit(docker, name) == 137
        assert not (out / contract.METRICS_FILE).exists()
        state = json.loads(next((out / "checkpoints").glob("*/state.json")).read_text())
        killed_after = state["epoch"]
        assert 2 <= killed_after < 6

        subprocess.run(["docker", "start", name], check=True, capture_output=True)
        assert _wait_exit(docker, name) == 0
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
        assert f"resuming from checkpoint at epoch {killed_after}/6" in logs
        metrics = contract.read_metrics(out)
        assert metrics["resumed_from_epoch"] == killed_after
        assert metrics["epochs_run"] == 6
        assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4, 5, 6]
        # Epochs after the kill were trained once each: the second start printed only those.
        second_start = logs.split(f"resuming from checkpoint at epoch {killed_after}/6")[1]
        assert re.findall(r"epoch (\d+)/6 ", second_start) == [str(e) for e in range(killed_after + 1, 7)]
        written = (out / contract.METRICS_FILE).stat().st_mtime_ns

        subprocess.run(["docker", "start", name], check=True, capture_output=True)
        assert _wait_exit(docker, name) == 0
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
        assert "already completed (6 epochs): not retraining" in logs
        assert (out / contract.METRICS_FILE).stat().st_mtime_ns == written
    finally:
        remove_container(docker, container_id)


def test_sigterm_during_training_exits_non_zero(training_images, docker, mnist5k, templates_dir, tmp_path):
    name = "pushtrain-test-sigterm"
    out = tmp_path / "sigterm"
    prepare_output_dir(out)
    spec = _spec(
        name, templates_dir / "cnn_keras.py", mnist5k.train_dir, out, {"epochs": 20, "filters": 8}, "cnn"
    )
    container_id, _ = start_or_adopt(docker, spec, Sandbox())
    try:
        _wait_for_line(name, r"epoch 1/20 ")
        subprocess.run(["docker", "stop", "--time", "60", name], check=True, capture_output=True)
        assert _wait_exit(docker, name) == contract.EXIT_TERMINATED
        error = json.loads((out / contract.ERROR_FILE).read_text())
        assert error["exit_code"] == contract.EXIT_TERMINATED
        assert not (out / contract.METRICS_FILE).exists()
    finally:
        remove_container(docker, container_id)


@pytest.mark.parametrize(
    ("fixture", "kind", "category", "expected", "fix"),
    [
        (
            "syntax_error.py",
            "knn",
            "syntax",
            r"^syntax_error\.py, line 4: SyntaxError: .*\n.*\n {27}\^$",
            "fix the syntax error in syntax_error.py at line 4",
        ),
        (
            "missing_module.py",
            "knn",
            "import",
            r"missing_module\.py, line 2: ModuleNotFoundError: No module named "
            r"'xgboost'",
            "add `xgboost` to requirements.txt next to your model file (missing_module.py)",
        ),
        (
            "missing_name.py",
            "knn",
            "import",
            r"cannot import name 'KNeighborsClassifer' from 'sklearn.neighbors'",
            "`sklearn.neighbors` (scikit-learn ",
        ),
        (
            "builder_raises.py",
            "knn",
            "build",
            r"builder_raises\.py, line 6: KeyError: 'n_neigbors' \(while calling build_estimator\(\)\)",
            "fix the error below (raised while calling build_estimator())",
        ),
        ("no_builder.py", "knn", "contract", r"defines no function build_estimator\(\)", None),
        (
            "crashes_in_training.py",
            "linear",
            "runtime",
            r"crashes_in_training\.py, line 15: RuntimeError: simulated crash in epoch 3 \(while training "
            r"\(partial_fit\)\)",
            None,
        ),
    ],
)
def test_user_code_errors_say_what_to_do_and_whether_a_restart_can_help(
    training_images, digits, tmp_path, fixture, kind, category, expected, fix
):
    result = train(FIXTURES / fixture, digits.train_dir, tmp_path / "err", kind=kind)
    assert not result.succeeded
    summary = result.summary()
    assert result.outcome.exit_code == contract.FAILURE_CATEGORIES[category]
    assert summary["category"] == category
    assert summary["healable"] is result.error["healable"] is (category == "runtime")
    assert re.search(expected, result.error["message"], re.MULTILINE), result.error["message"]
    assert (fix in summary["fix"]) if fix else summary["fix"] is None
    if fix:  # the container's log says what to do first, then what failed
        first = next(i for i, line in enumerate(result.lines) if "[pushtrain] what to do:" in line)
        assert "[pushtrain] ERROR" in result.lines[first + 1]
    assert not (tmp_path / "err" / contract.METRICS_FILE).exists()


def test_sandbox_seen_from_inside(training_images, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "must-not-leak")
    result = train(
        FIXTURES / "sandbox_probe.py", digits.train_dir, tmp_path / "probe", kind="knn", memory="512m"
    )
    assert result.succeeded, result.summary()
    line = next(line for line in result.lines if line.startswith("SANDBOX-PROBE "))
    report = json.loads(line.removeprefix("SANDBOX-PROBE "))
    assert report["interfaces"] == ["lo"]
    assert report["routes"] == 0
    assert report["uid"] != 0
    assert report["root_writable"] is False and report["root_write_error"] == "Read-only file system"
    assert int(report["memory_limit"]) == 512 * 1024**2
    assert report["docker_socket"] is False
    assert report["airflow_env"] == []
    assert int(report["cap_eff"], 16) == 0
    assert report["no_new_privs"] == "1"


def test_memory_limit_is_enforced_and_reported_as_oom(training_images, digits, tmp_path):
    result = train(FIXTURES / "memory_hog.py", digits.train_dir, tmp_path / "oom", kind="knn", memory="256m")
    assert result.outcome.exit_code == 137
    assert result.outcome.oom_killed
    assert "out of memory" in result.summary()["reason"]
    assert "256m" in result.summary()["reason"]


def test_kill_after_fit_before_outputs_does_not_retrain_and_writes_outputs_once(
    training_images, digits, templates_dir, tmp_path
):
    out = tmp_path / "after-fit"
    first = train(
        templates_dir / "cnn_keras.py", digits.train_dir, out, hparams={"epochs": 3}, name="after-fit"
    )
    assert first.succeeded, first.summary()
    # The state on disk after a kill between fit's last epoch and the writing of the outputs: the final
    # checkpoint is there, the saved model and metrics.json are not.
    (out / contract.METRICS_FILE).unlink()
    shutil.rmtree(out / contract.MODEL_DIR)
    progress_lines = (out / contract.PROGRESS_FILE).read_text().count("] epoch ")

    again = train(
        templates_dir / "cnn_keras.py", digits.train_dir, out, hparams={"epochs": 3}, name="after-fit"
    )
    assert again.succeeded, again.summary()
    assert "[pushtrain] resuming from checkpoint at epoch 3/3" in again.lines
    assert not any(re.search(r"\] epoch \d+/3 ", line) for line in again.lines)  # nothing retrained
    assert (out / contract.PROGRESS_FILE).read_text().count("] epoch ") == progress_lines
    metrics = contract.read_metrics(out)
    assert metrics["epochs_run"] == 3 and metrics["resumed_from_epoch"] == 3
    assert len(metrics["history"]) == 3
    assert (out / contract.MODEL_DIR / "model.keras").exists()


@pytest.mark.parametrize(
    ("template", "kind", "short", "longer", "artifact"),
    [
        ("cnn_keras.py", "cnn", {**STRONG_CNN, "epochs": 3}, {**STRONG_CNN, "epochs": 6}, "model.keras"),
        (
            "linear_sklearn.py",
            "linear",
            {"epochs": 3, "alpha": 1e-4, "eta0": 0.05, "average": True},
            {"epochs": 8, "alpha": 1e-4, "eta0": 0.05, "average": True},
            "model.joblib",
        ),
    ],
)
def test_warm_start_continues_an_attempt_that_differs_only_in_epochs(
    training_images, digits, templates_dir, tmp_path, template, kind, short, longer, artifact
):
    model = templates_dir / template
    first = train(model, digits.train_dir, tmp_path / "a1", kind=kind, hparams=short)
    assert first.succeeded, first.summary()
    continued = train(
        model, digits.train_dir, tmp_path / "a2", kind=kind, hparams=longer, warm_start=tmp_path / "a1"
    )
    assert continued.succeeded, continued.summary()
    metrics = contract.read_metrics(tmp_path / "a2")
    assert metrics["warm_start_epochs"] == short["epochs"]
    assert metrics["epochs_run"] == longer["epochs"]
    # Only the new epochs were trained here; the history still tells the whole model's story.
    assert [record["epoch"] for record in metrics["history"]] == list(range(1, longer["epochs"] + 1))
    new_epoch_seconds = sum(record["seconds"] for record in metrics["history"][short["epochs"] :])
    assert metrics["train_seconds"] == pytest.approx(new_epoch_seconds, abs=0.05)
    assert any("warm start: continuing the" in line for line in continued.lines)
    assert (tmp_path / "a1" / "model" / artifact).exists()  # the earlier attempt's model is left alone


def test_warm_start_is_refused_when_more_than_epochs_changed(
    training_images, digits, templates_dir, tmp_path
):
    model = templates_dir / "linear_sklearn.py"
    base = {"epochs": 3, "alpha": 1e-4, "eta0": 0.05, "average": True}
    assert train(model, digits.train_dir, tmp_path / "a1", kind="linear", hparams=base).succeeded
    other = train(
        model,
        digits.train_dir,
        tmp_path / "a2",
        kind="linear",
        hparams={**base, "epochs": 6, "alpha": 1e-3},
        warm_start=tmp_path / "a1",
    )
    assert other.succeeded, other.summary()
    metrics = contract.read_metrics(tmp_path / "a2")
    assert metrics["warm_start_epochs"] == 0 and len(metrics["history"]) == 6
    assert any("warm start skipped" in line and "alpha" in line for line in other.lines)
