"""The runner contract: what a training container is given and what it leaves behind.

Both sides import this module: the runner inside the images and the Airflow side that launches containers
and validates their output. It uses the standard library and the kinds table (``pushtrain.kinds``, also
standard library only), so it can travel into any image.

Inputs (mounts; the constants below are the only place these paths are spelled)
    ``/workspace/model``  read-only, the user's repository checkout (the model file inside it)
    ``/data``             read-only, the training images: ``<label>/<name>.png``
    ``/out``              writable, one directory per (pipeline run, attempt); an evaluation gets the
                          attempt's saved model read-only at ``/out/model`` and writes ``/out/evaluation``
    ``/warm-start``       read-only, optional: an earlier attempt's output dir that differs only in epochs;
                          the runner continues its model instead of training the first epochs again

Outputs (in the attempt's output directory)
    ``checkpoints/<key>/``  per-epoch checkpoints, key = hash of (run key, code hash, hyperparameters)
    ``model/``              the saved model and ``signature.json`` (kind, classes, input shape)
    ``metrics.json``        written once, atomically, when training completed (schema below)
    ``error.json``          written when the attempt failed for a reason the runner understands
    ``progress.log``        one plain line per epoch, the same lines the container prints

Failures: the exit code says whether a restart can help, ``error.json`` says what to do
    ``exit_code``  the container's exit code (below)
    ``category``   ``usage``, ``data``, ``contract``, ``syntax``, ``import``, ``load``, ``build``,
                   ``runtime``, ``disk`` or ``terminated`` (``FAILURE_CATEGORIES``)
    ``healable``   false when the same container would fail the same way again: the platform fails the
                   attempt at once (no container restart, no task retry); true for failures during training
                   (an exception at epoch 7, a SIGTERM), which use container_health's restart budgets
    ``reason``     the exit code's meaning
    ``message``    what failed, with the file and line of user code (a syntax error's caret included)
    ``fix``        what the user should do, one sentence (may be empty); the platform leads with it

    ====  ==================================================================  =========  ===============
    exit  meaning                                                             healable   categories
    ====  ==================================================================  =========  ===============
    0     completed                                                           -          -
    1     a bug in the runner itself (traceback on stderr, no error.json)     yes        -
    2     usage error: bad runner arguments or a missing mount               no         usage
    3     data set missing, empty or unreadable                               no         data
    4     the model file breaks the contract (HPARAMS, builder, return type)  no         contract
    5     user code raised while training or evaluating                       yes        runtime
    6     user code cannot run here: syntax error, missing module or name,    no         syntax, import,
          an exception while loading the model file                                      load
    7     the builder, model construction or compile raised (before epoch 1)  no         build
    8     disk full while writing a checkpoint, the model, metrics or a log   no         disk
          (the last checkpoint stays intact: after space is freed, a retry
          resumes from it)
    137   SIGKILL: docker kill, or out of memory (Docker's OOMKilled flag)    yes        -
    143   SIGTERM before training completed                                   yes        terminated
    ====  ==================================================================  =========  ===============
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from pushtrain.kinds import KINDS

SCHEMA_VERSION = 1

# Mount points inside the container; the launcher mounts there and the runner reads from there.
MODEL_MOUNT = "/workspace/model"
DATA_MOUNT = "/data"
OUT_MOUNT = "/out"
EVALUATED_MODEL_MOUNT = f"{OUT_MOUNT}/model"  # evaluation only: the attempt's model/, read-only
EVALUATION_OUT_MOUNT = f"{OUT_MOUNT}/evaluation"  # evaluation only: where evaluation.json goes
WARM_START_MOUNT = "/warm-start"

# Exit codes. 137 (SIGKILL, also the kernel's OOM killer) is not ours: the launcher reads Docker's
# OOMKilled flag to tell the two apart.
EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments or a missing mount: a platform bug, not the user's
EXIT_DATA_ERROR = 3  # the data set is missing, empty or unreadable
EXIT_CONTRACT_ERROR = 4  # the model file lacks HPARAMS or its builder, or they have the wrong shape
EXIT_USER_CODE_ERROR = 5  # user code raised while training or evaluating: may be transient
EXIT_LOAD_ERROR = 6  # user code cannot run: syntax error, missing module or name, exception at import
EXIT_BUILD_ERROR = 7  # the builder, model construction or compile raised before the first epoch
EXIT_DISK_FULL = 8  # no space left for the attempt's output: a restart on the same full disk fails again
EXIT_TERMINATED = 143  # SIGTERM before training completed (128 + 15)
EXIT_KILLED = 137  # SIGKILL: docker kill, or out of memory when Docker reports OOMKilled

EXIT_CODE_MEANINGS = {
    EXIT_OK: "completed",
    EXIT_USAGE: "usage error (platform bug: bad runner arguments or a missing mount)",
    EXIT_DATA_ERROR: "data set error",
    EXIT_CONTRACT_ERROR: "model file does not follow the contract (HPARAMS and builder)",
    EXIT_USER_CODE_ERROR: "error in user code while training",
    EXIT_LOAD_ERROR: "the model file cannot run (syntax error, missing module or name)",
    EXIT_BUILD_ERROR: "the model could not be built",
    EXIT_DISK_FULL: "disk full",
    EXIT_TERMINATED: "terminated (SIGTERM) before training completed",
    EXIT_KILLED: "killed (SIGKILL)",
}

# error.json's category -> the exit code it ends with. Its healable flag is healable(exit code).
FAILURE_CATEGORIES = {
    "usage": EXIT_USAGE,
    "data": EXIT_DATA_ERROR,
    "contract": EXIT_CONTRACT_ERROR,
    "syntax": EXIT_LOAD_ERROR,
    "import": EXIT_LOAD_ERROR,
    "load": EXIT_LOAD_ERROR,
    "build": EXIT_BUILD_ERROR,
    "runtime": EXIT_USER_CODE_ERROR,
    "disk": EXIT_DISK_FULL,
    "terminated": EXIT_TERMINATED,
}
# A container that ended with one of these fails the same way if started again.
UNHEALABLE_EXITS = frozenset(
    {EXIT_USAGE, EXIT_DATA_ERROR, EXIT_CONTRACT_ERROR, EXIT_LOAD_ERROR, EXIT_BUILD_ERROR, EXIT_DISK_FULL}
)


def healable(exit_code: int) -> bool:
    """Whether restarting a container that exited so could help (out of memory counts as healable)."""
    return exit_code not in UNHEALABLE_EXITS


METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"  # the evaluation container's only output; the platform scores it
ERROR_FILE = "error.json"
PROGRESS_FILE = "progress.log"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
SIGNATURE_FILE = "signature.json"

# metrics.json: name -> (type, required). Per-class scores are {label: {precision, recall, f1, support}}.
METRICS_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "schema_version": (int, True),
    "kind": (str, True),
    "evaluated_on": (str, True),  # "validation" (carved from the training images) or "test"
    "accuracy": (float, True),
    "precision": (float, True),  # macro average over classes
    "recall": (float, True),  # macro average over classes
    "f1": (float, True),
    "loss": ((float, type(None)), True),  # cross-entropy on the evaluated images; None if not probabilistic
    "per_class": (dict, True),
    "n_train": (int, True),
    "n_evaluated": (int, True),
    "epochs_run": (int, True),  # epochs completed in total, across restarts
    "resumed_from_epoch": (int, True),  # 0 for a fresh start, else the last checkpointed epoch
    "warm_start_epochs": (int, False),  # epochs continued from an earlier attempt's model (only epochs grew)
    "train_seconds": (float, True),  # seconds spent training, summed over restarts
    "history": (list, True),  # one dict per epoch: epoch, loss, accuracy, val_accuracy, seconds
    "hparams": (dict, True),
    "code_sha256": (str, True),
    "dataset_sha256": (str, True),
    "versions": (dict, True),  # library versions: python, numpy, tensorflow/keras or scikit-learn
    "finished_at": (str, True),
}


def validate_metrics(metrics: Any) -> list[str]:
    """Return the problems of a metrics document; an empty list means it follows the schema."""
    if not isinstance(metrics, dict):
        return [f"metrics must be a JSON object, got {type(metrics).__name__}"]
    problems = []
    for name, (expected, required) in METRICS_SCHEMA.items():
        if name not in metrics:
            if required:
                problems.append(f"missing field {name!r}")
            continue
        value = metrics[name]
        # JSON has one number type: accept ints where floats are expected, never bools.
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, expected):
            problems.append(f"field {name!r} has type {type(value).__name__}")
    if metrics.get("schema_version") not in (None, SCHEMA_VERSION):
        problems.append(f"schema_version {metrics.get('schema_version')} is not {SCHEMA_VERSION}")
    for name in ("accuracy", "precision", "recall", "f1"):
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not (0.0 <= value <= 1.0 and math.isfinite(value)):
            problems.append(f"field {name!r} = {value} is outside [0, 1]")
    if metrics.get("kind") not in (None, *KINDS):
        problems.append(f"kind {metrics.get('kind')!r} is not one of {', '.join(KINDS)}")
    return problems


def read_metrics(out_dir: Path) -> dict[str, Any]:
    """Read and validate an attempt's metrics.json; raise ValueError naming every problem."""
    path = Path(out_dir) / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: the attempt did not complete") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    problems = validate_metrics(metrics)
    if problems:
        raise ValueError(f"{path} does not follow metrics schema v{SCHEMA_VERSION}: " + "; ".join(problems))
    return metrics


def read_error(out_dir: Path, exit_code: int) -> dict[str, Any] | None:
    """The runner's error.json for a container that ended with ``exit_code``; None if absent or stale."""
    try:
        error = json.loads((Path(out_dir) / ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(error, dict) or error.get("exit_code") != exit_code:
        return None  # left by an earlier container of this attempt
    return error


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON so that a reader (or a kill) never sees a half-written file: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
