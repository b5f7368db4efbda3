"""The team deployment (docker-compose.yaml) on a machine that reaches no container registry.

``python -m pushtrain.compose_images images|up|down|env`` (``make compose-images``, ``compose-up``,
``compose-down``):

* **images**: for each service image of docker-compose.yaml, the public image if it is present or can be
  pulled, else a local stand-in built from ``images/compose/<name>/`` on the same base as the training
  images (:func:`pushtrain.images.ensure_base_image`: the public Python image, else a debootstrapped Debian
  bookworm). The Airflow stand-in installs ``requirements.txt`` and ``requirements-compose.txt`` from a
  wheelhouse the host builds once with its own pip (``docker build`` has no PyPI). Every stand-in is tagged
  ``pushtrain/compose-<name>:<content key>``, a hash of its folder, its requirements and the base image id,
  so a second run builds nothing. The docker-socket proxy is always ours (its haproxy.cfg is the policy).
* **up**: writes ``.env`` once (generated database, admin, Fernet and JWT secrets; the checkout's data dir),
  runs ``docker compose up -d`` with the image variables set to what ``images`` chose, waits until every
  service is healthy and prints the login.
* **down**: ``docker compose down``; the data dir (bound from the host) and the database volume stay.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pushtrain import images, settings

COMPOSE_DIR = settings.PROJECT_ROOT / "images" / "compose"
COMPOSE_FILE = settings.PROJECT_ROOT / "docker-compose.yaml"
DEFAULT_ENV_FILE = settings.PROJECT_ROOT / ".env"
AIRFLOW_REQUIREMENTS = settings.PROJECT_ROOT / "requirements.txt"
PULL_TIMEOUT_S = 120
# The services `up` waits for; airflow-init must have exited 0 before the others start.
LONG_RUNNING_SERVICES = (
    "postgres",
    "redis",
    "docker-socket-proxy",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
)


@dataclass(frozen=True)
class ComposeImage:
    name: str  # folder under images/compose/
    variable: str  # what docker-compose.yaml reads the image name from
    public: str | None  # the image docker-compose.yaml defaults to; None: always ours


COMPOSE_IMAGES = (
    ComposeImage("airflow", "AIRFLOW_IMAGE_NAME", "apache/airflow:3.3.2-python3.11"),
    ComposeImage("postgres", "POSTGRES_IMAGE", "postgres:16"),
    ComposeImage("redis", "REDIS_IMAGE", "redis:7.2-bookworm"),
    ComposeImage("docker-socket-proxy", "DOCKER_SOCKET_PROXY_IMAGE", None),
)


def say(message: str) -> None:
    print(f"[compose] {message}", flush=True)


# --- images ---------------------------------------------------------------------------------------------


def _available(reference: str) -> bool:
    """Present, or pulled now. A machine without a registry answers the pull at once (no such host)."""
    if images.image_id(reference):
        return True
    say(f"trying to pull {reference} ...")
    try:
        pulled = subprocess.run(
            [*images.docker_cli(), "pull", "--quiet", reference],
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False
    return pulled.returncode == 0


def _folder_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts)


def content_key(image: ComposeImage, base_image_id: str) -> str:
    digest = hashlib.sha256(base_image_id.encode() + b"\0")
    inputs = _folder_files(COMPOSE_DIR / image.name)
    if image.name == "airflow":
        inputs.append(AIRFLOW_REQUIREMENTS)
    for path in inputs:
        relative = path.relative_to(settings.PROJECT_ROOT)
        mode = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(str(relative).encode() + b"\0" + mode + path.read_bytes())
    return digest.hexdigest()


def _venv_constraints() -> str:
    """The versions the project's own venv runs with: the Airflow image resolves to the same ones."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "".join(line + "\n" for line in frozen.splitlines() if "==" in line and " @ " not in line)


def ensure_airflow_wheelhouse() -> Path:
    """Wheels for the Airflow image, made once with the host's pip (``pip wheel``: an sdist becomes a wheel).

    The versions are those of the project's venv (constraints). pip resolves dependency markers for the
    host's Python: requirements-compose.txt names what the image's older Python needs besides.
    """
    requirements = [AIRFLOW_REQUIREMENTS, COMPOSE_DIR / "airflow" / "requirements-compose.txt"]
    constraints = _venv_constraints()
    digest = hashlib.sha256(constraints.encode())
    for path in requirements:
        digest.update(path.read_bytes())
    wheelhouse = settings.cache_dir() / "wheelhouse" / f"compose-airflow-{digest.hexdigest()[:12]}"
    if (wheelhouse / ".complete").exists():
        return wheelhouse
    say(f"building the Airflow wheelhouse in {wheelhouse} with the host's pip (once; about 150 MB)")
    wheelhouse.mkdir(parents=True, exist_ok=True)
    constraints_file = wheelhouse / "constraints.txt"
    constraints_file.write_text(constraints)
    command = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "-q",
        "wheel",
        "-w",
        str(wheelhouse),
    ]
    command += ["-c", str(constraints_file)]
    for path in requirements:
        command += ["-r", str(path)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise images.ImageBuildError(
            f"pip wheel for the Airflow image failed (is PyPI reachable from this host?): {result.stderr[-3000:]}"
        )
    (wheelhouse / ".complete").write_text(f"{time.monotonic() - started:.0f}s\n")
    return wheelhouse


def _stage_context(image: ComposeImage) -> Path:
    build_root = settings.cache_dir() / "build"
    build_root.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix=f"compose-{image.name}-", dir=build_root))
    shutil.copytree(COMPOSE_DIR / image.name, context, dirs_exist_ok=True)
    if image.name == "airflow":
        shutil.copy2(AIRFLOW_REQUIREMENTS, context / "requirements.txt")
        (context / "wheels").mkdir()
        for wheel in ensure_airflow_wheelhouse().glob("*.whl"):
            os.link(wheel, context / "wheels" / wheel.name)
    return context


def build_stand_in(image: ComposeImage, base_image: str) -> str:
    key = content_key(image, images.image_id(base_image) or base_image)
    tag = f"pushtrain/compose-{image.name}:{key[:12]}"
    if images.image_id(tag):
        say(f"{tag} is up to date")
        return tag
    context = _stage_context(image)
    say(f"building {tag} on {base_image}")
    started = time.monotonic()
    build = subprocess.run(
        [
            *images.docker_cli(),
            "build",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--build-arg",
            f"CONTENT_KEY={key}",
            "-t",
            tag,
            str(context),
        ],
        capture_output=True,
        text=True,
    )
    shutil.rmtree(context, ignore_errors=True)
    if build.returncode != 0:
        raise images.ImageBuildError(
            f"docker build of the {image.name} stand-in failed:\n{build.stdout[-4000:]}\n{build.stderr[-2000:]}"
        )
    say(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def ensure_compose_images() -> dict[str, str]:
    """The image of each service, as ``{variable: reference}`` for docker compose's environment."""
    chosen: dict[str, str] = {}
    base_image = None
    for image in COMPOSE_IMAGES:
        if image.public and _available(image.public):
            say(f"{image.variable}: the public {image.public}")
            chosen[image.variable] = image.public
            continue
        base_image = base_image or images.ensure_base_image()
        chosen[image.variable] = build_stand_in(image, base_image)
    return chosen


# --- docker compose -------------------------------------------------------------------------------------


def env_file(environment: Mapping[str, str] = os.environ) -> Path:
    """The .env docker compose reads; PUSHTRAIN_COMPOSE_ENV_FILE moves it (the compose test keeps its own)."""
    return Path(environment.get("PUSHTRAIN_COMPOSE_ENV_FILE") or DEFAULT_ENV_FILE)


def compose_command(environment: Mapping[str, str] = os.environ) -> list[str]:
    """``docker compose`` (v2) where the plugin is installed, else the standalone ``docker-compose``."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    files = ["-f", str(COMPOSE_FILE), "--env-file", str(env_file(environment))]
    if probe.returncode == 0:
        return ["docker", "compose", *files]
    if shutil.which("docker-compose"):
        return ["docker-compose", *files]
    raise images.ImageBuildError("neither `docker compose` nor `docker-compose` is installed: install one")


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def write_env_file(path: Path) -> bool:
    """Write ``.env`` with generated secrets unless it exists (a second run keeps its passwords)."""
    if path.exists():
        return False
    uid = os.getuid()
    lines = [
        "# Written by `make compose-up` (pushtrain.compose_images); see .env_example for every setting.",
        "# The uid of the Airflow containers and of every training container (never root: 50000 for root).",
        f"AIRFLOW_UID={uid if uid != 0 else 50000}",
        "_AIRFLOW_WWW_USER_USERNAME=admin",
        f"_AIRFLOW_WWW_USER_PASSWORD={secrets.token_urlsafe(12)}",
        f"POSTGRES_PASSWORD={secrets.token_urlsafe(18)}",
        f"AIRFLOW__CORE__FERNET_KEY={_fernet_key()}",
        f"AIRFLOW__API_AUTH__JWT_SECRET={secrets.token_urlsafe(32)}",
        f"AIRFLOW__API__SECRET_KEY={secrets.token_urlsafe(32)}",
        f"PUSHTRAIN_DATA_DIR={settings.data_dir().resolve()}",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return True


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def compose_environment(chosen: dict[str, str] | None = None) -> dict[str, str]:
    """The environment docker compose runs in: the images chosen, and the project directory."""
    return {**os.environ, **(chosen or {})}


def service_states(environment: dict[str, str]) -> dict[str, str]:
    """``{service: "healthy" | "starting" | "unhealthy" | "running" | "exited(N)" ...}`` of the project."""
    listed = subprocess.run(
        [*compose_command(environment), "ps", "-q"],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    ids = listed.stdout.split()
    if not ids:
        return {}
    inspected = subprocess.run(
        ["docker", "inspect", *ids], capture_output=True, text=True, check=True, env=environment
    )
    states = {}
    for container in json.loads(inspected.stdout):
        service = container["Config"]["Labels"].get("com.docker.compose.service", container["Name"])
        state = container["State"]
        if state.get("Health"):
            states[service] = state["Health"]["Status"]
        elif state["Running"]:
            states[service] = "running"
        else:
            states[service] = f"exited({state['ExitCode']})"
    return states


def wait_until_healthy(environment: dict[str, str], timeout_s: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = service_states(environment)
        if states.get("airflow-init", "").startswith("exited(") and states["airflow-init"] != "exited(0)":
            raise images.ImageBuildError(
                f"airflow-init failed ({states['airflow-init']}): `docker-compose logs airflow-init` says why"
            )
        waiting = [s for s in LONG_RUNNING_SERVICES if states.get(s) not in ("healthy", "running")]
        if not waiting:
            return states
        time.sleep(5)
    raise images.ImageBuildError(f"the stack is not healthy after {timeout_s:.0f}s: {states}")


def up(timeout_s: float = 900) -> dict[str, str]:
    path = env_file()
    if write_env_file(path):
        say(f"wrote {path} with generated passwords and keys (kept for later runs)")
    chosen = ensure_compose_images()
    environment = compose_environment(chosen)
    env_values = read_env_file(path)
    data_dir = os.environ.get("PUSHTRAIN_DATA_DIR") or env_values.get("PUSHTRAIN_DATA_DIR")
    Path(data_dir or settings.data_dir().resolve()).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say("docker compose up -d")
    subprocess.run([*compose_command(environment), "up", "-d", "--no-build"], env=environment, check=True)
    states = wait_until_healthy(environment, timeout_s)
    say(f"healthy in {time.monotonic() - started:.0f}s: {', '.join(sorted(states))}")
    say(
        f"web UI: http://localhost:{environment.get('AIRFLOW_API_PORT') or env_values.get('AIRFLOW_API_PORT', 8080)}"
    )
    say(
        f"login: {env_values.get('_AIRFLOW_WWW_USER_USERNAME', 'airflow')} / "
        f"{env_values.get('_AIRFLOW_WWW_USER_PASSWORD', 'airflow')}   (from {path})"
    )
    return states


def down() -> None:
    subprocess.run([*compose_command(), "down", "--remove-orphans"], env=compose_environment(), check=True)
    say("stack stopped; the data dir and the database volume are kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pushtrain.compose_images", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=("images", "up", "down", "env"))
    args = parser.parse_args(argv)
    try:
        if args.action == "images":
            started = time.monotonic()
            chosen = ensure_compose_images()
            say(f"done in {time.monotonic() - started:.0f}s")
            for variable, reference in chosen.items():
                say(f"  {variable}={reference}")
        elif args.action == "env":
            for variable, reference in ensure_compose_images().items():
                print(f"{variable}={reference}")
        elif args.action == "up":
            up()
        else:
            down()
    except images.ImageBuildError as error:
        print(f"[compose] error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
