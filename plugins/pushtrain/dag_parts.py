"""The part both pipeline DAGs share: train one prepared attempt, evaluate it, gate it, act on the gate.

``train_on_push`` (attempt 1) and ``tweak_and_retrain`` (attempts 2..N) differ only in how an attempt is
prepared; from ``prepare_attempt`` on they run the same tasks, built here once, with one ``train_<kind>``
task per kind of ``pushtrain.kinds``::

    prepare_attempt >> choose_trainer ─cnn────> train_cnn ────┐
                                      ─linear─> train_linear ─┼─> evaluate ─────────┐
                                      ─knn────> train_knn ────┘                     ├─> judge_attempt
                                      ─strategy exhausted─> nothing_left_to_try ────┘
    judge_attempt >> target_met    >> register_model        (success mail) >> request_approval (if approve)
                  >> retry_allowed >> trigger_retrain       (next tweak_and_retrain run)
                  >> budget_spent  >> report_budget_spent   (leaderboard mail)
    all of them   >> finish_pipeline                        (clean-up once the pipeline ended)

A strategy with nothing left to try is a normal end, not a failure: ``prepare_attempt`` says ``stop``,
``choose_trainer`` skips training, and ``judge_attempt`` turns that into a stop whose mail says why. A
tweak whose model cannot be built is trained and judged as a failed attempt; the loop goes on.

With ``promotion = "approve"`` in ``pushtrain.toml``, ``register_model`` makes the version challenger and
``request_approval`` (``pushtrain.approval``) starts an ``approve_model`` DAG run, run id
``approval__<model>__v<N>``, where a person approves or rejects it; the pipeline run does not wait for the
answer, so no other push waits for a person either. With ``"auto"`` it is skipped and register_model's rule
decides, as it always did.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Label, TriggerRule, task
from airflow.sdk.exceptions import AirflowFailException

from pushtrain import settings, steps
from pushtrain.approval import RequestApprovalOperator, airflow_base_url, approval_page_url, approval_run_id
from pushtrain.kinds import KINDS
from pushtrain.mail import BUDGET_SPENT, FAILURE, SUCCESS, PipelineMailNotifier
from pushtrain.model_assets import MODELS_ALIAS, champion_event_extra, model_asset
from pushtrain.operators import EvaluateAttemptOperator, TrainAttemptOperator

RETRAIN_DAG_ID = "tweak_and_retrain"
NOTHING_LEFT_TO_TRY = "nothing_left_to_try"
TRAINING_TIMEOUT = settings.training_timeout()


def default_task_args() -> dict[str, Any]:
    """Owner, retries and the failure mail for every task of the pipeline DAGs."""
    return {
        "owner": "pushtrain",
        "retries": 1,
        "retry_delay": timedelta(seconds=30),
        "on_failure_callback": PipelineMailNotifier(FAILURE),
    }


def user_errors_fail_fast(function):
    """Bad input fails the task at once: a retry of the same input cannot succeed."""

    @functools.wraps(function)  # keeps the signature: Airflow passes context by parameter names
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except steps.UserFacingError as exc:
            raise AirflowFailException(str(exc)) from None

    return wrapper


def remote_for(params: dict):
    from pushtrain import gitops

    return gitops.remote_from_connection(url=params.get("repo_url") or None)


def attempt_tail(prepared, *, earlier: list | tuple = ()) -> None:
    """Add the shared tasks downstream of ``prepared`` (the XComArg of the ``prepare_attempt`` task).

    ``earlier`` lists the DAG's own tasks before ``prepare_attempt``, so a failure there fails the run too.
    """

    @task.branch(task_id="choose_trainer")
    def choose_trainer(attempt: dict) -> str:
        """Route to the training task whose image fits the detected kind; past training on a stop."""
        if attempt["action"] == "stop":
            return NOTHING_LEFT_TO_TRY
        return f"train_{attempt['kind']}"

    trainers = [
        TrainAttemptOperator(task_id=f"train_{kind}", kind=kind, execution_timeout=TRAINING_TIMEOUT)
        for kind in KINDS
    ]
    evaluate = EvaluateAttemptOperator(
        task_id="evaluate",
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        execution_timeout=timedelta(minutes=30),
    )
    nothing_left_to_try = EmptyOperator(task_id=NOTHING_LEFT_TO_TRY)

    @task(task_id="judge_attempt", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def judge_attempt(attempt: dict, evaluation: dict | None, **context: Any) -> dict:
        """Record the attempt (evaluated, or failed) and decide: target met, retrain, or stop."""
        ti = context["ti"]
        trained = next((t for t in ti.xcom_pull(task_ids=[f"train_{k}" for k in KINDS]) if t), None)
        return steps.judge_attempt(attempt, trained, evaluation, {"dag_id": ti.dag_id, "run_id": ti.run_id})

    @task.short_circuit(task_id="target_met", ignore_downstream_trigger_rules=False)
    def target_met(decision: dict) -> bool:
        """The accuracy gate: held-out accuracy >= target."""
        return decision["action"] == "met"

    @task.short_circuit(task_id="retry_allowed", ignore_downstream_trigger_rules=False)
    def retry_allowed(decision: dict) -> bool:
        """Below target with budget left and still gaining."""
        return decision["action"] == "retrain"

    @task.short_circuit(task_id="budget_spent", ignore_downstream_trigger_rules=False)
    def budget_spent(decision: dict) -> bool:
        """Below target and out of attempts, no real gain any more, or nothing left to try."""
        return decision["action"] == "stop"

    @task(
        task_id="register_model",
        retries=2,
        on_success_callback=PipelineMailNotifier(SUCCESS),
        outlets=[MODELS_ALIAS],
    )
    def register_model(decision: dict, **context: Any) -> dict:
        """Register the model with its lineage, make it champion if not worse, push the tuned file back.

        A new champion is announced on ``pushtrain-model://<name>``, which deploy_model serves.
        """
        registered = steps.register_model(decision, _remote_of_pipeline(decision["pipeline_id"]))
        if registered["awaiting_approval"]:  # the success mail links to the page where a person answers
            run_id = approval_run_id(registered["model_name"], registered["version"])
            registered["approval_run_id"] = run_id  # request_approval starts that run next
            registered["approval_url"] = approval_page_url(airflow_base_url(), run_id)
        if registered["is_champion"]:
            context["outlet_events"][MODELS_ALIAS].add(
                model_asset(registered["model_name"]),
                extra=champion_event_extra(registered["model_name"], registered["version"]),
            )
        return registered

    @task(task_id="report_budget_spent", on_success_callback=PipelineMailNotifier(BUDGET_SPENT))
    def report_budget_spent(decision: dict) -> dict:
        """Stop the loop and mail the leaderboard."""
        return steps.report_budget_spent(decision)

    trigger_retrain = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id=RETRAIN_DAG_ID,
        trigger_run_id="{{ ti.xcom_pull(task_ids='judge_attempt')['next_run_id'] }}",
        conf={
            "pipeline_id": "{{ ti.xcom_pull(task_ids='judge_attempt')['pipeline_id'] }}",
            "attempt": "{{ ti.xcom_pull(task_ids='judge_attempt')['next_attempt'] }}",
        },
        skip_when_already_exists=True,  # a retried trigger never starts a second attempt
        fail_when_dag_is_paused=True,
        wait_for_completion=False,
    )

    @task(task_id="finish_pipeline", trigger_rule=TriggerRule.ALL_DONE, on_failure_callback=None)
    def finish_pipeline(**context: Any) -> list[str]:
        """Remove the checkout and checkpoints once the pipeline ended here (met, stopped or failed)."""
        ti, params = context["ti"], context["params"]
        # The attempt may have failed before prepare_attempt: fall back to what identifies the pipeline.
        started = (
            ti.xcom_pull(task_ids="prepare_attempt")
            or ti.xcom_pull(task_ids="checkout_commit")
            or {"pipeline_id": params.get("pipeline_id"), "attempt": params.get("attempt")}
        )
        return steps.finish_pipeline(
            started.get("pipeline_id"),
            int(started.get("attempt") or 1),
            ti.xcom_pull(task_ids="judge_attempt"),
        )

    route = choose_trainer(prepared)
    for trainer in trainers:
        route >> Label(KINDS[trainer.kind].label) >> trainer >> evaluate
    route >> Label("strategy exhausted") >> nothing_left_to_try
    decision = judge_attempt(prepared, evaluate.output)
    nothing_left_to_try >> decision
    met, retry, spent = target_met(decision), retry_allowed(decision), budget_spent(decision)
    registered = register_model(decision)
    # Skipped unless register_model asked for approval; starts the approve_model run and ends at once.
    request_approval = RequestApprovalOperator()
    registered >> Label("promotion = approve") >> request_approval
    outcomes = [
        met >> Label("target met") >> registered,
        retry >> Label("below target, budget left") >> trigger_retrain,
        spent >> Label("budget spent") >> report_budget_spent(decision),
    ]
    finish = finish_pipeline()
    outcomes >> finish

    @task(
        task_id="fail_if_any_step_failed",
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=0,
        on_failure_callback=None,
    )
    def fail_if_any_step_failed() -> None:
        """Fail the run when a step failed: finish_pipeline, the other leaf, runs and succeeds regardless."""
        raise AirflowFailException("a step of this pipeline run failed: its task log says why")

    every_step = [
        *earlier,
        prepared,
        route,
        *trainers,
        evaluate,
        nothing_left_to_try,
        decision,
        met,
        retry,
        spent,
        *outcomes,
        request_approval,
        finish,
    ]
    every_step >> fail_if_any_step_failed()


def _remote_of_pipeline(pipeline_id: str):
    from pushtrain import gitops, pipeline

    return gitops.remote_from_connection(url=pipeline.Pipeline.load(pipeline_id).repo_url)
