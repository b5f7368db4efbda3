"""Trusted evaluation: score a saved model on the platform's held-out images.

Runs in its own sandboxed container after training. The held-out images are mounted only here, never
into a training container, so the number the accuracy gate uses is not one user code could print.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pushtrain.runner import contract
from pushtrain.runner.data import load_image_folder
from pushtrain.runner.metrics import classification_scores
from pushtrain.runner.usercode import ContractError, load_model_file, run_user_code

EVALUATION_FILE = "evaluation.json"


def _user_classes(model_file: Path | None) -> dict[str, Any]:
    if model_file is None:
        return {}
    user = load_model_file(model_file)
    return {k: v for k, v in vars(user.module).items() if isinstance(v, type)}


def _keras_probabilities(artifact: Path, images, model_file: Path | None):
    """Load the model without running user code where possible; only custom layers need the model file."""
    import keras

    try:
        model = keras.models.load_model(artifact)
    except (TypeError, ValueError):
        model = run_user_code(Path(model_file or artifact), "loading the saved model", keras.models.load_model,
                              artifact, custom_objects=_user_classes(model_file))
    return model.predict(images, batch_size=256, verbose=0)


def _load_estimator(artifact: Path, model_file: Path | None):
    import joblib

    try:
        return joblib.load(artifact)
    except (AttributeError, ModuleNotFoundError):  # a class the user's file defines: import it first
        _user_classes(model_file)
        return run_user_code(Path(model_file or artifact), "loading the saved model", joblib.load, artifact)


def evaluate_saved_model(model_dir: Path, data_dir: Path, out_dir: Path, model_file: Path | None) -> dict:
    signature_path = Path(model_dir) / contract.SIGNATURE_FILE
    try:
        signature = json.loads(signature_path.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read {signature_path}: {exc}") from None
    artifact = Path(model_dir) / signature["file"]
    data = load_image_folder(data_dir, class_names=signature["class_names"])
    if list(data.input_shape) != list(signature["input_shape"]):
        raise ContractError(f"held-out images have shape {data.input_shape}, the model expects "
                            f"{tuple(signature['input_shape'])}")

    if signature["format"] == "keras":
        probabilities = _keras_probabilities(artifact, data.images, model_file)
        predicted = probabilities.argmax(axis=1)
    else:
        estimator = _load_estimator(artifact, model_file)
        flat = data.images.reshape(len(data.images), -1)
        probabilities = estimator.predict_proba(flat) if hasattr(estimator, "predict_proba") else None
        predicted = estimator.predict(flat)

    result = {
        **classification_scores(data.labels, predicted, signature["class_names"], probabilities),
        "schema_version": contract.SCHEMA_VERSION,
        "kind": signature["kind"],
        "evaluated_on": "test",
        "dataset_sha256": data.sha256,
        "model_sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    contract.write_json_atomic(Path(out_dir) / EVALUATION_FILE, result)
    return result
