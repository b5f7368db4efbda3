"""Run Airflow standalone for pushtrain: the embedded default (SQLite, LocalExecutor, project-local home).

Used by ``make demo`` and by the end-to-end tests. Airflow runs in its own process session so that one
SIGINT stops all of its components (a SIGTERM to ``airflow standalone`` leaves orphans).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pushtrain import settings

VENV_BIN = Path(sys.executable).parent


@dataclass
class EmbeddedAirflow:
    home: Path
    data_dir: Path
    repo_url: str
    smtp_port: int
    port: int = 8080
    watch_interval_minutes: int = 1
    poke_interval_s: int = 30
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def environment(self) -> dict[str, str]:
        root = settings.PROJECT_ROOT
        git_connection = {"conn_type": "git", "host": self.repo_url, "extra": {"read_only": "false"}}
        smtp_connection = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.smtp_port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "pushtrain@localhost"},
        }
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW_CONN_GIT_DEFAULT": json.dumps(git_connection),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_connection),
            "PUSHTRAIN_DATA_DIR": str(self.data_dir),
            "PUSHTRAIN_WATCH_INTERVAL_MINUTES": str(self.watch_interval_minutes),
            "PUSHTRAIN_POKE_INTERVAL_SECONDS": str(self.poke_interval_s),
            "PYTHONPATH": str(root / "plugins"),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            **self.extra_env,
        }
        env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
        return env

    def airflow(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command against this instance; a failure says what the CLI said."""
        result = subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args[:3])} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def start(self, log_path: Path) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        launcher = (
            "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); os.setsid(); "
            f"os.execv({str(VENV_BIN / 'airflow')!r}, ['airflow', 'standalone'])"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", launcher],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_until_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited with {self.process.returncode}; see its log")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                    health = json.load(response)
                if all(
                    health.get(part, {}).get("status") == "healthy"
                    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                ):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(2)
        raise TimeoutError(f"airflow standalone was not healthy on {self.url} within {timeout:.0f}s")

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.airflow("dags", "list", "-o", "plain", check=False)
            # Log lines can precede the table on stdout: look for the ids as words, not for a format.
            found = {word for line in listed.stdout.splitlines() for word in line.split()}
            if listed.returncode == 0 and set(dag_ids) <= found:
                return
            time.sleep(3)
        raise TimeoutError(f"DAGs {dag_ids} were not parsed within {timeout:.0f}s")

    def unpause(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            self.airflow("dags", "unpause", dag_id)

    def admin_password(self) -> str | None:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        try:
            return json.loads(path.read_text()).get("admin")
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 30) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
