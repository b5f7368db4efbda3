"""Label-blind views of the held-out split, and the trusted scoring of the predictions made on them.

The evaluation container loads the saved model, and a saved model can run user code (a pickled
estimator's class, a Keras model's custom layers). So the container gets nothing that carries a label:

* **The view** (``prepare_blind_evaluation``): every held-out image re-encoded as a canonical PNG (pixels
  only: no text or other ancillary chunks, no filter choices, stored uncompressed so that every image of
  one shape has the same size) in one flat folder, named by an HMAC of its path and content under a key
  made for this evaluation alone and never written anywhere. Files are written in id order and given one
  fixed mtime, so names, listing order, inode order, sizes and times follow the ids, which follow nothing.
  A table split becomes one ``table.csv``: an ``id`` column (the same kind of HMAC) and the feature
  columns, rows in id order, no label column. The folder holds that and nothing else (no manifest, no
  schema): it is what the container sees as ``/data``.
* **The answer key** (``answer_key.json``, mode 0600) sits next to that folder, never inside it, and never
  leaves the Airflow side.
* **Scoring** (``score``): reads the container's ``predictions.json`` as untrusted input (size-capped, no
  symlinks, no NaN, no duplicate keys, every id answered once with a valid class index, probabilities
  well-formed) and computes the scores with the runner's own ``classification_scores``, in the split's own
  order, so an honest model gets the very figures the labelled evaluation gave. A container that wrote
  anything besides ``predictions.json`` (a forged ``evaluation.json``, say) is rejected, never read.

Nothing here imports or runs user code, and no pickle is loaded: the platform reads JSON and PNG bytes.

What the view does not stop: a model that memorised the held-out images themselves (the built-in data sets
are public) or one that probes the gate over many attempts through its aggregate feedback; the first needs a
private split, the second is bounded by ``max_attempts``. Ids change with every evaluation, so nothing but
the pixels stays the same from one attempt to the next.

No cache: a view is written afresh for every evaluation (about 0.1 s for 359 images, 0.3-0.5 s for 1,000,
next to an evaluation container of 4-20 s). A view cached per held-out split would keep its ids from one
attempt to the next, which is harmless only while the key stays secret; caching the canonical PNG bytes
alone would be safe, but reading them back costs about what re-encoding does.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import stat
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pushtrain.runner import contract
from pushtrain.runner.contract import PREDICTIONS_FILE
from pushtrain.runner.data import (
    BLIND_ID_COLUMN,
    TABLE_FILE,
    TABLE_SCHEMA_FILE,
    class_folders,
    folder_hash_entry,
    folder_sha256,
    image_files,
    is_table,
)
from pushtrain.runner.evaluate import (
    PREDICTIONS_SCHEMA_VERSION,
    PROBABILITY_DTYPES,
    probability_problem,
)
from pushtrain.runner.metrics import classification_scores, confusion_matrix

EVALUATION_FILE = "evaluation.json"  # written by the platform, never by a container
DATA_DIR = "data"  # mounted read-only as the container's /data
ANSWER_KEY_FILE = "answer_key.json"  # never mounted
ANSWER_KEY_SCHEMA_VERSION = 1
ID_HEX_DIGITS = 32  # 128 bits of HMAC-SHA256
FIXED_MTIME_NS = 0  # every file of a view has the same times
MAX_SIGNATURE_BYTES = 1 << 20

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel: grey, RGB, grey+alpha, RGBA


class BlindViewError(Exception):
    """The held-out split cannot be turned into a label-blind view; the message names the file and why."""


class ScoringError(Exception):
    """The evaluation's output cannot be scored; the attempt fails with this message."""


@dataclass(frozen=True)
class Answer:
    id: str
    label: str  # the class: its folder name, or a table row's label
    path: str  # "label/name" or "table.csv:<line>" in the held-out split, for a person tracing one item


@dataclass(frozen=True)
class BlindEvaluation:
    """One evaluation's label-blind view (``data_dir``) and its answers, which stay on this side."""

    work_dir: Path
    dataset_sha256: str  # folder_sha256 of the held-out split, as the data set's manifest records it
    answers: tuple[Answer, ...]  # in the split's own order: the order the labelled evaluation used

    @property
    def data_dir(self) -> Path:
        return self.work_dir / DATA_DIR

    @property
    def answer_key_path(self) -> Path:
        return self.work_dir / ANSWER_KEY_FILE

    @classmethod
    def load(cls, work_dir: Path) -> BlindEvaluation:
        """Reopen a prepared view (a retried task adopting a container that still reads it)."""
        document = json.loads((Path(work_dir) / ANSWER_KEY_FILE).read_text())
        if document.get("schema_version") != ANSWER_KEY_SCHEMA_VERSION:
            raise BlindViewError(f"{work_dir}/{ANSWER_KEY_FILE} has schema {document.get('schema_version')}")
        return cls(
            Path(work_dir),
            document["dataset_sha256"],
            tuple(Answer(**answer) for answer in document["answers"]),
        )


# --- the view ---------------------------------------------------------------------------------------------


def prepare_blind_evaluation(test_dir: Path, work_dir: Path) -> BlindEvaluation:
    """Write a fresh label-blind view of the held-out split ``test_dir`` into ``work_dir``.

    The split is an image folder (``<label>/<name>.png``) or a table (``table.csv`` and ``schema.json``).
    ``work_dir`` is replaced. Mount ``BlindEvaluation.data_dir`` read-only as the container's data, and
    nothing else of ``work_dir``. A task that adopts a container still running on a view reopens it with
    ``BlindEvaluation.load`` instead: preparing again would pull the files from under that container.
    """
    test_dir, work_dir = Path(test_dir), Path(work_dir)
    if not test_dir.is_dir():
        raise BlindViewError(f"held-out split {test_dir} does not exist or is not a directory")
    key = secrets.token_bytes(32)  # lives in this process only: ids cannot be recomputed anywhere else
    if is_table(test_dir):
        files, answers = _blind_table(test_dir, key)
        dataset_sha256 = folder_sha256(test_dir)
    else:
        files, answers, dataset_sha256 = _blind_images(test_dir, key)
    if not answers:
        raise BlindViewError(f"held-out split {test_dir} has no images in class folders and no table rows")

    if work_dir.exists():
        shutil.rmtree(work_dir)
    data_dir = work_dir / DATA_DIR
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o755)  # readable by the container's user, whoever runs this
    for name in sorted(files):  # creation order (inode numbers, ctimes) follows the ids alone
        descriptor = os.open(data_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(files[name])
            handle.flush()  # before the times are set: a later write would move them again
            os.fchmod(descriptor, 0o644)  # whatever the umask
            os.utime(descriptor, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    os.utime(data_dir, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))

    blind = BlindEvaluation(work_dir, dataset_sha256, tuple(answers))
    _write_private_json(
        blind.answer_key_path,
        {
            "schema_version": ANSWER_KEY_SCHEMA_VERSION,
            "test_dir": str(test_dir),
            "dataset_sha256": blind.dataset_sha256,
            "answers": [vars(answer) for answer in answers],
        },
    )
    return blind


def _opaque_id(key: bytes, entry: bytes, taken: dict[str, Any]) -> str:
    identifier = hmac.new(key, entry, hashlib.sha256).hexdigest()[:ID_HEX_DIGITS]
    if identifier in taken:  # 2**-128 per pair; a clear stop beats two answers merged into one
        raise BlindViewError(f"two held-out items got one id ({identifier}); prepare the view again")
    return identifier


def _blind_images(test_dir: Path, key: bytes) -> tuple[dict[str, bytes], list[Answer], str]:
    """{"<id>.png": canonical PNG}, the answers in the split's order, and the split's folder_sha256."""
    split_digest = hashlib.sha256()
    encoded: dict[str, bytes] = {}
    answers = []
    for _, relative, path in image_files(test_dir, class_folders(test_dir)):
        content = path.read_bytes()
        entry = folder_hash_entry(relative, content)
        split_digest.update(entry)
        image_id = _opaque_id(key, entry, encoded)
        encoded[image_id] = canonical_png(content, path)
        answers.append(Answer(image_id, relative.split("/", 1)[0], relative))
    return (
        {f"{image_id}.png": content for image_id, content in encoded.items()},
        answers,
        split_digest.hexdigest(),
    )


def _blind_table(test_dir: Path, key: bytes) -> tuple[dict[str, bytes], list[Answer]]:
    """{"table.csv": the id column and the features, rows in id order}, and the answers in the split's order.

    Feature values keep their text as the split has it (the platform wrote each as a Python float), so the
    runner parses the very numbers the labelled evaluation parsed.
    """
    try:
        schema = json.loads((test_dir / TABLE_SCHEMA_FILE).read_text())
        features, label_column = list(schema["feature_columns"]), schema["label_column"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BlindViewError(f"cannot read the table schema of {test_dir}: {exc}") from None
    rows: dict[str, list[str]] = {}
    answers = []
    with (test_dir / TABLE_FILE).open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        if next(reader, None) != [*features, label_column]:
            raise BlindViewError(f"{test_dir / TABLE_FILE} does not have the columns its schema names")
        for line, record in enumerate(reader, start=2):
            if len(record) != len(features) + 1:
                raise BlindViewError(f"{test_dir / TABLE_FILE} line {line} has {len(record)} values")
            relative = f"{TABLE_FILE}:{line}"
            row_id = _opaque_id(key, relative.encode() + b"\0" + "\x1f".join(record).encode(), rows)
            rows[row_id] = record[:-1]
            answers.append(Answer(row_id, record[-1], relative))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([BLIND_ID_COLUMN, *features])
    writer.writerows([row_id, *rows[row_id]] for row_id in sorted(rows))
    return {TABLE_FILE: text.getvalue().encode()}, answers


def _write_private_json(path: Path, document: Any) -> None:
    """Compact JSON, readable by this user only, replaced atomically (a reader sees the old or the new)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(document, separators=(",", ":")))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def canonical_png(content: bytes, path: Path) -> bytes:
    """The same pixels as ``content`` (an 8-bit PNG), encoded one fixed way with nothing but the pixels."""
    width, height, colour_type, raw = _read_png(content, path)
    stride = width * PNG_CHANNELS[colour_type]
    if raw[:: stride + 1].count(0) == height:  # every row unfiltered already: the scanlines are canonical
        scanlines = raw
    else:
        rows = _unfilter(raw, height, stride, PNG_CHANNELS[colour_type], path)
        canonical = np.zeros((height, stride + 1), dtype=np.uint8)  # filter byte 0 on every row
        canonical[:, 1:] = rows
        scanlines = canonical.tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    # Stored, not deflated: the size is a function of the shape alone, so it cannot echo anything.
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines, 0))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decode_png(content: bytes, path: Path) -> tuple[int, int, int, np.ndarray]:
    """(width, height, colour type, unfiltered rows as uint8 (height, width * channels)) of an 8-bit PNG.

    The Airflow side has no imaging library, and needs none for the platform's data sets: 8-bit,
    non-interlaced grey, grey+alpha, RGB or RGBA. Anything else is refused with the reason.
    """
    width, height, colour_type, raw = _read_png(content, path)
    channels = PNG_CHANNELS[colour_type]
    return width, height, colour_type, _unfilter(raw, height, width * channels, channels, path)


def _read_png(content: bytes, path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, colour type, the decompressed scanlines with their filter bytes), checked."""
    if not content.startswith(PNG_SIGNATURE):
        raise BlindViewError(
            f"{path} is not a PNG: held-out images are re-encoded, and only PNG is supported"
        )
    offset, header, data = len(PNG_SIGNATURE), None, []
    while True:
        if offset + 8 > len(content):
            raise BlindViewError(f"{path} is truncated (no IEND chunk)")
        length, kind = struct.unpack(">I4s", content[offset : offset + 8])
        body = content[offset + 8 : offset + 8 + length]
        crc = content[offset + 8 + length : offset + 12 + length]
        if len(body) != length or len(crc) != 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise BlindViewError(f"{path} has a damaged {kind.decode(errors='replace')} chunk")
        offset += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            data.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise BlindViewError(f"{path} has no IHDR chunk")
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 8 or colour_type not in PNG_CHANNELS or interlace:
        raise BlindViewError(
            f"{path}: bit depth {depth}, colour type {colour_type}, interlace {interlace}; "
            "held-out PNGs must be 8-bit, non-interlaced grey, grey+alpha, RGB or RGBA"
        )
    channels = PNG_CHANNELS[colour_type]
    try:
        raw = zlib.decompress(b"".join(data))
    except zlib.error as exc:
        raise BlindViewError(f"{path} has damaged image data: {exc}") from None
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise BlindViewError(f"{path} has {len(raw)} bytes of image data, expected {height * (stride + 1)}")
    return width, height, colour_type, raw


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    scanlines = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    filters, rows = scanlines[:, 0], scanlines[:, 1:]
    if not filters.any():
        return rows.copy()
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        line, kind = rows[y], int(filters[y])
        if kind == 0:
            current = line.copy()
        elif kind == 1:  # Sub: each byte adds the one a pixel to its left; wraps at 256 like PNG says
            current = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            current = line + previous
        elif kind in (3, 4):
            current = _unfilter_sequential(line, previous, bpp, kind)
        else:
            raise BlindViewError(f"{path} row {y} has unknown filter type {kind}")
        out[y] = current
        previous = current
    return out


def _unfilter_sequential(line: np.ndarray, previous: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """Average (3) and Paeth (4): each byte depends on the one just decoded, so one at a time."""
    current = [0] * len(line)
    up_row = previous.tolist()
    for i, value in enumerate(line.tolist()):
        left = current[i - bpp] if i >= bpp else 0
        up = up_row[i]
        if kind == 3:
            predictor = (left + up) // 2
        else:
            up_left = up_row[i - bpp] if i >= bpp else 0
            estimate = left + up - up_left
            distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
            predictor = (left, up, up_left)[distances.index(min(distances))]
        current[i] = (value + predictor) & 0xFF
    return np.asarray(current, dtype=np.uint8)


# --- scoring ----------------------------------------------------------------------------------------------


def score(blind: BlindEvaluation, predictions_dir: Path, model_dir: Path) -> dict[str, Any]:
    """The evaluation document for the predictions an evaluation container left in ``predictions_dir``.

    ``model_dir`` is the attempt's ``model/`` (its ``signature.json`` names the classes the indices refer
    to, and the artifact whose hash is recorded). Raises ``ScoringError`` naming what is wrong.
    Same fields as the labelled evaluation wrote, plus ``class_names``, ``confusion_matrix`` (rows: true
    class, columns: predicted) and ``predictions_sha256``.
    """
    signature = read_signature(model_dir)
    class_names = signature["class_names"]
    unknown = sorted({answer.label for answer in blind.answers} - set(class_names))
    if unknown:
        raise ScoringError(f"the held-out split has classes the model does not know: {unknown}")
    raw = _predictions_bytes(Path(predictions_dir), len(blind.answers), len(class_names))
    predicted, probabilities = parse_predictions(raw, [a.id for a in blind.answers], len(class_names))

    index = {name: i for i, name in enumerate(class_names)}
    y_true = np.array([index[answer.label] for answer in blind.answers], dtype=np.int64)
    y_pred = np.array([predicted[answer.id] for answer in blind.answers], dtype=np.int64)
    ordered_probabilities = None
    if probabilities is not None:
        values, dtype = probabilities
        ordered_probabilities = np.array([values[answer.id] for answer in blind.answers], dtype=dtype)
    return {
        **classification_scores(y_true, y_pred, class_names, ordered_probabilities),
        "schema_version": contract.SCHEMA_VERSION,
        "kind": signature["kind"],
        "evaluated_on": "test",
        "dataset_sha256": blind.dataset_sha256,
        "model_sha256": _file_sha256(Path(model_dir) / signature["file"]),
        "class_names": class_names,
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(class_names)).tolist(),
        "predictions_sha256": hashlib.sha256(raw).hexdigest(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_signature(model_dir: Path) -> dict[str, Any]:
    """The model's ``signature.json``, checked: it comes out of a container that ran user code."""
    path = Path(model_dir) / contract.SIGNATURE_FILE
    try:
        signature = json.loads(_read_regular_file(path, MAX_SIGNATURE_BYTES))
    except (OSError, ValueError) as exc:
        raise ScoringError(f"cannot read the model's signature {path}: {exc}") from None
    if not isinstance(signature, dict):
        raise ScoringError(f"{path} is not a JSON object")
    names, file_name, kind = signature.get("class_names"), signature.get("file"), signature.get("kind")
    if not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names)
    ):
        raise ScoringError(f"{path}: class_names must be a non-empty list of distinct strings")
    if not (
        isinstance(file_name, str) and file_name not in ("", ".", "..") and Path(file_name).name == file_name
    ):
        raise ScoringError(
            f"{path}: file must name the artifact inside the model directory, got {file_name!r}"
        )
    if not isinstance(kind, str):
        raise ScoringError(f"{path}: kind must be a string")
    return signature


def max_predictions_bytes(n_images: int, n_classes: int) -> int:
    """The largest ``predictions.json`` accepted: room for an indented file with full-precision floats."""
    return 64 * 1024 + n_images * (128 + 48 * n_classes)


def _predictions_bytes(predictions_dir: Path, n_images: int, n_classes: int) -> bytes:
    try:
        found = sorted(os.listdir(predictions_dir))
    except OSError as exc:
        raise ScoringError(f"cannot read the evaluation output {predictions_dir}: {exc.strerror}") from None
    extra = [name for name in found if name != PREDICTIONS_FILE]
    if extra:
        raise ScoringError(
            f"the evaluation container wrote {', '.join(extra)} besides {PREDICTIONS_FILE}; it "
            f"may write nothing else (the platform writes {EVALUATION_FILE} itself)"
        )
    if PREDICTIONS_FILE not in found:
        raise ScoringError(f"the evaluation container wrote no {PREDICTIONS_FILE}")
    try:
        return _read_regular_file(
            predictions_dir / PREDICTIONS_FILE, max_predictions_bytes(n_images, n_classes)
        )
    except OSError as exc:
        raise ScoringError(f"cannot read {PREDICTIONS_FILE}: {exc}") from None
    except ValueError as exc:
        raise ScoringError(f"{PREDICTIONS_FILE}: {exc}") from None


def _read_regular_file(path: Path, limit: int) -> bytes:
    """Read a file a container wrote: a regular file (a symlink could point anywhere here), capped."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than the {limit} this evaluation allows")
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as handle:
        content = handle.read(limit + 1)
    if len(content) > limit:
        raise ValueError(f"more than the {limit} bytes this evaluation allows")
    return content


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def parse_predictions(
    raw: bytes, ids: list[str], n_classes: int
) -> tuple[dict[str, int], tuple[dict[str, list[float]], str] | None]:
    """Validate ``predictions.json``: (id -> class index, (id -> probabilities, dtype) or None)."""
    try:
        document = json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ScoringError(f"{PREDICTIONS_FILE} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ScoringError(f"{PREDICTIONS_FILE} must be a JSON object")
    allowed = {"schema_version", "predicted", "probabilities", "probabilities_dtype"}
    if set(document) - allowed:
        raise ScoringError(f"{PREDICTIONS_FILE} has unknown fields: {sorted(set(document) - allowed)}")
    if document.get("schema_version") != PREDICTIONS_SCHEMA_VERSION:
        raise ScoringError(
            f"{PREDICTIONS_FILE} has schema_version {document.get('schema_version')!r}, "
            f"expected {PREDICTIONS_SCHEMA_VERSION}"
        )
    predicted = _one_per_id(document.get("predicted"), ids, "predicted")
    bad = [
        key
        for key, value in predicted.items()
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_classes
    ]
    if bad:
        raise ScoringError(
            f"{len(bad)} predictions are not class indices 0..{n_classes - 1} "
            f"(e.g. {bad[0]}: {predicted[bad[0]]!r})"
        )
    if ("probabilities" in document) != ("probabilities_dtype" in document):
        raise ScoringError(f"{PREDICTIONS_FILE} must give probabilities and probabilities_dtype together")
    if "probabilities" not in document:
        return predicted, None
    dtype = document["probabilities_dtype"]
    if dtype not in PROBABILITY_DTYPES:
        raise ScoringError(f"probabilities_dtype {dtype!r} is not one of {', '.join(PROBABILITY_DTYPES)}")
    probabilities = _one_per_id(document["probabilities"], ids, "probabilities")
    for key, row in probabilities.items():
        if not (
            isinstance(row, list)
            and len(row) == n_classes
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
        ):
            raise ScoringError(f"probabilities of {key} must be a list of {n_classes} numbers")
    problem = probability_problem(np.array([probabilities[i] for i in ids], dtype=dtype), len(ids), n_classes)
    if problem:
        raise ScoringError(f"{PREDICTIONS_FILE}: {problem}")
    return predicted, (probabilities, dtype)


def _one_per_id(answers: Any, ids: list[str], field: str) -> dict[str, Any]:
    if not isinstance(answers, dict):
        raise ScoringError(f"{PREDICTIONS_FILE}: {field} must be an object mapping image id to its answer")
    expected = set(ids)
    unknown = sorted(set(answers) - expected)
    missing = sorted(expected - set(answers))
    if unknown:
        raise ScoringError(
            f"{PREDICTIONS_FILE}: {field} answers {len(unknown)} ids the view does not have "
            f"(e.g. {unknown[0][:40]!r})"
        )
    if missing:
        raise ScoringError(
            f"{PREDICTIONS_FILE}: {field} misses {len(missing)} of the {len(ids)} images (e.g. {missing[0]})"
        )
    return answers


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {twice[:40]!r} appears more than once (every id is answered exactly once)")
    return document


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
