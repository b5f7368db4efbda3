"""A repository's requirements.txt through the pipeline's own steps and operators: attempt 1 is prepared in
an image with the declared packages, trains there, and the lineage names them; without the declaration the
training fails at once, naming the module and how to declare it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException
from test_health import TaskInstance, data_dir, recorded  # noqa: F401  (fixture)

from pushtrain import gitops, pipeline, steps
from pushtrain.demo import commit_and_push, make_model_repo
from pushtrain.operators import TrainAttemptOperator

REPOS = Path(__file__).resolve().parents[1] / "fixtures" / "repos"


def prepared_attempt(root: Path, with_requirements: bool) -> dict:
    bare, work = make_model_repo(root, config={"dataset": "digits", "kind": "knn"})
    for source in (REPOS / "needs_tabulate").iterdir():
        if source.name != "requirements.txt" or with_requirements:
            shutil.copyfile(source, work / source.name)
    sha = commit_and_push(work, "a model that prints its knobs with tabulate")
    found = {"repo_url": str(bare), "branch": "main", "commit": sha, "superseded": []}
    params = {"target": None, "max_attempts": None, "kind": None, "strategy": None}
    checked_out = steps.checkout_commit(
        found, params, f"manual__{root.name}", gitops.GitRemote(url=str(bare))
    )
    steps.detect_model_kind(checked_out["pipeline_id"])
    return steps.prepare_first_attempt(checked_out["pipeline_id"])


def train(prepared: dict) -> dict:
    with DAG(f"requirements_{prepared['pipeline_id']}", schedule=None):
        operator, _ = recorded(TrainAttemptOperator, task_id="train_knn", kind="knn")
    return operator.execute({"ti": TaskInstance({"prepare_attempt": prepared}, "train_knn")})


def test_an_attempt_trains_in_the_image_with_the_declared_packages(
    training_images,
    data_dir,  # noqa: F811
    tmp_path,
):
    prepared = prepared_attempt(tmp_path / "declared", with_requirements=True)

    run = pipeline.Pipeline.load(prepared["pipeline_id"])
    trained = train(prepared)

    assert run.training_image["image"].startswith("pushtrain/user-sklearn:")
    assert "tabulate" in run.training_image["user_requirements"]["resolved"]
    assert trained["status"] == "trained"
    assert trained["image"] == run.training_image["image"]
    assert trained["image_id"] == run.training_image["image_id"]


def test_an_undeclared_package_fails_the_attempt_at_once_naming_it(
    training_images,
    data_dir,  # noqa: F811
    tmp_path,
):
    prepared = prepared_attempt(tmp_path / "undeclared", with_requirements=False)

    assert pipeline.Pipeline.load(prepared["pipeline_id"]).training_image == {}
    with pytest.raises(AirflowFailException, match="tabulate") as failed:
        train(prepared)
    assert "requirements.txt" in str(failed.value)
