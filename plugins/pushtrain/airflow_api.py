"""Tell a running Airflow what changed outside it: the CLI's way to post asset events and start DAG runs.

``python -m pushtrain datasets add`` and ``registry promote|rollback`` change the data dir directly, so nothing
in Airflow would notice; they announce the change through Airflow's REST API (``/api/v2``), as a git host or
a data pipeline would. Where Airflow is, and who is calling:

* ``PUSHTRAIN_AIRFLOW_URL`` (else ``AIRFLOW__API__BASE_URL``, else ``http://localhost:8080``);
* ``PUSHTRAIN_AIRFLOW_TOKEN`` (a JWT), or ``PUSHTRAIN_AIRFLOW_USERNAME`` and ``PUSHTRAIN_AIRFLOW_PASSWORD``
  exchanged for one at ``POST /auth/token``; else, on the machine of an embedded (standalone) Airflow, the
  admin login it generated in ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``.

No Airflow import: this runs in the CLI, wherever the data dir is mounted.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://localhost:8080"
GENERATED_PASSWORDS = "simple_auth_manager_passwords.json.generated"


class AirflowApiError(Exception):
    """Airflow could not be reached or refused the call; the message says which and what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AirflowApi:
    url: str = DEFAULT_URL
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> AirflowApi:
        env = os.environ if environ is None else environ
        url = env.get("PUSHTRAIN_AIRFLOW_URL") or env.get("AIRFLOW__API__BASE_URL") or DEFAULT_URL
        username, password = env.get("PUSHTRAIN_AIRFLOW_USERNAME"), env.get("PUSHTRAIN_AIRFLOW_PASSWORD")
        if not (username and password) and not env.get("PUSHTRAIN_AIRFLOW_TOKEN"):
            username, password = _generated_login(env.get("AIRFLOW_HOME"))
        return cls(
            url=url.rstrip("/"),
            username=username,
            password=password,
            token=env.get("PUSHTRAIN_AIRFLOW_TOKEN") or None,
        )

    def _call(self, method: str, path: str, body: Any = None, authenticated: bool = True) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if authenticated:
            headers["Authorization"] = f"Bearer {self._bearer()}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowApiError(f"{method} {path} answered {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowApiError(
                f"no Airflow API at {self.url} ({getattr(exc, 'reason', exc)}): set PUSHTRAIN_AIRFLOW_URL to "
                "the Airflow web server's address"
            ) from None
        return json.loads(payload) if payload else None

    def _bearer(self) -> str:
        if self.token:
            return self.token
        if not (self.username and self.password):
            raise AirflowApiError(
                f"no login for the Airflow API at {self.url}: set PUSHTRAIN_AIRFLOW_TOKEN, or "
                "PUSHTRAIN_AIRFLOW_USERNAME and PUSHTRAIN_AIRFLOW_PASSWORD"
            )
        answer = self._call(
            "POST",
            "/auth/token",
            {"username": self.username, "password": self.password},
            authenticated=False,
        )
        self.token = answer["access_token"]
        return self.token

    def asset_id(self, uri: str) -> int | None:
        """The id Airflow gave the asset ``uri``, or None when no DAG run has declared or emitted it yet."""
        query = urllib.parse.urlencode({"uri_pattern": uri, "limit": 100})
        listed = self._call("GET", f"/api/v2/assets?{query}")
        return next((asset["id"] for asset in listed.get("assets", []) if asset.get("uri") == uri), None)

    def post_asset_event(self, asset_id: int, extra: dict[str, Any]) -> dict:
        return self._call("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": extra})

    def trigger_dag(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> dict:
        """Start a run of ``dag_id`` now with ``conf``; a paused DAG or an unknown one is an error."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self._call("POST", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns", body)


def announce(
    asset_uri: str,
    extra: dict[str, Any],
    consumer_dag_id: str,
    consumer_conf: dict[str, Any],
    api: AirflowApi | None = None,
) -> str:
    """Start ``consumer_dag_id`` with ``consumer_conf``, and post an asset event on ``asset_uri`` where Airflow
    knows that asset (for DAGs scheduled on the asset itself, and its history in the UI).

    The run is started in every case: pushtrain's consumers (retrain_on_new_data, deploy_model) are scheduled
    on an alias, and Airflow queues an alias's DAGs only for events a task emitted through that alias; an
    event posted by REST carries no alias, so it never starts them (``AssetManager.register_asset_change``).
    Returns what was done, for the user; raises AirflowApiError when the run could not be started."""
    api = api or AirflowApi.from_environment()
    done = []
    asset_id = api.asset_id(asset_uri)
    if asset_id is not None:
        event = api.post_asset_event(asset_id, extra)
        done.append(f"asset event {event.get('id', '?')} posted on {asset_uri}")
    run = api.trigger_dag(consumer_dag_id, consumer_conf)
    done.append(f"{consumer_dag_id} run {run.get('dag_run_id', '?')} started")
    return "; ".join(done) + f" at {api.url}"


def _generated_login(airflow_home: str | None) -> tuple[str | None, str | None]:
    home = Path(airflow_home) if airflow_home else Path.home() / "airflow"
    try:
        passwords = json.loads((home / GENERATED_PASSWORDS).read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(passwords, dict) or not passwords:
        return None, None
    username = "admin" if "admin" in passwords else next(iter(passwords))
    return username, passwords[username]
