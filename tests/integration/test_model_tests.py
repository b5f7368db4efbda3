"""Model tests in the real evaluation sandbox: a repository's model_tests.py run on a KNN trained on digits in
the real scikit-learn image; passing tests, failing ones with their assertion messages, a file that does not
import, and no file at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushtrain import images, localrun
from pushtrain.model_tests import run_model_tests
from pushtrain.runner import contract

TEMPLATE = Path(__file__).resolve().parents[2] / "include" / "model_templates" / "knn_sklearn.py"

TESTS = """
import numpy as np


def test_every_class_has_recall_at_least_0_9(model, held_out):
    predicted = model.predict(held_out.images)
    for index, name in enumerate(held_out.class_names):
        mask = held_out.labels == index
        recall = float((predicted[mask] == index).mean())
        assert recall >= 0.9, f"class {name} has recall {recall:.2f}"


def test_probabilities_are_distributions(model, held_out):
    probabilities = model.predict_proba(held_out.images[:10])
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_impossible_recall(model, held_out):
    predicted = model.predict(held_out.images)
    assert (predicted == held_out.labels).mean() >= 1.01, "accuracy must exceed 1.01 (it cannot)"


def test_bare_assert(model):
    assert model.class_names == ["a", "b"]


def test_raises(model):
    raise RuntimeError("boom")
"""


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory) -> Path:
    images.ensure_all_images(("sklearn",))
    out = tmp_path_factory.mktemp("model-tests") / "attempt"
    result = localrun.train(
        model=TEMPLATE,
        data=digits.train_dir,
        out=out,
        kind="knn",
        hparams={"n_neighbors": 3, "weights": "distance", "p": 2},
        name=f"pushtrain-test-model-tests-{out.parent.name}",
    )
    assert result.succeeded, result.summary()
    return out / contract.MODEL_DIR


def run(tests: str | None, model_dir: Path, digits, tmp_path: Path):
    tests_file = tmp_path / "repo" / "model_tests.py"
    tests_file.parent.mkdir()
    if tests is not None:
        tests_file.write_text(tests)
    return run_model_tests(
        tests_file=tests_file,
        model_dir=model_dir,
        held_out_dir=digits.test_dir,
        out_dir=tmp_path / "out",
        kind="knn",
        container_name=f"pushtrain-test-mt-{tmp_path.name}",
        log=lambda line: None,
    )


def test_passing_and_failing_tests_each_with_their_message(trained, digits, tmp_path) -> None:
    outcome = run(TESTS, trained, digits, tmp_path)

    assert outcome.ran and not outcome.passed
    by_name = {test["name"]: test for test in outcome.tests}
    assert by_name["test_every_class_has_recall_at_least_0_9"]["passed"]
    assert by_name["test_probabilities_are_distributions"]["passed"]
    assert by_name["test_impossible_recall"]["message"] == "accuracy must exceed 1.01 (it cannot)"
    assert by_name["test_bare_assert"]["message"] == 'assert model.class_names == ["a", "b"]'
    assert by_name["test_raises"]["message"] == "RuntimeError: boom"
    assert outcome.summary().startswith("3 of 5 model test(s) failed: test_impossible_recall: accuracy must")


def test_a_file_that_does_not_import_fails_with_why(trained, digits, tmp_path) -> None:
    outcome = run("import not_a_module_anywhere\n", trained, digits, tmp_path)
    assert outcome.ran and not outcome.passed
    assert "cannot import the model tests: ModuleNotFoundError" in outcome.failed[0]["message"]


def test_no_tests_file_runs_nothing(trained, digits, tmp_path) -> None:
    outcome = run(None, trained, digits, tmp_path)
    assert not outcome.ran and outcome.passed and outcome.summary() == "no model tests"
