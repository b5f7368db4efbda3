"""The signed git webhook: signatures of each git host, size and format limits, which pushes start a run, and
the starter against a real Airflow database (one run per commit, ledger claims, the per-repository bound,
idle watchers making way).

The HTTP tests mount the webhook's route in an app of their own with a starter that records what it was
asked to start, so every refusal can be shown to start nothing; ``test_ui_browser.py`` sends real pushes to
a running Airflow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pushtrain import ledger
from pushtrain.ui import starter, webhook
from pushtrain.ui.webhook import Push, WatchedRepository, repository_key

SECRET = "s3cret-for-tests-0123456789"
REPO_URL = "https://git.example.com/team/model.git"
SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "89abcdef0123456789abcdef0123456789abcdef"


def github_push(sha: str = SHA, ref: str = "refs/heads/main", url: str = REPO_URL) -> dict:
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": sha,
        "pusher": {"name": "dana"},
        "repository": {
            "full_name": "team/model",
            "clone_url": url,
            "ssh_url": "git@git.example.com:team/model.git",
            "html_url": url.removesuffix(".git"),
        },
    }


def gitlab_push(sha: str = SHA) -> dict:
    return {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "after": sha,
        "user_username": "dana",
        "project": {
            "path_with_namespace": "team/model",
            "git_http_url": REPO_URL,
            "git_ssh_url": "git@git.example.com:team/model.git",
        },
    }


def hub_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Recorder:
    """Stands in for ``starter.start_training``: records each push it was asked to start."""

    def __init__(self) -> None:
        self.started: list[tuple[Push, WatchedRepository]] = []

    def __call__(self, push: Push, repository: WatchedRepository) -> starter.Started:
        self.started.append((push, repository))
        return starter.Started("started", "queued", starter.run_id_for(repository, push.sha))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> TestClient:
    watched = [WatchedRepository("", REPO_URL, repository_key(REPO_URL))]
    config = webhook.WebhookConfig(lambda: SECRET, lambda: watched, lambda: "main", recorder)
    app = FastAPI()
    app.include_router(webhook.make_router(lambda: config))
    root = FastAPI()
    root.mount("/pushtrain", app)
    return TestClient(root)


def post(client: TestClient, payload: object, headers: dict[str, str], raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    return client.post(
        "/pushtrain/hooks/git", content=body, headers={"Content-Type": "application/json", **headers}
    )


def signed_github(client: TestClient, payload: object, event: str = "push"):
    body = json.dumps(payload).encode()
    return post(
        client,
        None,
        {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": hub_signature(body)},
        raw=body,
    )


# --- signatures --------------------------------------------------------------------------------------------


def test_a_signed_github_push_to_the_watched_branch_starts_one_run(client, recorder) -> None:
    response = signed_github(client, github_push())

    assert response.status_code == 202
    assert response.json()["status"] == "started"
    assert response.json()["run_id"].endswith(f"__{SHA}")
    [(push, repository)] = recorder.started
    assert (push.provider, push.branch, push.sha, push.pusher, push.delivery) == (
        "github",
        "main",
        SHA,
        "dana",
        "d-1",
    )
    assert repository.conf_url == ""  # the git_default connection's repository


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=" + "0" * 64,
        hub_signature(b"another body"),
        hub_signature(json.dumps(github_push()).encode(), secret="not-the-secret-0123456789"),
        hub_signature(json.dumps(github_push()).encode()).removeprefix(
            "sha256="
        ),  # GitHub's form needs the prefix
        "sha1=" + hmac.new(SECRET.encode(), json.dumps(github_push()).encode(), hashlib.sha1).hexdigest(),
    ],
)
def test_a_missing_or_wrong_signature_is_401_and_starts_nothing(client, recorder, signature) -> None:
    headers = {"X-GitHub-Event": "push"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature

    response = post(client, github_push(), headers)

    assert response.status_code == 401
    assert response.json()["status"] == "rejected"
    assert recorder.started == []


def test_the_signature_covers_the_raw_bytes_not_the_parsed_json(client, recorder) -> None:
    body = json.dumps(github_push()).encode()
    reformatted = json.dumps(github_push(), indent=2).encode()  # the same JSON, other bytes

    response = post(
        client, None, {"X-GitHub-Event": "push", "X-Hub-Signature-256": hub_signature(body)}, raw=reformatted
    )

    assert response.status_code == 401 and recorder.started == []


def test_gitea_and_forgejo_sign_with_their_own_header(client, recorder) -> None:
    body = json.dumps(github_push()).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    for host in ("Gitea", "Forgejo"):
        # Gitea also sends GitHub's event header; its own one decides which signature is checked.
        bad = post(
            client,
            None,
            {
                f"X-{host}-Event": "push",
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": hub_signature(body),
                f"X-{host}-Signature": "0" * 64,
            },
            raw=body,
        )
        assert bad.status_code == 401
        good = post(client, None, {f"X-{host}-Event": "push", f"X-{host}-Signature": digest}, raw=body)
        assert good.status_code == 202, good.text
    assert [push.provider for push, _ in recorder.started] == ["gitea", "forgejo"]


def test_gitlab_sends_the_secret_as_a_token(client, recorder) -> None:
    assert (
        post(client, gitlab_push(), {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"}).status_code
        == 401
    )
    assert post(client, gitlab_push(), {"X-Gitlab-Event": "Push Hook"}).status_code == 401
    response = post(client, gitlab_push(), {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    assert response.status_code == 202
    [(push, _)] = recorder.started
    assert (push.provider, push.sha, push.pusher) == ("gitlab", SHA, "dana")


def test_a_plain_json_push_is_signed_like_githubs(client, recorder) -> None:
    body = json.dumps({"repository": REPO_URL, "ref": "refs/heads/main", "after": SHA}).encode()

    assert post(client, None, {}, raw=body).status_code == 401
    assert post(client, None, {"X-Hub-Signature-256": hub_signature(body)}, raw=body).status_code == 202
    assert webhook.sign(body, SECRET) == hub_signature(body)


def test_without_a_configured_secret_nothing_is_verified_or_started(recorder) -> None:
    for secret in (None, "short"):
        config = webhook.WebhookConfig(lambda secret=secret: secret, lambda: [], lambda: "main", recorder)
        app = FastAPI()
        app.include_router(webhook.make_router(lambda config=config: config))
        body = json.dumps(github_push()).encode()
        response = TestClient(app).post(
            "/hooks/git",
            content=body,
            headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": hub_signature(body, secret or "x")},
        )
        assert response.status_code == 503
        assert "pushtrain_webhook" in response.json()["reason"]
    assert recorder.started == []


# --- size and format -------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(client, recorder) -> None:
    big = b'{"padding": "' + b"x" * webhook.MAX_BODY_BYTES + b'"}'
    declared = post(
        client, None, {"X-GitHub-Event": "push", "X-Hub-Signature-256": hub_signature(big)}, raw=big
    )
    assert declared.status_code == 413

    def chunks():
        for _ in range(3):
            yield b"x" * (webhook.MAX_BODY_BYTES // 2)

    streamed = client.post(
        "/pushtrain/hooks/git",
        content=chunks(),
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
    )
    assert streamed.status_code == 413
    assert recorder.started == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"ref": "refs/heads/main"}).encode(), "'after'"),
        (
            json.dumps({"ref": "refs/heads/main", "after": "abc", "repository": REPO_URL}).encode(),
            "full commit SHA",
        ),
        (json.dumps({"ref": "refs/heads/main", "after": SHA}).encode(), "no repository"),
    ],
)
def test_a_signed_but_malformed_body_is_400(client, recorder, raw: bytes, reason: str) -> None:
    response = post(client, None, {"X-Hub-Signature-256": hub_signature(raw)}, raw=raw)

    assert response.status_code == 400
    assert reason in response.json()["reason"]
    assert recorder.started == []


# --- which pushes start a run ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "event", "reason"),
    [
        (github_push(), "ping", "'ping' is not a push"),
        (github_push(), "pull_request", "is not a push"),
        (github_push(ref="refs/heads/feature"), "push", "branch feature is not the watched branch main"),
        (
            github_push(ref="refs/heads/pushtrain/0123abcd"),
            "push",
            "not the watched branch",
        ),  # our own tuned branch
        (github_push(ref="refs/tags/v1.0"), "push", "refs/tags/v1.0 is not a branch"),
        (github_push(sha="0" * 40), "push", "was deleted"),
        (
            github_push(url="https://git.example.com/team/other.git")
            | {
                "repository": {
                    "clone_url": "https://git.example.com/team/other.git",
                    "full_name": "team/other",
                }
            },
            "push",
            "team/other is not watched",
        ),
    ],
)
def test_other_events_branches_and_repositories_are_acknowledged_and_ignored(
    client, recorder, payload, event, reason
) -> None:
    response = signed_github(client, payload, event=event)

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    assert recorder.started == []


@pytest.mark.parametrize(
    "address",
    [
        "https://git.example.com/team/model.git",
        "https://GIT.example.com/team/model/",
        "https://bot:token@git.example.com/team/model.git",
        "ssh://git@git.example.com:2222/team/model.git",
        "git@git.example.com:team/model.git",
        "git.example.com:team/model",
    ],
)
def test_one_repository_has_one_key_however_it_is_addressed(address: str) -> None:
    assert repository_key(address) == "git.example.com/team/model"


def test_local_repositories_are_matched_by_their_resolved_path(tmp_path: Path) -> None:
    bare = tmp_path / "repo.git"
    bare.mkdir()
    assert (
        repository_key(str(bare))
        == repository_key(f"file://{bare}/")
        == repository_key(str(tmp_path / "repo"))
    )
    assert repository_key(str(bare)) != repository_key(str(tmp_path / "other.git"))


# --- the starter, against a real Airflow database ----------------------------------------------------------


@pytest.fixture(scope="module")
def airflow_dags():
    """An initialised Airflow database holding the parsed train_on_push DAG."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.db import initdb

    initdb()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "train_on_push.py"))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    return bag


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    # No background look for idle watchers unless a test asks for it: it would act on later tests' runs.
    monkeypatch.setattr(starter, "MAKE_WAY_SECONDS", 0.0)
    yield tmp_path / "data"
    for thread in threading.enumerate():
        if thread.name.startswith("make-way-"):
            thread.join()


@pytest.fixture
def repository(request) -> WatchedRepository:
    """A repository of its own per test, so runs of one test do not count against another's bound."""
    url = f"https://git.example.com/team/{request.node.name[:40].replace('[', '-').replace(']', '')}.git"
    return WatchedRepository("", url, repository_key(url))


def push_of(repository: WatchedRepository, sha: str = SHA, branch: str = "main") -> Push:
    return Push("github", branch, sha, (repository.ledger_url,), "team/model", "dana", "d-1")


def runs_of(prefix: str) -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [
            (run.run_id, run.state, run.conf)
            for run in session.scalars(
                select(DagRun).where(DagRun.dag_id == "train_on_push", DagRun.run_id.startswith(prefix))
            )
        ]


@pytest.mark.slow
def test_a_push_claims_its_commit_and_queues_one_run_a_redelivery_none(
    airflow_dags, data_dir, repository
) -> None:
    first = starter.start_training(push_of(repository), repository)

    assert (first.status, first.http_status) == ("started", 202)
    assert first.run_id == starter.run_id_for(repository, SHA)
    [(run_id, state, conf)] = runs_of(starter.run_prefix(repository))
    assert (run_id, state) == (first.run_id, "queued")
    assert conf == {"commit": SHA, "branch": "main", "repo_url": ""}
    assert ledger.read(repository.ledger_url, SHA)["run_id"] == first.run_id

    again = starter.start_training(push_of(repository), repository)

    assert (again.status, again.http_status, again.run_id) == ("already_started", 200, first.run_id)
    assert len(runs_of(starter.run_prefix(repository))) == 1


@pytest.mark.slow
def test_a_commit_the_sensor_took_first_is_left_to_it(airflow_dags, data_dir, repository) -> None:
    assert ledger.claim(repository.ledger_url, SHA, "scheduled__2026-11-30T10:00:00+00:00")

    result = starter.start_training(push_of(repository), repository)

    assert result.status == "already_claimed" and "scheduled__2026-11-30T10:00:00+00:00" in result.reason
    assert runs_of(starter.run_prefix(repository)) == []


@pytest.mark.slow
def test_queued_runs_per_repository_are_bounded_and_the_rest_left_unclaimed(
    airflow_dags, data_dir, repository
) -> None:
    shas = [f"{n:040x}" for n in range(1, starter.MAX_QUEUED_PER_REPOSITORY + 2)]
    results = [starter.start_training(push_of(repository, sha), repository) for sha in shas]

    assert [r.status for r in results] == ["started"] * starter.MAX_QUEUED_PER_REPOSITORY + ["busy"]
    assert results[-1].http_status == 429
    assert ledger.read(repository.ledger_url, shas[-1]) is None  # left for the sensor
    assert len(runs_of(starter.run_prefix(repository))) == starter.MAX_QUEUED_PER_REPOSITORY


@pytest.mark.slow
def test_a_run_that_cannot_be_created_releases_its_claim(airflow_dags, data_dir, repository) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):  # the Branch Param needs at least one character
        starter.start_training(push_of(repository, branch=""), repository)

    assert ledger.read(repository.ledger_url, SHA) is None
    assert runs_of(starter.run_prefix(repository)) == []


def make_watchers(repository: WatchedRepository, watchers: dict[str, tuple[dict, str]]) -> None:
    """Running train_on_push runs whose wait_for_commit task is in the given state."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    suffix = repository.key[-8:]
    with create_session() as session:
        dag = DBDagBag().get_latest_version_of_dag("train_on_push", session=session)
        for name, (conf, _) in watchers.items():
            dag.create_dagrun(
                run_id=f"{name}-{suffix}",
                run_after=datetime.now(UTC),
                conf=conf,
                run_type=DagRunType.MANUAL if name.startswith("manual") else DagRunType.SCHEDULED,
                triggered_by=DagRunTriggeredByType.TIMETABLE,
                state=DagRunState.RUNNING,
                logical_date=None,
                session=session,
            )
        session.flush()
        for ti in session.scalars(
            select(TaskInstance).where(
                TaskInstance.task_id == "wait_for_commit", TaskInstance.run_id.endswith(suffix)
            )
        ):
            ti.state = watchers[ti.run_id.removesuffix(f"-{suffix}")][1]


def sensor_states(repository: WatchedRepository) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    suffix = repository.key[-8:]
    with create_session() as session:
        return {
            ti.run_id.removesuffix(f"-{suffix}"): ti.state
            for ti in session.scalars(
                select(TaskInstance).where(
                    TaskInstance.task_id == "wait_for_commit", TaskInstance.run_id.endswith(suffix)
                )
            )
        }


@pytest.mark.slow
def test_runs_waiting_for_a_push_make_way_unless_they_have_a_commit(
    airflow_dags, data_dir, repository
) -> None:
    claimed_repo = "/srv/git/claimed.git"
    make_watchers(
        repository,
        {
            "scheduled__between-pokes": ({}, "up_for_reschedule"),
            "scheduled__retrying": ({}, "up_for_retry"),
            "manual__other-repo": ({"repo_url": "/srv/git/other.git"}, "queued"),
            "manual__explicit": ({"commit": OTHER_SHA}, "up_for_reschedule"),
            "manual__claimed": ({"repo_url": claimed_repo}, "up_for_retry"),
            "scheduled__poking": ({}, "running"),
        },
    )
    assert ledger.claim(claimed_repo, OTHER_SHA, f"manual__claimed-{repository.key[-8:]}")

    result = starter.start_training(push_of(repository), repository)

    assert result.status == "started"
    assert sorted(name.rsplit("-", 1)[0] for name in result.yielded) == [
        "manual__other-repo",
        "scheduled__between-pokes",
        "scheduled__retrying",
    ]
    assert sensor_states(repository) == {
        "scheduled__between-pokes": "skipped",
        "scheduled__retrying": "skipped",
        "manual__other-repo": "skipped",
        "manual__explicit": "up_for_reschedule",
        "manual__claimed": "up_for_retry",
        "scheduled__poking": "running",
    }
    # A run that made way has nothing left to run (finish_pipeline included): it ends at the next look.
    assert run_task_states(f"scheduled__between-pokes-{repository.key[-8:]}") == {"skipped"}
    assert None in run_task_states(f"manual__explicit-{repository.key[-8:]}")


def run_task_states(run_id: str) -> set[str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return set(session.scalars(select(TaskInstance.state).where(TaskInstance.run_id == run_id)))


@pytest.mark.slow
def test_a_watcher_poking_at_push_time_makes_way_after_its_poke(
    airflow_dags, data_dir, repository, monkeypatch
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    monkeypatch.setattr(starter, "MAKE_WAY_SECONDS", 10.0)
    make_watchers(repository, {"scheduled__poking": ({}, "running")})

    yielded = starter.start_training(push_of(repository), repository).yielded
    assert not [name for name in yielded if name.endswith(repository.key[-8:])]
    with create_session() as session:  # the poke ends: the sensor waits for its next one
        session.scalar(
            select(TaskInstance).where(
                TaskInstance.task_id == "wait_for_commit", TaskInstance.run_id.endswith(repository.key[-8:])
            )
        ).state = "up_for_reschedule"

    wait_until_true = time.monotonic() + 8
    while sensor_states(repository)["scheduled__poking"] != "skipped" and time.monotonic() < wait_until_true:
        time.sleep(0.2)
    assert sensor_states(repository)["scheduled__poking"] == "skipped"


@pytest.mark.slow
def test_before_train_on_push_is_parsed_the_answer_is_503_and_the_claim_released(
    airflow_dags, data_dir, repository, monkeypatch
) -> None:
    monkeypatch.setattr(starter, "TRAIN_DAG_ID", "not_parsed_yet")

    with pytest.raises(webhook.WebhookError) as refusal:
        starter.start_training(push_of(repository), repository)

    assert refusal.value.status == 503 and "not parsed yet" in refusal.value.reason
    assert ledger.read(repository.ledger_url, SHA) is None
