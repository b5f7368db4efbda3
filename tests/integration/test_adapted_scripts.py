"""Ordinary training scripts, adapted by ``pushtrain adapt``, train and evaluate in the real training images.

Each corpus script goes through adapt as a user would run it, the adapted file alone goes into the sandboxed
container through ``pushtrain.localrun.train`` on the bundled data set the script loaded, and the runner's
metrics must show a model that learned. Epochs are cut down (an HPARAMS override, as a tweak would do) so
the test stays quick; the knobs the file reads are the ones adapt lifted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pushtrain import adapt, localrun

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
]


@pytest.mark.parametrize(("script", "dataset", "overrides", "floor"), CASES,
                         ids=[case[0].removesuffix(".py") for case in CASES])
def test_an_adapted_script_trains_in_its_image(training_images, digits, mnist5k, tmp_path, script, dataset,
                                               overrides, floor):
    result = adapt.adapt_file(SCRIPTS / script)
    assert result.dataset == dataset
    assert set(overrides) <= set(result.hparams)
    model = tmp_path / "repo" / "model.py"
    model.parent.mkdir()
    model.write_text(result.adapted)

    data = {"digits": digits, "mnist5k": mnist5k}[dataset].train_dir
    lines: list[str] = []
    run = localrun.train(model=model, data=data, out=tmp_path / "out", hparams=overrides, kind=result.kind,
                         log=lines.append)

    assert run.succeeded, f"{run.summary()}\n" + "\n".join(lines[-30:])
    metrics = run.metrics
    assert metrics["kind"] == result.kind
    assert metrics["hparams"] == {**result.hparams, **overrides}
    assert metrics["accuracy"] > floor, metrics["accuracy"]
    if "epochs" in overrides:
        assert metrics["epochs_run"] == overrides["epochs"]
