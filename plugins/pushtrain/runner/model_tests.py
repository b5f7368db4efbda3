"""A repository's model tests, run in the evaluation sandbox after the gate and before registration.

``python -m pushtrain.runner model-tests --model-dir /model --tests /tests/model_tests.py --data /data
--out /out`` imports the tests file and calls every function whose name starts with ``test_``, pytest
style, passing the arguments it names:

* ``model``: the trained model, :class:`ModelUnderTest` (``predict(images)`` -> class indices,
  ``predict_proba(images)`` -> probabilities or None, ``class_names``, ``input_shape``);
* ``held_out``: the held-out split, with ``images`` (float32 in [0, 1]), ``labels`` (class indices) and
  ``class_names``.

A test passes when it returns; it fails on an ``AssertionError`` (its message, or the ``assert`` line when
it has none) or any other exception. ``model_tests.json`` lists every test: ``{"schema_version": 1,
"tests": [{"name", "passed", "message", "seconds"}]}``. The platform decides what a failure means.

The gate's score is settled before this runs, so these tests see labels: they can only hold a model back.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from pushtrain.runner import contract
from pushtrain.runner.serve import LoadedModel

RESULT_FILE = "model_tests.json"
RESULT_SCHEMA_VERSION = 1
PREDICT_BATCH = 256


class ModelUnderTest:
    """The trained model as a model test sees it."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        self.class_names = list(loaded.class_names)
        self.input_shape = tuple(loaded.input_shape)

    def _batches(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        images = np.asarray(images, dtype=np.float32).reshape(-1, *self.input_shape)
        return [
            self._loaded.predict(images[start : start + PREDICT_BATCH])
            for start in range(0, len(images), PREDICT_BATCH)
        ]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([indices for indices, _ in self._batches(images)])

    def predict_proba(self, images: np.ndarray) -> np.ndarray | None:
        parts = [probabilities for _, probabilities in self._batches(images)]
        return None if any(p is None for p in parts) else np.concatenate(parts)


def _failure_message(error: BaseException) -> str:
    if isinstance(error, AssertionError):
        if str(error):
            return str(error)
        frames = traceback.extract_tb(error.__traceback__)
        return (frames[-1].line or "assertion failed") if frames else "assertion failed"
    return f"{type(error).__name__}: {error}"


def run_model_tests(
    model_dir: Path, tests_file: Path, data_dir: Path, out_dir: Path, model_file: Path | None = None
) -> dict[str, Any]:
    from pushtrain.runner.data import load_data

    model = ModelUnderTest(LoadedModel(model_dir, model_file))
    held_out = load_data(data_dir)
    spec = importlib.util.spec_from_file_location("model_tests", tests_file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(tests_file).parent))
    results = []
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the file itself does not import: one failure that says so
        results.append(
            {
                "name": Path(tests_file).name,
                "passed": False,
                "seconds": 0.0,
                "message": f"cannot import the model tests: {_failure_message(error)}",
            }
        )
    tests = (
        [
            (name, value)
            for name, value in vars(module).items()
            if name.startswith("test_") and inspect.isfunction(value)
        ]
        if not results
        else []
    )
    for name, test in tests:
        offered = {"model": model, "held_out": held_out}
        wanted = inspect.signature(test).parameters
        started = time.perf_counter()
        unknown = [p for p in wanted if p not in offered]
        if unknown:
            results.append(
                {
                    "name": name,
                    "passed": False,
                    "seconds": 0.0,
                    "message": f"asks for {', '.join(unknown)}; a model test may take model, held_out",
                }
            )
            continue
        try:
            test(**{p: offered[p] for p in wanted})
            passed, message = True, ""
        except Exception as error:
            passed, message = False, _failure_message(error)
        results.append(
            {
                "name": name,
                "passed": passed,
                "message": message[:2000],
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    document = {"schema_version": RESULT_SCHEMA_VERSION, "tests": results}
    contract.write_json_atomic(Path(out_dir) / RESULT_FILE, document)
    return document
