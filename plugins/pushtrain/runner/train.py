"""Train one attempt with per-epoch checkpoints, resuming from the last completed epoch after a restart.

A checkpoint is written to a temporary name and renamed into place, then ``state.json`` (itself written
atomically) points at it: a kill at any moment leaves either the previous consistent state or the new one.
Checkpoints are keyed on (run key, code hash, hyperparameters, data set hash), so a restarted container
resumes only work that is really its own.

Running out of disk space anywhere in an attempt ends it as ``DiskFullError`` (exit 8, not restarted): the
partly written file is removed, the last checkpoint stays intact, and the message says how much space there
is and what to free; after that, a retry resumes from the last checkpoint.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import platform
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pushtrain import kinds
from pushtrain.kinds import KERAS, SCIKIT_LEARN
from pushtrain.runner import contract
from pushtrain.runner.data import ImageFolder, validation_mask
from pushtrain.runner.metrics import classification_scores
from pushtrain.runner.usercode import BUILD, ContractError, ModelFile, UserCodeError, run_user_code

VALIDATION_FRACTION = 0.15


class Terminated(BaseException):
    """SIGTERM arrived before training completed (a BaseException so user code cannot swallow it)."""


class TerminationGuard:
    """SIGTERM ends a running attempt with exit 143, but a completed one with 0."""

    def __init__(self) -> None:
        self.completed = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.completed:
            raise SystemExit(contract.EXIT_OK)
        raise Terminated()


@dataclass
class Progress:
    """Prints one plain line per event and keeps the same lines in ``progress.log``."""

    log_path: Path

    def __call__(self, message: str) -> None:
        line = f"[pushtrain] {message}"
        print(line, flush=True)
        with self.log_path.open("a") as handle:
            handle.write(line + "\n")


@dataclass
class CheckpointStore:
    directory: Path
    suffix: str  # ".keras" or ".joblib": Keras picks the format from the file name
    state: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True  # off only to measure what checkpointing costs (benchmarks/); then no resume

    @classmethod
    def open(cls, out_dir: Path, key: str, suffix: str, enabled: bool = True) -> CheckpointStore:
        directory = out_dir / contract.CHECKPOINT_DIR / key
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".tmp-*"):  # a write that a kill interrupted
            leftover.unlink(missing_ok=True)
        store = cls(directory, suffix, enabled=enabled)
        state_path = directory / "state.json"
        if state_path.exists():
            store.state = json.loads(state_path.read_text())
        return store

    @property
    def last_epoch(self) -> int:
        return int(self.state.get("epoch", 0))

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.state.get("history", []))

    @property
    def train_seconds(self) -> float:
        return float(self.state.get("train_seconds", 0.0))

    @property
    def checkpoint_path(self) -> Path | None:
        name = self.state.get("file")
        return self.directory / name if name else None

    def save(
        self, epoch: int, history: list[dict], train_seconds: float, write: Callable[[Path], None]
    ) -> None:
        # What a warm start began from stays in the state, so a restart still reports it.
        kept = {k: self.state[k] for k in ("warm_start_epochs",) if k in self.state}
        if not self.enabled:
            self.state = {"epoch": epoch, "history": history, "train_seconds": train_seconds, **kept}
            return
        name = f"epoch-{epoch:04d}{self.suffix}"
        temporary = self.directory / f".tmp-{epoch:04d}{self.suffix}"
        try:
            write(temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)  # a disk-full error needs the space a partial file holds
            raise
        os.replace(temporary, self.directory / name)
        previous = self.checkpoint_path
        self.state = {
            "epoch": epoch,
            "file": name,
            "history": history,
            "train_seconds": train_seconds,
            **kept,
        }
        contract.write_json_atomic(self.directory / "state.json", self.state)
        if previous and previous.name != name:
            previous.unlink(missing_ok=True)


def checkpoint_key(run_key: str, model: ModelFile, hparams: dict, dataset_sha256: str) -> str:
    material = json.dumps([run_key, model.code_sha256, hparams, dataset_sha256], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass
class Attempt:
    """Everything one training run needs; built by ``__main__`` from the command line."""

    kind: str
    model: ModelFile
    hparams: dict[str, Any]
    data: ImageFolder
    out_dir: Path
    run_key: str
    progress: Progress
    guard: TerminationGuard
    checkpoints: bool = True
    warm_start: Path | None = None  # an earlier attempt's output dir whose model this one may continue

    @property
    def checkpoint_key(self) -> str:
        return checkpoint_key(self.run_key, self.model, self.hparams, self.data.sha256)

    def completed_metrics(self) -> dict | None:
        """The metrics of this very attempt if it already completed: then a restart trains nothing."""
        done = already_completed(self.out_dir, self.checkpoint_key)
        if done:
            self.guard.completed = True
            self.progress(f"attempt already completed ({done['epochs_run']} epochs): not retraining")
        return done

    def open_checkpoints(self, suffix: str) -> CheckpointStore:
        return CheckpointStore.open(self.out_dir, self.checkpoint_key, suffix, enabled=self.checkpoints)

    def split(self) -> tuple[ImageFolder, ImageFolder, str]:
        mask = validation_mask(self.data.relative_paths, VALIDATION_FRACTION)
        if mask.sum() == 0 or mask.sum() == len(mask):
            return self.data, self.data, "training"
        return self.data.subset(~mask), self.data.subset(mask), "validation"


def warm_start_source(attempt: Attempt, artifact_name: str) -> tuple[Path, dict] | None:
    """The earlier attempt's model and metrics if this attempt may continue it, else None (train anew).

    Continuing is the same as training longer only when nothing but ``epochs`` changed (same knobs, same
    data set) and the earlier attempt trained fewer epochs; anything else would be a different model.
    """
    if attempt.warm_start is None:
        return None
    source = attempt.warm_start
    try:
        earlier = contract.read_metrics(source)
    except ValueError as exc:
        attempt.progress(f"warm start skipped, training from scratch: {exc}")
        return None
    ours, theirs = attempt.hparams, earlier["hparams"]
    differing = sorted(k for k in set(ours) | set(theirs) if k != "epochs" and ours.get(k) != theirs.get(k))
    artifact = source / contract.MODEL_DIR / artifact_name
    reason = None
    if earlier["kind"] != attempt.kind:
        reason = f"it trained a {earlier['kind']} model, this attempt a {attempt.kind} one"
    elif differing:
        reason = f"hyperparameters other than epochs differ: {', '.join(differing)}"
    elif not isinstance(ours.get("epochs"), int) or earlier["epochs_run"] >= ours["epochs"]:
        reason = (
            f"it already trained {earlier['epochs_run']} epochs, this attempt asks for {ours.get('epochs')}"
        )
    elif earlier["dataset_sha256"] != attempt.data.sha256:
        reason = "it trained on other data"
    elif not artifact.is_file():
        reason = f"{artifact} is missing"
    if reason:
        attempt.progress(f"warm start skipped, training from scratch: {reason}")
        return None
    return artifact, earlier


def already_completed(out_dir: Path, key: str) -> dict | None:
    """The metrics of a completed attempt with this checkpoint key, if it already finished."""
    try:
        metrics = contract.read_metrics(out_dir)
    except ValueError:
        return None
    return metrics if metrics.get("checkpoint_key") == key else None


def _versions(*modules: Any) -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in modules:
        versions[module.__name__] = getattr(module, "__version__", "unknown")
    return versions


def _finish(
    attempt: Attempt,
    scores: dict,
    store: CheckpointStore,
    resumed_from: int,
    evaluated_on: str,
    n_train: int,
    versions: dict[str, str],
    signature: dict,
) -> dict:
    contract.write_json_atomic(attempt.out_dir / contract.MODEL_DIR / contract.SIGNATURE_FILE, signature)
    metrics = {
        "schema_version": contract.SCHEMA_VERSION,
        "kind": attempt.kind,
        "evaluated_on": evaluated_on,
        **scores,
        "n_train": n_train,
        "epochs_run": store.last_epoch,
        "resumed_from_epoch": resumed_from,
        "warm_start_epochs": int(store.state.get("warm_start_epochs", 0)),
        "train_seconds": round(store.train_seconds, 3),
        "history": store.history,
        "hparams": attempt.hparams,
        "code_sha256": attempt.model.code_sha256,
        "dataset_sha256": attempt.data.sha256,
        "checkpoint_key": attempt.checkpoint_key,
        "run_key": attempt.run_key,
        "versions": versions,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    problems = contract.validate_metrics(metrics)
    if problems:  # our bug, not the user's: fail loudly rather than write a document the platform rejects
        raise RuntimeError("runner produced invalid metrics: " + "; ".join(problems))
    contract.write_json_atomic(attempt.out_dir / contract.METRICS_FILE, metrics)
    attempt.guard.completed = True
    return metrics


def _epoch_line(epoch: int, total: int, record: dict) -> str:
    scores = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds"))
    return f"epoch {epoch}/{total} {scores} seconds={record['seconds']:.2f}"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
SPACE_RESERVE_BYTES = 256 * 1024  # enough for error.json and its temp file once a full disk stops training


class DiskFullError(UserCodeError):
    """No space left for the attempt's output; the message says how much is free, ``fix`` what to free.

    A ``UserCodeError`` only as the carrier the entry point reports (category ``disk``, exit 8, with a fix):
    the user's code is not at fault.
    """

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message, "disk", fix)


def _disk_full_cause(error: BaseException) -> OSError | None:
    """The no-space OSError behind ``error`` (user-code errors and frameworks wrap it), if that is the cause."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and (error.errno in DISK_FULL_ERRNOS or "No space left" in str(error)):
            return error
        error = error.__cause__ or error.__context__
    return None


def reports_disk_full(train: Callable[[Attempt], dict]) -> Callable[[Attempt], dict]:
    """Run ``train`` with a little disk space set aside; a full disk becomes ``DiskFullError``.

    The reserve (a file under ``checkpoints/``, which the platform removes with them) is freed before the
    error is raised, so the runner can still write ``error.json`` on a disk that is otherwise full.
    """

    @functools.wraps(train)
    def guarded(attempt: Attempt) -> dict:
        reserve = attempt.out_dir / contract.CHECKPOINT_DIR / ".space-reserve"
        try:
            reserve.parent.mkdir(parents=True, exist_ok=True)
            with reserve.open("wb") as handle:  # written, not fallocate'd: every filesystem honours that
                handle.write(bytes(SPACE_RESERVE_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            return train(attempt)
        except BaseException as error:
            cause = _disk_full_cause(error)
            if cause is None:
                raise
            reserve.unlink(missing_ok=True)
            raise _disk_full(attempt.out_dir, cause) from error
        finally:
            reserve.unlink(missing_ok=True)

    return guarded


def _disk_full(out_dir: Path, cause: OSError) -> DiskFullError:
    usage = os.statvfs(out_dir)
    free_mb = usage.f_bavail * usage.f_frsize / 1e6
    total_mb = usage.f_blocks * usage.f_frsize / 1e6
    checkpoints = [p.stat().st_size for p in (out_dir / contract.CHECKPOINT_DIR).glob("*/epoch-*")]
    needs = f"; a checkpoint of this model takes {max(checkpoints) / 1e6:.3g} MB" if checkpoints else ""
    writing = f" while writing {cause.filename}" if cause.filename else ""
    return DiskFullError(
        f"disk full{writing}: {free_mb:.1f} MB of {total_mb:.1f} MB free on the disk of the attempt's output "
        f"dir{needs}. The last completed epoch's checkpoint is intact",
        "free space on the disk that holds pushtrain's data dir (PUSHTRAIN_DATA_DIR): outputs of finished "
        "pipelines under runs/, registry versions that are not in production, or give it a larger disk; then "
        "clear the failed training task, and the attempt resumes from its last checkpoint",
    )


@reports_disk_full
def train_keras(attempt: Attempt) -> dict:
    import keras
    import tensorflow as tf

    hp = attempt.hparams
    epochs = _positive_int(hp, "epochs")
    batch_size = _positive_int(hp, "batch_size", default=32)
    train, validation, evaluated_on = attempt.split()
    done = attempt.completed_metrics()
    if done:
        return done

    store = attempt.open_checkpoints(".keras")
    custom_objects = {k: v for k, v in vars(attempt.model.module).items() if isinstance(v, type)}
    keras.utils.set_random_seed(int(hp.get("seed", 0)) + store.last_epoch)
    resumed_from = store.last_epoch
    warm = None if store.checkpoint_path else warm_start_source(attempt, "model.keras")
    if store.checkpoint_path and store.checkpoint_path.exists():
        model = keras.models.load_model(store.checkpoint_path, custom_objects=custom_objects)
        attempt.progress(f"resuming from checkpoint at epoch {resumed_from}/{epochs}")
    elif warm:
        resumed_from = 0
        model = run_user_code(
            attempt.model.path,
            "loading the earlier attempt's model",
            keras.models.load_model,
            warm[0],
            custom_objects=custom_objects,
        )
        _continue_earlier(attempt, store, warm[1], epochs)
        keras.utils.set_random_seed(int(hp.get("seed", 0)) + store.last_epoch)
    else:
        resumed_from = 0
        builder = attempt.model.builder(KERAS)
        model = run_user_code(
            attempt.model.path,
            f"calling {KERAS.builder}()",
            builder,
            dict(hp),
            train.input_shape,
            len(train.class_names),
            stage=BUILD,
        )
        if not isinstance(model, keras.Model):
            raise ContractError(f"{KERAS.builder}() returned {type(model).__name__}, not a keras.Model")
        if not model.built:  # a model without an Input builds in fit; its shape errors belong to the build
            run_user_code(
                attempt.model.path, "building the model", model.build, (None, *train.input_shape), stage=BUILD
            )
        if not model.compiled:
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        attempt.progress(
            f"training {epochs} epochs on {len(train.labels)} images, "
            f"{evaluated_on} on {len(validation.labels)}"
        )

    history = store.history
    epoch_started = [0.0]

    class CheckpointEveryEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            epoch_started[0] = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds = time.perf_counter() - epoch_started[0]
            record = {
                "epoch": epoch + 1,
                **{k: float(v) for k, v in (logs or {}).items()},
                "seconds": round(seconds, 3),
            }
            history.append(record)
            store.save(epoch + 1, history, store.train_seconds + seconds, self.model.save)
            attempt.progress(_epoch_line(epoch + 1, epochs, record))

    if store.last_epoch < epochs:
        run_user_code(
            attempt.model.path,
            "training (model.fit)",
            model.fit,
            train.images,
            train.labels,
            batch_size=batch_size,
            epochs=epochs,
            initial_epoch=store.last_epoch,
            validation_data=(validation.images, validation.labels),
            callbacks=[CheckpointEveryEpoch()],
            shuffle=True,
            verbose=0,
        )
    probabilities = model.predict(validation.images, batch_size=256, verbose=0)
    scores = classification_scores(
        validation.labels, probabilities.argmax(axis=1), train.class_names, probabilities
    )
    _save_atomically(attempt.out_dir / contract.MODEL_DIR / "model.keras", model.save)
    signature = {
        "kind": attempt.kind,
        "format": "keras",
        "file": "model.keras",
        "class_names": train.class_names,
        "input_shape": list(train.input_shape),
    }
    return _finish(
        attempt, scores, store, resumed_from, evaluated_on, len(train.labels), _versions(tf, keras), signature
    )


@reports_disk_full
def train_sklearn(attempt: Attempt) -> dict:
    import joblib
    import sklearn

    hp = attempt.hparams
    train, validation, evaluated_on = attempt.split()
    x_train, x_validation = _flatten(train.images), _flatten(validation.images)
    done = attempt.completed_metrics()
    if done:
        return done

    store = attempt.open_checkpoints(".joblib")
    resumed_from = store.last_epoch
    warm = None if store.checkpoint_path or "epochs" not in hp else warm_start_source(attempt, "model.joblib")
    if store.checkpoint_path and store.checkpoint_path.exists():
        estimator = joblib.load(store.checkpoint_path)
        attempt.progress(f"resuming from checkpoint at epoch {resumed_from}")
    elif warm and hasattr(
        continued := run_user_code(
            attempt.model.path, "loading the earlier attempt's model", joblib.load, warm[0]
        ),
        "partial_fit",
    ):
        # Only a partial_fit estimator learns on from where it was; a plain fit would start over anyway.
        resumed_from = 0
        estimator = continued
        _continue_earlier(attempt, store, warm[1], hp["epochs"])
    else:
        resumed_from = 0
        builder = attempt.model.builder(SCIKIT_LEARN)
        estimator = run_user_code(
            attempt.model.path, f"calling {SCIKIT_LEARN.builder}()", builder, dict(hp), stage=BUILD
        )
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
            raise ContractError(
                f"{SCIKIT_LEARN.builder}() returned {type(estimator).__name__}, "
                "not a scikit-learn classifier (it needs fit and predict)"
            )

    # Estimators with partial_fit learn one pass at a time and are checkpointed after each; the rest
    # (KNN, most pipelines) fit once, which counts as one epoch.
    incremental = hasattr(estimator, "partial_fit") and "epochs" in hp
    epochs = _positive_int(hp, "epochs") if incremental else 1
    if resumed_from == 0:
        attempt.progress(
            f"training {epochs} epoch(s) on {len(train.labels)} images, "
            f"{evaluated_on} on {len(validation.labels)}"
        )
    history = store.history
    classes = np.arange(len(train.class_names))
    for epoch in range(store.last_epoch + 1, epochs + 1):
        started = time.perf_counter()
        if incremental:
            order = np.random.default_rng([int(hp.get("seed", 0)), epoch]).permutation(len(train.labels))
            run_user_code(
                attempt.model.path,
                "training (partial_fit)",
                estimator.partial_fit,
                x_train[order],
                train.labels[order],
                classes=classes,
            )
        else:
            run_user_code(attempt.model.path, "training (fit)", estimator.fit, x_train, train.labels)
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "accuracy": float((estimator.predict(x_train) == train.labels).mean()),
            "val_accuracy": float((estimator.predict(x_validation) == validation.labels).mean()),
            "seconds": round(seconds, 3),
        }
        history.append(record)
        store.save(
            epoch,
            history,
            store.train_seconds + seconds,
            lambda path, model=estimator: joblib.dump(model, path),
        )
        attempt.progress(_epoch_line(epoch, epochs, record))

    probabilities = estimator.predict_proba(x_validation) if hasattr(estimator, "predict_proba") else None
    predicted = estimator.predict(x_validation)
    scores = classification_scores(validation.labels, predicted, train.class_names, probabilities)
    _save_atomically(
        attempt.out_dir / contract.MODEL_DIR / "model.joblib", lambda path: joblib.dump(estimator, path)
    )
    signature = {
        "kind": attempt.kind,
        "format": "joblib",
        "file": "model.joblib",
        "class_names": train.class_names,
        "input_shape": list(train.input_shape),
    }
    return _finish(
        attempt,
        scores,
        store,
        resumed_from,
        evaluated_on,
        len(train.labels),
        _versions(sklearn, joblib),
        signature,
    )


def trainer_for(kind: str) -> Callable[[Attempt], dict]:
    """The training function of the kind's framework (from the kinds table)."""
    return {KERAS: train_keras, SCIKIT_LEARN: train_sklearn}[kinds.kind(kind).framework]


def _continue_earlier(attempt: Attempt, store: CheckpointStore, earlier: dict, epochs: int) -> None:
    """Start this attempt after the earlier one's epochs (its history kept), counting only new seconds."""
    store.state = {
        "epoch": earlier["epochs_run"],
        "history": list(earlier["history"]),
        "train_seconds": 0.0,
        "warm_start_epochs": earlier["epochs_run"],
    }
    attempt.progress(
        f"warm start: continuing the {store.last_epoch} epochs of {attempt.warm_start} "
        f"up to {epochs} (only epochs changed)"
    )


def _flatten(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def _save_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    write(temporary)
    os.replace(temporary, path)


def _positive_int(hp: dict, name: str, default: int | None = None) -> int:
    value = hp.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContractError(f"HPARAMS[{name!r}] must be a positive integer, got {value!r}")
    return value
