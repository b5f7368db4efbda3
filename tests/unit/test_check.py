"""Unit tests of pushtrain.contract_check: the contract is checked by parsing, every problem with its line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pushtrain import contract_check
from pushtrain.contract_check import canonical_name, check_source

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_KINDS = {
    "cnn_keras.py": "cnn",
    "knn_sklearn.py": "knn",
    "linear_sklearn.py": "linear",
    "dense_keras.py": "keras",
    "svm_sklearn.py": "svm",
    "forest_sklearn.py": "forest",
}

GOOD_KERAS = """
HPARAMS = {"epochs": 2}


def build_model(hp, input_shape, num_classes):
    import keras

    return keras.Sequential([keras.layers.Flatten(input_shape=input_shape), keras.layers.Dense(num_classes)])
"""


def source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems_of(text: str) -> list[tuple[int | None, str]]:
    result = check_source(source(text), "model.py")
    assert not result.ok and result.kind is None
    return [(problem.line, problem.message) for problem in result.problems]


@pytest.mark.parametrize(("template", "kind"), sorted(TEMPLATE_KINDS.items()))
def test_the_templates_meet_the_contract_with_their_kind(templates_dir, template, kind):
    result = contract_check.check_file(templates_dir / template)
    assert result.ok, result.report()
    assert result.kind == kind
    assert result.builder == ("build_model" if kind in ("cnn", "keras") else "build_estimator")


def test_kinds_beyond_the_table_are_named_from_the_builder():
    assert check_source(source(GOOD_KERAS)).kind == "keras"  # Keras without convolutions
    for estimator, kind in (("SVC", "svm"), ("RandomForestClassifier", "forest"), ("GaussianNB", "sklearn")):
        module = {"SVC": "svm", "RandomForestClassifier": "ensemble", "GaussianNB": "naive_bayes"}[estimator]
        text = (
            f"HPARAMS = {{}}\n\ndef build_estimator(hp):\n    from sklearn.{module} import {estimator}\n"
            f"    return {estimator}()\n"
        )
        assert check_source(text).kind == kind


def test_every_problem_is_listed_with_its_line():
    found = problems_of("""
    import os
    import subprocess
    import sys
    from urllib.request import urlopen

    import requests
    from sklearn.datasets import fetch_openml, load_digits
    from tensorflow import keras

    HPARAMS = dict(epochs=2)
    (x, y), _ = keras.datasets.mnist.load_data()
    X = fetch_openml("mnist_784")
    digits = load_digits()
    urlopen("http://example.com/weights")
    requests.get("http://example.com/data")
    os.system("ls")
    subprocess.run(["ls"])
    epochs = int(sys.argv[1])

    def build_model(hp, input_shape):
        return keras.Sequential()

    model = build_model(HPARAMS, (28, 28))
    model.fit(x, y)
    """)
    lines = {line for line, _ in found}
    assert lines == {10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 24}
    messages = dict(found)
    assert "not a dict literal" in messages[10]
    assert "downloads a data set" in messages[11] and "downloads a data set" in messages[12]
    assert "loads data" in messages[13]
    assert "network" in messages[14] and "network" in messages[15]
    assert "runs another program" in messages[16] and "runs another program" in messages[17]
    assert "sys.argv" in messages[18]
    assert (
        "build_model() must be build_model(hp, input_shape, num_classes), but it takes only 2" in messages[20]
    )
    assert "trains when the file is imported" in messages[24]


def test_a_missing_hparams_and_builder_are_problems_of_the_whole_file():
    found = problems_of("import keras\n")
    assert [line for line, _ in found] == [None, None]
    assert any("no builder" in message for _, message in found)
    assert any("no module-level HPARAMS" in message for _, message in found)


def test_code_that_does_not_run_at_import_is_not_a_problem():
    text = source(GOOD_KERAS) + source("""

    def train():
        (x, y), _ = __import__("keras").datasets.mnist.load_data()
        build_model({}, (28, 28), 10).fit(x, y)


    if __name__ == "__main__":
        train()
    """)
    assert check_source(text).ok


def test_keras_2_names_are_problems_wherever_they_are():
    found = problems_of("""
    from keras.layers.convolutional import Conv2D
    from keras.utils import np_utils

    HPARAMS = {"epochs": 1}


    def build_model(hp, input_shape, num_classes):
        import keras
        model = keras.Sequential([Conv2D(8, 3, input_shape=input_shape), keras.layers.Flatten(),
                                  keras.layers.Dense(num_classes)])
        model.compile(optimizer=keras.optimizers.Adam(lr=0.01), loss="sparse_categorical_crossentropy")
        return model


    def later(model, data):
        model.fit_generator(data)
    """)
    assert (
        1,
        "`keras.layers.convolutional` is Keras 2; the training image has Keras 3, where it is `keras.layers`",
    ) in found
    assert any(line == 2 and "np_utils" in message for line, message in found)
    assert any(line == 11 and "`lr=` of Adam" in message for line, message in found)
    assert any(line == 16 and "fit_generator" in message for line, message in found)


def test_a_builder_that_builds_the_other_frameworks_model_is_a_problem():
    found = problems_of("""
    HPARAMS = {}


    def build_estimator(hp):
        import keras
        return keras.Sequential([keras.layers.Dense(10)])
    """)
    assert found == [
        (
            4,
            "build_estimator() builds a keras model, whose builder is "
            "build_model(hp, input_shape, num_classes)",
        )
    ]


def test_a_syntax_error_is_one_problem_with_its_line():
    assert problems_of("HPARAMS = {\n")[0][0] == 1


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("tensorflow.keras.layers.Conv2D", "keras.layers.Conv2D"),
        ("keras.layers.convolutional.Conv2D", "keras.layers.Conv2D"),
        ("tensorflow.python.keras.layers.core.Dense", "keras.layers.Dense"),
        ("keras.utils.np_utils.to_categorical", "keras.utils.to_categorical"),
        ("keras.models.Sequential", "keras.Sequential"),
        ("tensorflow.keras.optimizers.legacy.Adam", "keras.optimizers.Adam"),
        ("sklearn.svm.SVC", "sklearn.svm.SVC"),
    ],
)
def test_library_names_have_one_spelling(written, canonical):
    assert canonical_name(written) == canonical


def test_the_command_prints_the_kind_or_the_problems_and_the_advice(tmp_path, templates_dir):
    env = {"PYTHONPATH": str(PROJECT_ROOT / "plugins"), "PATH": "/usr/bin:/bin"}
    good = subprocess.run(
        [sys.executable, "-m", "pushtrain", "check", str(templates_dir / "knn_sklearn.py")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (good.returncode, good.stdout) == (0, "knn\n")

    script = tmp_path / "train.py"
    script.write_text("from sklearn.svm import SVC\nclf = SVC()\nclf.fit([[0]], [0])\n")
    bad = subprocess.run(
        [sys.executable, "-m", "pushtrain", "check", str(script)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert f"{script}, line 3: `clf.fit([[0]], [0])` trains when the file is imported" in bad.stderr
    assert f"run `python -m pushtrain adapt {script}`" in bad.stderr

    as_json = subprocess.run(
        [sys.executable, "-m", "pushtrain", "check", "--json", str(script)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    document = json.loads(as_json.stdout)
    assert (
        document["ok"] is False
        and {"line": 3, "message": document["problems"][-1]["message"]} in (document["problems"])
    )


def test_a_subclass_of_an_estimator_is_that_estimators_kind():
    result = check_source(
        textwrap.dedent(
            """
            from sklearn.linear_model import SGDClassifier

            HPARAMS = {"epochs": 5}


            class Counted(SGDClassifier):
                def partial_fit(self, X, y, classes=None, sample_weight=None):
                    self.passes_ = getattr(self, "passes_", 0) + 1
                    return super().partial_fit(X, y, classes=classes, sample_weight=sample_weight)


            def build_estimator(hp):
                return Counted(random_state=0)
            """
        )
    )

    assert (result.ok, result.kind) == (True, "linear"), result.problems


def test_a_subclassed_keras_model_is_not_taken_for_a_known_model():
    result = check_source(
        textwrap.dedent(
            """
            import keras

            HPARAMS = {"epochs": 5}


            class Net(keras.Model):
                def call(self, inputs):
                    return inputs


            def build_model(hp, input_shape, num_classes):
                return Net()
            """
        )
    )

    assert not result.ok and "builds no model pushtrain knows" in str(result.problems[0])
