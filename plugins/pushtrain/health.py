"""Self-healing: restart training containers that died, while their attempt is still wanted.

The container_health DAG calls ``check_containers`` every interval. It looks at every container labelled
by pushtrain and reads the waiting task's lease and cancel marker (``pushtrain.supervision``, the protocol
both sides share). A container that died abnormally while its lease is fresh is restarted (the runner
resumes from its last checkpoint), within a restart budget and with backoff, recorded in the restart log:

- killed by the host or an operator (SIGKILL without OOM, SIGTERM, a daemon restart): up to
  ``HOST_KILL_BUDGET`` restarts; these are not the user's fault;
- a crash of user code during training (the runner's exit code 5), a runner bug or out of memory: up to
  ``CRASH_BUDGET`` restarts, since a deterministic bug crashes again;
- a failure the runner calls unhealable (``contract.UNHEALABLE_EXITS``: syntax error, missing module, a
  builder that raises, the model file or data set unusable): never restarted, a restart cannot help; its
  task fails the attempt at once and removes it.

Containers whose attempt finished (``metrics.json``/``evaluation.json`` written, lease released) are
removed, and so are their checkpoints once the pipeline no longer needs them. Every decision is one log
line naming the container and the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pushtrain import settings
from pushtrain.runner import contract
from pushtrain.supervision import (
    BACKOFF_BASE_S,
    MANAGED_ROLES,
    RESULT_FILE_LABEL,
    ROLE_LABEL,
    STATE_DIR_LABEL,
    RestartLog,
    cancelled_because,
    lease_is_fresh,
)

if TYPE_CHECKING:
    from docker import APIClient

HOST_KILL_BUDGET = 5
CRASH_BUDGET = 2
STALE_CONTAINER_S = 3600  # a dead container nobody claims for this long is removed
RESTARTABLE_HOST_EXITS = {contract.EXIT_KILLED, contract.EXIT_TERMINATED, 255, -1}


def health_interval_s() -> int:
    return settings.health_interval_s()


def classify_exit(exit_code: int, oom_killed: bool) -> str:
    """``host_kill``, ``crash`` or ``fatal``: who is to blame decides which budget a restart uses."""
    if oom_killed or exit_code == contract.EXIT_USER_CODE_ERROR:
        return "crash"
    if not contract.healable(exit_code):
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
    from pushtrain import serving  # serving containers: restarted at once, no lease, while champion

    actions += serving.heal(client, log_line=log)
    return actions


def _decide(
    client: APIClient, container_id: str, role: str, out_dir: Path, finished: bool, state: dict, now: float
) -> tuple[str, str]:
    from docker.errors import APIError

    stopped = cancelled_because(out_dir, role)
    if stopped is not None and not lease_is_fresh(out_dir, role, now):
        # Backstop for a stop the task could not finish (its process was killed mid on_kill).
        client.remove_container(container_id, force=True)
        return "removed", f"its task was stopped: {stopped}"
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

    blame = classify_exit(exit_code, oom)
    what = "out of memory" if oom else contract.EXIT_CODE_MEANINGS.get(exit_code, f"exit {exit_code}")
    if blame == "fatal":
        return "left", f"{what}: a restart cannot help; its task fails the attempt and removes it"
    restarts = RestartLog.load(out_dir, role)
    if restarts.gave_up:
        return "left", f"gave up earlier: {restarts.gave_up}"
    if blame == "crash" and restarts.crashes >= CRASH_BUDGET:
        restarts.gave_up = f"{what} again after {restarts.crashes} restart(s) (crash budget {CRASH_BUDGET})"
    elif blame == "host_kill" and restarts.host_kills >= HOST_KILL_BUDGET:
        restarts.gave_up = f"killed again after {restarts.host_kills} restart(s) (budget {HOST_KILL_BUDGET})"
    if restarts.gave_up:
        restarts.save(out_dir, role)
        return "gave_up", restarts.gave_up
    backoff = BACKOFF_BASE_S * 2**restarts.total
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
