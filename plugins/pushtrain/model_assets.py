"""The Airflow Assets of registered models, cheap to import at DAG parse time (only ``airflow.sdk``).

Every model name is an Asset, ``pushtrain-model://<name>``; an asset event on it says its ``champion``
alias moved, with ``extra`` = ``{"model_name", "version", "alias": "champion", "uri"}``. Which model a
pipeline registers is known only when it runs, so producers declare the alias ``pushtrain-models`` as their
outlet and attach each event to the model's own asset through it
(``outlet_events[MODELS_ALIAS].add(model_asset(name), extra=...)``); ``deploy_model`` schedules on the alias.

When ``champion`` moves outside Airflow (``python -m pushtrain registry promote|rollback``), post the event
yourself (``POST /api/v2/assets/events`` with the asset's id) or trigger ``deploy_model`` with
``{"model_name": "<name>"}``: nothing else notices such a move.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

ASSET_SCHEME = "pushtrain-model"
ASSET_GROUP = "pushtrain-model"
MODELS_ALIAS = AssetAlias("pushtrain-models")


def model_asset(name: str) -> Asset:
    """The Asset of model ``name``: ``pushtrain-model://<name>``."""
    return Asset(name=f"{ASSET_SCHEME}://{name}", uri=f"{ASSET_SCHEME}://{name}", group=ASSET_GROUP)


def champion_event_extra(model_name: str, version: int) -> dict:
    return {
        "model_name": model_name,
        "version": version,
        "alias": "champion",
        "uri": f"models:/{model_name}/{version}",
    }
