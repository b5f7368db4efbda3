"""The protocol between a task that waits for its container and the container_health DAG.

Two parties cooperate through container labels and files in the attempt's state dir (the attempt dir,
never mounted into a container, so user code cannot forge them), never through the scheduler's database:

* **Labels** on every container pushtrain starts: its role, its run key, its state dir and the file that
  exists once its work is complete. container_health manages the roles in ``MANAGED_ROLES`` only.
* **Lease**, ``.lease-<role>.json``: the waiting task's claim, renewed every ``LEASE_HEARTBEAT_S`` by a
  ``Heartbeat`` and removed when the task ends. A fresh lease means "this attempt is still wanted".
* **Restart log**, ``.restarts-<role>.json``: container_health's restarts of the container and, once it
  stops restarting it, why (``gave_up``); the waiting task fails with that reason.
* **Cancel marker**, ``.cancelled-<role>``: the task was stopped (marked failed, timed out); its container
  must go even if it still runs.

A waiting task gives container_health ``restart_window_s`` to restart a dead container. This module
depends on neither side (``pushtrain.sandbox`` runs containers, ``pushtrain.health`` decides restarts).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pushtrain import settings
from pushtrain.runner import contract

LABEL_PREFIX = "io.pushtrain"
ROLE_LABEL = (
    f"{LABEL_PREFIX}.role"  # "train" and "evaluate" (pipeline attempts), "local" (python -m pushtrain)
)
MANAGED_ROLES = ("train", "evaluate")  # the roles container_health restarts and removes
RUN_KEY_LABEL = f"{LABEL_PREFIX}.run-key"
STATE_DIR_LABEL = f"{LABEL_PREFIX}.state-dir"  # host-only dir of the task's lease and the restart log
RESULT_FILE_LABEL = f"{LABEL_PREFIX}.result-file"  # exists once the container's work is complete

LEASE_HEARTBEAT_S = 10
BACKOFF_BASE_S = 5  # container_health's n-th restart comes BACKOFF_BASE_S * 2**(n-1) after the death


def labels(role: str, run_key: str, state_dir: Path, result_file: Path) -> dict[str, str]:
    return {
        ROLE_LABEL: role,
        RUN_KEY_LABEL: run_key,
        STATE_DIR_LABEL: str(state_dir),
        RESULT_FILE_LABEL: str(result_file),
    }


def lease_path(state_dir: Path, role: str) -> Path:
    return Path(state_dir) / f".lease-{role}.json"


def restarts_path(state_dir: Path, role: str) -> Path:
    return Path(state_dir) / f".restarts-{role}.json"


def cancelled_path(state_dir: Path, role: str) -> Path:
    return Path(state_dir) / f".cancelled-{role}"


def lease_stale_after_s() -> float:
    return 3 * LEASE_HEARTBEAT_S


@dataclass
class Lease:
    """The running task's claim on its attempt, so the health check knows the container is still wanted."""

    state_dir: Path
    role: str
    holder: str

    def renew(self, container: str) -> None:
        contract.write_json_atomic(
            lease_path(self.state_dir, self.role),
            {"container": container, "holder": self.holder, "heartbeat": time.time()},
        )

    def release(self) -> None:
        lease_path(self.state_dir, self.role).unlink(missing_ok=True)

    def cancel(self, why: str) -> None:
        """The task was stopped: its container must go, even if still running."""
        cancelled_path(self.state_dir, self.role).write_text(why + "\n")
        self.release()

    def clear_cancelled(self) -> None:
        """A new try of the task wants the attempt again."""
        cancelled_path(self.state_dir, self.role).unlink(missing_ok=True)


def lease_is_fresh(state_dir: Path, role: str, now: float | None = None) -> bool:
    try:
        lease = json.loads(lease_path(state_dir, role).read_text())
    except (OSError, ValueError):
        return False
    return (now or time.time()) - float(lease.get("heartbeat", 0)) <= lease_stale_after_s()


def cancelled_because(state_dir: Path, role: str) -> str | None:
    """Why the task that owned the container was stopped, or None if it was not."""
    try:
        return cancelled_path(state_dir, role).read_text().strip()
    except OSError:
        return None


class Heartbeat:
    """Renews the lease in a thread while the task waits; releases it when the task is done."""

    def __init__(self, lease: Lease, container: str) -> None:
        self._lease, self._container, self._stopped = lease, container, threading.Event()
        lease.renew(container)
        self._thread = threading.Thread(target=self._beat, name="pushtrain-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(LEASE_HEARTBEAT_S):
            self._lease.renew(self._container)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._lease.release()


@dataclass
class RestartLog:
    host_kills: int = 0
    crashes: int = 0
    gave_up: str = ""  # why the health check stopped restarting; the waiting task fails with it
    history: list = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path, role: str) -> RestartLog:
        try:
            return cls(**json.loads(restarts_path(state_dir, role).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, state_dir: Path, role: str) -> None:
        contract.write_json_atomic(restarts_path(state_dir, role), asdict(self))

    @property
    def total(self) -> int:
        return self.host_kills + self.crashes


def restart_window_s(state_dir: Path, role: str) -> float:
    """How long a task waits for a restart: one check interval, the backoff, and 30 s of slack."""
    return settings.health_interval_s() + BACKOFF_BASE_S * 2 ** RestartLog.load(state_dir, role).total + 30
