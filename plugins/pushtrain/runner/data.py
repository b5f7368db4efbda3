"""Load an image-folder data set: ``<root>/<label>/<name>.png``, one folder per class.

This is the layout of a user's own cats-vs-dogs folder, and the layout pushtrain exports its offline data
sets in. Labels are the folder names, ordered naturally ("2" before "10").
"""

from __future__ import annotations

import hashlib
import re
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
        digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_image_folder(root: Path, class_names: list[str] | None = None) -> ImageFolder:
    """Read every image under ``root/<label>/``; ``class_names`` fixes the label order (for evaluation)."""
    from PIL import Image

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
        try:
            with Image.open(path) as image:
                image.load()
                # The first image decides grey or colour and the size; others are converted to match.
                mode = mode or ("L" if image.mode in ("1", "L", "I", "I;16", "P") else "RGB")
                size = size or image.size
                converted = image.convert(mode)
                if converted.size != size:
                    converted = converted.resize(size)
                pixels.append(np.asarray(converted, dtype=np.uint8))
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        labels.append(index)
        paths.append(relative)
    if not pixels:
        raise DataError(f"{root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")

    images = np.stack(pixels).astype(np.float32) / 255.0
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return ImageFolder(images, np.asarray(labels, dtype=np.int64), classes, paths, folder_sha256(root))


def validation_mask(relative_paths: list[str], fraction: float) -> np.ndarray:
    """Pick a stable validation subset by hashing each path: the same files whatever the load order."""
    threshold = int(fraction * 10_000)
    return np.array(
        [int(hashlib.sha1(p.encode()).hexdigest()[:8], 16) % 10_000 < threshold for p in relative_paths]
    )
