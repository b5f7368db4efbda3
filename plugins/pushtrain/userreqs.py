"""Extra Python packages a model repository asks for, installed into an image derived from its kind's image.

The declaration is a ``requirements.txt`` next to the model file, read strictly: one requirement per line, a
name with an optional version specifier, extras or environment marker (``tabulate``, ``tabulate==0.9.0``,
``tabulate>=0.9``); no URLs, local paths, editable installs, includes or pip options. Each refusal names
the line and the fix.

The training images already carry their stack (TensorFlow/Keras or scikit-learn, NumPy, pandas,
matplotlib, Pillow, ...). What an image has installed, read once per image id by running its own Python,
cannot be changed by a repository: a requirement on one of those packages that its installed version does
not satisfy is refused before anything is downloaded or built, and one that it satisfies is a no-op.

The rest is resolved on the host by pip, for the image's Python and platform (wheels only: the build has
no compilers and no network), with the image's packages as constraints, into a wheelhouse under the cache
directory keyed on the requirements and the image's packages; a second push with the same requirements
downloads nothing. The wheels' total size is capped (``PUSHTRAIN_USER_REQUIREMENTS_MAX_MB``). Because the
wheelhouse is keyed on what the repository wrote, a loose requirement (``tabulate``) stays at the version
first resolved until the line or the image changes: pin a version to move on.

The derived image is the kind's image plus one layer: a container of it with no network installs the wheels
with ``pip install --no-index`` into ``/opt/venv`` and is committed with the base image's non-root user and
entrypoint (``build_derived_image`` says why this is not a ``docker build``). It is tagged
``pushtrain/user-<image>:<hash of base image id and resolved versions>``; an existing tag is reused, not
rebuilt. ``image_for_repository`` is the entry point; what it returns says which image to run and what goes
into an attempt's lineage.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from pushtrain import images, kinds, settings

REQUIREMENTS_FILE = "requirements.txt"
VENV_PYTHON = "/opt/venv/bin/python"  # where the training images' Dockerfiles put their interpreter
DERIVED_FROM_LABEL = "io.pushtrain.derived-from"
DERIVED_FROM_ID_LABEL = "io.pushtrain.derived-from-id"
USER_REQUIREMENTS_LABEL = "io.pushtrain.user-requirements"
MEGABYTE = 1_000_000
MAX_REQUIREMENTS_BYTES = 64_000
# Distributions a repository may name that the image provides under another name: the requirement is
# checked against the provider's version rather than downloading a second copy of the library.
PROVIDED_AS = {"tensorflow": "tensorflow-cpu", "sklearn": "scikit-learn"}
OLDEST_MANYLINUX_GLIBC_MINOR = 5
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
EXAMPLE_LINE = "`tabulate==0.9.0`, `tabulate>=0.9` or `tabulate`"

# The image's interpreter, platform and installed distributions, printed as JSON by a throw-away container.
_PROBE = (
    "import importlib.metadata as m, json, platform, sys\n"
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'python_full': platform.python_version(),"
    " 'machine': platform.machine(), 'libc': platform.libc_ver(),"
    " 'packages': {d.metadata['Name']: d.version for d in m.distributions()}}))\n"
)
# What the build container runs: the staged wheels are installed with pip's usual checks (every dependency
# must be there: the image's own packages or the wheels) and removed, so that the commit holds only the
# installed packages.
_INSTALL_DIR = "/build"
_INSTALL = (
    "import shutil, subprocess, sys\n"
    "code = subprocess.call([sys.executable, '-m', 'pip', 'install', '--no-index', '--find-links=/build/wheels',"
    " '--no-cache-dir', '--disable-pip-version-check', '--no-warn-script-location',"
    " '-r', '/build/requirements.txt'])\n"
    "shutil.rmtree('/build', ignore_errors=True)\n"
    "sys.exit(code)\n"
)
_COMMENT = re.compile(r"(^|\s)#.*$")
_NOT_FOUND = re.compile(r"satisfies the requirement (\S+)(?: \(from ([^)]*)\))? \(from versions: ([^)]*)\)")


class UserRequirementsError(Exception):
    """The repository's requirements cannot be installed; the message names the problem and the fix."""


def say(message: str) -> None:
    print(f"[user-image] {message}", flush=True)


# --- the declaration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredRequirement:
    """One line of the repository's requirements.txt."""

    line_number: int
    text: str  # as written, without its comment
    requirement: Requirement = field(compare=False)

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def where(self) -> str:
        return f"{REQUIREMENTS_FILE}, line {self.line_number} ({self.text!r})"

    def for_pip(self) -> str:
        """The requirement without its marker (evaluated already for the image's environment)."""
        extras = f"[{','.join(sorted(self.requirement.extras))}]" if self.requirement.extras else ""
        return f"{self.name}{extras}{self.requirement.specifier}"


def _refusal(line: str) -> str | None:
    """Why a line is not a plain requirement, with the fix; None for a line worth parsing."""
    option = line.split("=", 1)[0].split()[0]
    if line.endswith("\\"):
        return "continuation lines are not supported: write each requirement on one line"
    if option in ("-r", "--requirement", "-c", "--constraint"):
        return (
            "includes another file: pushtrain reads only the requirements.txt next to the model file; "
            "copy the requirements you need into it"
        )
    if option in ("-e", "--editable"):
        return (
            "an editable install: the image installs released wheels only; name the package and its "
            f"version instead, e.g. {EXAMPLE_LINE}"
        )
    if option in (
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "--no-index",
        "--trusted-host",
        "--pre",
    ):
        return (
            "chooses where or how pip finds packages: the platform downloads from its own configured "
            "package index; remove the line"
        )
    if line.startswith("-"):
        return f"pip options are not supported: remove the line; write only requirements, e.g. {EXAMPLE_LINE}"
    if " --" in line or " -" in line.split(";", 1)[0]:
        return (
            "per-requirement options (such as --hash) are not supported: remove them, pushtrain records "
            "the versions it resolves"
        )
    if "://" in line or line.startswith(("git+", "hg+", "svn+", "bzr+")) or " @ " in line:
        return (
            "a URL: the image installs released wheels from the package index only; name the package "
            f"and its version instead, e.g. {EXAMPLE_LINE}"
        )
    if (
        line.startswith((".", "/", "~"))
        or "/" in line.split(";", 1)[0]
        or "\\" in line
        or line.lower().endswith((".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2"))
    ):
        return (
            "a local path: the image installs released wheels from the package index only; publish the "
            "package and name it with its version, or move the code into the model file"
        )
    return None


def parse_requirements(text: str) -> list[DeclaredRequirement]:
    """The requirements of a requirements.txt, or UserRequirementsError for the first line that is refused."""
    declared: list[DeclaredRequirement] = []
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        where = f"{REQUIREMENTS_FILE}, line {number} ({line!r})"
        problem = _refusal(line)
        if problem:
            raise UserRequirementsError(f"{where}: {problem}")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise UserRequirementsError(
                f"{where}: not a requirement ({exc}); write one package per line, e.g. {EXAMPLE_LINE}"
            ) from None
        if requirement.url:
            raise UserRequirementsError(
                f"{where}: a URL: the image installs released wheels from the package "
                f"index only; name the package and its version, e.g. {EXAMPLE_LINE}"
            )
        item = DeclaredRequirement(number, line, requirement)
        if item.name in first_line_of:
            raise UserRequirementsError(
                f"{where}: {requirement.name} is named on line {first_line_of[item.name]} "
                "too: merge the two lines into one"
            )
        first_line_of[item.name] = number
        declared.append(item)
    return declared


def requirements_file(model_file: Path) -> Path:
    """Where a repository declares its packages: ``requirements.txt`` in the model file's folder."""
    return Path(model_file).parent / REQUIREMENTS_FILE


def read_requirements(model_file: Path) -> list[DeclaredRequirement]:
    """The declared requirements of the repository holding ``model_file``; none without a requirements.txt.

    The file is the repository's, so it is read with care: a symbolic link (it could point at a host file
    whose lines would end up in messages), a large file or one that is not UTF-8 text is refused.
    """
    path = requirements_file(model_file)
    if path.is_symlink():
        raise UserRequirementsError(
            f"{REQUIREMENTS_FILE} next to the model file is a symbolic link: commit the file itself"
        )
    if not path.is_file():
        return []
    if path.stat().st_size > MAX_REQUIREMENTS_BYTES:
        raise UserRequirementsError(
            f"{REQUIREMENTS_FILE} is larger than {MAX_REQUIREMENTS_BYTES // 1000} kB: "
            "list only the packages the model file imports"
        )
    try:
        return parse_requirements(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserRequirementsError(f"{REQUIREMENTS_FILE} is not UTF-8 text: save it as UTF-8") from None


# --- the image's side -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What a training image runs: its Python, its platform and every installed distribution."""

    image: str  # the training image's name in the kinds table (tensorflow, sklearn)
    python: str  # "3.11"
    python_full: str  # "3.11.2"
    machine: str  # "x86_64"
    glibc: tuple[int, int]
    packages: Mapping[str, str]  # canonical name -> version

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values inside the image (the host's may differ)."""
        return {
            **default_environment(),
            "python_version": self.python,
            "python_full_version": self.python_full,
            "platform_machine": self.machine,
            "sys_platform": "linux",
            "platform_system": "Linux",
            "os_name": "posix",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
        }

    def platform_tags(self) -> list[str]:
        """Wheel platform tags the image's glibc and architecture accept, newest first."""
        major, newest = self.glibc
        tags = []
        for minor in range(newest, OLDEST_MANYLINUX_GLIBC_MINOR - 1, -1):
            tags.append(f"manylinux_{major}_{minor}_{self.machine}")
            if minor in LEGACY_MANYLINUX:
                tags.append(f"{LEGACY_MANYLINUX[minor]}_{self.machine}")
        return tags

    def describe_platform(self) -> str:
        return f"CPython {self.python} on Linux {self.machine} (glibc {self.glibc[0]}.{self.glibc[1]})"


def probe_image(image_name: str, reference: str, reference_id: str) -> ImageFacts:
    """Run the image's Python once per image id to list what it has; later calls read the cached answer."""
    cache = settings.cache_dir() / "user-images" / f"probe-{reference_id.removeprefix('sha256:')[:16]}.json"
    if cache.exists():
        facts = json.loads(cache.read_text())
    else:
        result = subprocess.run(
            [
                *images.docker_cli(),
                "run",
                "--rm",
                "--network",
                "none",
                "--read-only",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--entrypoint",
                VENV_PYTHON,
                reference,
                "-c",
                _PROBE,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise images.ImageBuildError(
                f"could not list the packages of {reference}: {result.stderr.strip()}"
            )
        facts = json.loads(result.stdout)
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(facts, indent=1, sort_keys=True))
        temporary.replace(cache)
    libc, libc_version = facts["libc"]
    if libc != "glibc":
        raise images.ImageBuildError(
            f"{reference} is not a glibc image ({libc!r}): user requirements need manylinux wheels"
        )
    major, minor = (int(part) for part in libc_version.split(".")[:2])
    return ImageFacts(
        image=image_name,
        python=facts["python"],
        python_full=facts["python_full"],
        machine=facts["machine"],
        glibc=(major, minor),
        packages={canonicalize_name(name): version for name, version in facts["packages"].items()},
    )


def requirements_to_add(declared: list[DeclaredRequirement], facts: ImageFacts) -> list[DeclaredRequirement]:
    """The requirements the image does not satisfy already; refuses any that would change the image.

    A requirement whose marker is false inside the image is dropped, as pip would. One on an installed
    distribution is a no-op when the installed version satisfies it, and refused otherwise. Extras on an
    installed distribution stay (their dependencies are new; the distribution itself keeps its version).
    """
    environment = facts.marker_environment()
    to_add = []
    for item in declared:
        marker = item.requirement.marker
        if marker is not None and not marker.evaluate(environment):
            continue
        installed_as = item.name if item.name in facts.packages else PROVIDED_AS.get(item.name)
        if installed_as not in facts.packages:
            to_add.append(item)
            continue
        version = facts.packages[installed_as]
        provided = f" (provided there by {installed_as})" if installed_as != item.name else ""
        if not item.requirement.specifier.contains(version, prereleases=True):
            raise UserRequirementsError(
                f"{item.where}: the {facts.image} image has {installed_as}=={version} built in{provided}, which "
                f"this requirement does not allow; a repository cannot change the image's packages. Remove the "
                f"line, or allow {version} (e.g. `{item.requirement.name}>={version}` or no version at all)"
            )
        if item.requirement.extras:
            if installed_as != item.name:
                raise UserRequirementsError(
                    f"{item.where}: the {facts.image} image provides {item.requirement.name} as "
                    f"{installed_as}=={version}; extras of it cannot be added: remove the extras"
                )
            to_add.append(item)
    return to_add


# --- resolution and the wheelhouse ----------------------------------------------------------------------


@dataclass(frozen=True)
class Wheelhouse:
    """The wheels of one resolution: what the derived image installs over its base."""

    path: Path
    resolved: Mapping[str, str]  # canonical name -> version, only distributions the image does not have
    wheels: Mapping[str, int]  # file name -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.wheels.values())


def _pip(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *arguments, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def _target_options(facts: ImageFacts) -> list[str]:
    options = ["--only-binary=:all:", "--python-version", facts.python, "--implementation", "cp"]
    for tag in facts.platform_tags():
        options += ["--platform", tag]
    return options


def wheelhouse_key(to_add: list[DeclaredRequirement], facts: ImageFacts) -> str:
    """Same requirements, same image packages and platform: the same wheelhouse (and no new download)."""
    document = {
        "requirements": sorted(item.for_pip() for item in to_add),
        "python": facts.python,
        "platforms": facts.platform_tags(),
        "image_packages": sorted(facts.packages.items()),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def _explain_pip_failure(output: str, facts: ImageFacts, workdir: Path) -> str:
    """A pip failure (its stdout and stderr) in the user's terms: which package, why, and what to change."""
    missing = _NOT_FOUND.search(output)
    if missing:
        requirement, needed_by, versions = missing.groups()
        name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]
        via = f" (needed by {needed_by})" if needed_by else ""
        if versions.strip() not in ("", "none"):
            newest = ", ".join(versions.split(", ")[-8:])
            return (
                f"no wheel of {requirement}{via} for {facts.describe_platform()}; the newest versions with "
                f"such a wheel: {newest}. Choose one of them"
            )
        if "Available versions" in _pip("index", "versions", name, cwd=workdir).stdout:
            return (
                f"{name}{via} has no wheel for {facts.describe_platform()}, only a source distribution: the "
                "image build installs wheels only (it has no compilers and no network). Choose a version or "
                "a package that publishes wheels for this platform, or drop the requirement"
            )
        return f"no package called {name}{via} on the package index: check the spelling"
    if "ResolutionImpossible" in output:
        causes = output.split("The conflict is caused by:", 1)[-1].split("\n\n", 1)[0].splitlines()
        detail = "; ".join(
            line.strip().replace("The user requested (constraint)", "the image has")
            for line in causes
            if line.strip() and "ERROR:" not in line
        )
        return (
            f"the requirements cannot be installed beside the {facts.image} image's packages, which keep "
            f"their versions: {detail}. Choose versions that work with them (often a newer release)"
        )
    return (
        f"pip could not resolve the requirements (is the package index reachable from this host?): "
        f"{output.strip()[-2000:]}"
    )


def resolve(to_add: list[DeclaredRequirement], facts: ImageFacts, workdir: Path) -> dict[str, str]:
    """Resolve the requirements for the image's platform; return the new distributions {name: version}.

    The image's packages are pip constraints, so the resolver cannot choose another NumPy (or anything else
    the image has); a ``--dry-run`` resolution reads only metadata, so none of the image's wheels is fetched.
    """
    constraints = workdir / "image-packages.txt"
    constraints.write_text(
        "".join(f"{name}=={version}\n" for name, version in sorted(facts.packages.items()))
    )
    requested = workdir / REQUIREMENTS_FILE
    requested.write_text("".join(f"{item.for_pip()}\n" for item in to_add))
    report = workdir / "resolution.json"
    result = _pip(
        "install",
        "--dry-run",
        "--ignore-installed",
        "--progress-bar",
        "off",
        "--report",
        str(report),
        "--target",
        str(workdir / "unused-target"),
        *_target_options(facts),
        "-c",
        str(constraints),
        "-r",
        str(requested),
        cwd=workdir,
    )
    if result.returncode != 0:
        explanation = _explain_pip_failure(result.stdout + result.stderr, facts, workdir)
        raise UserRequirementsError(f"{REQUIREMENTS_FILE}: {explanation}")
    installs = json.loads(report.read_text())["install"]
    resolved = {
        canonicalize_name(item["metadata"]["name"]): str(Version(item["metadata"]["version"]))
        for item in installs
    }
    return {name: version for name, version in sorted(resolved.items()) if name not in facts.packages}


def _read_wheelhouse(path: Path) -> Wheelhouse | None:
    try:
        record = json.loads((path / "wheelhouse.json").read_text())
    except (OSError, ValueError):
        return None
    return Wheelhouse(path, record["resolved"], record["wheels"])


def ensure_wheelhouse(
    to_add: list[DeclaredRequirement], facts: ImageFacts, log: Callable[[str], None] = say
) -> Wheelhouse:
    """Resolve and download the new wheels once per key; a complete wheelhouse has its ``wheelhouse.json``."""
    root = settings.cache_dir() / "user-wheelhouse"
    path = root / wheelhouse_key(to_add, facts)
    existing = _read_wheelhouse(path)
    if existing is not None:
        return existing
    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{path.name}-", dir=root))
    try:
        log(f"resolving {', '.join(item.for_pip() for item in to_add)} for {facts.describe_platform()}")
        resolved = resolve(to_add, facts, workdir)
        wheels_dir = workdir / "wheels"
        if resolved:
            result = _pip(
                "download",
                "--no-deps",
                "--quiet",
                *_target_options(facts),
                "-d",
                str(wheels_dir),
                *(f"{name}=={version}" for name, version in resolved.items()),
                cwd=workdir,
            )
            if result.returncode != 0:
                raise UserRequirementsError(
                    f"{REQUIREMENTS_FILE}: {_explain_pip_failure(result.stdout + result.stderr, facts, workdir)}"
                )
        wheels = (
            {wheel.name: wheel.stat().st_size for wheel in sorted(wheels_dir.glob("*.whl"))}
            if wheels_dir.exists()
            else {}
        )
        _check_wheels_match(resolved, wheels)
        staged = workdir / "staged"
        staged.mkdir()
        for name in wheels:
            (wheels_dir / name).rename(staged / name)
        (staged / "wheelhouse.json").write_text(
            json.dumps({"resolved": resolved, "wheels": wheels}, indent=1)
        )
        try:
            staged.rename(path)
        except OSError:  # another process finished the same wheelhouse first: keep theirs
            pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _read_wheelhouse(path)


def _check_wheels_match(resolved: Mapping[str, str], wheels: Mapping[str, int]) -> None:
    found = {}
    for wheel in wheels:
        try:
            name, version, _build, _tags = parse_wheel_filename(wheel)
        except InvalidWheelFilename:
            raise UserRequirementsError(f"pip downloaded a file that is not a wheel: {wheel}") from None
        found[canonicalize_name(name)] = str(version)
    if found != dict(resolved):
        raise UserRequirementsError(
            f"the downloaded wheels {found} differ from the resolution {dict(resolved)}: "
            "a pip or index problem; try again"
        )


def check_size(wheelhouse: Wheelhouse, cap_mb: float) -> None:
    """Refuse wheels whose total size is over the cap, naming the largest."""
    if wheelhouse.total_bytes <= cap_mb * MEGABYTE:
        return
    largest = sorted(wheelhouse.wheels.items(), key=lambda item: -item[1])[:3]
    listing = ", ".join(f"{name} ({size / MEGABYTE:.1f} MB)" for name, size in largest)
    raise UserRequirementsError(
        f"{REQUIREMENTS_FILE}: the packages it adds are {wheelhouse.total_bytes / MEGABYTE:.1f} MB of wheels, over "
        f"the cap of {cap_mb:g} MB (largest: {listing}). Drop what the model does not need, or have the "
        "platform raise PUSHTRAIN_USER_REQUIREMENTS_MAX_MB"
    )


# --- the derived image ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserImage:
    """The image an attempt of a repository runs, and what it adds over the kind's image.

    Without a requirements.txt (or with one the image satisfies already) ``tag`` is the kind's image itself
    and ``resolved`` is empty.
    """

    tag: str
    image_id: str | None
    base_tag: str
    base_image_id: str | None
    declared: tuple[str, ...] = ()  # the requirements.txt lines, as written
    resolved: Mapping[str, str] = field(default_factory=dict)  # added distributions {canonical name: version}
    wheels_bytes: int = 0
    built: bool = False  # whether this call built the image (False: reused, or no derived image needed)

    @property
    def derived(self) -> bool:
        return self.tag != self.base_tag

    def lineage(self) -> dict[str, Any]:
        """The attempt's lineage fields: the image it ran and the packages the repository added to it."""
        return {
            "image": self.tag,
            "image_id": self.image_id,
            "base_image": self.base_tag,
            "base_image_id": self.base_image_id,
            "user_requirements": {
                "declared": list(self.declared),
                "resolved": dict(self.resolved),
                "wheels_bytes": self.wheels_bytes,
            },
        }


def derived_tag(facts: ImageFacts, base_image_id: str, resolved: Mapping[str, str]) -> str:
    """``pushtrain/user-<image>:<key>``: the key hashes the base image id, the versions and the install recipe."""
    digest = hashlib.sha256()
    digest.update(base_image_id.encode() + b"\0" + _INSTALL.encode())
    for name, version in sorted(resolved.items()):
        digest.update(f"\0{name}=={version}".encode())
    return f"pushtrain/user-{facts.image}:{digest.hexdigest()[:12]}"


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    """One process at a time resolves and builds a given image on this host; the others then reuse it."""
    directory = settings.cache_dir() / "user-images"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stage_wheels(wheelhouse: Wheelhouse) -> Path:
    """A folder with the wheels (hard links where possible) and the exact list to install."""
    (settings.cache_dir() / "build").mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="user-", dir=settings.cache_dir() / "build"))
    (stage / REQUIREMENTS_FILE).write_text(
        "".join(f"{name}=={version}\n" for name, version in sorted(wheelhouse.resolved.items()))
    )
    (stage / "wheels").mkdir()
    for name in wheelhouse.wheels:
        try:
            os.link(wheelhouse.path / name, stage / "wheels" / name)
        except OSError:  # the cache and build folders on different file systems
            shutil.copy2(wheelhouse.path / name, stage / "wheels" / name)
    return stage


def _docker(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([*images.docker_cli(), *arguments], capture_output=True, text=True)


def _dockerfile_change(instruction: str, value: Any) -> str:
    return f"{instruction} {json.dumps(value)}"


def build_derived_image(
    tag: str, base_tag: str, base_image_id: str, wheelhouse: Wheelhouse, log: Callable[[str], None] = say
) -> str:
    """Install the wheelhouse into a container of the base image, offline, and commit it as ``tag``.

    The container runs ``pip install --no-index`` as root into ``/opt/venv`` with no network, its
    ``/tmp`` a tmpfs and the staged wheels removed before the commit, which then restores the base image's
    user, entrypoint and command: the derived image differs from its base by one layer of installed packages.

    Not ``docker build``: the classic builder commits every instruction, metadata ones included, and on a
    storage driver without a native diff (fuse-overlayfs) each commit walks the whole image. A 14-step
    Dockerfile took 494 s for one 40 kB wheel on a busy 2-core host where this takes 30 s.
    """
    base_config = json.loads(
        _docker("image", "inspect", "--format", "{{json .Config}}", base_tag).stdout or "{}"
    )
    if not base_config:
        raise images.ImageBuildError(f"cannot inspect {base_tag}: run `make images`")
    stage = _stage_wheels(wheelhouse)
    container = f"pushtrain-build-{uuid.uuid4().hex[:12]}"
    versions = json.dumps(dict(wheelhouse.resolved), sort_keys=True, separators=(",", ":"))
    log(f"building {tag} on {base_tag}: {', '.join(f'{n}=={v}' for n, v in wheelhouse.resolved.items())}")
    started = time.monotonic()
    try:
        steps = [
            (
                "create",
                [
                    "create",
                    "--name",
                    container,
                    "--network",
                    "none",
                    "--user",
                    "0:0",
                    "--tmpfs",
                    "/tmp",
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges",
                    "--entrypoint",
                    VENV_PYTHON,
                    base_tag,
                    "-c",
                    _INSTALL,
                ],
            ),
            ("copy the wheels into", ["cp", f"{stage}/.", f"{container}:{_INSTALL_DIR}"]),
            ("install the wheels in", ["start", "--attach", container]),
            (
                "commit",
                [
                    "commit",
                    "--change",
                    f"USER {base_config.get('User') or 'root'}",
                    "--change",
                    _dockerfile_change("ENTRYPOINT", base_config.get("Entrypoint") or []),
                    "--change",
                    _dockerfile_change("CMD", base_config.get("Cmd") or []),
                    "--change",
                    f"LABEL {DERIVED_FROM_LABEL}={json.dumps(base_tag)}",
                    "--change",
                    f"LABEL {DERIVED_FROM_ID_LABEL}={json.dumps(base_image_id)}",
                    "--change",
                    f"LABEL {USER_REQUIREMENTS_LABEL}={json.dumps(versions)}",
                    container,
                    tag,
                ],
            ),
        ]
        for doing, arguments in steps:
            result = _docker(*arguments)
            if result.returncode != 0:
                raise images.ImageBuildError(
                    f"could not {doing} the build container of {tag}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
                )
    finally:
        _docker("rm", "--force", container)
        shutil.rmtree(stage, ignore_errors=True)
    log(f"built {tag} in {time.monotonic() - started:.1f}s")
    built_id = images.image_id(tag)
    if built_id is None:
        raise images.ImageBuildError(f"the commit of {tag} reported success but the image is not there")
    return built_id


def image_for_repository(kind: str, model_file: Path, *, log: Callable[[str], None] = say) -> UserImage:
    """The image to train and evaluate ``model_file`` in: its kind's image, or one derived for its packages.

    Reads ``requirements.txt`` next to the model file. Raises UserRequirementsError (the message names the
    line or package and the fix) for a refused line, a requirement that would change the image's packages,
    a package without a wheel for the image's platform, an unresolvable set, or wheels over the size cap;
    all of them before anything is built. Raises ``images.ImageBuildError`` when the kind's image is not
    built or the build fails.
    """
    image_name = kinds.kind(kind).image
    base_tag = images.image_for_kind(kind)
    declared = read_requirements(model_file)
    if not declared:
        return UserImage(
            tag=base_tag,
            image_id=images.image_id(base_tag),
            base_tag=base_tag,
            base_image_id=images.image_id(base_tag),
        )
    base_image_id = images.image_id(base_tag)
    if base_image_id is None:
        raise images.ImageBuildError(f"image {base_tag} for kind {kind!r} is not built: run `make images`")
    lines = tuple(item.text for item in declared)
    facts = probe_image(image_name, base_tag, base_image_id)
    to_add = requirements_to_add(declared, facts)
    if not to_add:
        log(f"the {image_name} image satisfies {REQUIREMENTS_FILE} already: {', '.join(lines)}")
        return UserImage(
            tag=base_tag,
            image_id=base_image_id,
            base_tag=base_tag,
            base_image_id=base_image_id,
            declared=lines,
        )
    with _lock(wheelhouse_key(to_add, facts)):
        wheelhouse = ensure_wheelhouse(to_add, facts, log)
        check_size(wheelhouse, settings.user_requirements_max_mb())
        if not wheelhouse.resolved:  # only extras whose dependencies the image has already
            return UserImage(
                tag=base_tag,
                image_id=base_image_id,
                base_tag=base_tag,
                base_image_id=base_image_id,
                declared=lines,
            )
        tag = derived_tag(facts, base_image_id, wheelhouse.resolved)
        image_id = images.image_id(tag)
        built = image_id is None
        if built:
            image_id = build_derived_image(tag, base_tag, base_image_id, wheelhouse, log)
        else:
            log(f"{tag} is up to date")
    return UserImage(
        tag=tag,
        image_id=image_id,
        base_tag=base_tag,
        base_image_id=base_image_id,
        declared=lines,
        resolved=dict(wheelhouse.resolved),
        wheels_bytes=wheelhouse.total_bytes,
        built=built,
    )
