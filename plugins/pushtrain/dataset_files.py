"""Reading a user's data without trusting it: folders, archives, symbolic links and size caps.

Every data set import starts here. A folder is walked without ever leaving it (a symbolic link may point
only inside the folder), an archive is unpacked member by member into a private folder with caps on the
number of files and the bytes it unpacks to (``pushtrain.settings``), and the files an import uses are
listed with their paths relative to the data root, so that hashing and copying read one file at a time.

Archives may hold only regular files and folders: links, devices and absolute or ``..`` member names are
refused, whatever they point at, because an archive has no business linking anywhere.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pushtrain import settings

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Files a desktop or an archiver leaves behind; skipped without a warning of their own.
CLUTTER = {"__MACOSX", "Thumbs.db", "desktop.ini"}
COPY_CHUNK = 1 << 20


class DatasetError(Exception):
    """Bad input to a data set import: the message names the file and says what to do. Earlier versions
    of the data set, and everything else in the store, are left as they were."""


@dataclass(frozen=True)
class Limits:
    """Caps on one import; from ``PUSHTRAIN_DATASET_MAX_BYTES``, ``..._MAX_FILES`` and
    ``PUSHTRAIN_ARCHIVE_MAX_UNPACKED_BYTES``."""

    max_bytes: int
    max_files: int
    max_unpacked_bytes: int

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            settings.dataset_max_bytes(), settings.dataset_max_files(), settings.archive_max_unpacked_bytes()
        )


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file an import may use. Plain strings, not Path objects: an import handles every file of a large
    folder several times, and pathlib's parsing would cost more than the reading."""

    relative: str  # "/"-separated path under the data root: what the source hash and the messages name
    path: str  # where to read it (for a symbolic link inside the root: the link, which stays inside)
    size: int

    @property
    def parts(self) -> list[str]:
        return self.relative.split("/")

    def strip_first(self) -> SourceFile:
        return SourceFile(self.relative.split("/", 1)[1], self.path, self.size)


@dataclass
class SourceTree:
    """Every regular file under a data root, sorted by relative path, and what was skipped and why."""

    root: Path
    files: list[SourceFile]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def archive_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def safe_relative(name: str, where: str) -> PurePosixPath:
    """A member or folder name as a relative path that stays inside its root, else DatasetError."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if "\0" in cleaned or path.is_absolute() or (len(cleaned) > 1 and cleaned[1] == ":"):
        raise DatasetError(
            f"{where}: {name!r} is an absolute path; paths must be relative to the data "
            "folder (re-create the archive from inside the folder)"
        )
    if ".." in path.parts:
        raise DatasetError(
            f"{where}: {name!r} escapes the data folder with '..'; paths must stay inside "
            "it (re-create the archive from inside the folder)"
        )
    return PurePosixPath(*[part for part in path.parts if part not in ("", ".")])


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def walk(root: Path, limits: Limits) -> SourceTree:
    """List every regular file under ``root``; a symbolic link must resolve inside ``root``."""
    root = Path(root).resolve()
    tree = SourceTree(root, [])
    # (folder to read, its path relative to root, the real folders above it: a link loop shows there). The
    # root is resolved and only links are followed, so a folder's own path is its real path.
    pending: list[tuple[str, str, frozenset[str]]] = [(str(root), "", frozenset({str(root)}))]
    while pending:
        folder, relative_folder, ancestors = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise DatasetError(
                f"cannot read the folder {folder}: {exc.strerror}; make it readable by the workers"
            ) from None
        for entry in entries:
            relative = f"{relative_folder}/{entry.name}" if relative_folder else entry.name
            if entry.name.startswith(".") or entry.name in CLUTTER:
                tree.ignored.append((relative, "hidden or system file"))
                continue
            path = entry.path
            if entry.is_symlink():
                target = Path(path).resolve()
                if not _is_within(target, root):
                    raise DatasetError(
                        f"{relative} is a symbolic link to {target}, outside the data folder "
                        f"{root}: copy what it points to into the folder instead of linking"
                    )
                if not target.exists():
                    raise DatasetError(
                        f"{relative} is a symbolic link to {target}, which does not exist: "
                        "remove the link or restore its target"
                    )
                if target.is_dir():
                    if str(target) in ancestors:
                        raise DatasetError(
                            f"{relative} is a symbolic link to a folder that contains it (a "
                            "loop): remove the link"
                        )
                    pending.append((str(target), relative, ancestors | {str(target)}))
                    continue
                info = target.stat()
            else:
                info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                pending.append((path, relative, ancestors | {path}))
            elif stat.S_ISREG(info.st_mode):
                tree.files.append(SourceFile(relative, path, info.st_size))
                if len(tree.files) > limits.max_files:
                    raise DatasetError(
                        f"{root} holds more than {limits.max_files} files "
                        "(PUSHTRAIN_DATASET_MAX_FILES): import a smaller set or raise the cap"
                    )
            else:
                tree.ignored.append((relative, "not a regular file"))
    tree.files.sort(key=lambda f: f.relative)
    tree.ignored.sort()
    return tree


def unpack(archive: Path, into: Path, limits: Limits) -> None:
    """Unpack ``archive`` (.zip, .tar.gz, .tgz, .tar) into the empty folder ``into``, within the caps."""
    kind = archive_format(archive)
    into.mkdir(parents=True)
    budget = _UnpackBudget(archive, limits)
    try:
        if kind == "zip":
            _unpack_zip(archive, into, budget)
        elif kind == "tar":
            _unpack_tar(archive, into, budget)
        else:
            raise DatasetError(f"{archive} is not an archive pushtrain reads: use .zip, .tar.gz, .tgz, .tar")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as exc:
        raise DatasetError(
            f"{archive} is not a readable {kind} archive ({exc}): it may be truncated or "
            "corrupt; create it again"
        ) from None


@dataclass
class _UnpackBudget:
    archive: Path
    limits: Limits
    files: int = 0
    bytes: int = 0

    def count_member(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise DatasetError(
                f"{self.archive} holds more than {self.limits.max_files} members "
                "(PUSHTRAIN_DATASET_MAX_FILES): import a smaller set or raise the cap"
            )

    def count_bytes(self, count: int, member: str) -> None:
        self.bytes += count
        if self.bytes > self.limits.max_unpacked_bytes:
            raise DatasetError(
                f"{self.archive} unpacks to more than {human_bytes(self.limits.max_unpacked_bytes)} "
                f"(reached at {member}; PUSHTRAIN_ARCHIVE_MAX_UNPACKED_BYTES): a decompression bomb, or a "
                "data set larger than this deployment accepts; raise the cap if the data is genuine"
            )


def _member_target(into: Path, name: str, archive: Path) -> Path | None:
    relative = safe_relative(name, str(archive))
    return into.joinpath(*relative.parts) if relative.parts else None


def _copy_stream(source, target: Path, budget: _UnpackBudget, member: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = target.open("xb")
    except FileExistsError:
        raise DatasetError(
            f"{budget.archive}: {member} appears twice in the archive: create it again without duplicates"
        ) from None
    with handle:
        while chunk := source.read(COPY_CHUNK):
            budget.count_bytes(len(chunk), member)
            handle.write(chunk)


def _unpack_zip(archive: Path, into: Path, budget: _UnpackBudget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        declared = 0
        for info in members:
            budget.count_member(info.filename)
            _member_target(into, info.filename, archive)  # refuses absolute and escaping names up front
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DatasetError(
                    f"{archive}: {info.filename} is a symbolic link; archives may hold only "
                    "files and folders (store the file itself)"
                )
            declared += info.file_size
        if declared > budget.limits.max_unpacked_bytes:
            raise DatasetError(
                f"{archive} declares {human_bytes(declared)} unpacked, more than "
                f"{human_bytes(budget.limits.max_unpacked_bytes)} (PUSHTRAIN_ARCHIVE_MAX_UNPACKED_BYTES): a "
                "decompression bomb, or a data set larger than this deployment accepts"
            )
        for info in members:
            target = _member_target(into, info.filename, archive)
            if target is None:
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            try:
                with bundle.open(info) as source:  # sizes in the header can lie: the copy counts real bytes
                    _copy_stream(source, target, budget, info.filename)
            except RuntimeError as exc:  # zipfile's way of saying "encrypted"
                raise DatasetError(
                    f"{archive}: {info.filename} cannot be read ({exc}): use an archive without a password"
                ) from None


def _unpack_tar(archive: Path, into: Path, budget: _UnpackBudget) -> None:
    # Stream mode ("r|*"): one pass, no seeking, so a compressed tar is read once.
    with tarfile.open(archive, mode="r|*") as bundle:
        for member in bundle:
            budget.count_member(member.name)
            target = _member_target(into, member.name, archive)
            if member.issym() or member.islnk():
                raise DatasetError(
                    f"{archive}: {member.name} is a link; archives may hold only files and "
                    "folders (store the file itself)"
                )
            if member.isdir():
                if target is not None:
                    target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise DatasetError(
                    f"{archive}: {member.name} is not a regular file (a device or FIFO); "
                    "archives may hold only files and folders"
                )
            if target is None:
                continue
            source = bundle.extractfile(member)
            _copy_stream(source, target, budget, member.name)


def read_file(source: SourceFile) -> bytes:
    """The bytes of one source file, with a message that names it if it cannot be read."""
    try:
        with open(source.path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DatasetError(
            f"cannot read {source.relative}: {exc.strerror}; make it readable by the workers"
        ) from None


def file_sha256(source: SourceFile) -> bytes:
    try:
        with open(source.path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    except OSError as exc:
        raise DatasetError(
            f"cannot read {source.relative}: {exc.strerror}; make it readable by the workers"
        ) from None


def hash_entry(relative: str, digest: bytes) -> bytes:
    """What one file adds to a tree hash: its relative path and its content's sha256 (as folder_sha256)."""
    return relative.encode() + b"\0" + digest


def tree_sha256(digests: dict[str, bytes]) -> str:
    """The source hash: every file's relative path and content hash, in path order."""
    digest = hashlib.sha256()
    for relative in sorted(digests):
        digest.update(hash_entry(relative, digests[relative]))
    return digest.hexdigest()


def looks_like_lfs_pointer(content: bytes) -> bool:
    """A Git LFS pointer file: the checkout has the pointer, not the content."""
    return len(content) < 1024 and content.startswith(b"version ") and b"\noid sha256:" in content
