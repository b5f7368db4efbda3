"""The Airflow Assets of data sets, cheap to import at DAG parse time (only ``airflow.sdk``).

Every data set is an Asset, ``pushtrain-dataset://<name>``; an asset event on it announces a new version,
with ``extra`` = ``Manifest.asset_extra()``: ``{"name", "version", "sha256" (the version's dataset_sha256),
"train_sha256", "test_sha256", "source"}``. Which data set a registration imports is known only when it runs
(a Param), so producers declare the alias ``pushtrain-datasets`` as their outlet and attach each event to the
data set's own asset through it (``outlet_events[DATASETS_ALIAS].add(dataset_asset(name), extra=...)``). A
consumer schedules on the alias (every data set) or on ``dataset_asset(name)`` (one).

For data that changes outside Airflow, post the event yourself: ``GET /api/v2/assets?uri_pattern=
pushtrain-dataset://<name>`` for the asset id, then ``POST /api/v2/assets/events`` with
``{"asset_id": <id>, "extra": {"version": <n>, "sha256": "<dataset_sha256>"}}`` (a Bearer token from
``POST /auth/token``).
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

ASSET_SCHEME = "pushtrain-dataset"
ASSET_GROUP = "pushtrain-dataset"
DATASETS_ALIAS = AssetAlias("pushtrain-datasets")


def dataset_asset(name: str) -> Asset:
    """The Asset of data set ``name``: ``pushtrain-dataset://<name>``."""
    return Asset(name=f"{ASSET_SCHEME}://{name}", uri=f"{ASSET_SCHEME}://{name}", group=ASSET_GROUP)
