"""The sandbox every training and evaluation container runs in: start or adopt, stream, wait, remove.

The operators and the local ``python -m pushtrain train`` command start their containers here, so the
sandbox is defined once: no network, a non-root user, a read-only root file system with a tmpfs ``/tmp``,
memory (no swap), a real CPU quota (``nano_cpus``), a pids limit, every capability dropped,
``no-new-privileges``, no Docker socket and only the environment variables given.

Containers have fixed names per (pipeline run, attempt): a container that is already running under the
name is adopted rather than started twice. What to do when a container dies (wait for container_health
to restart it, or fail) is the caller's policy, not this module's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pushtrain import settings
from pushtrain.runner import contract

if TYPE_CHECKING:
    from docker import APIClient

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
    started_at: str = ""  # Docker's StartedAt of the run that ended: a restart changes it
    restarts: int = 0

    @property
    def succeeded(self) -> bool:
        return self.exit_code == contract.EXIT_OK and not self.oom_killed

    @property
    def healable(self) -> bool:
        """Whether starting the container again could help (the runner contract's exit codes)."""
        return contract.healable(self.exit_code)

    def describe(self) -> str:
        if self.oom_killed:
            return (
                f"out of memory: container {self.name} went over its {self.memory_limit} limit and was "
                "killed (exit 137); lower batch_size or the model size, or raise PUSHTRAIN_CONTAINER_MEMORY"
            )
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


def follow_logs(
    client: APIClient, container_id: str, log: Callable[[str], None], since: float | None = None
) -> None:
    """Pass each line the container prints to ``log`` until it stops; ``since``: from that start on."""
    for chunk in client.logs(container_id, stream=True, follow=True, since=since):
        for line in chunk.decode(errors="replace").splitlines():
            log(line)


def wait_for_exit(
    client: APIClient, container_id: str, name: str, sandbox: Sandbox, adopted: bool = False
) -> ContainerOutcome:
    status = client.wait(container_id)
    state = client.inspect_container(container_id)["State"]
    return ContainerOutcome(
        name,
        int(status["StatusCode"]),
        bool(state.get("OOMKilled")),
        adopted,
        sandbox.memory,
        state["StartedAt"],
    )


def started_again(client: APIClient, container_id: str, started_at: str) -> float | None:
    """When the container started again after the run that started at ``started_at``; None if it did not.

    A float keeps sub-second precision for ``follow_logs(since=...)``: the SDK truncates a datetime to
    whole seconds, which replayed the last lines of the run before the restart. Docker's time has
    nanoseconds.
    """
    state = client.inspect_container(container_id)["State"]
    if state["StartedAt"] == started_at or not (state["Running"] or state["FinishedAt"] > state["StartedAt"]):
        return None
    return datetime.fromisoformat(state["StartedAt"][:26].rstrip("Z")).replace(tzinfo=UTC).timestamp()


def run_container(
    client: APIClient,
    spec: ContainerSpec,
    sandbox: Sandbox,
    log: Callable[[str], None],
    *,
    remove: bool = True,
) -> ContainerOutcome:
    """Run (or adopt) the container, stream its lines to ``log``, wait for it, and remove it."""
    container_id, adopted = start_or_adopt(client, spec, sandbox)
    if adopted:
        log(f"adopting container {spec.name}, already running")
    try:
        follow_logs(client, container_id, log)
        return wait_for_exit(client, container_id, spec.name, sandbox, adopted)
    finally:
        if remove:
            remove_container(client, container_id)


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
