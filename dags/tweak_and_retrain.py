"""
### tweak_and_retrain: one more attempt of a pipeline that missed its target

Started by `train_on_push` (and by itself) through a `TriggerDagRunOperator` whose run id is
`pushtrain__<pipeline>__attempt-<n>`, so a retried trigger never starts a second run of the same attempt.
`conf` carries only `pipeline_id` and `attempt`; the lineage lives in files under the data dir.

1. **prepare_attempt**: the tweak strategy (per repository in `pushtrain.toml`, `default` otherwise) picks new
   hyperparameters and architecture knobs from the attempts so far; they are written into the HPARAMS
   literal of a copy of the best attempt's model file through a concrete syntax tree (comments and
   formatting kept) and the diff is recorded. When only `epochs` grew from an earlier attempt, that attempt
   is the warm start: its output is mounted read-only and training continues its model for the new epochs.
   When the strategy has tried every combination it can make, there is nothing to train: the run skips
   training (**nothing_left_to_try**) and ends in **report_budget_spent**, whose mail says so: a normal
   end, not a failure.
2. Then the same steps as attempt 1: train in the kind's image, evaluate on the held-out split, gate,
   register (and, with `promotion = "approve"`, **request_approval** starts the `approve_model` run
   where a person answers; this run does not wait for it).
   A tweak whose model cannot be built (say one more pooling block than the images are wide) is recorded
   as a failed attempt with the builder's message; it counts against `max_attempts`, and the next attempt
   starts again from the best one with another move.
   The loop ends at the target, after `max_attempts`, when `patience` attempts in a row brought no real
   gain, or when the strategy has nothing left to try.

`retrain_on_new_data` starts it with `attempt` 1 for a pipeline it prepared (a champion's code and final
HPARAMS on a new data set version, `max_attempts` 1): prepare_attempt hands that attempt on as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Param, dag, task

from pushtrain import dag_parts, pipeline, rescore, retrain, steps


@dag(
    dag_id=dag_parts.RETRAIN_DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=2,
    default_args=dag_parts.default_task_args(),
    doc_md=__doc__,
    tags=["pushtrain", "training"],
    params={
        "pipeline_id": Param(
            "",
            type="string",
            minLength=1,
            title="Pipeline id",
            description="Set by train_on_push: <short sha>-<run hash>.",
        ),
        "attempt": Param(
            2,
            type=["integer", "string"],
            title="Attempt number",
            description="2 or more; 1 only for a pipeline retrain_on_new_data prepared.",
        ),
    },
)
def tweak_and_retrain() -> None:
    @task(task_id="prepare_attempt")
    @dag_parts.user_errors_fail_fast
    def prepare_attempt(**context: Any) -> dict:
        """Tweak HPARAMS of the best attempt so far into this attempt's copy of the code, or say stop."""
        params = context["params"]
        attempt = int(params["attempt"])
        if attempt == 1 and rescore.is_retrain(params["pipeline_id"]):  # prepared by retrain_on_new_data
            return retrain.prepared_attempt(params["pipeline_id"])
        config = pipeline.Pipeline.load(params["pipeline_id"]).config
        if not 2 <= attempt <= config.max_attempts:
            raise steps.UserFacingError(
                f"attempt {attempt} is outside 2..{config.max_attempts} (max_attempts)"
            )
        return steps.prepare_tweaked_attempt(params["pipeline_id"], attempt)

    dag_parts.attempt_tail(prepare_attempt())


tweak_and_retrain()
