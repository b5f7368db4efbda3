"""Build the training images without a registry, skipping what is already built.

Three steps, each cached:

1. **Base image.** ``PUSHTRAIN_BASE_IMAGE`` if set; else the public ``python:3.11-slim`` if it is present or
   can be pulled; else a Debian bookworm root filesystem made with ``debootstrap`` from the host's own
   mirror and loaded with ``docker import`` (the machines this project grew up on have no registry).
2. **Wheelhouse.** ``pip download`` on the host, once per requirements file, into the cache directory:
   ``docker build`` then installs with ``--no-index`` and needs no network.
3. **Image.** Tagged ``pushtrain/<name>:<content key>``, where the key hashes the Dockerfile, the pinned
   requirements, the source that goes into the image (the runner and the kinds table) and the base image
   id. A tag that exists is not rebuilt, so a second ``make images`` takes seconds, and the DAGs run
   exactly the image that matches the checked-out code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pushtrain import __version__, kinds, settings

IMAGES_DIR = settings.PROJECT_ROOT / "images"
PACKAGE_SOURCE = settings.PROJECT_ROOT / "plugins" / "pushtrain"
RUNNER_SOURCE = PACKAGE_SOURCE / "runner"
IMAGE_NAMES = tuple(dict.fromkeys(kind.image for kind in kinds.KINDS.values()))
LOCAL_BASE_IMAGE = "pushtrain/base:bookworm"
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,ca-certificates"
CONTENT_KEY_LABEL = "io.pushtrain.content-key"


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message says which and how to fix it."""


def say(message: str) -> None:
    print(f"[images] {message}", flush=True)


def docker_cli() -> list[str]:
    """The docker command aimed at the engine every other part of pushtrain uses."""
    return ["docker", "--host", settings.docker_url()]


def _docker(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run([*docker_cli(), *args], capture_output=capture, text=True)
    except FileNotFoundError:
        raise ImageBuildError("the docker command is not installed: install Docker Engine") from None
    if check and result.returncode != 0:
        raise ImageBuildError(f"docker {' '.join(args[:3])} failed: {(result.stderr or '').strip()}")
    return result


def image_id(reference: str) -> str | None:
    result = _docker("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


# --- base image -----------------------------------------------------------------------------------------


def ensure_base_image() -> str:
    """Return the base image reference to build on, making the local one if nothing else is available."""
    override = settings.base_image_override()
    if override:
        if not image_id(override) and _docker("pull", override, check=False).returncode != 0:
            raise ImageBuildError(f"PUSHTRAIN_BASE_IMAGE={override} is neither present nor pullable")
        return override
    public = settings.public_base_image()
    if image_id(public):
        return public
    if image_id(LOCAL_BASE_IMAGE):
        return LOCAL_BASE_IMAGE
    say(f"trying to pull {public} ...")
    if _docker("pull", public, check=False).returncode == 0:
        return public
    say(f"no registry reachable: building {LOCAL_BASE_IMAGE} with debootstrap (about a minute)")
    build_local_base_image()
    return LOCAL_BASE_IMAGE


def build_local_base_image() -> None:
    if shutil.which("debootstrap") is None:
        if os.geteuid() != 0:
            raise ImageBuildError(
                "debootstrap is missing: run `sudo apt-get install debootstrap`, "
                "or set PUSHTRAIN_BASE_IMAGE to an image you have"
            )
        say("installing debootstrap with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "debootstrap"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    mirror = settings.debian_mirror()
    rootfs = settings.cache_dir() / "base-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    say(f"debootstrap bookworm from {mirror}")
    started = time.monotonic()
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={DEBOOTSTRAP_PACKAGES}",
            "bookworm",
            str(rootfs),
            mirror,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ImageBuildError(
            f"debootstrap failed (mirror {mirror}; set PUSHTRAIN_DEBIAN_MIRROR to change "
            f"it): {result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    say(f"debootstrap done in {time.monotonic() - started:.0f}s; docker import -> {LOCAL_BASE_IMAGE}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        [*docker_cli(), "import", "-c", 'CMD ["/bin/bash"]', "-", LOCAL_BASE_IMAGE],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
    )
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    if imported.returncode != 0:
        raise ImageBuildError(f"docker import failed: {imported.stderr.strip()}")


# --- wheelhouse -----------------------------------------------------------------------------------------


def _platform_tags() -> list[str]:
    machine = platform.machine()
    glibc = [
        "manylinux_2_28",
        "manylinux_2_27",
        "manylinux_2_17",
        "manylinux2014",
        "manylinux2010",
        "manylinux_2_12",
        "manylinux1",
        "manylinux_2_5",
    ]
    return [f"{tag}_{machine}" for tag in glibc]


def ensure_wheelhouse(name: str) -> Path:
    """Download the image's pinned wheels once; the folder is keyed on the requirements' content."""
    requirements = IMAGES_DIR / name / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    wheelhouse = settings.cache_dir() / "wheelhouse" / f"{name}-{key}"
    complete = wheelhouse / ".complete"
    if complete.exists():
        return wheelhouse
    say(f"downloading wheels for {name} into {wheelhouse} (once; ~{_expected_size(name)})")
    wheelhouse.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "-d",
        str(wheelhouse),
        "-r",
        str(requirements),
    ]
    for tag in _platform_tags():
        command += ["--platform", tag]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError(f"pip download for {name} failed (is PyPI reachable?): {result.stderr[-3000:]}")
    complete.write_text(key + "\n")
    return wheelhouse


def _expected_size(name: str) -> str:
    return {"tensorflow": "330 MB", "sklearn": "70 MB"}.get(name, "?")


# --- images ---------------------------------------------------------------------------------------------


def _image_source_files() -> list[Path]:
    """The package's files that go into every image: the runner and the one module it imports besides."""
    return [PACKAGE_SOURCE / "__init__.py", PACKAGE_SOURCE / "kinds.py", *sorted(RUNNER_SOURCE.rglob("*.py"))]


def source_key(name: str) -> str:
    """Hash of everything of ours that goes into an image: Dockerfile, requirements, runner and kinds table."""
    digest = hashlib.sha256()
    inputs = [
        IMAGES_DIR / name / "Dockerfile",
        IMAGES_DIR / name / "requirements.txt",
        *_image_source_files(),
    ]
    for path in inputs:
        digest.update(str(path.relative_to(settings.PROJECT_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def image_reference(name: str) -> str:
    """The image the DAGs run for ``name``: ``PUSHTRAIN_IMAGE_<NAME>`` or the tag of the current source."""
    return settings.image_override(name) or f"pushtrain/{name}:{source_key(name)[:12]}"


def image_for_kind(kind: str) -> str:
    return image_reference(kinds.kind(kind).image)


def _stage_context(name: str, wheelhouse: Path) -> Path:
    """A fresh build context (per build: two concurrent builds never share one), removed after the build."""
    (settings.cache_dir() / "build").mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=settings.cache_dir() / "build"))
    shutil.copy2(IMAGES_DIR / name / "Dockerfile", context / "Dockerfile")
    shutil.copy2(IMAGES_DIR / name / "requirements.txt", context / "requirements.txt")
    for path in _image_source_files():
        target = context / "pushtrain" / path.relative_to(PACKAGE_SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (context / "wheels").mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        os.link(wheel, context / "wheels" / wheel.name)  # same file system: no copy of 330 MB
    return context


def ensure_image(name: str, base_image: str | None = None) -> str:
    """Build ``pushtrain/<name>`` unless the tag for the current source is already there; return the tag."""
    if name not in IMAGE_NAMES:
        raise ImageBuildError(f"unknown image {name!r}: choose one of {', '.join(IMAGE_NAMES)}")
    tag = f"pushtrain/{name}:{source_key(name)[:12]}"
    if image_id(tag):
        say(f"{tag} is up to date")
        return tag
    base_image = base_image or ensure_base_image()
    wheelhouse = ensure_wheelhouse(name)
    context = _stage_context(name, wheelhouse)
    say(f"building {tag} on {base_image} (a few minutes the first time)")
    started = time.monotonic()
    build = subprocess.run(
        [
            *docker_cli(),
            "build",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--build-arg",
            f"CONTENT_KEY={source_key(name)}",
            "--build-arg",
            f"PUSHTRAIN_VERSION={__version__}",
            "-t",
            tag,
            "-t",
            f"pushtrain/{name}:latest",
            str(context),
        ],
        capture_output=True,
        text=True,
    )
    shutil.rmtree(context, ignore_errors=True)
    if build.returncode != 0:
        raise ImageBuildError(
            f"docker build of {name} failed:\n{build.stdout[-4000:]}\n{build.stderr[-2000:]}"
        )
    say(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def ensure_all_images(names: tuple[str, ...] = IMAGE_NAMES) -> dict[str, str]:
    base_image = None
    tags = {}
    for name in names:
        tag = f"pushtrain/{name}:{source_key(name)[:12]}"
        if not image_id(tag) and base_image is None:
            base_image = ensure_base_image()
        tags[name] = ensure_image(name, base_image)
    return tags
