"""The plugin inside Airflow's own API server app: registered by the plugin manager from ``plugins/``, its
pages guarded by the auth manager's checks, and no id in any URL able to reach a file outside the data dir.

The app is Airflow's ``create_app()``, with the project's plugins folder (tests/conftest.py) and the default
SimpleAuthManager; sessions are real JWTs the auth manager signs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pushtrain import pipeline

pytestmark = pytest.mark.slow  # Airflow's whole API server app is built once, about 20-30 s
SECRET = "TOP-SECRET-CONTENT-91c2"
PIPELINE_ID = "0123abcd-feedbeef"
PAGES = [
    "/pushtrain/pipelines",
    "/pushtrain/api/pipelines",
    f"/pushtrain/pipelines/{PIPELINE_ID}",
    f"/pushtrain/pipelines/{PIPELINE_ID}/live",
    f"/pushtrain/api/pipelines/{PIPELINE_ID}",
    f"/pushtrain/runs/tweak_and_retrain/pushtrain__{PIPELINE_ID}__attempt-1",
    "/pushtrain/registry",
    "/pushtrain/api/registry",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline of one attempt, and next to the data dir a secret that nothing may serve."""
    root = tmp_path_factory.mktemp("ui-app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(root / "data"))
        run = pipeline.Pipeline(
            pipeline_id=PIPELINE_ID,
            repo_url="/srv/git/models.git",
            branch="main",
            commit="0123abcd" * 5,
            author_name="Dana",
            author_email="dana@example.com",
            commit_message="CNN",
            kind="cnn",
            config=pipeline.PipelineConfig(),
            origin_dag_run_id="manual__2026-11-30T10:00:00+00:00",
            model_name="models",
        )
        run.save()
        pipeline.Attempt(
            pipeline_id=PIPELINE_ID,
            attempt=1,
            status="prepared",
            repo_url=run.repo_url,
            commit=run.commit,
            kind="cnn",
            model_file="model.py",
            hparams={},
        ).save()
    outside = root / "outside"
    (outside / "attempt-1").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / pipeline.PIPELINE_FILE).write_text(
        json.dumps({**run.model_dump(mode="json"), "pipeline_id": "fedcba98-76543210", "model_name": SECRET})
    )
    # Names that are valid ids but lead outside the data dir through a link.
    (root / "data" / "runs" / "fedcba98-76543210").symlink_to(outside)
    (root / "data" / "runs" / PIPELINE_ID / "attempt-2").symlink_to(outside / "attempt-1")
    (root / "data" / "registry").mkdir(parents=True)
    (root / "data" / "registry" / "linked-model").symlink_to(outside)
    return root / "data"


@pytest.fixture(scope="module")
def airflow_app(data_dir: Path):
    from airflow.api_fastapi.app import create_app
    from airflow.utils.db import initdb

    initdb()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHTRAIN_DATA_DIR", str(data_dir))
        yield create_app()


@pytest.fixture(scope="module")
def client(airflow_app, data_dir: Path) -> TestClient:
    return TestClient(airflow_app)


def token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"user-{role}", role=role))


def test_the_plugin_is_registered_with_a_tab_on_dag_runs_and_two_menu_entries(client) -> None:
    listed = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token('admin')}"}).json()

    [plugin] = [p for p in listed["plugins"] if p["name"] == "pushtrain"]
    assert plugin["source"] == "$PLUGINS_FOLDER/pushtrain_plugin.py"
    views = {view["name"]: view for view in plugin["external_views"]}
    assert views["Training attempts"]["destination"] == "dag_run"
    assert views["Training attempts"]["href"] == "pushtrain/runs/{DAG_ID}/{RUN_ID}"
    assert {views["Pipelines"]["destination"], views["Model registry"]["destination"]} == {"nav"}
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/pushtrain"]


@pytest.mark.parametrize("path", PAGES)
def test_without_a_session_every_page_is_401(client, path: str) -> None:
    response = client.get(path, headers={"Accept": "text/html"})

    assert response.status_code == 401
    assert PIPELINE_ID not in response.text and "Log in to Airflow" in response.text


@pytest.mark.parametrize("path", PAGES)
def test_a_session_without_read_access_is_403_and_a_forged_token_too(client, path: str) -> None:
    no_role = client.get(path, cookies={"_token": token(None)})
    forged = client.get(path, cookies={"_token": token("viewer")[:-6] + "AAAAAA"})

    assert no_role.status_code == 403 and forged.status_code == 403
    assert PIPELINE_ID not in no_role.text + forged.text


@pytest.mark.parametrize("path", PAGES)
def test_a_viewer_reads_every_page_by_cookie_or_bearer_token(client, path: str) -> None:
    by_cookie = client.get(path, cookies={"_token": token("viewer")}, follow_redirects=False)
    by_bearer = client.get(
        path, headers={"Authorization": f"Bearer {token('viewer')}"}, follow_redirects=False
    )

    assert by_cookie.status_code in (200, 303) and by_bearer.status_code == by_cookie.status_code


def test_the_stylesheet_needs_no_session_and_the_webhook_no_login(client) -> None:
    assert client.get("/pushtrain/static/pushtrain.css").status_code == 200
    # Not Airflow's 401 "Not authenticated": the webhook answers itself, and without a secret it does nothing.
    response = client.post("/pushtrain/hooks/git", content=b"{}")
    assert response.status_code in (401, 503) and response.json()["status"] in ("rejected", "unavailable")


TRAVERSALS = [
    "..",
    "...",
    "../..",
    "..%2F..%2Fsecret.txt",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2foutside",
    "..%5C..%5Csecret.txt",
    "%2Fetc%2Fpasswd",
    "outside%00",
    "fedcba98-76543210",
    "0123abcd-feedbeef%2F..%2F..%2Foutside",
    ".%2E/.%2E/outside",
    "~root",
    "*",
]


@pytest.mark.parametrize("evil", TRAVERSALS)
def test_no_id_reaches_outside_the_data_dir(client, evil: str) -> None:
    cookies = {"_token": token("admin")}
    paths = [
        f"/pushtrain/pipelines/{evil}",
        f"/pushtrain/pipelines/{evil}/live",
        f"/pushtrain/api/pipelines/{evil}",
        f"/pushtrain/runs/tweak_and_retrain/pushtrain__{evil}__attempt-1",
        f"/pushtrain/runs/train_on_push/{evil}",
        f"/pushtrain/runs/{evil}/{evil}",
        f"/pushtrain/static/{evil}",
        "/pushtrain/static/..%2F..%2Frecords.py",
    ]
    for path in paths:
        response = client.get(path, cookies=cookies, follow_redirects=False)
        assert SECRET not in response.text, path
        assert "import " not in response.text, path  # no source file of the package either
        if response.status_code == 303:  # a run that does lead to a pipeline leads to ours only
            assert response.headers["location"] == f"/pushtrain/pipelines/{PIPELINE_ID}", path
        else:
            assert response.status_code in (200, 400, 403, 404, 405, 422), (path, response.status_code)
            # A 200 is the note of a run without a pipeline, or (where the client removed the dot segments,
            # as browsers do) Airflow's own UI at the shortened path.
            assert (
                response.status_code != 200
                or "No training attempts" in response.text
                or '<div id="root"' in response.text
            ), path


def test_linked_folders_inside_the_data_dir_are_not_followed(client) -> None:
    cookies = {"_token": token("admin")}
    listing = client.get("/pushtrain/api/pipelines", cookies=cookies).json()
    pipeline_page = client.get(f"/pushtrain/api/pipelines/{PIPELINE_ID}", cookies=cookies).json()
    registry = client.get("/pushtrain/api/registry", cookies=cookies).json()

    assert [p["pipeline_id"] for p in listing] == [PIPELINE_ID]
    assert [a["attempt"] for a in pipeline_page["attempts"]] == [1]  # attempt-2 is a link: not read
    assert registry == []
    assert client.get("/pushtrain/pipelines/fedcba98-76543210", cookies=cookies).status_code == 404
