"""Image data sets: find the classes, check every image, fix one shape, write uniform PNGs.

Layout: ``<root>/<label>/<image>`` (images deeper under a class folder count for that class), or a split of
the user's own, ``<root>/train/<label>/<image>`` and ``<root>/test/<label>/<image>``. Files that are not
images (by suffix: png, jpg, jpeg, bmp, gif, webp) are **skipped with a warning** and listed in the manifest,
so a README or a ``labels.txt`` beside the images does not stop an import; a file with an image suffix that
does not decode is **refused**, because a half-copied photo is a problem the user wants to hear about.

Two passes, each reading one file at a time (memory does not grow with the number of images):

1. ``scan``: every file's sha256 (the source hash) and its header: a PNG's IHDR chunk is read directly,
   other formats through Pillow without decoding pixels. The most common size and mode become the data
   set's shape unless the import's options fix ``image_size`` and ``channels``.
2. ``write``: every image becomes a PNG of that shape in the version's ``train/`` or ``test/``. A PNG that
   already has it (8-bit grey or RGB, not interlaced) is copied byte for byte once its chunk CRCs and its
   pixel stream check out, so a uniform folder imports at close to copying speed; any other image is
   decoded by Pillow, converted (transparency composited on white, 16-bit grey scaled to 8 bits) and,
   if its size differs, resized with bilinear filtering to exactly the data set's size (the aspect ratio is
   not kept). The manifest counts what was resized and from which sizes.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pushtrain.dataset_files import (
    DatasetError,
    Limits,
    SourceFile,
    hash_entry,
    human_bytes,
    looks_like_lfs_pointer,
    read_file,
    tree_sha256,
)
from pushtrain.runner.data import IMAGE_SUFFIXES, natural_key

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLAIN_PNG_MODES = {(8, 0): "L", (8, 2): "RGB"}  # (bit depth, colour type) that are copied as they are
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold: larger images are refused, not decoded
PREMADE_SPLITS = ("train", "test")
PROGRESS_EVERY = 5000
IMAGE_FIX = "remove it, or replace it with a PNG, JPEG, BMP, GIF or WebP file that opens"


@dataclass(frozen=True, slots=True)  # one per image: slots keep the per-image memory small
class LabelledImage:
    label: str
    source: SourceFile
    split: str | None  # "train" or "test" in a split of the user's own, else None (the platform splits)

    @property
    def inner(self) -> str:
        """Its path inside its class folder."""
        return self.source.relative.split("/", 2 if self.split else 1)[-1]


@dataclass
class ImageSet:
    images: list[LabelledImage]  # sorted: class (natural order), then path (natural order)
    premade: bool
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return sorted({image.label for image in self.images}, key=natural_key)


@dataclass(frozen=True, slots=True)
class ImageHeader:
    width: int
    height: int
    mode: str
    plain_png: bool  # 8-bit grey or RGB, not interlaced: a candidate for a byte-for-byte copy

    @property
    def channels(self) -> int:
        return 1 if self.mode in GREY_MODES else 3


@dataclass
class Scan:
    source_sha256: str
    headers: list[ImageHeader]  # in ImageSet.images order
    digests: list[bytes]  # each image's sha256, in ImageSet.images order
    sizes: Counter  # (height, width) -> images
    channels: Counter  # 1 or 3 -> images


@dataclass
class Written:
    split_sha256: dict[str, str]  # "train"/"test" -> folder_sha256 of what was written
    class_counts: dict[str, dict[str, int]]
    resized: int = 0
    resized_from: Counter = field(default_factory=Counter)  # "HxW" -> images
    converted: int = 0  # decoded and encoded again (another format, mode or size)
    copied: int = 0  # PNGs of the right shape, copied byte for byte
    bytes: int = 0


def is_image_name(relative: str) -> bool:
    return os.path.splitext(relative)[1].lower() in IMAGE_SUFFIXES


def find_images(files: list[SourceFile], ignored: list[tuple[str, str]]) -> ImageSet:
    """Assign every image to its class (and split, for a split of the user's own)."""
    images = [f for f in files if is_image_name(f.relative)]
    skipped = [(f.relative, "not an image (by its suffix)") for f in files if not is_image_name(f.relative)]
    tops = {f.parts[0] for f in images if len(f.parts) >= 2}
    premade = tops == set(PREMADE_SPLITS) and all(len(f.parts) >= 3 for f in images)
    by_label: dict[str, list[LabelledImage]] = {}
    for source in images:
        parts = source.parts
        if premade:
            label, split = parts[1], parts[0]
        elif len(parts) >= 2:
            label, split = parts[0], None
        else:
            skipped.append((source.relative, "not inside a class folder (<root>/<label>/<image>)"))
            continue
        by_label.setdefault(label, []).append(LabelledImage(label, source, split))
    labelled = []
    for label in sorted(by_label, key=natural_key):  # one class's sort keys at a time, not all of them
        labelled += sorted(by_label.pop(label), key=lambda i: (natural_key(i.inner), i.split or ""))
    return ImageSet(labelled, premade, sorted(ignored + skipped))


def read_header(relative: str, content: bytes) -> ImageHeader:
    if looks_like_lfs_pointer(content):
        raise DatasetError(
            f"{relative} is a Git LFS pointer, not an image: the repository keeps the file "
            "in Git LFS and the checkout did not fetch it (install git-lfs where the workers "
            "check out repositories, or commit the image itself)"
        )
    if not content:
        raise DatasetError(f"{relative} is empty (0 bytes): {IMAGE_FIX}")
    header = None
    if content.startswith(PNG_SIGNATURE) and content[12:16] == b"IHDR" and len(content) >= 29:
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", content[16:29])
        mode = PLAIN_PNG_MODES.get((depth, colour))
        if mode and interlace == 0:
            header = ImageHeader(width, height, mode, True)
    if header is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a bomb warning is our own check below
                with Image.open(io.BytesIO(content)) as image:
                    header = ImageHeader(image.width, image.height, image.mode, False)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file; each is the user's
            reason = "no image format Pillow reads" if isinstance(exc, Image.UnidentifiedImageError) else exc
            raise DatasetError(f"{relative} is not a readable image ({reason}): {IMAGE_FIX}") from None
    if header.width * header.height > MAX_PIXELS or not header.width or not header.height:
        raise DatasetError(
            f"{relative} is {header.width}x{header.height} pixels; an image may have at "
            f"most {MAX_PIXELS:,} (a decompression bomb, or far larger than a model needs): "
            "resize it"
        )
    return header


def scan(image_set: ImageSet, limits: Limits, where: Path) -> Scan:
    """Pass 1: the source hash, and each image's size and mode from its header."""
    import hashlib

    total = sum(image.source.size for image in image_set.images)
    if total > limits.max_bytes:
        raise DatasetError(
            f"the images in {where} add up to {human_bytes(total)}, more than the "
            f"{human_bytes(limits.max_bytes)} a data set may have "
            "(PUSHTRAIN_DATASET_MAX_BYTES): import a smaller set, or raise the cap"
        )
    digests, headers, sizes, channels = [], [], Counter(), Counter()
    for image in image_set.images:
        content = read_file(image.source)
        digests.append(hashlib.sha256(content).digest())
        header = read_header(image.source.relative, content)
        headers.append(header)
        sizes[(header.height, header.width)] += 1
        channels[header.channels] += 1
    source_sha256 = tree_sha256(
        {image.source.relative: digest for image, digest in zip(image_set.images, digests, strict=True)}
    )
    return Scan(source_sha256, headers, digests, sizes, channels)


def choose_shape(
    found: Scan, image_size: tuple[int, int] | None, channels: int | None
) -> tuple[int, int, int]:
    """(height, width, channels): the options where given, else the most common in the data (ties: the
    larger size, colour over grey)."""
    if image_size:
        height, width = image_size
    else:
        height, width = max(found.sizes, key=lambda s: (found.sizes[s], s[0] * s[1], s))
    if channels is None:
        channels = max(found.channels, key=lambda c: (found.channels[c], c))
    return int(height), int(width), int(channels)


def write(
    image_set: ImageSet,
    found: Scan,
    held_out: list[bool],
    shape: tuple[int, int, int],
    out: Path,
    limits: Limits,
    log: Callable[[str], None],
) -> Written:
    """Pass 2: every image as a PNG of ``shape`` in ``out/train`` or ``out/test``; hashes as folder_sha256."""
    import hashlib

    height, width, channels = shape
    written = Written({}, {"train": {}, "test": {}})
    entries: dict[tuple[str, str], list[tuple[str, bytes]]] = {}  # (split, label) -> (file name, sha256)
    names: dict[tuple[str, str], set[str]] = {}
    folders: dict[tuple[str, str], str] = {}
    for index, (image, header, is_test) in enumerate(
        zip(image_set.images, found.headers, held_out, strict=True)
    ):
        split = "test" if is_test else "train"
        content = read_file(image.source)
        source_digest = hashlib.sha256(content).digest()
        if source_digest != found.digests[index]:
            raise DatasetError(
                f"{image.source.relative} changed while the data set was being imported: "
                "import it again once nothing writes to the folder"
            )
        png, resized = normalize(image.source.relative, content, header, shape)
        if png is content:
            written.copied += 1
        else:
            written.converted += 1
        if resized:
            written.resized += 1
            written.resized_from[f"{header.height}x{header.width}"] += 1
        key = (split, image.label)
        if key not in folders:
            folders[key] = str(out / split / image.label)
            os.makedirs(folders[key])
        name = _output_name(image.inner, names.setdefault(key, set()))
        with open(os.path.join(folders[key], name), "xb") as handle:
            handle.write(png)
        written.bytes += len(png)
        if written.bytes > limits.max_bytes:
            raise DatasetError(
                f"the normalized images exceed {human_bytes(limits.max_bytes)} "
                f"(PUSHTRAIN_DATASET_MAX_BYTES) at {image.source.relative}: choose a smaller "
                "image_size, import fewer images, or raise the cap"
            )
        entries.setdefault(key, []).append(
            (name, source_digest if png is content else hashlib.sha256(png).digest())
        )
        counts = written.class_counts[split]
        counts[image.label] = counts.get(image.label, 0) + 1
        if (index + 1) % PROGRESS_EVERY == 0:
            log(
                f"[datasets] {index + 1}/{len(image_set.images)} images written ({height}x{width}x{channels})"
            )
    for split in ("train", "test"):
        # In folder_sha256's order: classes, then file names, both natural; sorted one class at a time.
        split_digest = hashlib.sha256()
        for label in sorted((label for s, label in entries if s == split), key=natural_key):
            for name, file_digest in sorted(entries.pop((split, label)), key=lambda e: natural_key(e[0])):
                split_digest.update(hash_entry(f"{label}/{name}", file_digest))
        written.split_sha256[split] = split_digest.hexdigest()
    return written


def _output_name(inner: str, taken: set[str]) -> str:
    """``a/b.jpg`` -> ``a__b.png``; a second ``b`` of another format gets ``b~2.png``."""
    stem = os.path.splitext(inner)[0].replace("/", "__")
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}~{n}.png"
    taken.add(name)
    return name


def normalize(
    relative: str, content: bytes, header: ImageHeader, shape: tuple[int, int, int]
) -> tuple[bytes, bool]:
    """The image as a PNG of ``shape`` and whether it was resized; ``content`` itself if it already is one."""
    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    if header.plain_png and header.mode == mode and (header.height, header.width) == (height, width):
        _verify_plain_png(relative, content, header)
        return content, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(content)) as image:
                image.load()
                converted = _convert(image, mode)
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file surfaces as many exception types
        raise DatasetError(f"{relative} is corrupt or truncated ({exc}): {IMAGE_FIX}") from None
    resized = converted.size != (width, height)
    if resized:
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return buffer.getvalue(), resized


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode.startswith("I;16"):
        import numpy as np

        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8), "L")
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert(mode)


def _verify_plain_png(relative: str, content: bytes, header: ImageHeader) -> None:
    """Every chunk's CRC, and a pixel stream that inflates to exactly the size the header promises."""
    expected = header.height * (1 + header.width * header.channels)
    inflate = zlib.decompressobj()
    produced, position = 0, len(PNG_SIGNATURE)
    problem = "it ends before its IEND chunk"
    while position + 12 <= len(content):
        length, kind = struct.unpack(">I4s", content[position : position + 8])
        end = position + 12 + length
        if end > len(content):
            problem = f"its {kind.decode('latin-1')} chunk is cut short"
            break
        payload = content[position + 8 : end - 4]
        if zlib.crc32(kind + payload) != struct.unpack(">I", content[end - 4 : end])[0]:
            problem = f"the CRC of its {kind.decode('latin-1')} chunk does not match"
            break
        if kind == b"IDAT":
            try:
                produced += len(inflate.decompress(payload, expected + 1 - produced))
            except zlib.error as exc:
                problem = f"its pixel data does not inflate ({exc})"
                break
            if inflate.unconsumed_tail:
                produced = expected + 1
        if kind == b"IEND":
            if inflate.eof and produced == expected:
                return
            problem = (
                f"its pixel data holds {produced} bytes, {header.height}x{header.width} needs {expected}"
            )
            break
        position = end
    raise DatasetError(f"{relative} is a corrupt or truncated PNG ({problem}): {IMAGE_FIX}")
