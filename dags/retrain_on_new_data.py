"""
### retrain_on_new_data: a new version of a data set retrains the champions trained on an older one

Scheduled on the data set assets (`pushtrain-dataset://<name>`, through the alias `pushtrain-datasets`):
`register_dataset` emits an event when it makes a new version.

**By hand** (Trigger with the Params form) or from `python -m pushtrain datasets add`, which starts this DAG
through the REST API with `{"dataset": "<name>", "version": <n>}`: a run without asset events retrains on
the version the Params name (`version` empty: the latest in the store). A name or version the store lacks
fails plan_retrains at once, saying what exists. Data that changes outside Airflow starts it the same way
(`POST /api/v2/dags/retrain_on_new_data/dagRuns` with that conf). An event posted by REST on
`pushtrain-dataset://<name>` (`POST /api/v2/assets/events`) does not start this DAG: Airflow hands such an
event only to DAGs scheduled on that asset itself, not to those scheduled on the alias.

1. **plan_retrains** reads name and version from the triggering events' `extra` (else the Params), finds
   every registered model whose champion's lineage names that data set at an older version, and makes one
   pipeline per model: the champion's commit checked out, its final HPARAMS written into the model file,
   `max_attempts = 1`, the data set pinned to the new version. Attempt 1 of each is prepared here. A model
   whose data set is a folder of its repository (`repo:`) is left to the git sensor.
2. **trigger_retrain** (one per model) starts `tweak_and_retrain` for that pipeline's attempt 1: the usual
   training, evaluation on the new held-out split, gate (the model's `target`) and promotion
   (champion only if not worse; else challenger). Before registering, the champion's registered artifact
   is scored on the new held-out split by the same label-blind evaluation, and promotion compares the
   retrained model with that figure; a champion that cannot be re-scored leaves it challenger.
3. **report_failures** fails the run, naming each model whose retrain could not be prepared (the others are
   triggered all the same), or when plan_retrains itself failed.

The champion's accuracy on its own (older) split and on the new one are both in the pipeline's
`retrain.json`, the new version's lineage (`retrain`) and the mail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException

from pushtrain import dag_parts
from pushtrain.dataset_assets import DATASETS_ALIAS

# pushtrain.datasets.NAME_PATTERN, or empty (an asset-triggered run); not imported: this file stays light.
DATASET_PARAM_PATTERN = "^$|^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def trigger_arguments(planned: dict) -> dict:
    """One prepared retrain as the arguments of its trigger: the run id and the conf tweak_and_retrain reads."""
    return {
        "trigger_run_id": planned["run_id"],
        "conf": {"pipeline_id": planned["pipeline_id"], "attempt": planned["attempt"]},
    }


@dag(
    dag_id="retrain_on_new_data",
    schedule=[DATASETS_ALIAS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "pushtrain", "retries": 1},
    doc_md=__doc__,
    tags=["pushtrain", "training", "data"],
    params={
        "dataset": Param(
            "",
            type="string",
            pattern=DATASET_PARAM_PATTERN,
            title="Data set",
            description="For a run by hand: the data set whose new version retrains its champions. "
            "Runs started by an asset event ignore it.",
        ),
        "version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Version",
            description="For a run by hand: that data set's version. Empty: the latest in the store.",
        ),
    },
)
def retrain_on_new_data() -> None:
    @task(task_id="plan_retrains")
    def plan_retrains(**context: Any) -> list[dict]:
        """Prepare one retrain pipeline per champion trained on an older version of the new data."""
        import logging

        from pushtrain import retrain

        say = logging.getLogger("pushtrain.retrain").info
        params = context["params"]
        try:
            planned, failures = retrain.plan(
                context["triggering_asset_events"],
                context["dag_run"].run_id,
                lambda url: dag_parts.remote_for({"repo_url": url}),
                say,
                dataset=params.get("dataset") or "",
                version=params.get("version"),
            )
        except retrain.RetrainError as exc:  # Params naming no stored version: the same on every try
            raise AirflowFailException(str(exc)) from None
        context["ti"].xcom_push(key="failures", value=failures)
        return planned

    planned = plan_retrains()
    triggers = TriggerDagRunOperator.partial(
        task_id="trigger_retrain",
        trigger_dag_id=dag_parts.RETRAIN_DAG_ID,
        skip_when_already_exists=True,  # a retried trigger never starts a second run of a retrain
        fail_when_dag_is_paused=True,
        wait_for_completion=False,
    ).expand_kwargs(planned.map(trigger_arguments))

    @task(task_id="report_failures", trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def report_failures(**context: Any) -> None:
        """Fail the run when a model's retrain could not be prepared; the others were triggered."""
        failures = context["ti"].xcom_pull(task_ids="plan_retrains", key="failures")
        if failures is None:  # plan_retrains itself failed; this task is the leaf that says so
            raise AirflowFailException("plan_retrains did not finish: its log says why")
        if failures:
            raise AirflowFailException("retrain not prepared for: " + "; ".join(failures))

    triggers >> report_failures()


retrain_on_new_data()
