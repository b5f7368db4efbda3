"""Every path and tunable of pushtrain, read from environment variables with defaults.

One place, so a deployment changes behaviour through its environment (``.env``, docker-compose) and
the code never hard-codes a location. Functions, not constants: tests and the CLI change the
environment after import.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

GIT_CONN_ID = "git_default"
SMTP_CONN_ID = "smtp_default"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def data_dir() -> Path:
    """Root of data sets, attempt outputs and the model registry."""
    return Path(_env("PUSHTRAIN_DATA_DIR", str(PROJECT_ROOT / "data"))).resolve()


def datasets_dir() -> Path:
    return data_dir() / "datasets"


def runs_dir() -> Path:
    return data_dir() / "runs"


def registry_dir() -> Path:
    return data_dir() / "registry"


def cache_dir() -> Path:
    """Downloads and build contexts that survive a fresh clone (wheelhouse, staged image contexts)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pushtrain"
    return Path(_env("PUSHTRAIN_CACHE_DIR", str(default))).resolve()


def base_image_override() -> str | None:
    """``PUSHTRAIN_BASE_IMAGE`` forces the base of the training images (else chosen automatically)."""
    return os.environ.get("PUSHTRAIN_BASE_IMAGE", "").strip() or None


def public_base_image() -> str:
    return _env("PUSHTRAIN_PUBLIC_BASE_IMAGE", "python:3.11-slim")


class MissingSettingError(RuntimeError):
    """A setting without a safe default is unset; the message names the variable to set."""


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror a debootstrapped base image comes from.

    ``PUSHTRAIN_DEBIAN_MIRROR`` when set (an explicit choice wins), else the Debian mirror of the host's own
    apt sources under ``apt_dir``. pushtrain names no public mirror itself: without either, it is an error.
    """
    configured = os.environ.get("PUSHTRAIN_DEBIAN_MIRROR", "").strip()
    if configured:
        return configured
    sources = sorted((apt_dir / "sources.list.d").glob("*.sources")) + [apt_dir / "sources.list"]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["URIs:"]:  # deb822 (.sources)
                uris = words[1:]
            elif words[:1] == ["deb"]:  # one-line format: deb [options] uri suite components
                uris = [word for word in words[1:] if "://" in word][:1]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    raise MissingSettingError(
        f"no Debian mirror to debootstrap a base image from: the apt sources in {apt_dir} "
        "name none; set PUSHTRAIN_DEBIAN_MIRROR to a Debian mirror (or apt proxy) this "
        "host can reach, or set PUSHTRAIN_BASE_IMAGE to a base image you have"
    )


def docker_url() -> str:
    return _env("PUSHTRAIN_DOCKER_URL", _env("DOCKER_HOST", "unix:///var/run/docker.sock"))


def container_memory() -> str:
    """Memory cap of a training container (Docker syntax, e.g. ``4g``)."""
    return _env("PUSHTRAIN_CONTAINER_MEMORY", "4g")


def container_cpus() -> float:
    """CPU cap of a training container, in cores (a real CFS quota, not a relative weight)."""
    return float(_env("PUSHTRAIN_CONTAINER_CPUS", str(os.cpu_count() or 1)))


def container_pids_limit() -> int:
    return int(_env("PUSHTRAIN_CONTAINER_PIDS", "512"))


def watch_interval_minutes() -> int:
    """How often ``train_on_push`` starts a run that watches the branch (and how long its sensor waits)."""
    return int(_env("PUSHTRAIN_WATCH_INTERVAL_MINUTES", "5"))


def poke_interval_s() -> int:
    """Seconds between two looks at the remote; below 30 the scheduler has been seen to fail reschedules."""
    return int(_env("PUSHTRAIN_POKE_INTERVAL_SECONDS", "30"))


def git_timeout_s() -> float:
    """Seconds a git network call may go without a byte from the remote before it is stopped.

    Well under the poke interval, so a remote that accepts the connection and never answers fails one poke
    with a message instead of holding the sensor; a large fetch that keeps receiving is never cut short.
    """
    return float(_env("PUSHTRAIN_GIT_TIMEOUT_SECONDS", "15"))


def default_branch() -> str:
    return _env("PUSHTRAIN_BRANCH", "main")


def health_interval_s() -> int:
    """How often ``container_health`` looks for dead containers."""
    return int(_env("PUSHTRAIN_HEALTH_INTERVAL_SECONDS", "60"))


def mail_from() -> str:
    return _env("PUSHTRAIN_MAIL_FROM", "pushtrain@localhost")


def notify_to() -> str | None:
    """Send every mail here instead of to the commit's author (a team list, say)."""
    return os.environ.get("PUSHTRAIN_NOTIFY_TO", "").strip() or None


def git_email() -> str:
    """Committer address of the tuned-model commits pushtrain pushes back."""
    return _env("PUSHTRAIN_GIT_EMAIL", "pushtrain@localhost")


def image_override(name: str) -> str | None:
    """``PUSHTRAIN_IMAGE_<NAME>`` runs that image instead of the one built from this checkout."""
    return os.environ.get(f"PUSHTRAIN_IMAGE_{name.upper()}", "").strip() or None


def user_requirements_max_mb() -> float:
    """Cap on the wheels a model repository's ``requirements.txt`` adds to its image, in MB (10**6 bytes)."""
    return float(_env("PUSHTRAIN_USER_REQUIREMENTS_MAX_MB", "500"))


def training_timeout() -> timedelta:
    """``execution_timeout`` of a training task; a timed-out training is stopped, removed and not retried."""
    return timedelta(seconds=int(_env("PUSHTRAIN_TRAINING_TIMEOUT_SECONDS", "7200")))


def container_gpus() -> str | None:
    """``all`` or a count of GPUs to request through Docker ``device_requests``; unset means none."""
    return os.environ.get("PUSHTRAIN_GPUS", "").strip() or None


def dataset_max_bytes() -> int:
    """Largest data set an import accepts, in bytes of its source files (and of what it writes)."""
    return int(_env("PUSHTRAIN_DATASET_MAX_BYTES", str(4 * 1024**3)))


def dataset_max_files() -> int:
    """Most files a data set folder or archive may hold; more is refused before anything is read."""
    return int(_env("PUSHTRAIN_DATASET_MAX_FILES", "1000000"))


def archive_max_unpacked_bytes() -> int:
    """Cap on what an archive may unpack to (a decompression bomb stops here); default: the data set cap."""
    return int(_env("PUSHTRAIN_ARCHIVE_MAX_UNPACKED_BYTES", str(dataset_max_bytes())))
