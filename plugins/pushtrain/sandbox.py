"""The sandbox every training and evaluation container runs in, and the one way pushtrain runs them.

Both the Airflow operator and the local ``python -m pushtrain train`` command go through
``run_container``, so the sandbox is defined once: no network, a non-root user, a read-only root file
system with a tmpfs ``/tmp``, memory (no swap), a real CPU quota (``nano_cpus``), a pids limit, every
capability dropped, ``no-new-privileges``, no Docker socket and only the environment variables given.

Containers have fixed names per (pipeline run, attempt): a container that is already running under the
name is adopted rather than started twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pushtrain import settings
from pushtrain.runner import contract

if TYPE_CHECKING:
    from docker import APIClient

LABEL_PREFIX = "io.pushtrain"
ROLE_LABEL = f"{LABEL_PREFIX}.role"  # "train" and "evaluate" (pipeline attempts), "local" (python -m pushtrain)
MANAGED_ROLES = ("train", "evaluate")  # the roles container_health restarts and removes
RUN_KEY_LABEL = f"{LABEL_PREFIX}.run-key"
STATE_DIR_LABEL = f"{LABEL_PREFIX}.state-dir"  # host-only dir of the task's lease and the restart log
RESULT_FILE_LABEL = f"{LABEL_PREFIX}.result-file"  # exists once the container's work is complete
CONTAINER_USER_ID = 10001  # the image's "trainer" user; used when the host side runs as root


@dataclass(frozen=True)
class Sandbox:
    memory: str = field(default_factory=settings.container_memory)
    cpus: float = field(default_factory=settings.container_cpus)
    pids_limit: int = field(default_factory=settings.container_pids_limit)
    gpus: str | None = field(default_factory=settings.container_gpus)
    tmpfs_size: str = "1g"

    def host_config_kwargs(self, mounts: list) -> dict[str, Any]:
        """Arguments of ``docker.APIClient.create_host_config`` that make the sandbox."""
        from docker.types import DeviceRequest

        device_requests = None
        if self.gpus:
            count = -1 if self.gpus == "all" else int(self.gpus)
            device_requests = [DeviceRequest(count=count, capabilities=[["gpu"]])]
        return {
            "mounts": mounts,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_size}"},
            "mem_limit": self.memory,
            "memswap_limit": self.memory,  # equal to mem_limit: no swap, so a blow-up ends in OOM, not thrash
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids_limit,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "device_requests": device_requests,
            "auto_remove": False,  # kept until we read its state; we remove it ourselves
        }


def container_user() -> str:
    """The uid the container runs as: the host's own (so outputs belong to it), never root."""
    uid = os.getuid()
    return f"{uid}:{os.getgid()}" if uid != 0 else f"{CONTAINER_USER_ID}:{CONTAINER_USER_ID}"


def prepare_output_dir(path: os.PathLike) -> None:
    """Create an attempt's output directory writable by the container user."""
    os.makedirs(path, exist_ok=True)
    if os.getuid() == 0:
        os.chown(path, CONTAINER_USER_ID, CONTAINER_USER_ID)


@dataclass
class ContainerSpec:
    name: str
    image: str
    command: list[str]
    mounts: list
    labels: dict[str, str]
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerOutcome:
    name: str
    exit_code: int
    oom_killed: bool
    adopted: bool
    memory_limit: str
    restarts: int = 0

    @property
    def succeeded(self) -> bool:
        return self.exit_code == contract.EXIT_OK and not self.oom_killed

    def describe(self) -> str:
        if self.oom_killed:
            return (f"out of memory: container {self.name} went over its {self.memory_limit} limit and was "
                    "killed (exit 137); lower batch_size or the model size, or raise PUSHTRAIN_CONTAINER_MEMORY")
        meaning = contract.EXIT_CODE_MEANINGS.get(self.exit_code, "unexpected exit code")
        return f"container {self.name} exited with {self.exit_code}: {meaning}"


def docker_client() -> APIClient:
    from docker import APIClient

    return APIClient(base_url=settings.docker_url(), version="auto", timeout=120)


def _existing(client: APIClient, name: str) -> dict | None:
    from docker.errors import NotFound

    try:
        return client.inspect_container(name)
    except NotFound:
        return None


def start_or_adopt(client: APIClient, spec: ContainerSpec, sandbox: Sandbox) -> tuple[str, bool]:
    """Start the container, or adopt the one already running under its name. Returns (id, adopted)."""
    existing = _existing(client, spec.name)
    if existing and existing["State"]["Running"]:
        return existing["Id"], True
    if existing:  # a dead leftover of an earlier try: its checkpoints live in the output dir, not in it
        client.remove_container(existing["Id"], force=True)
    container = client.create_container(
        image=spec.image,
        command=spec.command,
        name=spec.name,
        user=container_user(),
        environment=spec.environment,
        labels=spec.labels,
        host_config=client.create_host_config(**sandbox.host_config_kwargs(spec.mounts)),
    )
    client.start(container["Id"])
    return container["Id"], False


@dataclass
class Lease:
    """The running task's claim on its attempt, so the health check knows the container is still wanted."""

    out_dir: os.PathLike
    role: str
    holder: str


def run_container(
    client: APIClient,
    spec: ContainerSpec,
    sandbox: Sandbox,
    log: Callable[[str], None],
    *,
    remove: bool = True,
    on_start: Callable[[str], None] | None = None,
    lease: Lease | None = None,
) -> ContainerOutcome:
    """Run (or adopt) the container, stream its lines to ``log``, wait for it, and remove it.

    With a ``lease``, a container that dies is not the end: the task keeps its lease fresh and waits for
    the container_health DAG to restart it (the runner then resumes from its checkpoint), and fails only
    when the health check gives up or does not restart it in time.
    """
    from pushtrain import health

    container_id, adopted = start_or_adopt(client, spec, sandbox)
    if on_start:
        on_start(container_id)
    if adopted:
        log(f"adopting container {spec.name}, already running")
    heartbeat = _Heartbeat(lease, spec.name) if lease else None
    try:
        since = None
        while True:
            for chunk in client.logs(container_id, stream=True, follow=True, since=since):
                for line in chunk.decode(errors="replace").splitlines():
                    log(line)
            status = client.wait(container_id)
            state = client.inspect_container(container_id)["State"]
            restarts = health.RestartLog.load(lease.out_dir, lease.role).total if lease else 0
            outcome = ContainerOutcome(spec.name, int(status["StatusCode"]), bool(state.get("OOMKilled")),
                                       adopted, sandbox.memory, restarts)
            if outcome.succeeded or lease is None:
                return outcome
            log(f"{outcome.describe()}; waiting for the container_health DAG to restart it")
            since = _wait_for_restart(client, container_id, state["StartedAt"], lease, log)
            if since is None:
                return outcome
    finally:
        if heartbeat:
            heartbeat.stop()
        if remove:
            remove_container(client, container_id)


def _wait_for_restart(client: APIClient, container_id: str, started_at: str, lease: Lease,
                      log: Callable[[str], None]) -> float | None:
    """When the container started again (its new logs begin there), or None if nobody restarted it."""
    from pushtrain import health

    deadline = time.monotonic() + health.restart_window_s(lease.out_dir, lease.role)
    while time.monotonic() < deadline:
        state = client.inspect_container(container_id)["State"]
        if state["StartedAt"] != started_at and (state["Running"] or state["FinishedAt"] > state["StartedAt"]):
            log("container restarted by container_health; following it again (it resumes from its checkpoint)")
            # A float keeps sub-second precision (a datetime is truncated to whole seconds by the SDK, which
            # replayed the last lines of the run before the restart). Docker's time has nanoseconds.
            started = datetime.fromisoformat(state["StartedAt"][:26].rstrip("Z")).replace(tzinfo=UTC)
            return started.timestamp()
        gave_up = health.RestartLog.load(lease.out_dir, lease.role).gave_up
        if gave_up:
            log(f"container_health gave up: {gave_up}")
            return None
        time.sleep(1)
    log("container_health did not restart the container in time: is the container_health DAG unpaused?")
    return None


class _Heartbeat:
    """Refreshes the lease in a thread while the task waits; releases it when the task is done."""

    def __init__(self, lease: Lease, container: str) -> None:
        from pushtrain import health

        self._lease, self._container, self._stopped = lease, container, threading.Event()
        health.write_lease(lease.out_dir, lease.role, container, lease.holder)
        self._thread = threading.Thread(target=self._beat, name="pushtrain-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        from pushtrain import health

        while not self._stopped.wait(health.LEASE_HEARTBEAT_S):
            health.write_lease(self._lease.out_dir, self._lease.role, self._container, self._lease.holder)

    def stop(self) -> None:
        from pushtrain import health

        self._stopped.set()
        self._thread.join(timeout=5)
        health.release_lease(self._lease.out_dir, self._lease.role)


def remove_container(client: APIClient, container_id: str) -> None:
    """Remove a container; one that is gone or already being removed (by container_health) is fine."""
    from docker.errors import APIError, NotFound

    try:
        client.remove_container(container_id, force=True)
    except NotFound:
        pass
    except APIError as exc:
        if exc.status_code != 409:  # 409: "removal of container ... is already in progress"
            raise
