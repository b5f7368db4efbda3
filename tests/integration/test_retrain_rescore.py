"""Retraining on new data compares fairly (issue 10): the champion is re-scored on the new held-out split.

A KNN champion is trained, evaluated and registered through the pipeline's own steps and operators on v1 of
a small table whose label is the sign of ``x``. v2 flips the rule and adds label noise. The retrain of the
champion on v2 scores lower than the champion's recorded v1 figure, so the old comparison would have kept
the champion; re-scored on v2's held-out split in a real evaluation container, the champion is far worse,
and the retrained model is promoted. Real containers; the data sets live in the test's own data dir.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_evaluate_operator import train_and_evaluate

from pushtrain import datasets, gitops, pipeline, rescore, retrain, settings, steps
from pushtrain.demo import commit_and_push, make_model_repo
from pushtrain.registry import ModelRegistry

OPTIONS = datasets.ImportOptions(label_column="label")


def write_table(path: Path, *, flipped: bool, noise: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = [["x", "y", "label"]]
    for _ in range(400):
        x, y = rng.uniform(-1, 1), rng.uniform(-1, 1)
        positive = (x > 0) != flipped
        if rng.random() < noise:
            positive = not positive
        rows.append([f"{x:.4f}", f"{y:.4f}", "pos" if positive else "neg"])
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture
def own_data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_the_champion_rescored_on_the_new_split_gives_way_to_the_retrained_model(
    training_images, own_data: Path
) -> None:
    datasets.add_path("signs", write_table(own_data / "v1.csv", flipped=False, noise=0.0, seed=1), OPTIONS)
    bare, work = make_model_repo(
        own_data / "repos", "knn_sklearn.py", {"dataset": "signs", "kind": "knn", "target": 0.5}
    )
    sha = commit_and_push(work, "knn on signs")
    found = {"repo_url": str(bare), "branch": "main", "commit": sha, "superseded": []}
    params = {"target": None, "max_attempts": None, "kind": None, "strategy": None}
    checked_out = steps.checkout_commit(found, params, "manual__champion", gitops.GitRemote(url=str(bare)))
    steps.detect_model_kind(checked_out["pipeline_id"])
    prepared = steps.prepare_first_attempt(checked_out["pipeline_id"])
    trained, evaluation = train_and_evaluate(prepared, "knn")
    decision = steps.judge_attempt(prepared, trained, evaluation, {"dag_id": "train_on_push", "run_id": "r1"})
    champion = steps.register_model(decision, None)
    assert champion["is_champion"] and champion["accuracy"] > 0.9

    v2 = datasets.add_path(
        "signs", write_table(own_data / "v2.csv", flipped=True, noise=0.15, seed=2), OPTIONS
    )
    assert v2.manifest.version == 2
    event = SimpleNamespace(
        asset=SimpleNamespace(uri="pushtrain-dataset://signs"), extra={"name": "signs", "version": 2}
    )
    [conf], failures = retrain.plan(
        {"pushtrain-dataset://signs": [event]}, "asset_triggered__it", lambda url: gitops.GitRemote(url=url)
    )
    assert failures == []
    pipeline_id = conf["pipeline_id"]
    prepared = retrain.prepared_attempt(pipeline_id)
    trained, evaluation = train_and_evaluate(prepared, "knn")
    decision = steps.judge_attempt(
        prepared, trained, evaluation, {"dag_id": "tweak_and_retrain", "run_id": "r2"}
    )

    registered = steps.register_model(decision, None)

    record = rescore.retrain_record(pipeline_id)
    print(  # the figures, for the log
        f"champion v1: {record['champion_accuracy']:.4f} on v1, {record['champion_accuracy_new_split']:.4f} "
        f"on v2; retrained: {registered['accuracy']:.4f} on v2; {registered['promotion']}"
    )
    # The old comparison (the champion's v1 figure) would have kept the champion ...
    assert registered["accuracy"] < record["champion_accuracy"] == champion["accuracy"]
    # ... re-scored on v2's held-out split by the label-blind evaluation, it is far below the retrained model.
    assert record["champion_rescored_on_new_split"]
    assert record["champion_accuracy_new_split"] < 0.4 < registered["accuracy"]
    assert record["champion_rescore"]["dataset_sha256"] == v2.manifest.test_sha256
    assert record["champion_rescore"]["n_evaluated"] == evaluation["n_evaluated"]
    assert registered["is_champion"] and "on signs v2's held-out split" in registered["promotion"]
    registry = ModelRegistry(settings.registry_dir())
    assert registry.champion(champion["model_name"]).number == registered["version"] == 2
    assert registry.get(champion["model_name"], 2).lineage["retrain"] == record
    assert not (pipeline.pipeline_dir(pipeline_id) / "champion-rescore").exists()  # view and answer key gone
