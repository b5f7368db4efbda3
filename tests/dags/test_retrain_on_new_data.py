"""The retrain_on_new_data DAG: scheduled on the data set assets' alias, one trigger of tweak_and_retrain per
prepared retrain (mapped over plan_retrains), and a leaf that fails the run when a retrain was not prepared.
Under ``dag.test()`` (a run without asset events, as one started by hand or by ``datasets add``) the Params
``dataset`` and ``version`` name the new version: none given prepares nothing and succeeds; a prepared retrain
starts the ``tweak_and_retrain`` run of its attempt 1; a model whose retrain cannot be prepared fails the run;
Params naming a version the store lacks fail plan_retrains with what it has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.sdk import DagRunState, TriggerRule
from airflow.utils.session import create_session

from pushtrain import retrain

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "retrain_on_new_data"


@pytest.fixture(scope="module")
def dag():
    from airflow.utils.db import initdb

    initdb()
    bag = DagBag(dag_folder=str(DAGS_DIR / "retrain_on_new_data.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAG_ID]


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def shapes_versions(tmp_path: Path, *row_counts: int) -> None:
    """Versions of a small table data set ``shapes``: each row count is other content, so the next version."""
    from pushtrain import datasets

    for rows in row_counts:
        source = tmp_path / f"shapes-{rows}.csv"
        source.write_text(
            "a,b,label\n" + "".join(f"{i % 7}.5,{i % 5}.25,{'xyz'[i % 3]}\n" for i in range(rows))
        )
        datasets.add_path("shapes", source)


def test_it_is_scheduled_on_the_data_sets_and_triggers_one_retrain_per_planned_model(dag):
    assert [alias.name for alias in dag.timetable.asset_condition.objects] == ["pushtrain-datasets"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    trigger = dag.get_task("trigger_retrain")
    assert trigger.partial_kwargs["trigger_dag_id"] == "tweak_and_retrain"
    assert trigger.partial_kwargs["skip_when_already_exists"] is True
    assert dag.get_task("plan_retrains").downstream_task_ids == {"trigger_retrain"}
    report = dag.get_task("report_failures")
    assert report.trigger_rule == TriggerRule.ALL_DONE and report.retries == 0
    # A run by hand (or by `datasets add` through the REST API) names the version in its Params.
    assert dag.params["dataset"] == "" and dag.params["version"] is None
    dataset_schema, version_schema = (dag.params.get_param(key).schema for key in ("dataset", "version"))
    assert version_schema["type"] == ["null", "integer"] and version_schema["minimum"] == 1
    assert re.fullmatch(dataset_schema["pattern"], "") and re.fullmatch(dataset_schema["pattern"], "wine.v2")
    assert not re.search(dataset_schema["pattern"], "../etc")
    planned = {
        "pipeline_id": "0123abcd-feedbeef",
        "attempt": 1,
        "run_id": "pushtrain__0123abcd-feedbeef__attempt-1",
    }
    from retrain_on_new_data import trigger_arguments

    assert trigger_arguments(planned) == {
        "trigger_run_id": "pushtrain__0123abcd-feedbeef__attempt-1",
        "conf": {"pipeline_id": "0123abcd-feedbeef", "attempt": 1},
    }


def test_a_run_without_a_new_version_prepares_nothing_and_succeeds(dag, tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    run = dag.test()
    assert run.state == DagRunState.SUCCESS, states(run)
    assert states(run)["report_failures"] == "success"


def test_params_naming_a_version_the_store_lacks_fail_plan_retrains_without_retry(dag, tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    shapes_versions(tmp_path, 30)

    run = dag.test(run_conf={"dataset": "shapes", "version": 4})

    assert run.state == DagRunState.FAILED
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan_retrains")
    assert (str(plan.state), plan.try_number) == ("failed", 1)
    assert states(run)["report_failures"] == "failed"


def test_a_retrain_that_cannot_be_prepared_fails_the_run_by_name(dag, tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    shapes_versions(tmp_path, 30, 33)
    champion = retrain.Champion(
        model_name="lost",
        version=1,
        repo_url=str(tmp_path / "gone.git"),
        branch="main",
        commit="0123abcd" * 5,
        kind="linear",
        model_file="model.py",
        hparams={},
        config={"dataset": "shapes"},
        dataset_name="shapes",
        dataset_version=1,
        accuracy=0.9,
        pipeline_id="0123abcd-0000beef",
    )
    monkeypatch.setattr(retrain, "affected_champions", lambda new, registry, say: [champion])

    run = dag.test(run_conf={"dataset": "shapes", "version": 2})

    assert run.state == DagRunState.FAILED
    assert states(run)["report_failures"] == "failed"
    assert states(run)["plan_retrains"] == "success"


def test_a_prepared_retrain_is_triggered_as_attempt_1_of_tweak_and_retrain(dag, tmp_path, monkeypatch):
    import subprocess

    from pushtrain import pipeline

    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    shapes_versions(tmp_path, 30, 33)
    work, bare = tmp_path / "work", tmp_path / "models.git"
    template = Path(__file__).resolve().parents[2] / "include" / "model_templates" / "linear_sklearn.py"
    work.mkdir()
    (work / "model.py").write_text(template.read_text())
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "model.py"],
        ["-c", "user.name=Ada", "-c", "user.email=ada@example.com", "commit", "-q", "-m", "model"],
        ["clone", "-q", "--bare", str(work), str(bare)],
    ):
        subprocess.run(["git", *args], cwd=work, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, check=True, capture_output=True, text=True)
    champion = retrain.Champion(
        model_name="species",
        version=1,
        repo_url=str(bare),
        branch="main",
        commit=sha.stdout.strip(),
        kind="linear",
        model_file="model.py",
        hparams={"epochs": 2},
        config={"dataset": "shapes", "target": 0.3},
        dataset_name="shapes",
        dataset_version=1,
        accuracy=0.9,
        pipeline_id="0123abcd-0000beef",
    )
    seen: list[retrain.NewVersion] = []
    monkeypatch.setattr(
        retrain, "affected_champions", lambda new, registry, say: seen.append(new) or [champion]
    )

    run = dag.test(run_conf={"dataset": "shapes"})  # as `datasets add` starts it, less the version

    assert states(run)["plan_retrains"] == "success", states(run)
    [planned] = next(ti for ti in run.get_task_instances() if ti.task_id == "plan_retrains").xcom_pull()
    assert seen == [retrain.NewVersion("shapes", 2)]  # no version: the latest in the store
    assert pipeline.Pipeline.load(planned["pipeline_id"]).pinned_dataset == ("shapes", 2)
    assert run.state == DagRunState.SUCCESS, states(run)
    with create_session() as session:
        child = session.query(DagRun).filter(DagRun.run_id == planned["run_id"]).one()
        assert child.dag_id == "tweak_and_retrain"
        assert child.conf == {"pipeline_id": planned["pipeline_id"], "attempt": 1}
