"""Airflow plugin of pushtrain: its pages inside the Airflow UI and the signed git webhook.

The plugin manager imports every ``.py`` file at the top of the plugins folder (``plugins/pushtrain/`` itself
is listed in ``.airflowignore``: it is a package, imported normally). This file only declares what the UI
shows; the app lives in ``pushtrain.ui``:

- a **"Training attempts" tab on every DAG run** (``destination="dag_run"``): the pipeline page of a
  ``train_on_push`` or ``tweak_and_retrain`` run, and a short note on other DAGs' runs (Airflow 3.3 cannot
  limit a tab to some DAGs);
- **"Pipelines"** and **"Model registry"** in the Browse menu;
- the app itself at ``/pushtrain`` (``fastapi_apps``), including ``POST /pushtrain/hooks/git``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/pushtrain"


class PushtrainPlugin(AirflowPlugin):
    name = "pushtrain"
    # Relative hrefs resolve against the UI's base URL, so they keep working behind a proxy's sub-path.
    external_views = [
        {
            "name": "Training attempts",
            "href": "pushtrain/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "pushtrain-attempts",
        },
        {
            "name": "Pipelines",
            "href": "pushtrain/pipelines",
            "destination": "nav",
            "category": "browse",
            "url_route": "pushtrain-pipelines",
        },
        {
            "name": "Model registry",
            "href": "pushtrain/registry",
            "destination": "nav",
            "category": "browse",
            "url_route": "pushtrain-registry",
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict]:
        """Built on first use: every task process imports this file (for macros), and only the API server
        asks for the app, which imports FastAPI and the pages (about a second on a busy machine)."""
        from pushtrain.ui.app import plugin_app

        return [{"app": plugin_app(), "url_prefix": URL_PREFIX, "name": "pushtrain"}]
