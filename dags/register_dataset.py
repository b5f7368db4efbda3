"""
### register_dataset: import a data set from a path the workers can read, as a new immutable version

Trigger it by hand with the Params form: a **name** and a **path** (a folder of class folders,
`<path>/<label>/<image>`, or a `.zip`/`.tar.gz` archive of one, or a `.csv` file with a label column), plus
the options `python -m pushtrain datasets add` takes. The **import_dataset** task checks every file, splits
the data (stratified, seeded, `test_fraction` of each class held out; or your own `train/` and `test/`) and
writes `v<N>` under the data dir with its manifest and hashes.

- **Changed content** (or changed options): a new version, and an asset event on
  `pushtrain-dataset://<name>` (through the alias `pushtrain-datasets`) whose `extra` carries the version
  and its sha256. DAGs scheduled on that asset, or on the alias, start from it.
- **Unchanged content**: the task is *skipped* with a message naming the version it already is; no event.
- **Bad input** (one class, a class too small to hold one image out, a corrupt image, a CSV with missing
  values, a zip-slip member, a bomb, a data set over `PUSHTRAIN_DATASET_MAX_BYTES`): the task fails at once,
  without retries, and its log says which file and what to do. Earlier versions are untouched.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pushtrain.dataset_assets import DATASETS_ALIAS, dataset_asset

LOG = logging.getLogger(__name__)
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # pushtrain.datasets.NAME_PATTERN


@dag(
    dag_id="register_dataset",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    # Bad data fails the same way on every try, and an import that was cut off restarts cleanly from a
    # fresh staging folder when triggered again: no retries.
    default_args={"owner": "pushtrain", "retries": 0},
    doc_md=__doc__,
    tags=["pushtrain", "data"],
    params={
        "name": Param(
            type="string",
            pattern=NAME_PATTERN,
            title="Data set name",
            description="Letters, digits, '.', '_' or '-'. A new name starts at v1.",
        ),
        "path": Param(
            type="string",
            minLength=1,
            title="Path",
            description="A folder, .zip/.tar.gz/.tgz/.tar or .csv file, as the workers see it.",
        ),
        "test_fraction": Param(
            0.2,
            type="number",
            minimum=0.01,
            maximum=0.9,
            title="Test fraction",
            description="Held out per class for the trusted evaluation.",
        ),
        "image_size": Param(
            None,
            type=["null", "array"],
            minItems=2,
            maxItems=2,
            items={"type": "integer", "minimum": 1, "maximum": 4096},
            title="Image size [height, width]",
            description="Images: resize every image to this. Empty: the most common size.",
        ),
        "channels": Param(
            None,
            type=["null", "integer"],
            enum=[None, 1, 3],
            title="Channels",
            description="Images: 1 grey, 3 colour. Empty: the most common mode.",
        ),
        "label_column": Param(
            "",
            type="string",
            title="Label column",
            description="Tables: the column holding the classes. Empty: 'label'.",
        ),
        "categorical": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Categorical columns",
            description="Tables: columns to one-hot encode (all others must be numbers).",
        ),
    },
)
def register_dataset() -> None:
    @task(task_id="import_dataset", outlets=[DATASETS_ALIAS])
    def import_dataset(**context: Any) -> dict:
        """Import the path as the next version of the data set; announce a new version as an asset event."""
        from pushtrain import datasets

        params = context["params"]
        try:
            options = datasets.ImportOptions.from_mapping(params)
            result = datasets.add_path(params["name"], params["path"], options, log=LOG.info)
        except datasets.DatasetError as exc:
            raise AirflowFailException(str(exc)) from None
        if not result.created:
            raise AirflowSkipException(result.summary())
        extra = result.manifest.asset_extra()
        context["outlet_events"][DATASETS_ALIAS].add(dataset_asset(result.manifest.name), extra=extra)
        return extra

    import_dataset()


register_dataset()
