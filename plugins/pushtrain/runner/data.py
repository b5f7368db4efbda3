"""Load an image-folder data set: ``<root>/<label>/<name>.png``, one folder per class.

This is the layout of a user's own cats-vs-dogs folder, and the layout pushtrain exports its offline data
sets in. Labels are the folder names, ordered naturally ("2" before "10").

The evaluation container gets another layout, a label-blind view (``pushtrain.blind``): ``<root>/<id>.png``
in one flat folder, ids opaque, no labels anywhere.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


class DataError(Exception):
    """The data set is missing, empty or unreadable."""


@dataclass
class ImageFolder:
    images: np.ndarray  # float32, (n, height, width, channels), scaled to [0, 1]
    labels: np.ndarray  # int64 class indices
    class_names: list[str]
    relative_paths: list[str]
    sha256: str  # over every file's path and bytes, in sorted order

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.images.shape[1:])

    def subset(self, mask: np.ndarray) -> ImageFolder:
        return ImageFolder(
            images=self.images[mask],
            labels=self.labels[mask],
            class_names=self.class_names,
            relative_paths=[p for p, keep in zip(self.relative_paths, mask, strict=True) if keep],
            sha256=self.sha256,
        )


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def class_folders(root: Path) -> list[str]:
    return sorted((p.name for p in Path(root).iterdir() if p.is_dir()), key=_natural_key)


def image_files(root: Path, class_names: list[str]) -> list[tuple[int, str, Path]]:
    """(class index, "label/name", path) of every image, in the one order both hashing and loading use."""
    files = []
    for index, label in enumerate(class_names):
        folder = Path(root) / label
        if folder.is_dir():
            for path in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append((index, f"{label}/{path.name}", path))
    return files


def folder_sha256(root: Path) -> str:
    """Content hash of an image folder: every file's relative path and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for _, relative, path in image_files(root, class_folders(root)):
        digest.update(folder_hash_entry(relative, path.read_bytes()))
    return digest.hexdigest()


def folder_hash_entry(relative: str, content: bytes) -> bytes:
    """What one file adds to ``folder_sha256``, for callers that read the files anyway."""
    return relative.encode() + b"\0" + hashlib.sha256(content).digest()


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
    return ImageFolder(_scaled(pixels), np.asarray(labels, dtype=np.int64), classes, paths, folder_sha256(root))


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
    images = np.stack(pixels).astype(np.float32) / 255.0
    return images[..., np.newaxis] if images.ndim == 3 else images


def validation_mask(relative_paths: list[str], fraction: float) -> np.ndarray:
    """Pick a stable validation subset by hashing each path: the same files whatever the load order."""
    threshold = int(fraction * 10_000)
    return np.array(
        [int(hashlib.sha1(p.encode()).hexdigest()[:8], 16) % 10_000 < threshold for p in relative_paths]
    )
