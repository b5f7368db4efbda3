"""The register_dataset DAG: parses cleanly, validates its Params, and under ``dag.test()`` imports a real
folder, emits an asset event on the data set's Asset for a new version, and skips (no event) when the same
content is registered again. Bad data fails the task with the import's message and no retry."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent, AssetModel
from airflow.sdk import DagRunState, TaskInstanceState
from airflow.sdk.exceptions import ParamValidationError
from airflow.utils.session import create_session

from pushtrain import datasets
from pushtrain.dataset_assets import dataset_asset

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "register_dataset"


@pytest.fixture(scope="module")
def dag():
    from airflow.utils.db import initdb

    initdb()
    bag = DagBag(dag_folder=str(DAGS_DIR / "register_dataset.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAG_ID]


def grey_class_folder(root: Path, classes: int = 2, per_class: int = 5, shade: int = 0) -> Path:
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            value = (40 * c + 7 * i + shade) % 256
            (folder / f"{i}.png").write_bytes(datasets.grey_png([value] * 64, 8))
    return root


def events_of(name: str) -> list[dict]:
    uri = dataset_asset(name).uri
    with create_session() as session:
        asset = session.query(AssetModel).filter(AssetModel.uri == uri).one_or_none()
        if asset is None:
            return []
        rows = session.query(AssetEvent).filter(AssetEvent.asset_id == asset.id).order_by(AssetEvent.id).all()
        return [dict(row.extra) for row in rows]


def task_state(run) -> TaskInstanceState:
    return next(ti.state for ti in run.get_task_instances() if ti.task_id == "import_dataset")


def test_dag_is_manual_retry_free_and_declares_the_alias(dag):
    assert dag.schedule is None  # manual only: a person (or the REST API) names the data and the path
    assert dag.default_args["retries"] == 0 and dag.max_active_runs == 1
    task = dag.get_task("import_dataset")
    assert [outlet.name for outlet in task.outlets] == ["pushtrain-datasets"]
    assert {"name", "path", "test_fraction", "image_size", "channels", "label_column", "categorical"} <= set(
        dag.params
    )


@pytest.mark.parametrize(
    "conf",
    [
        {"name": "../etc", "path": "/tmp"},
        {"name": "ok", "path": ""},
        {"name": "ok", "path": "/x", "channels": 2},
        {"name": "ok", "path": "/x", "image_size": [64]},
    ],
)
def test_bad_params_are_refused_before_anything_runs(dag, conf):
    with pytest.raises(ParamValidationError):
        dag.test(run_conf=conf)


def test_new_version_emits_an_event_and_unchanged_content_skips(dag, tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    source = grey_class_folder(tmp_path / "shades")
    first = dag.test(run_conf={"name": "shades", "path": str(source)})
    assert first.state == DagRunState.SUCCESS and task_state(first) == TaskInstanceState.SUCCESS
    manifest = datasets.load_manifest("shades")
    assert manifest.version == 1
    assert events_of("shades") == [manifest.asset_extra()]
    assert events_of("shades")[0]["sha256"] == manifest.dataset_sha256

    again = dag.test(run_conf={"name": "shades", "path": str(source)})
    assert task_state(again) == TaskInstanceState.SKIPPED
    assert len(events_of("shades")) == 1  # nothing new, no event

    (source / "class1" / "4.png").write_bytes(datasets.grey_png([255] * 64, 8))
    changed = dag.test(run_conf={"name": "shades", "path": str(source)})
    assert task_state(changed) == TaskInstanceState.SUCCESS
    assert [event["version"] for event in events_of("shades")] == [1, 2]


def test_bad_data_fails_without_retry_and_without_an_event(dag, tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    source = grey_class_folder(tmp_path / "single", classes=1)
    run = dag.test(run_conf={"name": "single", "path": str(source)})
    assert run.state == DagRunState.FAILED and task_state(run) == TaskInstanceState.FAILED
    assert events_of("single") == []
    assert datasets.versions("single") == []
