"""Every path and tunable of pushtrain, read from environment variables with defaults.

One place, so a deployment changes behaviour through its environment (``.env``, docker-compose) and
the code never hard-codes a location. Functions, not constants: tests and the CLI change the
environment after import.
"""

from __future__ import annotations

import os
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


def debian_mirror() -> str:
    """The Debian mirror for a debootstrapped base: ``PUSHTRAIN_DEBIAN_MIRROR``, else the host's apt source."""
    configured = os.environ.get("PUSHTRAIN_DEBIAN_MIRROR", "").strip()
    if configured:
        return configured
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and words[-2] != "bookworm-security":
                uri = next((w for w in words[1:] if "://" in w), None)
                if uri and uri.rstrip("/").endswith("/debian"):
                    return uri
    return "http://deb.debian.org/debian"


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


def container_gpus() -> str | None:
    """``all`` or a count of GPUs to request through Docker ``device_requests``; unset means none."""
    return os.environ.get("PUSHTRAIN_GPUS", "").strip() or None
