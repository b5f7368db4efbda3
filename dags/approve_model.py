"""
### approve_model: a person approves or rejects one registered version before it becomes champion

Started by the pipelines' **request_approval** task for a repository with `promotion = "approve"` in
`pushtrain.toml`, one run per candidate, run id `approval__<model>__v<N>`. The pipeline run does not wait
for it: a version waiting for a person holds up no other push's training.

The **approve_model** task (the standard provider's `ApprovalOperator`) asks in the web UI's
*Required Actions* with the candidate's figures against the champion's (accuracy, per-class recall, size,
latency, hyperparameters, the diff), and waits in the `awaiting_input` state, holding no worker slot:

- **Approve**: `champion` moves to the version and `deploy_model` serves it.
- **Reject** (say why in *reason*): it stays challenger; the alias history keeps the reason.
- **No answer** within `approval_timeout_hours`: it stays challenger, and the history says so.

By REST: `PATCH /api/v2/dags/approve_model/dagRuns/<run id>/taskInstances/approve_model/-1/hitlDetails`
with `{"chosen_options": ["Approve"], "params_input": {"reason": "..."}}`. Trigger by hand with
**model_name** and **version** to ask for the approval of any registered version.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from pushtrain.approval import APPROVAL_DAG_ID, ModelApprovalOperator
from pushtrain.pipeline import MAX_APPROVAL_TIMEOUT_HOURS

NAME_PATTERN = "^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"  # pushtrain.registry's model names, or empty


@dag(
    dag_id=APPROVAL_DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=32,  # one run per waiting candidate, of every repository; each holds no worker slot
    # No retry: a missing candidate fails the same way again, and a retry would ask the person twice.
    default_args={"owner": "pushtrain", "retries": 0},
    doc_md=__doc__,
    tags=["pushtrain", "promotion"],
    params={
        "model_name": Param("", type="string", pattern=NAME_PATTERN, title="Model name"),
        "version": Param(
            None, type=["null", "integer"], minimum=1, title="Version", description="The candidate."
        ),
        "approval_timeout_hours": Param(
            24.0,
            type="number",
            exclusiveMinimum=0,
            maximum=MAX_APPROVAL_TIMEOUT_HOURS,
            title="Approval timeout (hours)",
            description="No answer by then: the version stays challenger.",
        ),
        "pipeline_id": Param("", type="string", title="Pipeline", description="The run that registered it."),
        "requested_by": Param("", type="string", title="Requested by", description="dag_run:<dag>/<run>"),
        "model_tests": Param(
            {}, type="object", title="Model tests", description="register_model's model test results."
        ),
    },
)
def approve_model() -> None:
    ModelApprovalOperator()


approve_model()
