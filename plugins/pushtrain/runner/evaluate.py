"""The evaluation container's half of the gate: predictions for a label-blind view, and nothing more.

This process loads the saved model, and with it user code (a pickled estimator may be a class of the
user's file; a Keras model may have custom layers). So it is given no label: ``/data`` holds the held-out
images under opaque ids in one flat folder, or a table's rows under opaque ids without the label column
(``pushtrain.blind`` writes that view and keeps the answers on the Airflow side), and it writes only
``predictions.json``. The platform validates that file and computes every score itself; nothing this
process prints or writes can raise them.

``predictions.json`` (schema 1)::

    {"schema_version": 1,
     "predicted": {"<id>": <class index>, ...},          every id of the view, once
     "probabilities": {"<id>": [p_0, ..., p_k-1], ...},   only when the model gives them
     "probabilities_dtype": "float32" | "float64"}       the model's own precision, so the loss is the same
                                                         number the model's arrays give

Class indices follow ``class_names`` in the model's ``signature.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pushtrain.runner import contract
from pushtrain.runner.data import load_blind_view
from pushtrain.runner.usercode import ContractError, load_model_file, run_user_code

PREDICTIONS_SCHEMA_VERSION = 1
PROBABILITY_DTYPES = ("float32", "float64")
PROBABILITY_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6


def read_signature(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / contract.SIGNATURE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read {path}: {exc}") from None


def _user_classes(model_file: Path | None) -> dict[str, Any]:
    if model_file is None:
        return {}
    user = load_model_file(model_file)
    return {k: v for k, v in vars(user.module).items() if isinstance(v, type)}


def _keras_probabilities(artifact: Path, images: np.ndarray, model_file: Path | None) -> np.ndarray:
    """Load the model without running user code where possible; only custom layers need the model file."""
    import keras

    try:
        model = keras.models.load_model(artifact)
    except (TypeError, ValueError):
        model = run_user_code(
            Path(model_file or artifact),
            "loading the saved model",
            keras.models.load_model,
            artifact,
            custom_objects=_user_classes(model_file),
        )
    return run_user_code(
        Path(model_file or artifact), "predicting", model.predict, images, batch_size=256, verbose=0
    )


def _load_estimator(artifact: Path, model_file: Path | None):
    import joblib

    try:
        return joblib.load(artifact)
    except (AttributeError, ModuleNotFoundError):  # a class the user's file defines: import it first
        _user_classes(model_file)
        return run_user_code(Path(model_file or artifact), "loading the saved model", joblib.load, artifact)


def predict_images(
    signature: dict[str, Any], model_dir: Path, images: np.ndarray, model_file: Path | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class indices (int64) and, when the model gives them, class probabilities for ``images``."""
    artifact = Path(model_dir) / signature["file"]
    blame = Path(model_file or artifact)
    if signature["format"] == "keras":
        probabilities = np.asarray(_keras_probabilities(artifact, images, model_file))
        predicted = probabilities.argmax(axis=1)
    else:
        estimator = _load_estimator(artifact, model_file)
        flat = images.reshape(len(images), -1)
        probabilities = None
        if hasattr(estimator, "predict_proba"):
            probabilities = np.asarray(
                run_user_code(blame, "predicting (predict_proba)", estimator.predict_proba, flat)
            )
        predicted = run_user_code(blame, "predicting", estimator.predict, flat)
    try:
        predicted = np.asarray(predicted).astype(np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"the model's predictions are not class indices: {exc}") from None
    if len(predicted) != len(images):
        raise ContractError(f"the model predicted {len(predicted)} classes for {len(images)} images")
    return predicted, probabilities


def probability_problem(probabilities: np.ndarray, n_rows: int, n_classes: int) -> str | None:
    """Why ``probabilities`` is not one distribution over the classes per row, or None if it is."""
    if probabilities.dtype.name not in PROBABILITY_DTYPES:
        return f"probabilities have dtype {probabilities.dtype}, not one of {', '.join(PROBABILITY_DTYPES)}"
    if probabilities.shape != (n_rows, n_classes):
        return f"probabilities have shape {probabilities.shape}, expected ({n_rows}, {n_classes})"
    if not np.isfinite(probabilities).all():
        return "probabilities include NaN or infinity"
    if probabilities.size and (probabilities.min() < 0.0 or probabilities.max() > 1.0):
        return "probabilities outside [0, 1]"
    worst = float(np.abs(probabilities.sum(axis=1, dtype=np.float64) - 1.0).max()) if n_rows else 0.0
    if not worst <= PROBABILITY_SUM_TOLERANCE:
        return f"probability rows do not sum to 1 (off by up to {worst:.3g})"
    return None


def write_predictions(model_dir: Path, data_dir: Path, out_dir: Path, model_file: Path | None) -> dict:
    """Predict every image (or row) of the blind view in ``data_dir``; write ``out_dir/predictions.json``."""
    signature = read_signature(model_dir)
    class_names = signature["class_names"]
    ids, images = load_blind_view(data_dir, signature["input_shape"])
    predicted, probabilities = predict_images(signature, model_dir, images, model_file)
    document: dict[str, Any] = {
        "schema_version": PREDICTIONS_SCHEMA_VERSION,
        "predicted": dict(zip(ids, predicted.tolist(), strict=True)),
    }
    if probabilities is not None:
        problem = probability_problem(probabilities, len(ids), len(class_names))
        if problem:
            # The loss needs a distribution per image; without one it is reported as unknown, as before.
            print(f"[pushtrain] probabilities left out of {contract.PREDICTIONS_FILE}: {problem}", flush=True)
        else:
            document["probabilities"] = dict(zip(ids, probabilities.tolist(), strict=True))
            document["probabilities_dtype"] = probabilities.dtype.name
    contract.write_json_atomic(Path(out_dir) / contract.PREDICTIONS_FILE, document)
    return {"n_predicted": len(ids), "probabilities": "probabilities" in document}
