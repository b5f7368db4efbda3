"""The accuracy gate with real containers: no label reaches the evaluation container, so cheats score at chance.

Each cheating model (``tests/fixtures/models/cheat_*.py``) trains like any other, then is evaluated twice
with its saved model in the sandbox: once on a layout its route leaks through (the labelled folder the old
evaluation mounted, with a manifest beside it, or a careless flat copy written class by class), where it
scores near 1.0, and once on ``pushtrain.blind``'s view through the runner's ``predict`` and the platform's
``score``, where it scores at chance. Honest models get the figures of the labelled evaluation to the last
digit; models that tamper with the evaluation output fail with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pushtrain import blind, images, localrun, supervision
from pushtrain.runner import contract
from pushtrain.sandbox import (
    ContainerSpec,
    Sandbox,
    container_user,
    prepare_output_dir,
    remove_container,
    run_container,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
TEMPLATES = Path(__file__).resolve().parents[2] / "include" / "model_templates"
CHANCE_AT_MOST = 0.3  # ten classes: a guess scores about 0.1
LEAKED_AT_LEAST = 0.9

pytestmark = pytest.mark.usefixtures("training_images")

# The old evaluation's path, run in the same image: the labelled folder, the runner's loaders, its scores.
LABELLED_EVALUATION = """
import json, sys
from pathlib import Path
from pushtrain.runner.data import load_image_folder
from pushtrain.runner.evaluate import predict_images, read_signature
from pushtrain.runner.metrics import classification_scores
model_dir, data_dir, model_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
signature = read_signature(model_dir)
folder = load_image_folder(data_dir, class_names=signature["class_names"])
predicted, probabilities = predict_images(signature, model_dir, folder.images, model_file)
scores = classification_scores(folder.labels, predicted, signature["class_names"], probabilities)
print("LABELLED-EVALUATION " + json.dumps(scores), flush=True)
"""


def _train(model_file: Path, data: Path, out: Path, kind: str, hparams: dict | None = None) -> Path:
    lines: list[str] = []
    result = localrun.train(
        model=model_file,
        data=data,
        out=out,
        kind=kind,
        hparams=hparams,
        name=f"blind-{out.parent.name}"[:60],
        log=lines.append,
    )
    assert result.succeeded, f"{result.summary()}\n" + "\n".join(lines[-20:])
    return out


def _predict(
    docker,
    model_file: Path,
    trained: Path,
    data_dir: Path,
    predictions_dir: Path,
    kind: str,
    lines: list[str],
):
    """The evaluation container as the pipeline runs it: a blind view in, predictions.json out."""
    from docker.types import Mount

    prepare_output_dir(predictions_dir)
    run_key = f"blind-{predictions_dir.parent.name}"[:60]
    spec = ContainerSpec(
        name=f"pushtrain-{run_key}-predict",
        image=images.image_for_kind(kind),
        command=[
            "predict",
            "--model-dir",
            contract.EVALUATED_MODEL_MOUNT,
            "--data",
            contract.DATA_MOUNT,
            "--out",
            contract.EVALUATION_OUT_MOUNT,
            "--model",
            f"{contract.MODEL_MOUNT}/{model_file.name}",
        ],
        mounts=[
            Mount(contract.MODEL_MOUNT, str(model_file.parent), type="bind", read_only=True),
            Mount(
                contract.EVALUATED_MODEL_MOUNT, str(trained / contract.MODEL_DIR), type="bind", read_only=True
            ),
            Mount(contract.DATA_MOUNT, str(data_dir), type="bind", read_only=True),
            Mount(contract.EVALUATION_OUT_MOUNT, str(predictions_dir), type="bind"),
        ],
        labels=supervision.labels(
            "local", run_key, predictions_dir.parent, predictions_dir / "predictions.json"
        ),
    )
    return run_container(docker, spec, Sandbox(), lines.append)


def _blind_evaluation(docker, model_file: Path, trained: Path, test_dir: Path, work: Path, kind: str) -> dict:
    view = blind.prepare_blind_evaluation(test_dir, work / "view")
    lines: list[str] = []
    outcome = _predict(docker, model_file, trained, view.data_dir, work / "predictions", kind, lines)
    assert outcome.succeeded, f"{outcome.describe()}\n" + "\n".join(lines[-20:])
    return blind.score(view, work / "predictions", trained / contract.MODEL_DIR)


def _labelled_evaluation(docker, model_file: Path, trained: Path, data_dir: Path, kind: str) -> dict:
    """The scores the old evaluation computed inside the container, from a folder with labels in its paths."""
    from docker.types import Mount

    mounts = [
        Mount(contract.MODEL_MOUNT, str(model_file.parent), type="bind", read_only=True),
        Mount(contract.EVALUATED_MODEL_MOUNT, str(trained / contract.MODEL_DIR), type="bind", read_only=True),
        Mount(contract.DATA_MOUNT, str(data_dir), type="bind", read_only=True),
    ]
    container = docker.create_container(
        image=images.image_for_kind(kind),
        entrypoint=["/opt/venv/bin/python", "-c", LABELLED_EVALUATION],
        command=[
            contract.EVALUATED_MODEL_MOUNT,
            contract.DATA_MOUNT,
            f"{contract.MODEL_MOUNT}/{model_file.name}",
        ],
        user=container_user(),
        host_config=docker.create_host_config(**Sandbox().host_config_kwargs(mounts)),
    )
    try:
        docker.start(container["Id"])
        status = docker.wait(container["Id"])
        output = docker.logs(container["Id"]).decode(errors="replace")
    finally:
        remove_container(docker, container["Id"])
    assert status["StatusCode"] == 0, output[-3000:]
    line = next(line for line in output.splitlines() if line.startswith("LABELLED-EVALUATION "))
    return json.loads(line.split(" ", 1)[1])


# --- layouts a label leaks through ------------------------------------------------------------------------


def _labelled(test_dir: Path, work: Path) -> Path:
    return test_dir  # what the evaluation container got before: <label>/<n>.png


def _labelled_with_manifest(test_dir: Path, work: Path) -> Path:
    copy = work / "labelled-with-manifest"
    shutil.copytree(test_dir, copy)
    files = {str(p.relative_to(copy)): p.parent.name for p in sorted(copy.glob("*/*.png"))}
    (copy / "manifest.json").write_text(json.dumps({"files": files}))
    return copy


def _careless_flat_copy(test_dir: Path, work: Path) -> blind.BlindEvaluation:
    """Opaque names, one folder, but the files written class by class with their times: the metadata leaks."""
    import hashlib

    images_dir = work / "careless" / blind.DATA_DIR
    images_dir.mkdir(parents=True)
    answers = []
    for position, path in enumerate(
        sorted(test_dir.glob("*/*.png"), key=lambda p: (int(p.parent.name), p.name))
    ):
        image_id = hashlib.sha256(str(path).encode()).hexdigest()[:32]
        shutil.copyfile(path, images_dir / f"{image_id}.png")
        os.utime(images_dir / f"{image_id}.png", (1_700_000_000 + position, 1_700_000_000 + position))
        answers.append(blind.Answer(image_id, path.parent.name, f"{path.parent.name}/{path.name}"))
    return blind.BlindEvaluation(work / "careless", "not-the-split", tuple(answers))


CHEATS = {  # fixture -> a layout its route leaks through
    "cheat_folder_name": _labelled,
    "cheat_file_order": _labelled,
    "cheat_sorted_listing": _labelled,
    "cheat_manifest": _labelled_with_manifest,
    "cheat_file_metadata": _careless_flat_copy,
}


@pytest.mark.parametrize("cheat", CHEATS)
def test_a_cheat_that_scores_on_a_leaky_layout_scores_at_chance_on_the_blind_view(
    docker, digits, tmp_path, cheat: str
):
    model_file = FIXTURES / f"{cheat}.py"
    trained = _train(model_file, digits.train_dir, tmp_path / "train", "knn")

    leaky = CHEATS[cheat](digits.test_dir, tmp_path)
    if isinstance(leaky, blind.BlindEvaluation):  # a flat layout: the same predict container, then score
        lines: list[str] = []
        assert _predict(
            docker, model_file, trained, leaky.data_dir, tmp_path / "leaky", "knn", lines
        ).succeeded
        leaked = blind.score(leaky, tmp_path / "leaky", trained / contract.MODEL_DIR)
    else:
        leaked = _labelled_evaluation(docker, model_file, trained, leaky, "knn")
    assert leaked["accuracy"] >= LEAKED_AT_LEAST, f"{cheat} does not exploit its route: {leaked['accuracy']}"

    evaluation = _blind_evaluation(docker, model_file, trained, digits.test_dir, tmp_path / "blind", "knn")
    print(
        f"{cheat}: {leaked['accuracy']:.4f} on the leaky layout, {evaluation['accuracy']:.4f} on the blind view"
    )
    assert evaluation["accuracy"] <= CHANCE_AT_MOST, f"{cheat} beat the blind view: {evaluation['accuracy']}"
    assert evaluation["n_evaluated"] == digits.counts["test"]
    assert evaluation["dataset_sha256"] == digits.test_sha256


def test_the_container_sees_nothing_but_same_sized_images(docker, digits, tmp_path):
    model_file = FIXTURES / "cheat_file_metadata.py"
    trained = _train(model_file, digits.train_dir, tmp_path / "train", "knn")
    view = blind.prepare_blind_evaluation(digits.test_dir, tmp_path / "view")
    lines: list[str] = []
    assert _predict(
        docker, model_file, trained, view.data_dir, tmp_path / "predictions", "knn", lines
    ).succeeded
    assert f"metadata cheat: {digits.counts['test']} files, 1 distinct sizes, 1 distinct mtimes" in lines
    assert os.listdir(tmp_path / "predictions") == ["predictions.json"]


@pytest.mark.parametrize(
    "tamper, reason",
    [
        ("forge", "wrote evaluation.json besides predictions.json"),
        ("drop", "misses 180 of the 359 images"),
        ("unknown", "1 ids the view does not have"),
    ],
)
def test_a_model_that_tampers_with_the_output_fails_with_the_reason(docker, digits, tmp_path, tamper, reason):
    model_file = FIXTURES / "cheat_tamper.py"
    trained = _train(model_file, digits.train_dir, tmp_path / "train", "knn", {"tamper": tamper})
    view = blind.prepare_blind_evaluation(digits.test_dir, tmp_path / "view")
    lines: list[str] = []
    assert _predict(
        docker, model_file, trained, view.data_dir, tmp_path / "predictions", "knn", lines
    ).succeeded
    with pytest.raises(blind.ScoringError, match=reason):
        blind.score(view, tmp_path / "predictions", trained / contract.MODEL_DIR)


@pytest.mark.parametrize(
    "template, kind, dataset, hparams",
    [
        ("knn_sklearn.py", "knn", "digits", {"n_neighbors": 3, "weights": "distance", "p": 2}),
        ("linear_sklearn.py", "linear", "digits", {"epochs": 3}),
        ("cnn_keras.py", "cnn", "mnist5k", {}),
    ],
)
def test_honest_models_keep_the_labelled_evaluations_figures_to_the_last_digit(
    docker, request, tmp_path, template: str, kind: str, dataset: str, hparams: dict
):
    manifest = request.getfixturevalue(dataset)
    code = tmp_path / "code"
    code.mkdir()
    model_file = Path(shutil.copy(TEMPLATES / template, code / "model.py"))
    trained = _train(model_file, manifest.train_dir, tmp_path / "train", kind, hparams)

    before = _labelled_evaluation(docker, model_file, trained, manifest.test_dir, kind)
    after = _blind_evaluation(docker, model_file, trained, manifest.test_dir, tmp_path / "blind", kind)

    print(
        f"{template}: accuracy {before['accuracy']!r} labelled, {after['accuracy']!r} blind; "
        f"loss {before['loss']!r} labelled, {after['loss']!r} blind"
    )
    assert {name: after[name] for name in before} == before
    assert after["loss"] is not None  # every template's model gives probabilities
    assert after["dataset_sha256"] == manifest.test_sha256
    assert after["kind"] == kind and after["evaluated_on"] == "test"
    assert sum(map(sum, after["confusion_matrix"])) == manifest.counts["test"]
