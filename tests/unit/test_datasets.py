"""The offline data sets: real digits out of the wheels, a fixed stratified split, stable hashes."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

import pytest

from pushtrain import datasets


def decode_grey_png(data: bytes) -> tuple[int, int, bytes]:
    """Minimal PNG reader for the files grey_png writes (one IDAT, filter 0 on every row)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat_length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41:41 + idat_length])
    rows = [raw[r * (width + 1) + 1:(r + 1) * (width + 1)] for r in range(height)]
    return width, height, b"".join(rows)


def test_grey_png_round_trips():
    pixels = list(range(64))
    width, height, decoded = decode_grey_png(datasets.grey_png(pixels, 8))
    assert (width, height) == (8, 8)
    assert list(decoded) == pixels


def test_split_is_stratified_and_deterministic():
    labels = [str(i % 10) for i in range(1000)]
    held_out = datasets.stratified_split(labels)
    assert held_out == datasets.stratified_split(labels)
    per_class = Counter(label for label, is_test in zip(labels, held_out, strict=True) if is_test)
    assert set(per_class.values()) == {20}


@pytest.mark.parametrize(("name", "rows", "side"), [("digits", 1797, 8), ("mnist5k", 5000, 28)])
def test_exported_dataset_is_real_and_split(tmp_path, monkeypatch, name, rows, side):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path))
    manifest = datasets.ensure_dataset(name)
    assert manifest.counts["train"] + manifest.counts["test"] == rows
    assert manifest.counts["test"] == pytest.approx(rows * datasets.TEST_FRACTION, abs=10)
    assert manifest.class_names == [str(d) for d in range(10)]
    train_files = {p.name for p in manifest.train_dir.rglob("*.png")}
    test_files = {p.name for p in manifest.test_dir.rglob("*.png")}
    assert not train_files & test_files  # held-out images never leak into training
    sample = next(manifest.test_dir.glob("3/*.png"))
    width, height, pixels = decode_grey_png(sample.read_bytes())
    assert (width, height) == (side, side)
    assert max(pixels) > 128 and min(pixels) == 0  # a real digit: dark background, bright strokes
    again = datasets.ensure_dataset(name)  # cached: same manifest, nothing re-exported
    assert again.dataset_sha256 == manifest.dataset_sha256
    assert datasets.folder_sha256(manifest.train_dir) == manifest.train_sha256
