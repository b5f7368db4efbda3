"""The Airflow Assets of data sets, cheap to import at DAG parse time (only ``airflow.sdk``).

Every data set is an Asset, ``pushtrain-dataset://<name>``; an asset event on it announces a new version,
with ``extra`` = ``Manifest.asset_extra()``: ``{"name", "version", "sha256" (the version's dataset_sha256),
"train_sha256", "test_sha256", "source"}``. Which data set a registration imports is known only when it runs
(a Param), so producers declare the alias ``pushtrain-datasets`` as their outlet and attach each event to the
data set's own asset through it (``outlet_events[DATASETS_ALIAS].add(dataset_asset(name), extra=...)``). A
consumer schedules on the alias (every data set) or on ``dataset_asset(name)`` (one).

An event posted through the REST API (``POST /api/v2/assets/events``) carries no alias, so Airflow hands it
only to DAGs scheduled on the asset itself, never to an alias consumer such as ``retrain_on_new_data``. For
data that changes outside Airflow, start that DAG with ``{"dataset": "<name>", "version": <n>}`` instead
(``POST /api/v2/dags/retrain_on_new_data/dagRuns``), as ``python -m pushtrain datasets add`` does
(``airflow_api.announce``).
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

ASSET_SCHEME = "pushtrain-dataset"
ASSET_GROUP = "pushtrain-dataset"
DATASETS_ALIAS = AssetAlias("pushtrain-datasets")


def dataset_asset(name: str) -> Asset:
    """The Asset of data set ``name``: ``pushtrain-dataset://<name>``."""
    return Asset(name=f"{ASSET_SCHEME}://{name}", uri=f"{ASSET_SCHEME}://{name}", group=ASSET_GROUP)
