"""A repository that carries its own data (``dataset = "repo:data/species.csv"``) through the pipeline's own
steps and operators, in the real images: the checkout imports and pins the data set version, attempt 1
trains on that version's train split, the label-blind evaluation scores its held-out split, and the attempt
record and the registered version's lineage name it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from airflow.sdk import DAG
from test_health import TaskInstance, recorded

from pushtrain import datasets, gitops, pipeline, settings, steps
from pushtrain.demo import commit_and_push, make_model_repo
from pushtrain.operators import EvaluateAttemptOperator, TrainAttemptOperator
from pushtrain.registry import ModelRegistry
from pushtrain.runner import contract

CONFIG = {
    "dataset": "repo:data/species.csv",
    "label_column": "species",
    "categorical": ["habitat"],
    "kind": "linear",
    "target": 0.6,
    "max_attempts": 1,
}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def species_csv(path: Path) -> None:
    """Three species told apart by two measurements and a habitat; a fourth column is noise."""
    rng = np.random.default_rng(11)
    centres = {"alpha": (2.0, 1.0), "beta": (4.0, 3.0), "gamma": (6.0, 1.5)}
    habitats = {"alpha": ("marsh", "forest"), "beta": ("forest",), "gamma": ("desert", "marsh")}
    rows = [["length", "width", "noise", "habitat", "species"]]
    for i in range(300):
        species = ("alpha", "beta", "gamma")[i % 3]
        length, width = rng.normal(centres[species], 0.5)
        rows.append(
            [
                f"{length:.3f}",
                f"{width:.3f}",
                f"{rng.normal(0, 1):.3f}",
                rng.choice(habitats[species]),
                species,
            ]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_a_repository_data_set_is_pinned_trained_evaluated_and_named_in_the_lineage(
    training_images,
    data_dir,
    tmp_path,
):
    bare, work = make_model_repo(tmp_path / "repos", template="linear_sklearn.py", config=CONFIG)
    species_csv(work / "data" / "species.csv")
    sha = commit_and_push(work, "a linear model and its data")
    found = {"repo_url": str(bare), "branch": "main", "commit": sha, "superseded": []}
    params = {"target": None, "max_attempts": None, "kind": None, "strategy": None}

    checked_out = steps.checkout_commit(found, params, "manual__repo-data", gitops.GitRemote(url=str(bare)))
    pipeline_id = checked_out["pipeline_id"]
    run = pipeline.Pipeline.load(pipeline_id)
    name, version = run.pinned_dataset
    assert name == datasets.repo_dataset_name(str(bare), "data/species.csv") and version == 1
    manifest = datasets.ensure_dataset(name, version)
    assert manifest.kind == datasets.TABLE and manifest.class_names == ["alpha", "beta", "gamma"]
    assert manifest.source["commit"] == sha

    assert steps.detect_model_kind(pipeline_id) == "linear"
    prepared = steps.prepare_first_attempt(pipeline_id)
    with DAG("repo_dataset", schedule=None):
        train, _ = recorded(TrainAttemptOperator, task_id="train_linear", kind="linear")
        evaluate = EvaluateAttemptOperator(task_id="evaluate")
        train >> evaluate
    trained = train.execute({"ti": TaskInstance({"prepare_attempt": prepared}, train.task_id)})
    evaluation = evaluate.execute(
        {"ti": TaskInstance({"prepare_attempt": prepared, train.task_id: trained}, "evaluate")}
    )
    decision = steps.judge_attempt(prepared, trained, evaluation, {"dag_id": "train_on_push", "run_id": "m"})

    metrics = contract.read_metrics(pipeline.output_dir(pipeline_id, 1))
    assert metrics["dataset_sha256"] == manifest.train_sha256  # trained on the pinned version's train split
    assert evaluation["n_evaluated"] == manifest.counts["test"]
    assert evaluation["dataset_sha256"] == manifest.test_sha256  # scored on its held-out split
    record = pipeline.Attempt.load(pipeline_id, 1)
    assert (record.dataset.name, record.dataset.split_version) == (name, "v1")
    assert record.evaluation.accuracy >= CONFIG["target"], record.evaluation
    assert decision["action"] == "met"

    registered = steps.register_model(decision, None)
    lineage = ModelRegistry(settings.registry_dir()).get(run.model_name, registered["version"]).lineage
    assert lineage["dataset"]["name"] == name and lineage["dataset"]["test_sha256"] == manifest.test_sha256
    assert lineage["pipeline"]["config"]["dataset"] == "repo:data/species.csv"
