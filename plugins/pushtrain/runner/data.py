"""Load one split of a data set: an image folder or a table, as the platform wrote it.

* **Images**: ``<root>/<label>/<name>.png``, one folder per class. This is the layout of a user's own
  cats-vs-dogs folder, and the layout every data set version's ``train/`` and ``test/`` have (the platform
  writes them as PNGs of one size and mode, ``pushtrain.datasets``). Labels are the folder names, ordered
  naturally ("2" before "10").
* **Tables**: ``<root>/table.csv`` (the feature columns, all numbers, then the label column last) beside
  ``<root>/schema.json`` (column names, the label column, the class names in natural order, the row count).
  Loaded as float32 rows ``(n, features)`` and class indices, for the scikit-learn kinds.

``load_data`` tells the two apart; both come back as an ``ImageFolder`` (a ``Table`` for tables), the one
shape the trainers take.

The evaluation container gets another layout, a label-blind view (``pushtrain.blind``): ``<root>/<id>.png``
in one flat folder, or ``<root>/table.csv`` with an ``id`` column and the features; ids opaque, no labels
anywhere (``load_blind_view``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TABLE_FILE = "table.csv"
TABLE_SCHEMA_FILE = "schema.json"
BLIND_ID_COLUMN = "id"  # a label-blind table's first column: the row's opaque id


class DataError(Exception):
    """The data set is missing, empty or unreadable."""


@dataclass
class ImageFolder:
    images: np.ndarray  # float32, (n, height, width, channels), scaled to [0, 1]; a Table: (n, features)
    labels: np.ndarray  # int64 class indices
    class_names: list[str]
    relative_paths: list[str]
    sha256: str  # over every file's path and bytes, in sorted order

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.images.shape[1:])

    def subset(self, mask: np.ndarray) -> ImageFolder:
        return replace(
            self,
            images=self.images[mask],
            labels=self.labels[mask],
            relative_paths=[p for p, keep in zip(self.relative_paths, mask, strict=True) if keep],
        )


@dataclass
class Table(ImageFolder):
    """A table split: ``images`` holds the rows as written (float32, not rescaled), ``relative_paths`` the
    rows' line numbers (``table.csv:2`` ...), which keeps the validation subset stable."""

    feature_names: list[str] = field(default_factory=list)


def natural_key(text: str) -> tuple:
    """Sort key for names: numbers by value ("2" before "10"), ties broken by the name itself."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)], text


def class_folders(root: Path) -> list[str]:
    return sorted((p.name for p in Path(root).iterdir() if p.is_dir()), key=natural_key)


def image_files(root: Path, class_names: list[str]) -> list[tuple[int, str, Path]]:
    """(class index, "label/name", path) of every image, in the one order both hashing and loading use."""
    files = []
    for index, label in enumerate(class_names):
        folder = Path(root) / label
        if folder.is_dir():
            for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append((index, f"{label}/{path.name}", path))
    return files


def is_table(root: Path) -> bool:
    return (Path(root) / TABLE_FILE).is_file()


def folder_sha256(root: Path) -> str:
    """Content hash of a split: every file's relative path and bytes, in a fixed order (for a table, its
    schema then its CSV, read in chunks)."""
    digest = hashlib.sha256()
    if is_table(root):
        for name in (TABLE_SCHEMA_FILE, TABLE_FILE):
            with (Path(root) / name).open("rb") as handle:
                digest.update(name.encode() + b"\0" + hashlib.file_digest(handle, "sha256").digest())
        return digest.hexdigest()
    for _, relative, path in image_files(root, class_folders(root)):
        digest.update(folder_hash_entry(relative, path.read_bytes()))
    return digest.hexdigest()


def folder_hash_entry(relative: str, content: bytes) -> bytes:
    """What one file adds to ``folder_sha256``, for callers that read the files anyway."""
    return relative.encode() + b"\0" + hashlib.sha256(content).digest()


def load_data(root: Path, class_names: list[str] | None = None) -> ImageFolder:
    """Load a split: a ``Table`` where ``root`` holds ``table.csv``, else an image folder."""
    return load_table(root, class_names) if is_table(root) else load_image_folder(root, class_names)


def load_table(root: Path, class_names: list[str] | None = None) -> Table:
    """Read ``root/table.csv`` as its ``schema.json`` describes it; ``class_names`` fixes the label order."""
    root = Path(root)
    schema_path, table_path = root / TABLE_SCHEMA_FILE, root / TABLE_FILE
    try:
        schema = json.loads(schema_path.read_text())
        features, label_column = list(schema["feature_columns"]), schema["label_column"]
        rows, classes = int(schema["rows"]), list(schema["class_names"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the table schema {schema_path}: {exc}") from None
    classes = list(class_names) if class_names is not None else classes
    index = {name: i for i, name in enumerate(classes)}
    values = np.empty((rows, len(features)), dtype=np.float32)
    labels = np.empty(rows, dtype=np.int64)
    count = 0
    with table_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != [*features, label_column]:
            raise DataError(f"{table_path} has columns {header}, its schema says {[*features, label_column]}")
        for line, record in enumerate(reader, start=2):
            if count == rows or len(record) != len(features) + 1:
                raise DataError(
                    f"{table_path} line {line}: {len(record)} values, or more rows than the "
                    f"{rows} its schema counts"
                )
            try:
                values[count] = record[:-1]
            except ValueError:
                raise DataError(f"{table_path} line {line}: a feature is not a number") from None
            if record[-1] not in index:
                raise DataError(
                    f"{table_path} line {line}: label {record[-1]!r} is not one of the classes {classes}"
                )
            labels[count] = index[record[-1]]
            count += 1
    if count != rows or rows == 0:
        raise DataError(f"{table_path} has {count} rows, its schema says {rows}")
    return Table(
        values,
        labels,
        classes,
        [f"{TABLE_FILE}:{line}" for line in range(2, rows + 2)],
        folder_sha256(root),
        feature_names=features,
    )


def load_image_folder(root: Path, class_names: list[str] | None = None) -> ImageFolder:
    """Read every image under ``root/<label>/``; ``class_names`` fixes the label order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist or is not a directory")
    found_classes = class_folders(root)
    if not found_classes:
        raise DataError(f"{root} has no class folders: expected <root>/<label>/<image>.png")
    classes = list(class_names) if class_names is not None else found_classes
    unknown = set(found_classes) - set(classes)
    if unknown:
        raise DataError(f"{root} has classes the model does not know: {sorted(unknown)}")

    pixels, labels, paths = [], [], []
    mode, size = None, None
    for index, relative, path in image_files(root, classes):
        with _open_image(path) as image:
            # The first image decides grey or colour and the size; others are converted to match.
            mode = mode or ("L" if image.mode in ("1", "L", "I", "I;16", "P") else "RGB")
            size = size or image.size
            pixels.append(_pixels(image, mode, size))
        labels.append(index)
        paths.append(relative)
    if not pixels:
        raise DataError(f"{root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageFolder(
        _scaled(pixels), np.asarray(labels, dtype=np.int64), classes, paths, folder_sha256(root)
    )


def load_blind_view(root: Path, input_shape: list[int]) -> tuple[list[str], np.ndarray]:
    """Read a label-blind view (``pushtrain.blind``), a table's or images. Returns (ids, model inputs)."""
    return load_blind_table(root, input_shape) if is_table(root) else load_blind_images(root, input_shape)


def load_blind_table(root: Path, input_shape: list[int]) -> tuple[list[str], np.ndarray]:
    """Read ``root/table.csv`` and nothing else: the id column, then the model's feature columns."""
    root, n_features = Path(root), int(input_shape[0])
    unexpected = sorted(p.name for p in root.iterdir() if p.name != TABLE_FILE)
    if unexpected:
        raise DataError(f"{root} is not a label-blind view: it holds {', '.join(unexpected[:5])}")
    ids, rows = [], []
    with (root / TABLE_FILE).open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        if len(header) != n_features + 1 or header[0] != BLIND_ID_COLUMN:
            raise DataError(
                f"{root / TABLE_FILE} has columns {header[:5]}..., expected {BLIND_ID_COLUMN!r} and "
                f"the {n_features} features the model was trained on"
            )
        for line, record in enumerate(reader, start=2):
            if len(record) != len(header):
                raise DataError(
                    f"{root / TABLE_FILE} line {line}: {len(record)} values, expected {len(header)}"
                )
            ids.append(record[0])
            rows.append(record[1:])
    values = np.empty((len(rows), n_features), dtype=np.float32)
    for index, row in enumerate(rows):
        try:
            values[index] = row  # the same string-to-float32 parse as load_table
        except ValueError:
            raise DataError(f"{root / TABLE_FILE} line {index + 2}: a feature is not a number") from None
    return ids, values


def load_blind_images(root: Path, input_shape: list[int]) -> tuple[list[str], np.ndarray]:
    """Read a label-blind view: ``root/<id>.png`` and nothing else, in id order. Returns (ids, images).

    Every image is converted to the model's input shape (grey for one channel, else RGB; its height and
    width), so the order the files come in cannot change the result.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist or is not a directory")
    entries = sorted(root.iterdir())
    unexpected = [p.name for p in entries if not (p.is_file() and p.suffix == ".png")]
    if unexpected:
        raise DataError(f"{root} is not a label-blind view: it holds {', '.join(unexpected[:5])}")
    if not entries:
        raise DataError(f"{root} holds no images")
    height, width, channels = (int(d) for d in input_shape)
    mode = "L" if channels == 1 else "RGB"
    pixels = []
    for path in entries:
        with _open_image(path) as image:
            pixels.append(_pixels(image, mode, (width, height)))
    return [p.stem for p in entries], _scaled(pixels)


@contextmanager
def _open_image(path: Path) -> Iterator:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            yield image
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _pixels(image, mode: str, size: tuple[int, int]) -> np.ndarray:
    converted = image.convert(mode)
    if converted.size != size:
        converted = converted.resize(size)
    return np.asarray(converted, dtype=np.uint8)


def _scaled(pixels: list[np.ndarray]) -> np.ndarray:
    """float32 in [0, 1], shaped (n, height, width, channels)."""
    images = np.divide(np.stack(pixels), 255, dtype=np.float32)  # one float32 copy, not two
    return images[..., np.newaxis] if images.ndim == 3 else images


def validation_mask(relative_paths: list[str], fraction: float) -> np.ndarray:
    """Pick a stable validation subset by hashing each path: the same files whatever the load order."""
    threshold = int(fraction * 10_000)
    return np.array(
        [int(hashlib.sha1(p.encode()).hexdigest()[:8], 16) % 10_000 < threshold for p in relative_paths]
    )
