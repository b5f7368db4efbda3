"""Self-healing: restart training containers that died, while their attempt is still wanted.

Two parties cooperate through files in the attempt's output dir, never through the scheduler's database:

* The **Airflow task** running a container holds a *lease*, ``.lease-<role>.json``, refreshed every
  ``LEASE_HEARTBEAT_S`` while it waits. It removes the lease when it ends (success, failure, marked failed,
  timeout). A fresh lease means "this attempt is still wanted".
* The **container_health DAG** looks at every container labelled by pushtrain. A container that died
  abnormally while its lease is fresh is restarted (the runner resumes from its last checkpoint), within a
  restart budget and with backoff, recorded in ``.restarts-<role>.json``:

  - killed by the host or an operator (SIGKILL without OOM, SIGTERM, a daemon restart): up to
    ``HOST_KILL_BUDGET`` restarts; these are not the user's fault;
  - a crash of user code (the runner's exit code 5) or out of memory: up to ``CRASH_BUDGET`` restarts, since
    a deterministic bug crashes again;
  - the model file or data set is unusable (exit 3 or 4): never restarted, a restart cannot help.

  Containers whose attempt finished (``metrics.json``/``evaluation.json`` written, lease released) are
  removed, and so are their checkpoints once the pipeline no longer needs them. Every decision is one log
  line naming the container and the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pushtrain import settings
from pushtrain.runner import contract
from pushtrain.sandbox import MANAGED_ROLES, RESULT_FILE_LABEL, ROLE_LABEL, STATE_DIR_LABEL

if TYPE_CHECKING:
    from docker import APIClient

LEASE_HEARTBEAT_S = 10
HOST_KILL_BUDGET = 5
CRASH_BUDGET = 2
BACKOFF_BASE_S = 5  # the n-th restart waits BACKOFF_BASE_S * 2**(n-1) after the death
STALE_CONTAINER_S = 3600  # a dead container nobody claims for this long is removed
RESTARTABLE_HOST_EXITS = {contract.EXIT_KILLED, contract.EXIT_TERMINATED, 255, -1}
NEVER_RESTART_EXITS = {contract.EXIT_USAGE, contract.EXIT_DATA_ERROR, contract.EXIT_CONTRACT_ERROR}


def health_interval_s() -> int:
    return settings.health_interval_s()


def restart_window_s(out_dir: Path, role: str) -> float:
    """How long a task waits for a restart: one check interval, the backoff, and 30 s of slack."""
    return health_interval_s() + BACKOFF_BASE_S * 2 ** RestartLog.load(out_dir, role).total + 30


def lease_stale_after_s() -> float:
    return 3 * LEASE_HEARTBEAT_S


def lease_path(out_dir: Path, role: str) -> Path:
    return Path(out_dir) / f".lease-{role}.json"


def restarts_path(out_dir: Path, role: str) -> Path:
    return Path(out_dir) / f".restarts-{role}.json"


def cancelled_path(out_dir: Path, role: str) -> Path:
    return Path(out_dir) / f".cancelled-{role}"


def mark_cancelled(out_dir: Path, role: str, why: str) -> None:
    """The task was stopped (marked failed, timed out): its container must go, even if still running."""
    cancelled_path(out_dir, role).write_text(why + "\n")
    release_lease(out_dir, role)


def clear_cancelled(out_dir: Path, role: str) -> None:
    """A new try of the task wants the attempt again."""
    cancelled_path(out_dir, role).unlink(missing_ok=True)


def write_lease(out_dir: Path, role: str, container: str, holder: str) -> None:
    contract.write_json_atomic(lease_path(out_dir, role), {"container": container, "holder": holder,
                                                           "heartbeat": time.time()})


def release_lease(out_dir: Path, role: str) -> None:
    lease_path(out_dir, role).unlink(missing_ok=True)


def lease_is_fresh(out_dir: Path, role: str, now: float | None = None) -> bool:
    try:
        lease = json.loads(lease_path(out_dir, role).read_text())
    except (OSError, ValueError):
        return False
    return (now or time.time()) - float(lease.get("heartbeat", 0)) <= lease_stale_after_s()


@dataclass
class RestartLog:
    host_kills: int = 0
    crashes: int = 0
    gave_up: str = ""  # why the health check stopped restarting; the waiting task fails with it
    history: list = field(default_factory=list)

    @classmethod
    def load(cls, out_dir: Path, role: str) -> RestartLog:
        try:
            return cls(**json.loads(restarts_path(out_dir, role).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, out_dir: Path, role: str) -> None:
        contract.write_json_atomic(restarts_path(out_dir, role), asdict(self))

    @property
    def total(self) -> int:
        return self.host_kills + self.crashes


def classify_exit(exit_code: int, oom_killed: bool) -> str:
    """``host_kill``, ``crash`` or ``fatal``: who is to blame decides which budget a restart uses."""
    if oom_killed or exit_code == contract.EXIT_USER_CODE_ERROR:
        return "crash"
    if exit_code in NEVER_RESTART_EXITS:
        return "fatal"
    if exit_code in RESTARTABLE_HOST_EXITS:
        return "host_kill"
    return "crash"  # anything else (a runner bug, a signal we do not expect): a small budget, then stop


def _seconds_since(iso_time: str, now: float) -> float:
    from datetime import datetime

    try:
        return now - datetime.fromisoformat(iso_time.replace("Z", "+00:00")[:26] + "+00:00").timestamp()
    except ValueError:
        return 0.0


def check_containers(client: APIClient, log=print, now: float | None = None) -> list[dict]:
    """One pass of the health check over every pushtrain container; returns what it did, per container."""
    now = now or time.time()
    actions = []
    for summary in client.containers(all=True, filters={"label": ROLE_LABEL}):
        name = summary["Names"][0].lstrip("/")
        labels = summary.get("Labels") or {}
        role = labels.get(ROLE_LABEL)
        if role not in MANAGED_ROLES:
            continue  # a data scientist's local run: it cleans up after itself
        state_dir = Path(labels.get(STATE_DIR_LABEL, "/nonexistent"))
        finished = Path(labels.get(RESULT_FILE_LABEL, "/nonexistent")).exists()
        state = client.inspect_container(summary["Id"])["State"]
        action, reason = _decide(client, summary["Id"], role, state_dir, finished, state, now)
        line = f"{name}: {action} ({reason})"
        log(line)
        actions.append({"container": name, "action": action, "reason": reason})
    return actions


def _decide(client: APIClient, container_id: str, role: str, out_dir: Path, finished: bool, state: dict,
            now: float) -> tuple[str, str]:
    from docker.errors import APIError

    if cancelled_path(out_dir, role).exists() and not lease_is_fresh(out_dir, role, now):
        # Backstop for a stop the task could not finish (its process was killed mid on_kill).
        client.remove_container(container_id, force=True)
        return "removed", f"its task was stopped: {cancelled_path(out_dir, role).read_text().strip()}"
    if state.get("Running") or state.get("Restarting"):
        return "ok", "running"
    exit_code, oom = int(state.get("ExitCode", 0)), bool(state.get("OOMKilled"))
    wanted = lease_is_fresh(out_dir, role, now)
    if finished and not wanted:
        client.remove_container(container_id, force=True)
        return "removed", "its attempt finished"
    if not wanted:
        if _seconds_since(state.get("FinishedAt", ""), now) > STALE_CONTAINER_S:
            client.remove_container(container_id, force=True)
            return "removed", f"dead for over {STALE_CONTAINER_S}s and no task waits for it"
        return "left", "no task holds its lease (finished, cancelled or marked failed); a retry adopts it"
    if exit_code == 0 and not oom:
        return "left", "exited 0; its task collects the result"

    restarts = RestartLog.load(out_dir, role)
    if restarts.gave_up:
        return "left", f"gave up earlier: {restarts.gave_up}"
    blame = classify_exit(exit_code, oom)
    what = "out of memory" if oom else contract.EXIT_CODE_MEANINGS.get(exit_code, f"exit {exit_code}")
    if blame == "fatal":
        restarts.gave_up = f"{what}: a restart cannot help"
    elif blame == "crash" and restarts.crashes >= CRASH_BUDGET:
        restarts.gave_up = f"{what} again after {restarts.crashes} restart(s) (crash budget {CRASH_BUDGET})"
    elif blame == "host_kill" and restarts.host_kills >= HOST_KILL_BUDGET:
        restarts.gave_up = f"killed again after {restarts.host_kills} restart(s) (budget {HOST_KILL_BUDGET})"
    if restarts.gave_up:
        restarts.save(out_dir, role)
        return "gave_up", restarts.gave_up
    backoff = BACKOFF_BASE_S * 2 ** restarts.total
    dead_for = _seconds_since(state.get("FinishedAt", ""), now)
    if restarts.total and dead_for < backoff:
        return "waiting", f"{what}; backoff {backoff}s, dead for {dead_for:.0f}s"
    try:
        client.start(container_id)
    except APIError as exc:
        return "failed", f"restart failed: {exc.explanation or exc}"
    if blame == "crash":
        restarts.crashes += 1
    else:
        restarts.host_kills += 1
    restarts.history.append({"at": now, "exit_code": exit_code, "oom_killed": oom, "blame": blame})
    restarts.save(out_dir, role)
    return "restarted", f"{what}; restart {restarts.total} ({blame}), resumes from its last checkpoint"


def collect_garbage(log=print) -> list[str]:
    """Remove checkpoints and workspaces of pipelines that ended (a backstop for a failed clean-up)."""
    from pushtrain import pipeline

    removed = []
    for summary in settings.runs_dir().glob("*/summary.json"):
        for path in pipeline.cleanup(summary.parent.name):
            log(f"removed {path}: its pipeline ended")
            removed.append(path)
    return removed
