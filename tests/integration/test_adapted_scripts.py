"""Ordinary training scripts, adapted by ``pushtrain adapt``, train and evaluate in the real training images.

Each corpus script goes through adapt as a user would run it, the adapted file alone goes into the sandboxed
container through ``pushtrain.localrun.train`` on the bundled data set the script loaded, and the runner's
metrics must show a model that learned. Epochs are cut down (an HPARAMS override, as a tweak would do) so
the test stays quick; the knobs the file reads are the ones adapt lifted. The kinds of ordinary scripts that
are not CNNs (``keras`` for dense-only networks, ``svm``, ``forest``) train here too. Every other adapted
corpus script is at least built and fitted in its image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pushtrain import adapt, localrun, strategies

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"

# (script, data set it loads, HPARAMS overrides, accuracy it must beat on the held-out validation split)
CASES = [
    ("digits_cnn_builder_function.py", "digits", {"epochs": 4}, 0.5),
    ("functional_cnn_jenkins.py", "mnist5k", {"epochs": 1}, 0.5),
    ("mnist_cnn_module_level.py", "mnist5k", {"epochs": 1}, 0.5),
    ("keras2_legacy_cnn.py", "mnist5k", {"epochs": 1}, 0.5),
    ("knn_digits_scaled.py", "digits", {}, 0.9),
    ("logreg_pipeline_cv.py", "digits", {}, 0.9),
    ("sgd_argparse.py", "digits", {}, 0.8),
    ("dense_mnist_tfkeras.py", "mnist5k", {"epochs": 2}, 0.8),
    ("svc_digits.py", "digits", {"gamma": 0.1}, 0.9),  # its gamma was tuned for 0..16 pixels, not [0, 1]
    ("random_forest_openml.py", "mnist5k", {"n_estimators": 50}, 0.8),
]


@pytest.mark.parametrize(
    ("script", "dataset", "overrides", "floor"), CASES, ids=[case[0].removesuffix(".py") for case in CASES]
)
def test_an_adapted_script_trains_in_its_image(
    training_images, digits, mnist5k, tmp_path, script, dataset, overrides, floor
):
    result = adapt.adapt_file(SCRIPTS / script)
    assert result.dataset == dataset
    assert set(overrides) <= set(result.hparams)
    model = tmp_path / "repo" / "model.py"
    model.parent.mkdir()
    model.write_text(result.adapted)

    data = {"digits": digits, "mnist5k": mnist5k}[dataset].train_dir
    lines: list[str] = []
    run = localrun.train(
        model=model, data=data, out=tmp_path / "out", hparams=overrides, kind=result.kind, log=lines.append
    )

    assert run.succeeded, f"{run.summary()}\n" + "\n".join(lines[-30:])
    metrics = run.metrics
    assert metrics["kind"] == result.kind
    assert metrics["hparams"] == {**result.hparams, **overrides}
    assert metrics["accuracy"] > floor, metrics["accuracy"]
    if "epochs" in overrides:
        assert metrics["epochs_run"] == overrides["epochs"]


def test_an_adapted_logistic_regression_trains_its_first_tweak(training_images, digits, tmp_path):
    # The linear kind's knobs cover what adapt lifts from a LogisticRegression (C, max_iter), so the first
    # tweak is a real move (C x10), and the tweaked file trains.
    result = adapt.adapt_file(SCRIPTS / "logreg_pipeline_cv.py")
    assert (result.kind, result.hparams) == ("linear", {"C": 0.5, "max_iter": 2000})
    updates = dict(strategies.default(result.kind, [strategies.AttemptRecord(1, result.hparams, 0.9)], 0))
    assert updates == {"C": 5.0}
    model = tmp_path / "repo" / "model.py"
    model.parent.mkdir()
    model.write_text(result.adapted)

    lines: list[str] = []
    run = localrun.train(
        model=model,
        data=digits.train_dir,
        out=tmp_path / "out",
        hparams=updates,
        kind="linear",
        log=lines.append,
    )

    assert run.succeeded, f"{run.summary()}\n" + "\n".join(lines[-30:])
    assert run.metrics["hparams"] == {"C": 5.0, "max_iter": 2000}
    assert run.metrics["accuracy"] > 0.9, run.metrics["accuracy"]


# Imports every adapted file of one framework in its image, builds the model for the data set the script
# loaded, and fits it on a few random images: proof that the rewritten code is valid Keras 3 / scikit-learn.
_BUILD_EVERY_MODEL = """
import importlib.util, json, sys
import numpy as np
shapes = {"digits": (8, 8, 1)}  # MNIST's 28x28 for the rest (mnist5k, or a data set still to be named)
built = {}
for entry in json.loads(sys.argv[1]):
    spec = importlib.util.spec_from_file_location(entry["module"], "/adapted/" + entry["file"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shape = shapes.get(entry["dataset"], (28, 28, 1))
    images = np.random.default_rng(0).random((40, *shape), dtype=np.float32)
    labels = np.arange(40) % 10
    if hasattr(module, "build_model"):
        model = module.build_model(dict(module.HPARAMS), shape, 10)
        if not model.compiled:
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(images, labels, epochs=1, batch_size=20, verbose=0)
        built[entry["file"]] = list(model.predict(images[:2], verbose=0).shape)
    else:
        estimator = module.build_estimator(dict(module.HPARAMS))
        estimator.fit(images.reshape(40, -1), labels)
        built[entry["file"]] = list(estimator.predict(images[:2].reshape(2, -1)).shape)
print(json.dumps(built))
"""


@pytest.mark.parametrize("framework", ["keras", "sklearn"])
def test_every_adapted_corpus_script_builds_and_fits_in_its_image(training_images, tmp_path, framework):
    import json
    import subprocess

    from pushtrain.kinds import KINDS

    entries = []
    for script in sorted(SCRIPTS.glob("*.py")):
        try:
            result = adapt.adapt_file(script)
        except adapt.AdaptRefused:
            continue
        if result.framework == framework:
            (tmp_path / script.name).write_text(result.adapted)
            entries.append({"file": script.name, "module": script.stem, "dataset": result.dataset})
    assert len(entries) >= 5
    # The image runs as an unprivileged user; pytest's temporary folders are private to this one.
    tmp_path.chmod(0o755)
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    image = training_images[next(kind.image for kind in KINDS.values() if kind.framework.name == framework)]
    completed = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "-v",
            f"{tmp_path}:/adapted:ro",
            "--entrypoint",
            "/opt/venv/bin/python",
            image,
            "-c",
            _BUILD_EVERY_MODEL,
            json.dumps(entries),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    built = json.loads(completed.stdout.strip().splitlines()[-1])
    expected_output = [2, 10] if framework == "keras" else [2]
    assert built == {entry["file"]: expected_output for entry in entries}
