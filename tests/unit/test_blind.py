"""The label-blind view of a held-out split: nothing in it but pixels, and the answers kept out of it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pushtrain import blind
from pushtrain.runner.data import folder_sha256

CLASSES = ("cat", "dog", "owl")
PER_CLASS = 12


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth(left: int, up: int, up_left: int) -> int:
    estimate = left + up - up_left
    distances = [abs(estimate - left), abs(estimate - up), abs(estimate - up_left)]
    return (left, up, up_left)[distances.index(min(distances))]


def encode_png(
    pixels: np.ndarray,
    colour_type: int,
    filter_type: int,
    *,
    level: int = 9,
    extra: list[tuple[bytes, bytes]] = (),
) -> bytes:
    """A PNG of ``pixels`` (height, width, channels) with every row filtered by ``filter_type``."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(np.int64)
    lines = []
    for y in range(height):
        current = rows[y]
        previous = rows[y - 1] if y else np.zeros_like(current)
        filtered = []
        for i, value in enumerate(current):
            left = current[i - channels] if i >= channels else 0
            up_left = previous[i - channels] if i >= channels else 0
            predictor = [0, left, previous[i], (left + previous[i]) // 2, _paeth(left, previous[i], up_left)][
                filter_type
            ]
            filtered.append((value - predictor) % 256)
        lines.append(bytes([filter_type, *filtered]))
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    ancillary = b"".join(_chunk(kind, data) for kind, data in extra)
    return (
        blind.PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + ancillary
        + _chunk(b"IDAT", zlib.compress(b"".join(lines), level))
        + _chunk(b"IEND", b"")
    )


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """A labelled held-out split whose files carry their class in every way a careless copy would keep.

    Folder names, a text chunk, a compression level and a filter per class, and files written class by class.
    """
    rng = np.random.default_rng(7)
    root = tmp_path / "test"
    for index, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for n in range(PER_CLASS):
            pixels = rng.integers(0, 256, (6, 5, 1), dtype=np.uint8)
            data = encode_png(
                pixels,
                0,
                filter_type=index + 1,
                level=index * 4 + 1,
                extra=[(b"tEXt", f"class\0{label}".encode())],
            )
            (root / label / f"{n:03d}.png").write_bytes(data)
    return root


def test_view_holds_only_pixels_under_opaque_names(split: Path, tmp_path: Path):
    view = blind.prepare_blind_evaluation(split, tmp_path / "work")

    files = sorted(view.data_dir.iterdir())
    assert [f.name for f in files] == sorted(f"{a.id}.png" for a in view.answers)
    assert all(re.fullmatch(r"[0-9a-f]{32}\.png", f.name) for f in files)
    assert len(files) == len(CLASSES) * PER_CLASS
    stats = [f.stat() for f in files]
    assert len({s.st_size for s in stats}) == 1  # one shape, one size: sizes say nothing
    assert {s.st_mtime_ns for s in stats} == {blind.FIXED_MTIME_NS}
    for f in files:
        content = f.read_bytes()
        assert b"tEXt" not in content and not any(label.encode() in content for label in CLASSES)


def test_view_keeps_the_pixels_and_the_answers_stay_outside(split: Path, tmp_path: Path):
    view = blind.prepare_blind_evaluation(split, tmp_path / "work")

    for answer in view.answers:
        original = blind.decode_png((split / answer.path).read_bytes(), Path(answer.path))
        copied = blind.decode_png((view.data_dir / f"{answer.id}.png").read_bytes(), Path(answer.id))
        assert copied[:3] == original[:3]
        np.testing.assert_array_equal(copied[3], original[3])
        assert answer.path.split("/")[0] == answer.label
    assert view.answer_key_path.parent == view.work_dir != view.data_dir
    assert view.answer_key_path.stat().st_mode & 0o777 == 0o600
    assert view.dataset_sha256 == folder_sha256(split)
    assert [a.path for a in view.answers] == [f"{c}/{n:03d}.png" for c in CLASSES for n in range(PER_CLASS)]
    assert blind.BlindEvaluation.load(view.work_dir) == view


def test_no_order_of_the_files_follows_the_classes(split: Path, tmp_path: Path):
    view = blind.prepare_blind_evaluation(split, tmp_path / "work")
    label_of = {a.id: a.label for a in view.answers}
    orders = {
        "sorted names": sorted(os.listdir(view.data_dir)),
        "directory listing": os.listdir(view.data_dir),
        "inode numbers": sorted(
            os.listdir(view.data_dir), key=lambda name: (view.data_dir / name).stat().st_ino
        ),
    }
    for order, names in orders.items():
        labels = [label_of[Path(name).stem] for name in names]
        changes = sum(a != b for a, b in zip(labels, labels[1:], strict=False))
        # Class by class changes label twice; a random order 24 times on average (sd 2.8; < 8: never seen).
        assert changes >= 8, f"{order} follows the classes: {labels}"


def test_every_evaluation_gets_new_ids_and_replaces_the_old_view(split: Path, tmp_path: Path):
    first = blind.prepare_blind_evaluation(split, tmp_path / "work")
    first_pixels = sorted(f.read_bytes() for f in first.data_dir.iterdir())
    (first.data_dir / "left-over.txt").write_text("3")

    second = blind.prepare_blind_evaluation(split, tmp_path / "work")
    assert not {a.id for a in first.answers} & {a.id for a in second.answers}
    assert sorted(f.read_bytes() for f in second.data_dir.iterdir()) == first_pixels
    assert not (second.data_dir / "left-over.txt").exists()


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
def test_canonical_png_keeps_every_pixel(colour_type: int, channels: int, filter_type: int):
    pixels = np.random.default_rng(filter_type).integers(0, 256, (7, 9, channels), dtype=np.uint8)
    original = encode_png(pixels, colour_type, filter_type, extra=[(b"tIME", bytes(7))])

    canonical = blind.canonical_png(original, Path("x.png"))
    width, height, decoded_type, rows = blind.decode_png(canonical, Path("x.png"))
    assert (width, height, decoded_type) == (9, 7, colour_type)
    np.testing.assert_array_equal(rows, pixels.reshape(7, 9 * channels))
    assert b"tIME" not in canonical
    assert blind.canonical_png(encode_png(pixels, colour_type, 0, level=0), Path("y.png")) == canonical


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\xff\xd8\xff\xe0 a JPEG", "not a PNG"),
        (
            blind.PNG_SIGNATURE
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 0, 0, 0, 0))
            + _chunk(b"IEND", b""),
            "bit depth 16",
        ),
        (
            blind.PNG_SIGNATURE
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 3, 0, 0, 0))
            + _chunk(b"IEND", b""),
            "colour type 3",
        ),
        (
            blind.PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))[:-1] + b"\0",
            "damaged IHDR",
        ),
    ],
)
def test_refuses_images_it_cannot_reencode(tmp_path: Path, content: bytes, reason: str):
    (tmp_path / "test" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a" / "1.png").write_bytes(content)
    with pytest.raises(blind.BlindViewError, match=reason):
        blind.prepare_blind_evaluation(tmp_path / "test", tmp_path / "work")


# --- scoring ----------------------------------------------------------------------------------------------


@pytest.fixture
def view(split: Path, tmp_path: Path) -> blind.BlindEvaluation:
    return blind.prepare_blind_evaluation(split, tmp_path / "work")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"a pickle the platform never loads")
    (model / "signature.json").write_text(
        json.dumps(
            {
                "kind": "knn",
                "format": "joblib",
                "file": "model.joblib",
                "class_names": list(CLASSES),
                "input_shape": [6, 5, 1],
            }
        )
    )
    return model


def _honest_answers(view: blind.BlindEvaluation, dtype: str | None):
    """Some right, some wrong, with probabilities: (predictions.json document, y_true, y_pred, probabilities)."""
    rng = np.random.default_rng(3)
    y_true = np.array([CLASSES.index(a.label) for a in view.answers])
    y_pred = np.where(rng.random(len(y_true)) < 0.7, y_true, rng.integers(0, len(CLASSES), len(y_true)))
    document = {
        "schema_version": 1,
        "predicted": {a.id: int(p) for a, p in zip(view.answers, y_pred, strict=True)},
    }
    probabilities = None
    if dtype:
        logits = rng.normal(size=(len(y_true), len(CLASSES))).astype(dtype)
        probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(dtype)
        document["probabilities"] = {
            a.id: row for a, row in zip(view.answers, probabilities.tolist(), strict=True)
        }
        document["probabilities_dtype"] = dtype
    return document, y_true, y_pred, probabilities


def _write(directory: Path, document: dict | str) -> Path:
    directory.mkdir(exist_ok=True)
    text = document if isinstance(document, str) else json.dumps(document, indent=2, sort_keys=True)
    (directory / "predictions.json").write_text(text)
    return directory


@pytest.mark.parametrize("dtype", ["float32", "float64", None])
def test_scores_are_the_labelled_evaluations_to_the_last_digit(
    view, model_dir: Path, tmp_path: Path, dtype: str | None
):
    from pushtrain.runner.metrics import classification_scores

    document, y_true, y_pred, probabilities = _honest_answers(view, dtype)
    evaluation = blind.score(view, _write(tmp_path / "out", document), model_dir)

    # What the container computed before, over the labelled folder in its own order and the model's dtype.
    expected = classification_scores(y_true, y_pred, list(CLASSES), probabilities)
    assert {k: evaluation[k] for k in expected} == expected
    assert (evaluation["loss"] is None) == (dtype is None)
    assert evaluation["dataset_sha256"] == view.dataset_sha256
    assert evaluation["evaluated_on"] == "test" and evaluation["kind"] == "knn"
    assert evaluation["class_names"] == list(CLASSES)
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.sum() == len(view.answers) and np.trace(matrix) == int((y_true == y_pred).sum())
    assert matrix.sum(axis=1).tolist() == [PER_CLASS] * len(CLASSES)
    assert evaluation["model_sha256"] == hashlib.sha256((model_dir / "model.joblib").read_bytes()).hexdigest()
    assert (
        evaluation["predictions_sha256"]
        == hashlib.sha256((tmp_path / "out" / "predictions.json").read_bytes()).hexdigest()
    )


def _drop_half(document: dict) -> None:
    for key in sorted(document["predicted"])[::2]:
        del document["predicted"][key]


def _first(document: dict, field: str = "predicted") -> str:
    return sorted(document[field])[0]


TAMPERED = {
    "too few ids": (_drop_half, "misses 18 of the 36 images"),
    "unknown id": (lambda d: d["predicted"].__setitem__("0" * 32, 1), "1 ids the view does not have"),
    "class index out of range": (
        lambda d: d["predicted"].__setitem__(_first(d), 3),
        "not class indices 0..2",
    ),
    "negative class index": (lambda d: d["predicted"].__setitem__(_first(d), -1), "not class indices"),
    "class as a bool": (lambda d: d["predicted"].__setitem__(_first(d), True), "not class indices"),
    "class as a float": (lambda d: d["predicted"].__setitem__(_first(d), 1.0), "not class indices"),
    "class as a name": (lambda d: d["predicted"].__setitem__(_first(d), "dog"), "not class indices"),
    "probabilities too short": (
        lambda d: d["probabilities"].__setitem__(_first(d), [1.0, 0.0]),
        "must be a list of 3 numbers",
    ),
    "probabilities not summing to 1": (
        lambda d: d["probabilities"].__setitem__(_first(d), [0.5, 0.5, 0.5]),
        "do not sum to 1",
    ),
    "probability above 1": (lambda d: d["probabilities"].__setitem__(_first(d), [1.5, -0.5, 0.0]), "outside"),
    "probabilities for too few ids": (
        lambda d: d["probabilities"].pop(_first(d)),
        "probabilities misses 1 of the 36",
    ),
    "probabilities without dtype": (lambda d: d.pop("probabilities_dtype"), "together"),
    "unknown dtype": (lambda d: d.__setitem__("probabilities_dtype", "float16"), "not one of"),
    "unknown field": (lambda d: d.__setitem__("accuracy", 1.0), "unknown fields: ['accuracy']"),
    "other schema": (lambda d: d.__setitem__("schema_version", 2), "schema_version 2"),
    "not an object": (lambda d: d.__setitem__("predicted", [0, 1, 2]), "must be an object"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_predictions_fail_with_the_reason(view, model_dir: Path, tmp_path: Path, case: str):
    document, *_ = _honest_answers(view, "float32")
    tamper, reason = TAMPERED[case]
    tamper(document)
    with pytest.raises(blind.ScoringError, match=re.escape(reason)):
        blind.score(view, _write(tmp_path / "out", document), model_dir)


@pytest.mark.parametrize(
    "text_of, reason",
    [
        (
            lambda text, key: text.replace('"predicted": {', f'"predicted": {{"{key}": 0, ', 1),
            "appears more than once",
        ),
        (lambda text, key: text.replace(f'"{key}": ', f'"{key}": NaN, "x{key}": ', 1), "NaN is not a number"),
        (lambda text, key: text[:-3], "not valid JSON"),
    ],
)
def test_malformed_json_fails_with_the_reason(view, model_dir: Path, tmp_path: Path, text_of, reason: str):
    document, *_ = _honest_answers(view, None)
    text = text_of(json.dumps(document, sort_keys=True), _first(document))
    with pytest.raises(blind.ScoringError, match=reason):
        blind.score(view, _write(tmp_path / "out", text), model_dir)


def test_a_forged_evaluation_beside_the_predictions_fails(view, model_dir: Path, tmp_path: Path):
    document, *_ = _honest_answers(view, None)
    out = _write(tmp_path / "out", document)
    (out / "evaluation.json").write_text(json.dumps({"accuracy": 1.0}))
    with pytest.raises(blind.ScoringError, match="wrote evaluation.json besides predictions.json"):
        blind.score(view, out, model_dir)


def test_missing_oversized_or_linked_predictions_fail(view, model_dir: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(blind.ScoringError, match="wrote no predictions.json"):
        blind.score(view, tmp_path / "empty", model_dir)

    document, *_ = _honest_answers(view, None)
    huge = json.dumps(document) + " " * blind.max_predictions_bytes(len(view.answers), len(CLASSES))
    with pytest.raises(blind.ScoringError, match="more than the"):
        blind.score(view, _write(tmp_path / "huge", huge), model_dir)

    target = _write(tmp_path / "elsewhere", document) / "predictions.json"
    (tmp_path / "linked").mkdir()
    os.symlink(target, tmp_path / "linked" / "predictions.json")
    with pytest.raises(blind.ScoringError, match="cannot read predictions.json"):
        blind.score(view, tmp_path / "linked", model_dir)

    (tmp_path / "folder" / "predictions.json").mkdir(parents=True)
    with pytest.raises(blind.ScoringError, match="not a regular file"):
        blind.score(view, tmp_path / "folder", model_dir)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"file": "../model.joblib"}, "file must name the artifact"),
        ({"class_names": ["cat", "dog"]}, "classes the model does not know: ['owl']"),
        ({"class_names": ["cat", "cat", "owl"]}, "distinct strings"),
        ({"kind": None}, "kind must be a string"),
    ],
)
def test_a_signature_that_does_not_fit_fails(
    view, model_dir: Path, tmp_path: Path, change: dict, reason: str
):
    signature = json.loads((model_dir / "signature.json").read_text())
    (model_dir / "signature.json").write_text(json.dumps({**signature, **change}))
    document, *_ = _honest_answers(view, None)
    with pytest.raises(blind.ScoringError, match=re.escape(reason)):
        blind.score(view, _write(tmp_path / "out", document), model_dir)


# --- tables -----------------------------------------------------------------------------------------------


@pytest.fixture
def table_split(tmp_path: Path) -> Path:
    """A held-out table sorted by its label, as a user's CSV often is: row order would give the class away."""
    rng = np.random.default_rng(11)
    root = tmp_path / "table-test"
    root.mkdir()
    features = ["height", "width", "colour=red"]
    lines = [",".join([*features, "species"])]
    for label in CLASSES:
        for _ in range(PER_CLASS):
            lines.append(
                ",".join([repr(float(rng.normal())), repr(float(rng.uniform())), str(rng.integers(2)), label])
            )
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    (root / "schema.json").write_text(
        json.dumps(
            {
                "format": 1,
                "feature_columns": features,
                "label_column": "species",
                "class_names": list(CLASSES),
                "rows": len(lines) - 1,
            }
        )
    )
    return root


def test_a_table_view_has_ids_and_features_only_in_id_order(table_split: Path, tmp_path: Path):
    from pushtrain.runner.data import load_blind_table, load_table

    view = blind.prepare_blind_evaluation(table_split, tmp_path / "work")

    assert os.listdir(view.data_dir) == ["table.csv"]
    text = (view.data_dir / "table.csv").read_text()
    assert not any(label in text for label in (*CLASSES, "species"))
    header, *rows = [line.split(",") for line in text.splitlines()]
    assert header == ["id", "height", "width", "colour=red"]
    assert [row[0] for row in rows] == sorted(a.id for a in view.answers)
    labels = {a.id: a.label for a in view.answers}
    in_file_order = [labels[row[0]] for row in rows]
    assert sum(a != b for a, b in zip(in_file_order, in_file_order[1:], strict=False)) >= 8
    assert view.dataset_sha256 == folder_sha256(table_split)
    assert view.answers[0].path == "table.csv:2" and view.answers[0].label == "cat"

    # The runner reads the very numbers the labelled evaluation read, row for row.
    ids, values = load_blind_table(view.data_dir, [3])
    labelled = load_table(table_split, list(CLASSES))
    position = {a.id: i for i, a in enumerate(view.answers)}
    np.testing.assert_array_equal(values, labelled.images[[position[i] for i in ids]])


def test_a_table_view_is_scored_like_an_image_view(table_split: Path, model_dir: Path, tmp_path: Path):
    from pushtrain.runner.metrics import classification_scores

    view = blind.prepare_blind_evaluation(table_split, tmp_path / "work")
    document, y_true, y_pred, probabilities = _honest_answers(view, "float64")
    evaluation = blind.score(view, _write(tmp_path / "out", document), model_dir)
    expected = classification_scores(y_true, y_pred, list(CLASSES), probabilities)
    assert {k: evaluation[k] for k in expected} == expected
