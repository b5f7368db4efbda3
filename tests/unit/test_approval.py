"""``promotion = "approve"`` (issue 13): the pipeline registers a version that met its target as challenger
and hands it to its own ``approve_model`` DAG run, where a person's answer promotes it, or keeps it
challenger with the reason (a rejection, or no answer); the pipeline run does not wait for the answer.

Real git repositories and a real registry under a temporary data dir, as in test_steps_git (whose fixtures
and helpers are reused); the request and approval tasks are the real operators, run with a task
context made here: no scheduler, no container.
"""

# ruff: noqa: F811  (the fixtures imported from test_steps_git are parameters of the tests here)
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.standard.operators.trigger_dagrun import DagIsPaused
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowSkipException,
    DagRunTriggerException,
    TaskAwaitingInput,
)
from test_steps_git import CNN_TOML, T0, Origin, checkout, commented_cnn, data_dir, digits, judge, origin  # noqa: F401

from pushtrain import approval, mail, pipeline, settings, steps
from pushtrain.model_assets import MODELS_ALIAS, model_asset
from pushtrain.registry import CHALLENGER, CHAMPION, ModelRegistry

APPROVE_TOML = CNN_TOML + 'promotion = "approve"\napproval_timeout_hours = 2\n'


# --- pushtrain.toml ---------------------------------------------------------------------------------------


def test_promotion_is_auto_unless_the_repository_asks_for_approval(tmp_path: Path) -> None:
    assert pipeline.load_config(tmp_path).promotion == "auto"
    assert pipeline.load_config(tmp_path).approval_timeout_hours == 24.0

    (tmp_path / "pushtrain.toml").write_text(APPROVE_TOML)
    config = pipeline.load_config(tmp_path)

    assert (config.promotion, config.approval_timeout_hours) == ("approve", 2.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('promotion = "manual"', "promotion 'manual' is unknown; choose one of auto, approve"),
        ("approval_timeout_hours = 0", "approval_timeout_hours must be in (0, 720], got 0.0"),
        ("approval_timeout_hours = 1000", "approval_timeout_hours must be in (0, 720], got 1000.0"),
        ('approval_timeout_hours = "2h"', "approval_timeout_hours must be float, got '2h'"),
    ],
)
def test_a_bad_promotion_setting_names_the_key_and_the_allowed_values(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / "pushtrain.toml").write_text(line + "\n")

    with pytest.raises(pipeline.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipeline.load_config(tmp_path)


# --- register_model -------------------------------------------------------------------------------------


@pytest.fixture
def approve_attempt(origin: Origin, templates_dir: Path, digits) -> str:
    """A cnn pipeline of a repository with promotion = "approve" whose attempt 1 was judged (0.3)."""
    files = {"model.py": commented_cnn(templates_dir), "pushtrain.toml": APPROVE_TOML}
    pipeline_id = checkout(origin, origin.commit(files, "cnn", T0))["pipeline_id"]
    steps.detect_model_kind(pipeline_id)
    judge(steps.prepare_first_attempt(pipeline_id), 0.3)
    return pipeline_id


def test_under_approve_a_version_that_met_its_target_waits_as_challenger(approve_attempt: str) -> None:
    decision = judge(steps.prepare_tweaked_attempt(approve_attempt, 2), 0.95)

    registered = steps.register_model(decision.to_xcom(), None)

    registry = ModelRegistry(settings.registry_dir())
    name = registered["model_name"]
    assert (registered["version"], registered["is_champion"], registered["awaiting_approval"]) == (
        1,
        False,
        True,
    )
    assert registered["approval_timeout_hours"] == 2.0
    assert registry.aliases(name) == {CHALLENGER: 1}
    assert registered["promotion"].startswith("awaiting approval: v1 is challenger until a person approves")
    assert "no champion yet" in registered["promotion"] and "within 2 h" in registered["promotion"]
    # A retried task registers nothing new and moves no alias again.
    again = steps.register_model(decision.to_xcom(), None)
    assert (again["version"], again["awaiting_approval"]) == (1, True)
    assert len(registry.history(name)) == 1


def test_under_approve_the_success_mail_says_approval_is_awaited_and_links_to_the_page(
    approve_attempt: str,
) -> None:
    decision = judge(steps.prepare_tweaked_attempt(approve_attempt, 2), 0.95)
    registered = steps.register_model(decision.to_xcom(), None)
    run_id = approval.approval_run_id(registered["model_name"], registered["version"])
    url = approval.approval_page_url("http://airflow.test:8080/", run_id)
    registered["approval_run_id"], registered["approval_url"] = run_id, url

    subject, body = mail.success_mail(approve_attempt, registered)

    assert run_id == f"approval__{registered['model_name']}__v1"
    assert url == (
        f"http://airflow.test:8080/dags/approve_model/runs/{run_id}/tasks/approve_model"
        "/required_actions?map_index=-1"
    )
    assert subject.endswith(", approval awaited")
    assert "<b>Approval awaited</b>: version 1 is challenger" in body
    assert f'<a href="{url}">' in body and "No answer within 2 h keeps it challenger" in body
    assert f"(Required Actions of the approve_model run {run_id})" in body


def test_under_auto_nothing_waits(origin: Origin, templates_dir: Path, digits) -> None:
    files = {"model.py": commented_cnn(templates_dir), "pushtrain.toml": CNN_TOML}
    pipeline_id = checkout(origin, origin.commit(files, "cnn", T0))["pipeline_id"]
    steps.detect_model_kind(pipeline_id)
    decision = judge(steps.prepare_first_attempt(pipeline_id), 0.95)

    registered = steps.register_model(decision.to_xcom(), None)

    assert (registered["is_champion"], registered["awaiting_approval"]) == (True, False)
    assert "Approval awaited" not in mail.success_mail(pipeline_id, registered)[1]


# --- the request and the answer -------------------------------------------------------------------------


def register(
    registry: ModelRegistry, tmp_path: Path, accuracy: float, recalls: list[float], **lineage
) -> int:
    artifact = tmp_path / f"artifact-{accuracy}"
    artifact.mkdir()
    (artifact / "model.joblib").write_bytes(b"x" * 2048)
    per_class = {str(i): {"precision": r, "recall": r, "f1": r, "support": 10} for i, r in enumerate(recalls)}
    version = registry.register(
        "digits-knn",
        artifact,
        {"accuracy": accuracy, "per_class": per_class},
        {"dataset": {"name": "digits", "split_version": "v1"}, "kind": "knn", **lineage},
        pipeline_run_id=f"run-{accuracy}",
    )
    return version.number


@pytest.fixture
def two_versions(data_dir: Path, tmp_path: Path) -> ModelRegistry:
    """digits-knn v1 champion (0.95), v2 challenger (0.97) waiting for approval."""
    registry = ModelRegistry(settings.registry_dir())
    one = register(registry, tmp_path, 0.95, [0.9, 1.0], commit="a" * 40, hparams={"n_neighbors": 5})
    registry.promote_if_not_worse("digits-knn", one, by="pipeline:one")
    two = register(
        registry,
        tmp_path,
        0.97,
        [0.94, 1.0],
        commit="b" * 40,
        hparams={"n_neighbors": 3},
        tweak_diff="--- a/model.py\n+++ b/model.py\n-n 5\n+n 3\n",
    )
    registry.set_alias("digits-knn", CHALLENGER, two, reason="awaiting approval", by="pipeline:two")
    return registry


def test_the_request_shows_the_candidate_against_the_champion(two_versions: ModelRegistry) -> None:
    tests = {"summary": "1 model test(s) passed", "tests": [{"name": "test_speed", "seconds": 0.125}]}

    subject, body = approval.approval_request(
        two_versions, "digits-knn", 2, {"model_tests": tests, "approval_timeout_hours": 2.0}
    )

    assert subject == "Promote digits-knn v2 to champion? accuracy 0.9700, beats champion v1"
    assert "| | candidate v2 | champion v1 |" in body
    assert "| held-out accuracy | 0.9700 | 0.9500 |" in body
    assert "| recall of class 0 | 0.940 | 0.900 |" in body and "| recall of class 1 | 1.000 | 1.000 |" in body
    assert "| model size | 2.0 kB | 2.0 kB |" in body
    assert "| latency | model test test_speed: 0.125 s | not recorded |" in body
    assert "| commit | bbbbbbbb | aaaaaaaa |" in body and "| data set | digits v1 | digits v1 |" in body
    assert "| model tests | 1 model test(s) passed | - |" in body
    assert "Hyperparameters against champion v1: `n_neighbors`: 5 -> 3." in body
    assert "```diff\n--- a/model.py\n+++ b/model.py\n-n 5\n+n 3\n\n```" in body
    assert "No answer within 2 h: it stays challenger." in body


def test_approval_makes_it_champion_by_the_approving_user(two_versions: ModelRegistry) -> None:
    result = approval.apply_answer(
        two_versions, "digits-knn", 2, approval.APPROVED, by="user:admin", reason="faster and better"
    )

    assert result["is_champion"] and result["outcome"] == "approved"
    assert two_versions.aliases("digits-knn") == {CHAMPION: 2}  # no longer challenger
    move = [m for m in two_versions.history("digits-knn") if m.alias == CHAMPION][-1]
    assert (move.from_version, move.to_version, move.by) == (1, 2, "user:admin")
    assert move.reason == "approved v2 (champion was v1): faster and better"


@pytest.mark.parametrize(
    ("outcome", "reason", "recorded"),
    [
        (approval.REJECTED, "too slow", "refused v2: rejected in review; stays challenger: too slow"),
        (approval.REJECTED, "", "refused v2: rejected in review; stays challenger: no reason given"),
        (approval.TIMED_OUT, "", "refused v2: no answer within 2 h; stays challenger"),
    ],
)
def test_a_rejection_or_no_answer_keeps_it_challenger_with_the_reason(
    two_versions: ModelRegistry, outcome: str, reason: str, recorded: str
) -> None:
    result = approval.apply_answer(
        two_versions, "digits-knn", 2, outcome, by="user:admin", reason=reason, timeout_hours=2.0
    )

    assert not result["is_champion"] and result["reason"] == recorded
    assert two_versions.aliases("digits-knn") == {CHAMPION: 1, CHALLENGER: 2}
    move = two_versions.history("digits-knn")[-1]
    assert (move.alias, move.from_version, move.to_version, move.reason) == (CHAMPION, 1, 1, recorded)


# --- the operators ---------------------------------------------------------------------------------------


class OutletEvents:
    """``context["outlet_events"]`` as far as the operator uses it: ``[alias].add(asset, extra=...)``."""

    def __init__(self) -> None:
        self.added: list[tuple[Any, Any, dict]] = []

    def __getitem__(self, key: Any) -> SimpleNamespace:
        return SimpleNamespace(add=lambda asset, extra: self.added.append((key, asset, extra)))


APPROVAL_RUN_ID = "approval__digits-knn__v2"


def approval_context(params: dict) -> dict:
    """The context of the approve_model task of the run ``approval__digits-knn__v2``, conf read as Params."""
    ti = SimpleNamespace(
        id="0190a1b2-0000-7000-8000-000000000001",
        dag_id="approve_model",
        run_id=APPROVAL_RUN_ID,
        map_index=-1,
    )
    return {"ti": ti, "task_instance": ti, "params": params, "outlet_events": OutletEvents()}


def pipeline_context(registered: dict, approve_model_paused: bool = False) -> dict:
    """The context of train_on_push's request_approval task once register_model returned ``registered``."""
    ti = SimpleNamespace(
        dag_id="train_on_push",
        run_id="scheduled__1",
        xcom_pull=lambda task_ids: registered if task_ids == "register_model" else None,
        get_dag=lambda dag_id: SimpleNamespace(is_paused=approve_model_paused),
        xcom_push=lambda key, value: None,
    )
    return {"ti": ti, "task_instance": ti}


MODEL_TESTS = {"ran": False, "passed": True, "summary": "no model tests", "tests": []}
AWAITING = {
    "model_name": "digits-knn",
    "version": 2,
    "pipeline_id": "1a2b3c4d-5e6f7a8b",
    "awaiting_approval": True,
    "approval_timeout_hours": 2.0,
    "model_tests": MODEL_TESTS,
}
CONF = {
    "model_name": "digits-knn",
    "version": 2,
    "pipeline_id": "1a2b3c4d-5e6f7a8b",
    "approval_timeout_hours": 2.0,
    "model_tests": MODEL_TESTS,
    "requested_by": "dag_run:train_on_push/scheduled__1",
}


def answer(option: str, user: dict | None, reason: str = "") -> dict:
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason},
        "responded_at": datetime(2026, 3, 1, 13, tzinfo=UTC),
        "responded_by_user": user,
        "timedout": False,
    }


def test_the_request_is_skipped_when_register_model_decided_itself() -> None:
    with pytest.raises(AirflowSkipException, match="no approval needed"):
        approval.RequestApprovalOperator().execute(pipeline_context({"awaiting_approval": False}))


def test_the_request_starts_the_candidates_approve_model_run_and_does_not_wait() -> None:
    request = approval.RequestApprovalOperator()

    for _try in range(2):  # a retried request asks for the same run, which then already exists
        with pytest.raises(DagRunTriggerException) as trigger:
            request.execute(pipeline_context(AWAITING))
        asked = trigger.value
        assert (asked.trigger_dag_id, asked.dag_run_id) == ("approve_model", APPROVAL_RUN_ID)
        assert asked.conf == CONF
        assert asked.skip_when_already_exists is True and asked.wait_for_completion is False


def test_the_request_fails_while_approve_model_is_paused() -> None:
    """A queued request on a paused DAG would leave the person with nothing to answer: say so instead."""
    with pytest.raises(DagIsPaused, match="approve_model is paused"):
        approval.RequestApprovalOperator().execute(pipeline_context(AWAITING, approve_model_paused=True))


@pytest.mark.parametrize(
    "params",
    [{"model_name": "", "version": 2}, {"model_name": "digits-knn", "version": None}],
)
def test_an_approval_run_without_a_candidate_fails_saying_what_to_give(params: dict) -> None:
    with pytest.raises(AirflowFailException, match="trigger approve_model with the model_name and version"):
        approval.ModelApprovalOperator().execute(approval_context(params))


def test_an_approval_run_of_an_unknown_version_fails_naming_the_versions(two_versions: ModelRegistry) -> None:
    with pytest.raises(
        AirflowFailException, match=r"nothing to approve: digits-knn has no v9 \(versions: v1, v2\)"
    ):
        approval.ModelApprovalOperator().execute(approval_context({**CONF, "version": 9}))


def test_the_operator_parks_the_task_awaiting_input_with_the_repository_timeout(
    two_versions: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait holds no worker slot: the task leaves the worker in Airflow's awaiting_input state."""
    from airflow.providers.standard.operators import hitl

    written: list[dict] = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **request: written.append(request))
    operator = approval.ModelApprovalOperator()

    with pytest.raises(TaskAwaitingInput) as parked:
        operator.execute(approval_context(CONF))

    assert parked.value.timeout == timedelta(hours=2) and parked.value.method_name == "execute_complete"
    assert written[0]["options"] == ["Approve", "Reject"]
    assert written[0]["subject"].startswith("Promote digits-knn v2 to champion?")
    assert "| held-out accuracy | 0.9700 | 0.9500 |" in written[0]["body"]
    assert "| model tests | no model tests | - |" in written[0]["body"]
    assert "No answer within 2 h: it stays challenger." in written[0]["body"]
    assert set(written[0]["params"]) == {"reason"}


def test_the_operator_promotes_on_approval_and_emits_the_champion_event(two_versions: ModelRegistry) -> None:
    context = approval_context(CONF)

    result = approval.ModelApprovalOperator().execute_complete(
        context, answer("Approve", {"id": "admin", "name": "admin"}, "ok")
    )

    assert (result["outcome"], result["by"], result["is_champion"]) == ("approved", "user:admin", True)
    assert two_versions.champion("digits-knn").number == 2
    ((alias, asset, extra),) = context["outlet_events"].added
    assert alias == MODELS_ALIAS and asset == model_asset("digits-knn")
    assert extra == {
        "model_name": "digits-knn",
        "version": 2,
        "alias": "champion",
        "uri": "models:/digits-knn/2",
    }


def test_the_operator_on_rejection_keeps_the_challenger_and_emits_nothing(
    two_versions: ModelRegistry,
) -> None:
    context = approval_context(CONF)

    result = approval.ModelApprovalOperator().execute_complete(
        context, answer("Reject", {"id": "ada", "name": "ada"}, "recall of 0 too low")
    )

    assert (result["outcome"], result["by"]) == ("rejected", "user:ada")
    assert result["reason"].endswith("stays challenger: recall of 0 too low")
    assert two_versions.aliases("digits-knn") == {CHAMPION: 1, CHALLENGER: 2}
    assert context["outlet_events"].added == []


def test_the_operator_on_timeout_states_the_outcome_by_the_run(two_versions: ModelRegistry) -> None:
    context = approval_context(CONF)
    timeout = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}

    result = approval.ModelApprovalOperator().execute_complete(context, timeout)

    assert (result["outcome"], result["by"]) == ("timed_out", f"dag_run:approve_model/{APPROVAL_RUN_ID}")
    assert result["reason"] == "refused v2: no answer within 2 h; stays challenger"
    assert two_versions.aliases("digits-knn") == {CHAMPION: 1, CHALLENGER: 2}
    assert context["outlet_events"].added == []
