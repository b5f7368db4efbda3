"""The runner's pure parts, on the host: metrics schema, atomic writes, checkpoints, scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pushtrain.runner import contract
from pushtrain.runner.metrics import classification_scores
from pushtrain.runner.train import CheckpointStore


def valid_metrics() -> dict:
    return {
        "schema_version": 1, "kind": "cnn", "evaluated_on": "validation", "accuracy": 0.9, "precision": 0.9,
        "recall": 0.9, "f1": 0.9, "loss": 0.3, "per_class": {}, "n_train": 10, "n_evaluated": 2,
        "epochs_run": 3, "resumed_from_epoch": 0, "train_seconds": 1.5, "history": [], "hparams": {},
        "code_sha256": "ab", "dataset_sha256": "cd", "versions": {}, "finished_at": "2026-11-23T00:00:00+00:00",
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
        (lambda m: m.update(kind="svm"), "kind 'svm' is not one of"),
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
        store.save(epoch, [{"epoch": e} for e in range(1, epoch + 1)], float(epoch),
                   lambda path, e=epoch: path.write_bytes(f"weights {e}".encode()))
    reopened = CheckpointStore.open(tmp_path, "key", ".bin")
    assert reopened.last_epoch == 3
    assert reopened.checkpoint_path.read_bytes() == b"weights 3"
    assert reopened.train_seconds == 3.0
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "key").iterdir()) == ["epoch-0003.bin", "state.json"]


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


def test_exit_codes_are_distinct_and_documented():
    codes = [v for k, v in vars(contract).items() if k.startswith("EXIT_") and isinstance(v, int)]
    assert len(codes) == len(set(codes)) == 7
    assert set(codes) == set(contract.EXIT_CODE_MEANINGS)
