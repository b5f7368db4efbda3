"""The runner's pure parts, on the host: metrics schema, atomic writes, checkpoints, scores, and how it
classifies failures that happen before training (these need no training image)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from pushtrain.runner import contract, usercode
from pushtrain.runner.__main__ import main as runner_main
from pushtrain.runner.metrics import classification_scores
from pushtrain.runner.train import CheckpointStore


def valid_metrics() -> dict:
    return {
        "schema_version": 1,
        "kind": "cnn",
        "evaluated_on": "validation",
        "accuracy": 0.9,
        "precision": 0.9,
        "recall": 0.9,
        "f1": 0.9,
        "loss": 0.3,
        "per_class": {},
        "n_train": 10,
        "n_evaluated": 2,
        "epochs_run": 3,
        "resumed_from_epoch": 0,
        "train_seconds": 1.5,
        "history": [],
        "hparams": {},
        "code_sha256": "ab",
        "dataset_sha256": "cd",
        "versions": {},
        "finished_at": "2026-11-23T00:00:00+00:00",
    }


def test_valid_metrics_have_no_problems():
    assert contract.validate_metrics(valid_metrics()) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m.pop("accuracy"), "missing field 'accuracy'"),
        (lambda m: m.update(accuracy="0.9"), "field 'accuracy' has type str"),
        (lambda m: m.update(accuracy=1.5), "outside [0, 1]"),
        (lambda m: m.update(epochs_run=True), "field 'epochs_run' has type bool"),
        (lambda m: m.update(kind="gbm"), "kind 'gbm' is not one of"),
        (lambda m: m.update(schema_version=2), "schema_version 2 is not 1"),
    ],
)
def test_invalid_metrics_are_named(change, problem):
    metrics = valid_metrics()
    change(metrics)
    assert any(problem in p for p in contract.validate_metrics(metrics))


def test_read_metrics_rejects_truncated_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="did not complete"):
        contract.read_metrics(tmp_path)
    (tmp_path / contract.METRICS_FILE).write_text('{"accuracy": 0.9')
    with pytest.raises(ValueError, match="not valid JSON"):
        contract.read_metrics(tmp_path)


def test_write_json_atomic_leaves_no_temp_file_on_failure(tmp_path):
    target = tmp_path / "doc.json"
    contract.write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        contract.write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}  # the old content survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json"]


def test_checkpoint_store_keeps_only_the_latest_consistent_checkpoint(tmp_path):
    store = CheckpointStore.open(tmp_path, "key", ".bin")
    assert store.last_epoch == 0 and store.checkpoint_path is None
    for epoch in (1, 2, 3):
        store.save(
            epoch,
            [{"epoch": e} for e in range(1, epoch + 1)],
            float(epoch),
            lambda path, e=epoch: path.write_bytes(f"weights {e}".encode()),
        )
    reopened = CheckpointStore.open(tmp_path, "key", ".bin")
    assert reopened.last_epoch == 3
    assert reopened.checkpoint_path.read_bytes() == b"weights 3"
    assert reopened.train_seconds == 3.0
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "key").iterdir()) == [
        "epoch-0003.bin",
        "state.json",
    ]


def test_checkpoint_interrupted_mid_write_resumes_from_previous_epoch(tmp_path):
    store = CheckpointStore.open(tmp_path, "key", ".bin")
    store.save(1, [{"epoch": 1}], 1.0, lambda path: path.write_bytes(b"weights 1"))

    def killed_mid_write(path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt  # stands in for the kill: the rename never happens

    with pytest.raises(KeyboardInterrupt):
        store.save(2, [{"epoch": 1}, {"epoch": 2}], 2.0, killed_mid_write)
    reopened = CheckpointStore.open(tmp_path, "key", ".bin")
    assert reopened.last_epoch == 1
    assert reopened.checkpoint_path.read_bytes() == b"weights 1"
    assert not list((tmp_path / "checkpoints" / "key").glob(".tmp-*"))  # the torn write is swept away


def test_classification_scores_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), y_pred] = 0.8
    scores = classification_scores(y_true, y_pred, ["a", "b", "c"], probabilities)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert scores["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert scores["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert scores["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert scores["loss"] == pytest.approx(-(4 * np.log(0.8) + 2 * np.log(0.1)) / 6)
    assert scores["per_class"]["a"]["support"] == 2


def test_class_never_predicted_scores_zero_not_nan():
    scores = classification_scores(np.array([0, 1]), np.array([0, 0]), ["a", "b"])
    assert scores["per_class"]["b"]["precision"] == 0.0
    assert not any(np.isnan(v) for v in (scores["precision"], scores["recall"], scores["f1"]))
    assert scores["loss"] is None


# ------------------------------------------------------------------ failures: category, healable, fix


def run_runner(tmp_path, model_source: str) -> tuple[int, dict]:
    """Run the runner's ``train`` on the host (user code that fails before training needs no image)."""
    model = tmp_path / "repo" / "model.py"
    model.parent.mkdir(exist_ok=True)
    model.write_text(model_source)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        exit_code = runner_main(
            [
                "train",
                "--model",
                str(model),
                "--data",
                str(tmp_path / "no-data"),
                "--out",
                str(out),
                "--kind",
                "knn",
            ]
        )
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # the runner installs its own handler, as in a container
    return exit_code, json.loads((out / contract.ERROR_FILE).read_text())


def test_syntax_error_fails_for_good_with_file_line_and_caret(tmp_path, capsys):
    exit_code, error = run_runner(
        tmp_path, 'HPARAMS = {"k": 3}\n\n\ndef build_estimator(hp)\n    return None\n'
    )
    assert exit_code == contract.EXIT_LOAD_ERROR
    assert (error["category"], error["healable"]) == ("syntax", False)
    assert error["message"].endswith(
        "model.py, line 4: SyntaxError: expected ':' (while loading the model file)\n"
        "    def build_estimator(hp)\n"
        "                           ^"
    )
    assert "at line 4" in error["fix"]
    stderr = capsys.readouterr().err
    assert stderr.index("what to do:") < stderr.index("ERROR")  # the log leads with the fix


def test_missing_module_names_the_package_to_declare(tmp_path):
    exit_code, error = run_runner(tmp_path, "import pushtrain_no_such_package\nHPARAMS = {}\n")
    assert exit_code == contract.EXIT_LOAD_ERROR
    assert (error["category"], error["healable"]) == ("import", False)
    assert "line 1: ModuleNotFoundError: No module named 'pushtrain_no_such_package'" in error["message"]
    assert error["fix"].startswith(
        "add `pushtrain_no_such_package` to requirements.txt next to your model file"
    )


def test_missing_name_in_an_existing_module_asks_to_check_the_spelling(tmp_path):
    exit_code, error = run_runner(tmp_path, "from json import dumpz\nHPARAMS = {}\n")
    assert (exit_code, error["category"]) == (contract.EXIT_LOAD_ERROR, "import")
    assert "`json` has no `dumpz`: check the spelling" in error["fix"]


def test_module_named_by_its_import_is_declared_by_its_package_name():
    exc = ModuleNotFoundError("No module named 'sklearn'", name="sklearn.neighbors")
    fix = usercode.fix_for(exc, Path("/workspace/model/model.py"), "import", "loading the model file")
    assert fix.startswith("add `scikit-learn` to requirements.txt")


def test_a_sibling_file_of_the_repository_is_not_a_package_to_install(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "helpers.py").write_text("X = 1\n")
    exit_code, error = run_runner(tmp_path, "from helpers import X\nHPARAMS = {}\n")
    assert exit_code == contract.EXIT_LOAD_ERROR
    assert "`helpers` is a file of your repository" in error["fix"]
    assert "requirements.txt" not in error["fix"]


def test_exception_while_loading_fails_for_good(tmp_path):
    exit_code, error = run_runner(tmp_path, "HPARAMS = {}\nrate = 1 / 0\n")
    assert (exit_code, error["category"], error["healable"]) == (contract.EXIT_LOAD_ERROR, "load", False)
    assert "line 2: ZeroDivisionError" in error["message"]


def test_contract_and_data_errors_fail_for_good(tmp_path):
    exit_code, error = run_runner(tmp_path, "KNOBS = {}\n")
    assert (exit_code, error["category"], error["healable"]) == (
        contract.EXIT_CONTRACT_ERROR,
        "contract",
        False,
    )
    assert "has no HPARAMS dict" in error["message"]
    exit_code, error = run_runner(tmp_path, "HPARAMS = {}\n\n\ndef build_estimator(hp):\n    return None\n")
    assert (exit_code, error["category"], error["healable"]) == (contract.EXIT_DATA_ERROR, "data", False)


@pytest.mark.parametrize(
    ("stage", "exception", "category", "exit_code"),
    [
        (usercode.BUILD, ValueError("negative dimension"), "build", contract.EXIT_BUILD_ERROR),
        (
            usercode.BUILD,
            ModuleNotFoundError("No module named 'x'", name="x"),
            "import",
            contract.EXIT_LOAD_ERROR,
        ),
        (usercode.RUNTIME, RuntimeError("epoch 7"), "runtime", contract.EXIT_USER_CODE_ERROR),
        (
            usercode.RUNTIME,
            ImportError("cannot import name 'y' from 'json'"),
            "import",
            contract.EXIT_LOAD_ERROR,
        ),
    ],
)
def test_the_stage_and_the_exception_decide_whether_a_restart_can_help(
    tmp_path, stage, exception, category, exit_code
):
    def user_code():
        raise exception

    with pytest.raises(usercode.UserCodeError) as raised:
        usercode.run_user_code(tmp_path / "model.py", "calling build_estimator()", user_code, stage=stage)
    assert raised.value.category == category
    assert contract.FAILURE_CATEGORIES[category] == exit_code
    assert contract.healable(exit_code) == (category == "runtime")
    assert bool(raised.value.fix) == (category != "runtime")  # during training, a restart may be the fix


def test_an_error_file_of_an_earlier_container_is_not_read_as_this_ones(tmp_path):
    contract.write_json_atomic(tmp_path / contract.ERROR_FILE, {"exit_code": 6, "message": "old"})
    assert contract.read_error(tmp_path, 6)["message"] == "old"
    assert contract.read_error(tmp_path, 137) is None
