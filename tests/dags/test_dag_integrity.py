"""DAG integrity tests in the Astro CLI template's style: every file under ``dags/`` parses into a DagBag
without import errors, and every DAG carries the docs, tags, owner, retries and Params the project promises.

``tests/conftest.py`` sets ``AIRFLOW_HOME`` and friends before Airflow is imported and puts ``dags/`` and
``plugins/`` on ``sys.path``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import TriggerRule
from airflow.sdk.exceptions import ParamValidationError

from pushtrain import kinds
from pushtrain.kinds import BOOL, CHOICE, FLOAT, INT, KINDS, Knob
from pushtrain.strategies import STRATEGIES, AttemptRecord, within_bounds

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p.name for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
PIPELINE_DAG_IDS = {"train_on_push", "tweak_and_retrain"}  # the two that share dag_parts.attempt_tail
OWNER = "pushtrain"
# Pipeline tasks that deliberately never retry: bad input (a model file of no kind) or a final verdict on
# the run fails the same way every time.
NO_RETRY_TASKS = {"detect_kind", "fail_if_any_step_failed"}


@pytest.fixture(scope="module")
def dag_bag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_DIR))


def dags_of(dag_bag: DagBag, file_name: str) -> list:
    dags = [dag for dag in dag_bag.dags.values() if Path(dag.fileloc).name == file_name]
    assert dags, f"{file_name} defines no DAG"
    return dags


def test_the_dags_folder_holds_the_pipeline_dags(dag_bag: DagBag) -> None:
    assert {"train_on_push.py", "tweak_and_retrain.py", "approve_model.py"} <= set(DAG_FILES)
    assert PIPELINE_DAG_IDS | {"approve_model", "deploy_model"} <= set(dag_bag.dag_ids)


@pytest.mark.parametrize("file_name", DAG_FILES)
def test_file_imports_without_errors_and_defines_a_dag(dag_bag: DagBag, file_name: str) -> None:
    errors = {Path(path).name: error for path, error in dag_bag.import_errors.items()}
    assert file_name not in errors, errors.get(file_name)
    assert dags_of(dag_bag, file_name)


@pytest.mark.parametrize("file_name", DAG_FILES)
def test_dag_has_tags_docs_and_a_sane_run_policy(dag_bag: DagBag, file_name: str) -> None:
    for dag in dags_of(dag_bag, file_name):
        assert dag.tags and "pushtrain" in dag.tags, dag.dag_id
        # A markdown module docstring reused as doc_md: a heading that names the DAG.
        assert dag.doc_md and dag.doc_md.lstrip().startswith("#"), dag.dag_id
        assert dag.dag_id in dag.doc_md.lstrip().splitlines()[0], dag.dag_id
        assert dag.catchup is False, dag.dag_id
        assert dag.max_active_runs and dag.max_active_runs >= 1, dag.dag_id
        assert dag.start_date is not None and dag.start_date.tzinfo is not None, dag.dag_id


@pytest.mark.parametrize("file_name", DAG_FILES)
def test_every_task_has_the_owner_and_a_deliberate_retry_count(dag_bag: DagBag, file_name: str) -> None:
    for dag in dags_of(dag_bag, file_name):
        assert dag.default_args.get("owner") == OWNER, dag.dag_id
        assert isinstance(dag.default_args.get("retries"), int), f"{dag.dag_id} sets no default retries"
        for task in dag.tasks:
            assert task.owner == OWNER, f"{dag.dag_id}.{task.task_id}"
            assert isinstance(task.retries, int) and task.retries >= 0, f"{dag.dag_id}.{task.task_id}"


@pytest.mark.parametrize("dag_id", sorted(PIPELINE_DAG_IDS))
def test_pipeline_tasks_retry_unless_a_retry_cannot_help(dag_bag: DagBag, dag_id: str) -> None:
    dag = dag_bag.dags[dag_id]
    assert dag.default_args["retries"] >= 1
    assert dag.default_args.get("on_failure_callback") is not None  # the failure mail
    for task in dag.tasks:
        if task.task_id in NO_RETRY_TASKS:
            assert task.retries == 0, f"{dag_id}.{task.task_id}"
        else:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


# ----------------------------------------------------------------------------------------- train_on_push


def test_train_on_push_runs_on_a_schedule_one_run_at_a_time(dag_bag: DagBag) -> None:
    dag = dag_bag.dags["train_on_push"]

    assert dag.schedule is not None
    assert dag.catchup is False
    assert dag.max_active_runs == 1


EXPECTED_PARAMS = {
    "repo_url": ("", "string"),
    "branch": ("main", "string"),
    "commit": ("", "string"),
    "target": (None, ["null", "number"]),
    "max_attempts": (None, ["null", "integer"]),
    "kind": ("auto", None),
    "strategy": (None, ["null", "string"]),
}


def test_train_on_push_params_are_typed(dag_bag: DagBag) -> None:
    dag = dag_bag.dags["train_on_push"]
    params = dag.params

    assert set(params.keys()) == set(EXPECTED_PARAMS)
    for key, (default, json_type) in EXPECTED_PARAMS.items():
        param = params.get_param(key)
        assert param.schema.get("title"), key
        if key != "branch":  # its default comes from PUSHTRAIN_BRANCH
            assert param.value == default, key
        if json_type is not None:
            assert param.schema["type"] == json_type, key
    target = params.get_param("target").schema
    assert (target["minimum"], target["maximum"]) == (0.01, 1.0)
    attempts = params.get_param("max_attempts").schema
    assert (attempts["minimum"], attempts["maximum"]) == (1, 50)
    assert params.get_param("kind").schema["enum"] == ["auto", *KINDS]
    assert set(params.get_param("strategy").schema["enum"]) == {None, *STRATEGIES}
    assert params.get_param("branch").schema.get("minLength") == 1


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("target", 0.9, True),
        ("target", None, True),
        ("target", 0.0, False),
        ("target", 1.5, False),
        ("target", "high", False),
        ("max_attempts", 3, True),
        ("max_attempts", 0, False),
        ("max_attempts", 2.5, False),
        ("kind", "cnn", True),
        ("kind", "transformer", False),
        ("strategy", "random", True),
        ("strategy", "genetic", False),
    ],
)
def test_train_on_push_params_reject_bad_values(
    dag_bag: DagBag, key: str, value: object, valid: bool
) -> None:
    param = dag_bag.dags["train_on_push"].params.get_param(key)
    if valid:
        assert param.resolve(value) == value
    else:
        with pytest.raises(ParamValidationError):
            param.resolve(value)


def test_train_on_push_waits_for_a_commit_before_checking_it_out(dag_bag: DagBag) -> None:
    dag = dag_bag.dags["train_on_push"]

    assert dag.get_task("wait_for_commit").downstream_task_ids >= {"checkout_commit"}
    assert dag.get_task("checkout_commit").downstream_task_ids >= {"detect_kind", "prepare_attempt"}
    assert dag.get_task("detect_kind").downstream_task_ids >= {"prepare_attempt"}
    assert dag.get_task("wait_for_commit").mode == "reschedule"


# ------------------------------------------------------------------------------------- tweak_and_retrain


def test_tweak_and_retrain_is_only_triggered(dag_bag: DagBag) -> None:
    dag = dag_bag.dags["tweak_and_retrain"]

    assert dag.schedule is None
    assert set(dag.params.keys()) >= {"pipeline_id", "attempt"}


# ------------------------------------------------------------------------------------ the shared tail


@pytest.mark.parametrize("dag_id", sorted(PIPELINE_DAG_IDS))
def test_choose_trainer_branches_to_one_train_task_per_kind(dag_bag: DagBag, dag_id: str) -> None:
    dag = dag_bag.dags[dag_id]
    choose = dag.get_task("choose_trainer")
    train_tasks = {f"train_{kind}" for kind in KINDS}

    assert choose.downstream_task_ids >= train_tasks
    for task_id in train_tasks:
        assert dag.get_task(task_id).downstream_task_ids >= {"evaluate"}
    assert dag.get_task("evaluate").trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS


def test_a_new_row_of_the_kinds_table_is_a_new_branch_of_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding a kind is a row in pushtrain.kinds: the DAGs, the Params form and the strategies follow."""
    svc = kinds.Kind(
        name="svc",
        framework=kinds.SCIKIT_LEARN,
        image="sklearn",
        template="svc_sklearn.py",
        knobs={
            "C": Knob(FLOAT, 1e-3, 1e3, log=True),
            "kernel": Knob(CHOICE, choices=("rbf", "poly")),
            "degree": Knob(INT, 2, 5),
            "shrinking": Knob(BOOL),
        },
    )
    monkeypatch.setitem(KINDS, "svc", svc)
    dag_bag = DagBag(dag_folder=str(DAGS_DIR))

    assert not dag_bag.import_errors
    for dag_id in sorted(PIPELINE_DAG_IDS):
        dag = dag_bag.dags[dag_id]
        assert (
            dag.get_task("choose_trainer").python_callable({"kind": "svc", "action": "train"}) == "train_svc"
        )
        trainer = dag.get_task("train_svc")
        assert isinstance(trainer, DockerOperator) and trainer.kind == "svc", dag_id
        assert dag.get_edge_info("choose_trainer", "train_svc") == {"label": "svc: scikit-learn image"}
        assert "evaluate" in trainer.downstream_task_ids
    assert dag_bag.dags["train_on_push"].params.get_param("kind").resolve("svc") == "svc"

    rng = random.Random(0)
    for name, strategy in STRATEGIES.items():
        history = [AttemptRecord(1, {"C": 1.0, "kernel": "rbf", "degree": 3, "shrinking": True}, 0.5)]
        for attempt in range(2, 12):
            hparams = {**history[-1].hparams, **strategy("svc", history, 0)}
            assert within_bounds("svc", hparams), (name, hparams)
            assert hparams not in [record.hparams for record in history], name
            history.append(AttemptRecord(attempt, hparams, rng.uniform(0.3, 0.9)))


@pytest.mark.parametrize("dag_id", sorted(PIPELINE_DAG_IDS))
def test_the_gate_leads_to_register_retrain_or_report(dag_bag: DagBag, dag_id: str) -> None:
    dag = dag_bag.dags[dag_id]

    gates = {"target_met", "retry_allowed", "budget_spent"}
    assert dag.get_task("judge_attempt").downstream_task_ids >= gates
    assert "register_model" in dag.get_task("target_met").downstream_task_ids
    assert "trigger_retrain" in dag.get_task("retry_allowed").downstream_task_ids
    assert "report_budget_spent" in dag.get_task("budget_spent").downstream_task_ids
    assert dag.get_task("finish_pipeline").trigger_rule == TriggerRule.ALL_DONE


class _DecisionOnlyTaskInstance:
    """Answers ``xcom_pull(task_ids="judge_attempt")`` the way the real task instance does after a retry."""

    def __init__(self, decision: dict) -> None:
        self.decision = decision

    def xcom_pull(self, task_ids: str) -> dict:
        assert task_ids == "judge_attempt"
        return self.decision


@pytest.mark.parametrize("dag_id", sorted(PIPELINE_DAG_IDS))
def test_a_retried_trigger_asks_for_the_same_child_run(dag_bag: DagBag, dag_id: str) -> None:
    """Each try renders the run id from the judged attempt, and an existing run is skipped, not duplicated."""
    from pushtrain.pipeline import Action, Decision

    trigger = dag_bag.dags[dag_id].get_task("trigger_retrain")
    decision = Decision(
        pipeline_id="1a2b3c4d-5e6f7a8b",
        attempt=2,
        action=Action.RETRAIN,
        reason="below target",
        accuracy=0.5,
        target=0.9,
    ).to_xcom()

    renders = []
    for _try in range(2):
        context = {"ti": _DecisionOnlyTaskInstance(decision)}
        renders.append(
            (
                trigger.render_template(trigger.trigger_run_id, context),
                trigger.render_template(trigger.conf, context),
            )
        )

    run_id, conf = renders[0]
    assert renders[1] == renders[0]
    assert run_id == "pushtrain__1a2b3c4d-5e6f7a8b__attempt-3"
    assert conf == {"pipeline_id": "1a2b3c4d-5e6f7a8b", "attempt": "3"}
    assert trigger.trigger_dag_id == "tweak_and_retrain"
    assert trigger.skip_when_already_exists is True  # the second try finds the run and starts nothing


# ----------------------------------------------------------------------------------- promotion = approve


@pytest.mark.parametrize("dag_id", sorted(PIPELINE_DAG_IDS))
def test_a_version_awaiting_approval_is_handed_to_approve_model_without_holding_the_pipeline(
    dag_bag: DagBag, dag_id: str
) -> None:
    """promotion = "approve": request_approval follows register_model and starts the candidate's own
    approve_model run without waiting for it, so the pipeline run (one at a time) ends at once."""
    from pushtrain.approval import RequestApprovalOperator
    from pushtrain.model_assets import MODELS_ALIAS

    dag = dag_bag.dags[dag_id]
    request = dag.get_task("request_approval")

    assert "approve_model" not in dag.task_ids  # no task of the pipeline waits for a person
    assert isinstance(request, RequestApprovalOperator)
    assert request.trigger_dag_id == "approve_model"
    assert request.wait_for_completion is False and request.deferrable is False
    assert request.skip_when_already_exists is True  # a retried request starts no second approval
    assert request.upstream_task_ids == {"register_model"}
    assert request.downstream_task_ids == {"fail_if_any_step_failed"}
    assert dag.get_edge_info("register_model", "request_approval") == {"label": "promotion = approve"}
    assert MODELS_ALIAS in dag.get_task("register_model").outlets


def test_approve_model_waits_for_a_person_per_candidate(dag_bag: DagBag) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from pushtrain.model_assets import MODELS_ALIAS

    dag = dag_bag.dags["approve_model"]
    (approve,) = dag.tasks

    assert dag.schedule is None and dag.max_active_runs >= 16  # many candidates may wait at once
    assert approve.task_id == "approve_model" and isinstance(approve, ApprovalOperator)
    assert MODELS_ALIAS in approve.outlets  # approval announces the new champion to deploy_model
    assert approve.options == ["Approve", "Reject"] and set(approve.params) == {"reason"}
    assert approve.execution_timeout is None  # the repository's approval_timeout_hours bounds the wait
    assert approve.retries == 0  # a retry would ask the person a second time
    assert set(dag.params) == {
        "model_name",
        "version",
        "approval_timeout_hours",
        "pipeline_id",
        "requested_by",
        "model_tests",
    }


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("model_name", "digits-knn", True),
        ("model_name", "bad name!", False),
        ("version", 3, True),
        ("version", 0, False),
        ("version", "3", False),
        ("approval_timeout_hours", 0.005, True),
        ("approval_timeout_hours", 0, False),
        ("approval_timeout_hours", 1000, False),
    ],
)
def test_approve_model_params_reject_bad_values(
    dag_bag: DagBag, key: str, value: object, valid: bool
) -> None:
    param = dag_bag.dags["approve_model"].params.get_param(key)
    if valid:
        assert param.resolve(value) == value
    else:
        with pytest.raises(ParamValidationError):
            param.resolve(value)
