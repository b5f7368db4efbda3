"""
### deploy_model: serve each model's champion at its stable endpoint, blue-green

Scheduled on the asset alias `pushtrain-models`: every time a model's `champion` alias moves (a pipeline's
`register_model` promoted a version), an event on `pushtrain-model://<name>` starts this DAG. Trigger it by
hand with **model_name** after a `python -m pushtrain registry promote|rollback`.

The **deploy** task starts the champion's serving container beside the one serving now, checks `/health`
and a smoke prediction on held-out images (scored here, from the HTTP answers), switches the stable
endpoint `http://127.0.0.1:<port>/invocations` (`<data>/serving/<name>/endpoint.json`) to it, and stops the
old container. A candidate that fails never takes traffic: the task fails, naming why, and the `serving`
alias history (`python -m pushtrain registry history <name>`) keeps the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from pushtrain.model_assets import MODELS_ALIAS

NAME_PATTERN = "^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"  # pushtrain.registry's model names, or empty


@dag(
    dag_id="deploy_model",
    schedule=[MODELS_ALIAS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # two deployments of one model must not interleave their switch
    # A retry after a crash re-runs the blue-green from the start; a refused candidate is refused again.
    default_args={"owner": "pushtrain", "retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    tags=["pushtrain", "serving"],
    params={
        "model_name": Param(
            "",
            type="string",
            pattern=NAME_PATTERN,
            title="Model name",
            description="Serve this model's champion. Empty: the models of the asset events.",
        ),
    },
)
def deploy_model() -> None:
    @task(task_id="deploy", execution_timeout=timedelta(minutes=15))
    def deploy(**context: Any) -> list[dict]:
        """Blue-green deploy the champion of every model named by the triggering events or the Param."""
        from pushtrain import serving

        names = {context["params"].get("model_name") or ""} - {""}
        for events in (context.get("triggering_asset_events") or {}).values():
            names |= {event.extra["model_name"] for event in events if (event.extra or {}).get("model_name")}
        if not names:
            raise AirflowFailException(
                "no model to deploy: trigger with model_name, or from a champion event"
            )
        by = f"dag_run:{context['dag'].dag_id}/{context['run_id']}"
        results = [serving.deploy(name, by=by).to_xcom() for name in sorted(names)]
        refused = [r for r in results if not r["switched"] and r["container"] is None]
        if refused:
            raise AirflowFailException("; ".join(f"{r['model_name']}: {r['reason']}" for r in refused))
        return results

    deploy()


deploy_model()
