"""Serve each model's champion behind a stable endpoint: blue-green replacement, smoke test, healing.

Per model name, on the Docker host:

* **Serving containers** ``pushtrain-serve-<name>-v<N>``: the kind's training image (the same pinned
  framework stack, with the current runner's ``serve`` command) running
  ``python -m pushtrain.runner serve`` on the version's ``artifact/`` mounted read-only. Sandboxed as
  training is (read-only root, tmpfs ``/tmp``, non-root, every capability dropped, no-new-privileges,
  memory, CPU and pids limits) except the network: it must answer, so it is on Docker's default bridge
  (not ``none``) with its port published on **127.0.0.1 only**, at a host port chosen here and fixed for
  the container's life (a restart keeps it). The bridge also gives the container outbound access; the
  model code has already run in the evaluation sandbox, but a deployment that needs more isolation should
  put the host's firewall in front of the bridge.
* **The stable endpoint** ``pushtrain-serve-<name>-proxy``: ``python -m pushtrain.runner proxy``, platform
  code only (no user code, no model), on the host network listening on ``127.0.0.1:<stable port>``
  (``<data>/serving/<name>/endpoint.json``, allocated once from ``PUSHTRAIN_SERVING_FIRST_PORT``). It
  forwards to the container named in ``upstream.json``. This is the handed-out address:
  ``http://127.0.0.1:<stable port>/invocations``.

**Blue-green** (:func:`deploy`): the champion's container starts beside the serving one, must answer
``/health`` and a **smoke test** (held-out images of its data set, sent as PNGs and scored here, on the
platform side, from the HTTP answers: the serving container never sees a label), and only then is
``upstream.json`` replaced (atomically: the proxy's next request goes to the new container, requests in
flight finish on the old one), the old container drains and stops. The ``serving`` alias records what the
endpoint serves; a candidate that fails never takes traffic, and the alias history says why.

**Healing** (:func:`heal`, from ``container_health``): a serving or proxy container that is not running
is started again at once (no lease: serving is wanted as long as the version is champion); one that Docker
restarted :data:`CRASH_LOOP_RESTARTS` times or more is reported as crash-looping.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pushtrain import images, settings
from pushtrain.registry import CHAMPION, ModelRegistry, ModelVersion, RegistryError
from pushtrain.runner import serve as protocol
from pushtrain.sandbox import Sandbox, container_user, docker_client
from pushtrain.supervision import LABEL_PREFIX, ROLE_LABEL, STATE_DIR_LABEL

if TYPE_CHECKING:
    from docker import APIClient

log = logging.getLogger(__name__)

SERVE_ROLE = "serve"
PROXY_ROLE = "serve-proxy"
MODEL_LABEL = f"{LABEL_PREFIX}.model"
VERSION_LABEL = f"{LABEL_PREFIX}.model-version"
SERVING_ALIAS = "serving"  # what the stable endpoint answers with now; champion is what it should
ENDPOINT_FILE = "endpoint.json"
UPSTREAM_FILE = "upstream.json"
DEFAULT_FIRST_STABLE_PORT = 8501
SMOKE_SAMPLE = 40
# Accuracy on the smoke sample may fall this far below the registered held-out accuracy (a small sample).
SMOKE_TOLERANCE = 0.15
HEALTH_TIMEOUT_S = 180.0
DRAIN_S = 1.0  # requests in flight on the old container finish within this after the switch
CRASH_LOOP_RESTARTS = 3
PROXY_MEMORY = "256m"


class ServingError(RuntimeError):
    """A serving container could not be started or did not become healthy; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    model_name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    correct: int
    total: int
    required_accuracy: float
    reason: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class DeployResult:
    model_name: str
    version: int
    switched: bool
    reason: str
    endpoint: str
    container: str | None
    smoke: dict | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def serving_dir(model_name: str) -> Path:
    return settings.data_dir() / "serving" / model_name


def first_stable_port() -> int:
    return int(os.environ.get("PUSHTRAIN_SERVING_FIRST_PORT", DEFAULT_FIRST_STABLE_PORT))


def container_name(model_name: str, number: int) -> str:
    return f"pushtrain-serve-{model_name}-v{number}"


def proxy_name(model_name: str) -> str:
    return f"pushtrain-serve-{model_name}-proxy"


# --- ports and files --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _serving_lock() -> Iterator[None]:
    root = settings.data_dir() / "serving"
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def endpoint(model_name: str) -> Endpoint | None:
    """The model's stable endpoint, or None before its first deployment."""
    path = serving_dir(model_name) / ENDPOINT_FILE
    if not path.exists():
        return None
    return Endpoint(model_name, int(json.loads(path.read_text())["port"]))


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _allocate_endpoint(model_name: str) -> Endpoint:
    """The stable port of ``model_name``: allocated on first use, then the same for ever."""
    with _serving_lock():
        existing = endpoint(model_name)
        if existing:
            return existing
        taken = {e.port for name in _served_names() if (e := endpoint(name))}
        port = first_stable_port()
        while port in taken or not _port_is_free(port):
            port += 1
        _write_json(serving_dir(model_name) / ENDPOINT_FILE, {"model_name": model_name, "port": port})
        return Endpoint(model_name, port)


def _served_names() -> list[str]:
    root = settings.data_dir() / "serving"
    return sorted(p.name for p in root.iterdir() if (p / ENDPOINT_FILE).exists()) if root.is_dir() else []


def _free_ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as stream:
        json.dump(document, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.chmod(temp, 0o644)  # the proxy runs as another user
    os.replace(temp, path)


def upstream(model_name: str) -> dict | None:
    path = serving_dir(model_name) / UPSTREAM_FILE
    return json.loads(path.read_text()) if path.exists() else None


# --- HTTP from the platform side --------------------------------------------------------------------------


def request(
    port: int,
    method: str,
    path: str,
    body: dict | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One request to a serving container or the stable endpoint on the loopback; (status, JSON answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if payload is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def wait_healthy(client: APIClient, container: str, port: int, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Until ``/health`` answers 200; raises :class:`ServingError` with the container's last lines if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = request(port, "GET", "/health", timeout=2.0)
            if status == 200:
                return
        except OSError:
            pass
        details = client.inspect_container(container)
        if details.get("RestartCount") or not details["State"]["Running"]:
            break  # it exited (Docker may be restarting it): it will not become healthy by waiting
        time.sleep(0.3)
    tail = client.logs(container, tail=15).decode(errors="replace").strip()
    raise ServingError(f"{container} did not answer /health within {timeout:.0f} s; its last lines:\n{tail}")


def smoke_sample(version: ModelVersion, sample: int = SMOKE_SAMPLE) -> list[tuple[str, str]]:
    """A few held-out images of the version's data set as (base64 PNG, true class name), read here."""
    dataset = version.lineage.get("dataset") or {}
    test_dir = (
        settings.datasets_dir()
        / str(dataset.get("name", ""))
        / str(dataset.get("split_version", ""))
        / "test"
    )
    files = sorted(p for p in test_dir.glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    chosen = random.Random(version.number).sample(files, min(sample, len(files)))
    return [(base64.b64encode(path.read_bytes()).decode(), path.parent.name) for path in chosen]


def smoke_test(port: int, version: ModelVersion, sample: int = SMOKE_SAMPLE) -> SmokeResult:
    """Send held-out images to the container and score its answers here, against the registered accuracy."""
    examples = smoke_sample(version, sample)
    required = max(0.0, version.metric_value - SMOKE_TOLERANCE) if version.metric == "accuracy" else 0.0
    if not examples:
        return SmokeResult(
            False,
            0,
            0,
            required,
            f"no held-out images found for {version.model_name} "
            f"{version.label}'s data set ({version.lineage.get('dataset')})",
        )
    status, answer = request(port, "POST", "/invocations", {"instances": [image for image, _ in examples]})
    if status != 200 or not isinstance(answer, dict) or len(answer.get("predictions") or []) != len(examples):
        return SmokeResult(
            False, 0, len(examples), required, f"the smoke request was answered {status}: {str(answer)[:300]}"
        )
    correct = sum(
        predicted == truth for predicted, (_, truth) in zip(answer["predictions"], examples, strict=True)
    )
    accuracy = correct / len(examples)
    passed = accuracy >= required
    verdict = "passed" if passed else "failed"
    return SmokeResult(
        passed,
        correct,
        len(examples),
        required,
        f"smoke test {verdict}: {correct}/{len(examples)} held-out images right ({accuracy:.2f}; "
        f"needs {required:.2f}, the registered {version.metric} "
        f"{version.metric_value:.4f} less {SMOKE_TOLERANCE})",
    )


# --- containers -------------------------------------------------------------------------------------------


def _mount(source: Path, target: str):
    from docker.types import Mount

    return Mount(target=target, source=str(source), type="bind", read_only=True)


def _labels(model_name: str, role: str, number: int | None = None) -> dict[str, str]:
    labels = {ROLE_LABEL: role, MODEL_LABEL: model_name, STATE_DIR_LABEL: str(serving_dir(model_name))}
    if number is not None:
        labels[VERSION_LABEL] = str(number)
    return labels


def serving_image(version: ModelVersion) -> str:
    kind = json.loads((version.artifact_dir / "signature.json").read_text())["kind"]
    return images.image_for_kind(kind)


def start_serving_container(
    client: APIClient, version: ModelVersion, *, alias: str = CHAMPION
) -> tuple[str, int]:
    """Start (a fresh) ``pushtrain-serve-<name>-v<N>``; returns (container name, its host port)."""
    from docker.errors import NotFound

    name = container_name(version.model_name, version.number)
    with contextlib.suppress(NotFound):
        client.remove_container(name, force=True)  # a leftover of an earlier deploy: start clean
    host_port = _free_ephemeral_port()
    lineage = version.lineage
    info = {
        "name": version.model_name,
        "version": version.number,
        "alias": alias,
        "uri": version.uri,
        "commit": lineage.get("commit") or (lineage.get("pipeline") or {}).get("commit"),
        "dataset_sha256": (lineage.get("evaluation") or {}).get("dataset_sha256")
        or (lineage.get("dataset") or {}).get("test_sha256"),
        "metric": {version.metric: version.metric_value},
    }
    host_config = Sandbox().host_config_kwargs([_mount(version.artifact_dir, "/model")])
    host_config.update(
        network_mode="bridge",
        port_bindings={protocol.CONTAINER_PORT: ("127.0.0.1", host_port)},
        restart_policy={"Name": "unless-stopped"},
    )
    host_config.pop("device_requests", None)
    container = client.create_container(
        image=serving_image(version),
        name=name,
        user=container_user(),
        labels=_labels(version.model_name, SERVE_ROLE, version.number),
        command=[
            "serve",
            "--model-dir",
            "/model",
            "--port",
            str(protocol.CONTAINER_PORT),
            "--info",
            json.dumps(info),
        ],
        ports=[protocol.CONTAINER_PORT],
        host_config=client.create_host_config(**host_config),
    )
    client.start(container["Id"])
    return name, host_port


def ensure_proxy(client: APIClient, model_name: str, image: str) -> Endpoint:
    """The model's stable endpoint, started if it is not running (platform code only, host network)."""
    from docker.errors import NotFound

    stable = _allocate_endpoint(model_name)
    name = proxy_name(model_name)
    try:
        state = client.inspect_container(name)["State"]
        if state["Running"]:
            return stable
        client.start(name)
        return stable
    except NotFound:
        pass
    host_config = Sandbox(memory=PROXY_MEMORY).host_config_kwargs([_mount(serving_dir(model_name), "/state")])
    host_config.update(network_mode="host", restart_policy={"Name": "unless-stopped"})
    host_config.pop("device_requests", None)
    container = client.create_container(
        image=image,
        name=name,
        user=container_user(),
        labels=_labels(model_name, PROXY_ROLE),
        command=[
            "proxy",
            "--upstream-file",
            f"/state/{UPSTREAM_FILE}",
            "--host",
            "127.0.0.1",
            "--port",
            str(stable.port),
        ],
        host_config=client.create_host_config(**host_config),
    )
    client.start(container["Id"])
    return stable


def _containers(client: APIClient, model_name: str | None = None, role: str | None = None) -> list[dict]:
    filters = [f"{MODEL_LABEL}={model_name}"] if model_name else [MODEL_LABEL]
    containers = client.containers(all=True, filters={"label": filters})
    roles = (role,) if role else (SERVE_ROLE, PROXY_ROLE)
    return [c for c in containers if (c.get("Labels") or {}).get(ROLE_LABEL) in roles]


# --- blue-green -------------------------------------------------------------------------------------------


def deploy(
    model_name: str, *, version: int | None = None, by: str | None = None, client: APIClient | None = None
) -> DeployResult:
    """Serve ``version`` (default: the champion) at the model's stable endpoint, blue-green.

    A no-op when it is already served by a running container. A candidate that fails ``/health`` or its
    smoke test is removed without taking traffic, and the ``serving`` alias history records why.
    """
    client = client or docker_client()
    registry = ModelRegistry(settings.registry_dir())
    target = registry.get(model_name, version) if version else registry.champion(model_name)
    if target is None:
        raise RegistryError(f"{model_name} has no champion to serve")
    by = by or "platform:serving"
    current = upstream(model_name)
    image = serving_image(target)
    stable = ensure_proxy(client, model_name, image)
    if current and current.get("version") == target.number and _running(client, current["container"]):
        return DeployResult(
            model_name,
            target.number,
            False,
            f"{target.label} is already served",
            stable.url,
            current["container"],
        )

    name, port = start_serving_container(client, target)
    try:
        wait_healthy(client, name, port)
        smoke = smoke_test(port, target)
    except (ServingError, OSError) as error:
        smoke = SmokeResult(False, 0, 0, 0.0, f"not healthy: {error}")
    if not smoke.passed:
        _remove(client, name)
        served = current["version"] if current else None
        reason = f"{target.label} never took traffic: {smoke.reason}; " + (
            f"v{served} stays served" if served else "nothing is served"
        )
        registry.record_refusal(model_name, SERVING_ALIAS, target.number, reason=reason, by=by)
        log.warning("%s: %s", model_name, reason)
        return DeployResult(model_name, target.number, False, reason, stable.url, None, asdict(smoke))

    _write_json(
        serving_dir(model_name) / UPSTREAM_FILE,
        {"host": "127.0.0.1", "port": port, "container": name, "version": target.number},
    )
    _wait_switched(stable, target.number)
    time.sleep(DRAIN_S)
    for old in _containers(client, model_name, SERVE_ROLE):
        if old["Names"][0].lstrip("/") != name:
            _remove(client, old["Id"])
    reason = f"blue-green: {target.label} passed /health and the {smoke.reason}"
    registry.set_alias(model_name, SERVING_ALIAS, target.number, reason=reason, by=by)
    log.info("%s: %s", model_name, reason)
    return DeployResult(model_name, target.number, True, reason, stable.url, name, asdict(smoke))


def _wait_switched(stable: Endpoint, number: int, timeout: float = 30.0) -> None:
    """Until the stable endpoint answers with the new version (the proxy has read the new upstream file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, answer = request(stable.port, "GET", "/version", timeout=2.0)
            if status == 200 and isinstance(answer, dict) and answer.get("version") == number:
                return
        time.sleep(0.1)
    raise ServingError(
        f"the stable endpoint {stable.url} did not switch to v{number} within {timeout:.0f} s; "
        f"is {proxy_name(stable.model_name)} running?"
    )


def _running(client: APIClient, container: str) -> bool:
    from docker.errors import NotFound

    try:
        return bool(client.inspect_container(container)["State"]["Running"])
    except NotFound:
        return False


def _remove(client: APIClient, container: str) -> None:
    from docker.errors import APIError, NotFound

    try:
        client.remove_container(container, force=True)
    except NotFound:
        pass
    except APIError as error:
        if error.status_code != 409:  # removal already in progress
            raise


def undeploy(model_name: str, client: APIClient | None = None) -> list[str]:
    """Stop the model's serving and proxy containers; the endpoint file stays (the port is kept)."""
    client = client or docker_client()
    removed = []
    for container in _containers(client, model_name):
        _remove(client, container["Id"])
        removed.append(container["Names"][0].lstrip("/"))
    (serving_dir(model_name) / UPSTREAM_FILE).unlink(missing_ok=True)
    return removed


# --- healing ----------------------------------------------------------------------------------------------


def heal(client: APIClient | None = None, log_line=print) -> list[dict]:
    """Start every stopped serving and proxy container again; report crash loops. One dict per action."""
    client = client or docker_client()
    actions = []
    for container in _containers(client):
        labels = container.get("Labels") or {}
        name = container["Names"][0].lstrip("/")
        details = client.inspect_container(container["Id"])
        restarts = int(details.get("RestartCount") or 0)
        if restarts >= CRASH_LOOP_RESTARTS:
            line = (
                f"{name} ({labels.get(MODEL_LABEL)}) is crash-looping: Docker restarted it {restarts} times; "
                f"its last lines: {client.logs(container['Id'], tail=5).decode(errors='replace').strip()}"
            )
            log_line(line)
            actions.append({"container": name, "action": "crash-loop", "restarts": restarts, "message": line})
        if details["State"]["Running"] or details["State"].get("Restarting"):
            continue
        client.start(container["Id"])
        line = f"{name} was not running (exit {details['State'].get('ExitCode')}): started it again"
        log_line(line)
        actions.append({"container": name, "action": "restarted", "message": line})
    return actions
