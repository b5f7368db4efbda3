"""The CLI's Airflow client: where its login comes from, and what a user reads when Airflow is not there.
Posting events and triggering runs against a real Airflow is tested in the e2e modules."""

from __future__ import annotations

import json
import socket

import pytest

from pushtrain import airflow_api
from pushtrain.__main__ import main as cli


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_the_login_comes_from_the_environment_before_the_generated_one(tmp_path):
    (tmp_path / airflow_api.GENERATED_PASSWORDS).write_text(json.dumps({"admin": "generated"}))
    generated = airflow_api.AirflowApi.from_environment({"AIRFLOW_HOME": str(tmp_path)})
    assert (generated.url, generated.username, generated.password) == (
        airflow_api.DEFAULT_URL,
        "admin",
        "generated",
    )
    given = airflow_api.AirflowApi.from_environment(
        {
            "AIRFLOW_HOME": str(tmp_path),
            "PUSHTRAIN_AIRFLOW_URL": "http://airflow.internal:8080/",
            "PUSHTRAIN_AIRFLOW_USERNAME": "ci",
            "PUSHTRAIN_AIRFLOW_PASSWORD": "secret",
        }
    )
    assert (given.url, given.username, given.password) == ("http://airflow.internal:8080", "ci", "secret")
    assert "secret" not in repr(given)
    token = airflow_api.AirflowApi.from_environment(
        {"AIRFLOW_HOME": str(tmp_path), "PUSHTRAIN_AIRFLOW_TOKEN": "jwt"}
    )
    assert (token.token, token.username) == ("jwt", None)


def test_no_airflow_and_no_login_are_errors_that_say_what_to_set(tmp_path):
    nowhere = airflow_api.AirflowApi(url=f"http://127.0.0.1:{closed_port()}", token="jwt", timeout=2)
    with pytest.raises(airflow_api.AirflowApiError, match="set PUSHTRAIN_AIRFLOW_URL"):
        nowhere.asset_id("pushtrain-model://digits")
    anonymous = airflow_api.AirflowApi.from_environment({"AIRFLOW_HOME": str(tmp_path / "none")})
    with pytest.raises(airflow_api.AirflowApiError, match="PUSHTRAIN_AIRFLOW_USERNAME"):
        anonymous.trigger_dag("deploy_model", {"model_name": "digits"})


def test_a_cli_change_airflow_cannot_hear_of_is_kept_and_the_user_told_how_to_announce_it(
    tmp_path, monkeypatch, capsys
):
    from pushtrain.registry import ModelRegistry

    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PUSHTRAIN_AIRFLOW_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("PUSHTRAIN_AIRFLOW_TOKEN", "jwt")
    from pushtrain import settings

    registry = ModelRegistry(settings.registry_dir())
    for number in (1, 2):
        artifact = tmp_path / f"artifact{number}"
        artifact.mkdir()
        (artifact / "model.joblib").write_bytes(b"model")
        registry.register("digits", artifact, {"accuracy": 0.9}, {}, pipeline_run_id=f"run-{number}")
    assert cli(["registry", "promote", "digits", "2"]) == 0
    err = capsys.readouterr().err
    assert registry.champion("digits").number == 2
    assert "Airflow was not told" in err and 'deploy_model with {"model_name": "digits"}' in err
    assert cli(["registry", "promote", "digits", "1", "--no-announce"]) == 0
    assert capsys.readouterr().err == ""


class RecordingApi(airflow_api.AirflowApi):
    """An Airflow that knows the assets given to it and records what it was asked to do."""

    def __init__(self, known: dict[str, int]) -> None:
        super().__init__(url="http://airflow.test", token="jwt")
        self.known, self.calls = known, []

    def asset_id(self, uri):
        return self.known.get(uri)

    def post_asset_event(self, asset_id, extra):
        self.calls.append(("event", asset_id, extra))
        return {"id": 7}

    def trigger_dag(self, dag_id, conf, run_id=None):
        self.calls.append(("trigger", dag_id, conf))
        return {"dag_run_id": "manual__1"}


def test_the_consumer_dag_is_started_even_where_the_asset_event_is_posted():
    # retrain_on_new_data and deploy_model are scheduled on an alias, which a REST-posted event never reaches.
    conf = {"dataset": "wine", "version": 2}
    known = RecordingApi({"pushtrain-dataset://wine": 3})
    said = airflow_api.announce(
        "pushtrain-dataset://wine", {"version": 2}, "retrain_on_new_data", conf, known
    )
    assert known.calls == [("event", 3, {"version": 2}), ("trigger", "retrain_on_new_data", conf)]
    assert said == (
        "asset event 7 posted on pushtrain-dataset://wine; retrain_on_new_data run manual__1 started "
        "at http://airflow.test"
    )
    unknown = RecordingApi({})
    airflow_api.announce("pushtrain-dataset://wine", {"version": 2}, "retrain_on_new_data", conf, unknown)
    assert unknown.calls == [("trigger", "retrain_on_new_data", conf)]
