"""Unit tests of pushtrain.detect: the model kind is found by parsing, bounded, and explained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pushtrain import detect
from pushtrain.detect import (
    MAX_MODEL_FILE_BYTES,
    Detection,
    DetectionError,
    Evidence,
    detect_file,
    detect_kind,
    detect_source,
    main,
    read_model_source,
)
from pushtrain.kinds import KINDS

# Generous for a loaded CI machine; what matters is that nothing hangs for the full default limits.
BOUNDED_SECONDS = 5.0


def source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def write(directory: Path, text: str, name: str = "model.py") -> Path:
    path = directory / name
    path.write_text(source(text), encoding="utf-8")
    return path


def names(detection: Detection) -> list[str]:
    return [item.qualified_name for item in detection.evidence]


# --------------------------------------------------------------------------------------------------------
# Each kind, the ways users spell it
# --------------------------------------------------------------------------------------------------------

KIND_CASES = {
    "keras-sequential": (
        """
        from tensorflow import keras

        model = keras.Sequential([keras.layers.Conv2D(8, 3), keras.layers.Flatten(), keras.layers.Dense(10)])
        """,
        "cnn",
        "tensorflow.keras.layers.Conv2D",
    ),
    "layers-module-alias": (
        """
        from tensorflow.keras import layers as L

        x = L.Conv2D(8, 3)
        """,
        "cnn",
        "tensorflow.keras.layers.Conv2D",
    ),
    "tf-keras-functional": (
        """
        import tensorflow as tf

        def build_model(hp, input_shape, num_classes):
            inputs = tf.keras.Input(shape=input_shape)
            x = tf.keras.layers.Conv2D(hp["filters"], 3)(inputs)
            x = tf.keras.layers.GlobalAveragePooling2D()(x)
            outputs = tf.keras.layers.Dense(num_classes)(x)
            return tf.keras.Model(inputs, outputs)
        """,
        "cnn",
        "tensorflow.keras.layers.Conv2D",
    ),
    "layer-class-alias": (
        """
        from tensorflow.keras.layers import Conv2D as C

        block = C(16, 3)
        """,
        "cnn",
        "tensorflow.keras.layers.Conv2D",
    ),
    "keras-3-separable": (
        """
        import keras

        layer = keras.layers.SeparableConv2D(8, 3)
        """,
        "cnn",
        "keras.layers.SeparableConv2D",
    ),
    "depthwise-inside-function-import": (
        """
        def build_model(hp, input_shape, num_classes):
            from keras.layers import DepthwiseConv2D

            return DepthwiseConv2D(3)
        """,
        "cnn",
        "keras.layers.DepthwiseConv2D",
    ),
    "conv2d-transpose-module-imported-below": (
        """
        def build_model():
            return layers.Conv2DTranspose(4, 3)

        from keras import layers
        """,
        "cnn",
        "keras.layers.Conv2DTranspose",
    ),
    "conv1d-via-reassigned-module": (
        """
        import tensorflow as tf

        L = tf.keras.layers
        net = L.Conv1D(4, 3)
        """,
        "cnn",
        "tensorflow.keras.layers.Conv1D",
    ),
    "conv3d-method-call": (
        """
        from keras import layers

        layer = layers.Conv3D.from_config({})
        """,
        "cnn",
        "keras.layers.Conv3D",
    ),
    "logistic-regression": (
        """
        from sklearn.linear_model import LogisticRegression

        def build_estimator(hp):
            return LogisticRegression(C=hp["C"])
        """,
        "linear",
        "sklearn.linear_model.LogisticRegression",
    ),
    "ridge-through-module-alias": (
        """
        import sklearn.linear_model as lm

        estimator = lm.RidgeClassifier()
        """,
        "linear",
        "sklearn.linear_model.RidgeClassifier",
    ),
    "perceptron-full-dotted-path": (
        """
        import sklearn.linear_model

        estimator = sklearn.linear_model.Perceptron()
        """,
        "linear",
        "sklearn.linear_model.Perceptron",
    ),
    "sgd-from-sklearn-import-module": (
        """
        from sklearn import linear_model

        estimator = linear_model.SGDClassifier(loss="log_loss")
        """,
        "linear",
        "sklearn.linear_model.SGDClassifier",
    ),
    "linear-svc": (
        """
        from sklearn.svm import LinearSVC

        estimator = LinearSVC()
        """,
        "linear",
        "sklearn.svm.LinearSVC",
    ),
    "kneighbors-module-alias": (
        """
        from sklearn import neighbors as nb

        def build_estimator(hp):
            return nb.KNeighborsClassifier(n_neighbors=hp["n_neighbors"])
        """,
        "knn",
        "sklearn.neighbors.KNeighborsClassifier",
    ),
    "radius-neighbors": (
        """
        from sklearn.neighbors import RadiusNeighborsClassifier

        estimator = RadiusNeighborsClassifier(radius=2.0)
        """,
        "knn",
        "sklearn.neighbors.RadiusNeighborsClassifier",
    ),
    "nearest-centroid-star-import": (
        """
        from sklearn.neighbors import *

        print("building")
        estimator = NearestCentroid()
        """,
        "knn",
        "sklearn.neighbors.NearestCentroid",
    ),
    "knn-bound-through-global-statement": (
        """
        def setup():
            global KNN
            from sklearn.neighbors import KNeighborsClassifier as KNN

        def build_estimator():
            return KNN()
        """,
        "knn",
        "sklearn.neighbors.KNeighborsClassifier",
    ),
    "dense-keras-2-module-path": (
        """
        from keras.layers.core import Dense

        def build_model(hp, input_shape, num_classes):
            return Dense(num_classes)
        """,
        "keras",
        "keras.layers.core.Dense",
    ),
    "svc": (
        """
        from sklearn import svm

        def build_estimator(hp):
            return svm.SVC(C=hp["C"])
        """,
        "svm",
        "sklearn.svm.SVC",
    ),
    "nu-svc": (
        """
        from sklearn.svm import NuSVC

        estimator = NuSVC()
        """,
        "svm",
        "sklearn.svm.NuSVC",
    ),
    "random-forest": (
        """
        from sklearn.ensemble import RandomForestClassifier

        def build_estimator(hp):
            return RandomForestClassifier(n_estimators=hp["n_estimators"])
        """,
        "forest",
        "sklearn.ensemble.RandomForestClassifier",
    ),
    "extra-trees-module-alias": (
        """
        import sklearn.ensemble as ens

        estimator = ens.ExtraTreesClassifier()
        """,
        "forest",
        "sklearn.ensemble.ExtraTreesClassifier",
    ),
    "knn-used-in-default-argument": (
        """
        from sklearn.neighbors import KNeighborsClassifier

        def build_estimator(hp, factory=KNeighborsClassifier):
            return factory(**hp)
        """,
        "knn",
        "sklearn.neighbors.KNeighborsClassifier",
    ),
}


@pytest.mark.parametrize(("text", "kind", "qualified_name"), KIND_CASES.values(), ids=KIND_CASES.keys())
def test_detects_each_kind_through_its_imports(text: str, kind: str, qualified_name: str) -> None:
    detection = detect_source(source(text), "model.py")

    assert detection.kind == kind
    assert qualified_name in names(detection)
    assert detection.filename == "model.py"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_detected_from_its_template_in_process_and_bounded(
    templates_dir: Path, kind: str
) -> None:
    template = templates_dir / KINDS[kind].template

    in_process = detect_file(template)
    bounded = detect_kind(template)

    assert in_process.kind == kind
    assert bounded == in_process
    assert bounded.evidence, "the result carries the uses that decided it"


def test_evidence_lists_every_use_in_line_order() -> None:
    detection = detect_source(
        source(
            """
            from keras import layers

            first = layers.Conv2D(8, 3)
            dense = layers.Dense(4)
            second = layers.Conv2D(16, 3)
            """
        ),
        "model.py",
    )

    assert detection.evidence == (
        Evidence("keras.layers.Conv2D", 3),
        Evidence("keras.layers.Conv2D", 5),
    )
    assert str(detection.evidence[0]) == "keras.layers.Conv2D at line 3"


def test_detection_survives_the_json_round_trip() -> None:
    detection = Detection("knn", (Evidence("sklearn.neighbors.KNeighborsClassifier", 4),), "model.py")

    assert Detection.from_json_dict(json.loads(json.dumps(detection.to_json_dict()))) == detection


# --------------------------------------------------------------------------------------------------------
# What does not count
# --------------------------------------------------------------------------------------------------------


def test_names_in_comments_strings_and_docstrings_do_not_count() -> None:
    text = '''
        """A model like keras.layers.Conv2D or sklearn.neighbors.KNeighborsClassifier would do."""
        from sklearn.linear_model import LogisticRegression

        # from tensorflow.keras.layers import Conv2D
        NOTE = "from sklearn.neighbors import KNeighborsClassifier; KNeighborsClassifier()"

        def build_estimator(hp):
            """Not Conv2D, not KNeighborsClassifier."""
            return LogisticRegression()
        '''

    detection = detect_source(source(text), "model.py")

    assert detection.kind == "linear"
    assert names(detection) == ["sklearn.linear_model.LogisticRegression"]


def test_names_only_in_text_are_no_kind_at_all() -> None:
    text = '''
        """Uses keras.layers.Conv2D."""
        # from sklearn.neighbors import KNeighborsClassifier
        SPEC = "tf.keras.layers.Conv2D(8, 3)"
        '''

    with pytest.raises(DetectionError) as caught:
        detect_source(source(text), "model.py")

    assert caught.value.reason == "no_kind"


def test_a_local_class_named_like_a_layer_does_not_count() -> None:
    text = """
        from sklearn.linear_model import LogisticRegression

        class Conv2D:
            pass

        class KNeighborsClassifier:
            pass

        layer = Conv2D()
        other = KNeighborsClassifier()
        estimator = LogisticRegression()
        """

    detection = detect_source(source(text), "model.py")

    assert detection.kind == "linear"


def test_an_unused_import_does_not_count() -> None:
    text = """
        from tensorflow.keras.layers import Conv2D
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.linear_model import SGDClassifier

        estimator = SGDClassifier()
        """

    assert detect_source(source(text), "model.py").kind == "linear"


@pytest.mark.parametrize(
    "text",
    [
        # A function's import is invisible to another function.
        """
        def unused():
            from sklearn.neighbors import KNeighborsClassifier

        def build_estimator():
            return KNeighborsClassifier()
        """,
        # Methods do not see names bound in their class body.
        """
        class Model:
            from sklearn.neighbors import KNeighborsClassifier

            def build(self):
                return KNeighborsClassifier()
        """,
        # A parameter shadows the module-level import.
        """
        from sklearn import neighbors

        def build_estimator(neighbors):
            return neighbors.KNeighborsClassifier()
        """,
        # Relative imports are the user's own code, and dynamic imports are not followed.
        """
        import importlib
        from .neighbors import KNeighborsClassifier

        a = KNeighborsClassifier()
        b = importlib.import_module("sklearn.neighbors").KNeighborsClassifier()
        """,
    ],
    ids=["other-function", "class-body", "shadowing-parameter", "relative-and-dynamic"],
)
def test_names_that_do_not_resolve_to_the_library_do_not_count(text: str) -> None:
    with pytest.raises(DetectionError) as caught:
        detect_source(source(text), "model.py")

    assert caught.value.reason == "no_kind"


def test_a_use_before_its_import_in_the_same_scope_does_not_count() -> None:
    # At run time this is a NameError: only the later, real use counts.
    text = """
        early = LogisticRegression()
        from sklearn.linear_model import LogisticRegression
        late = LogisticRegression()
        """

    detection = detect_source(source(text), "model.py")

    assert detection.evidence == (Evidence("sklearn.linear_model.LogisticRegression", 3),)


def test_circular_reassignments_end() -> None:
    text = """
        from keras import layers

        a = b
        b = a
        x = a.Conv2D(8, 3)
        y = layers.Conv1D(8, 3)
        """

    assert names(detect_source(source(text), "model.py")) == ["keras.layers.Conv1D"]


def test_dense_only_keras_is_the_keras_kind_not_a_cnn() -> None:
    text = """
        from tensorflow import keras
        from tensorflow.keras import layers

        def build_model(hp, input_shape, num_classes):
            return keras.Sequential([layers.Flatten(), layers.Dense(num_classes)])
        """

    detection = detect_source(source(text), "model.py")

    assert detection.kind == "keras"
    assert detection.evidence == (Evidence("tensorflow.keras.layers.Dense", 5),)


def test_a_cnn_with_dense_layers_is_a_cnn_not_also_keras() -> None:
    text = """
        from keras import layers
        from sklearn.svm import SVC

        def build_model(hp, input_shape, num_classes):
            x = layers.Conv2D(8, 3)
            return layers.Dense(num_classes)(x)
        """

    detection = detect_source(source(text).replace("from sklearn.svm import SVC\n", ""), "model.py")
    assert detection.kind == "cnn"
    assert names(detection) == ["keras.layers.Conv2D"]
    # Next to another kind, the dense layers of a cnn do not make a third one.
    with pytest.raises(DetectionError) as caught:
        detect_source(source(text) + "\nestimator = SVC()\n", "model.py")
    assert set(caught.value.found) == {"cnn", "svm"}


def test_keras_without_dense_or_convolution_layers_is_no_kind_and_the_message_says_what_was_found() -> None:
    text = """
        from tensorflow import keras
        from tensorflow.keras import layers

        def build_model(hp, input_shape, num_classes):
            return keras.Sequential([layers.Flatten(), layers.Softmax()])
        """

    with pytest.raises(DetectionError) as caught:
        detect_source(source(text), "model.py")

    message = str(caught.value)
    assert caught.value.reason == "no_kind"
    assert caught.value.found == {}
    assert "no model kind found" in message
    assert "tensorflow.keras.layers.Softmax at line 5" in message
    assert "tensorflow.keras.Sequential at line 5" in message


def test_a_file_with_no_ml_library_says_so() -> None:
    with pytest.raises(DetectionError) as caught:
        detect_source("import os\n\nprint(os.getcwd())\n", "model.py")

    assert caught.value.reason == "no_kind"
    assert "no Keras or scikit-learn name" in str(caught.value)
    assert "pushtrain.toml" in str(caught.value)


def test_an_unsupported_library_is_named_in_the_message() -> None:
    text = """
        import torch.nn as nn

        layer = nn.Conv2d(1, 8, 3)
        """

    with pytest.raises(DetectionError, match=r"torch\.nn\.Conv2d at line 3"):
        detect_source(source(text), "model.py")


def test_two_kinds_in_one_file_are_ambiguous() -> None:
    text = """
        from keras import layers
        from sklearn.neighbors import KNeighborsClassifier

        def build_model():
            return layers.Conv2D(8, 3)

        def build_estimator():
            return KNeighborsClassifier()
        """

    with pytest.raises(DetectionError) as caught:
        detect_source(source(text), "model.py")

    assert str(caught.value) == (
        "model.py: found both cnn (keras.layers.Conv2D at line 5) and knn "
        "(sklearn.neighbors.KNeighborsClassifier at line 8); pushtrain needs exactly one model kind per "
        "file: split the file or set `kind` in pushtrain.toml"
    )
    assert caught.value.reason == "ambiguous"
    assert caught.value.found == {
        "cnn": (Evidence("keras.layers.Conv2D", 5),),
        "knn": (Evidence("sklearn.neighbors.KNeighborsClassifier", 8),),
    }


def test_conditional_imports_of_two_kinds_are_ambiguous() -> None:
    text = """
        import os

        if os.environ.get("USE_KNN"):
            from sklearn.neighbors import KNeighborsClassifier as Estimator
        else:
            from sklearn.linear_model import LogisticRegression as Estimator

        estimator = Estimator()
        """

    with pytest.raises(DetectionError) as caught:
        detect_source(source(text), "model.py")

    assert caught.value.reason == "ambiguous"
    assert set(caught.value.found) == {"linear", "knn"}


# --------------------------------------------------------------------------------------------------------
# Broken and hostile input
# --------------------------------------------------------------------------------------------------------


def test_a_syntax_error_names_the_file_and_line() -> None:
    text = "from sklearn.neighbors import KNeighborsClassifier\n\n\ndef build_estimator(:\n    pass\n"

    with pytest.raises(DetectionError) as caught:
        detect_source(text, "repo/model.py")

    assert caught.value.reason == "syntax"
    assert str(caught.value).startswith("repo/model.py, line 4: ")
    assert "def build_estimator(:" in str(caught.value)


def test_a_syntax_error_through_the_bounded_path_keeps_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x = 1\nif x\n    pass\n")

    with pytest.raises(DetectionError, match=r"model\.py, line 2: "):
        detect_kind(path)


def test_hostile_code_is_never_executed(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    text = f"""
        from sklearn.neighbors import KNeighborsClassifier

        __import__("os").system("touch {pwned}")

        def build_estimator(hp, x=__import__("os").system("touch {pwned}")):
            return KNeighborsClassifier()

        class Model(metaclass=__import__("os").system("touch {pwned}")):
            pass
        """
    path = write(tmp_path, text)

    assert detect_kind(path).kind == "knn"
    assert detect_file(path).kind == "knn"
    assert main([str(path)]) == 0
    assert not pwned.exists()


@pytest.mark.parametrize(
    ("text", "reasons"),
    [
        ("(" * 100_000, {"syntax"}),
        # CPython reports a parser stack overflow as MemoryError; which of the two the child names
        # depends on how close to its limit the peak memory came, and both messages say what to do.
        ("x = " + "-" * 100_000 + "1\n", {"nesting", "memory"}),
        ("x = " + "1 + " * 100_000 + "1\n", {"nesting", "memory"}),
        ("x = y" + ".a" * 100_000 + "\n", {"nesting", "memory"}),
    ],
    ids=["parentheses", "unary-operators", "binary-operators", "attribute-chain"],
)
def test_deep_nesting_ends_in_a_clear_error_in_bounded_time(
    tmp_path: Path, text: str, reasons: set[str]
) -> None:
    path = tmp_path / "model.py"
    path.write_text(text, encoding="utf-8")

    started = time.monotonic()
    with pytest.raises(DetectionError) as caught:
        detect_kind(path)

    assert time.monotonic() - started < BOUNDED_SECONDS
    assert caught.value.reason in reasons
    assert "model.py" in str(caught.value)
    assert "pushtrain.toml" in str(caught.value) or "syntax" in str(caught.value)


def test_deep_nesting_in_process_is_an_error_not_a_crash() -> None:
    with pytest.raises(DetectionError) as caught:
        detect_source("x = " + "1 + " * 100_000 + "1\n", "model.py")

    assert caught.value.reason == "nesting"


def test_deep_but_valid_code_is_analysed() -> None:
    depth = 90  # Python allows 100 levels of indentation
    lines = ["from sklearn.neighbors import KNeighborsClassifier", "x = 1"]
    lines += [" " * level + "if x:" for level in range(depth)]
    lines.append(" " * depth + "estimator = KNeighborsClassifier()")
    lines.append("total = " + " + ".join(["x"] * 800))

    detection = detect_source("\n".join(lines) + "\n", "model.py")

    assert detection.kind == "knn"
    assert detection.evidence == (Evidence("sklearn.neighbors.KNeighborsClassifier", depth + 3),)


@pytest.fixture(scope="module")
def huge_valid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Just under the size cap, valid, and slow and memory-hungry to parse (one long literal)."""
    path = tmp_path_factory.mktemp("huge") / "model.py"
    header = "from sklearn.neighbors import KNeighborsClassifier\nestimator = KNeighborsClassifier()\n"
    body = "DATA = [" + "1, " * ((MAX_MODEL_FILE_BYTES - 200) // 3) + "]\n"
    path.write_text(header + body, encoding="utf-8")
    assert path.stat().st_size <= MAX_MODEL_FILE_BYTES
    return path


def test_a_parse_over_the_time_limit_is_stopped(huge_valid_model: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DetectionError) as caught:
        detect_kind(huge_valid_model, timeout_s=0.2)

    assert time.monotonic() - started < BOUNDED_SECONDS
    assert caught.value.reason == "timeout"
    assert "took longer than 0.2 s" in str(caught.value)
    assert "set `kind` in pushtrain.toml" in str(caught.value)


def test_a_parse_over_the_memory_limit_is_stopped(huge_valid_model: Path) -> None:
    with pytest.raises(DetectionError) as caught:
        detect_kind(huge_valid_model, memory_mb=100)

    assert caught.value.reason == "memory"
    assert "ran out of memory (limit: 100 MiB)" in str(caught.value)
    assert "raise `memory_mb`" in str(caught.value)


def test_a_file_over_the_size_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text("#" * (MAX_MODEL_FILE_BYTES + 1), encoding="utf-8")

    with pytest.raises(DetectionError) as bounded:
        detect_kind(path)
    with pytest.raises(DetectionError) as in_process:
        read_model_source(path)

    assert bounded.value.reason == in_process.value.reason == "too_large"
    assert "up to 1 MiB" in str(bounded.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"from sklearn import svm\n\xff\xfe = 1\n", "save the model file as UTF-8"),
        (b"x = 1\x00\n", "null bytes"),
        (b"# -*- coding: no-such-codec -*-\nx = 1\n", "no-such-codec"),
    ],
    ids=["not-utf8", "nul-bytes", "unknown-coding-cookie"],
)
def test_unreadable_text_is_a_clear_error(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.py"
    path.write_bytes(content)

    with pytest.raises(DetectionError) as caught:
        detect_kind(path)

    assert caught.value.reason == "unreadable"
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_declared_source_encoding_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    text = "# -*- coding: latin-1 -*-\n# Modèle\nfrom sklearn.svm import LinearSVC\nm = LinearSVC()\n"
    path.write_bytes(text.encode("latin-1"))

    assert detect_kind(path).kind == "linear"


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_a_missing_or_non_regular_path_is_a_clear_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "model.py"
    if make == "directory":
        path.mkdir()

    with pytest.raises(DetectionError) as caught:
        detect_kind(path)

    assert caught.value.reason == "unreadable"
    assert str(path) in str(caught.value)


def test_the_child_gets_no_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GIT_DEFAULT", "https://user:secret@example.invalid")

    assert "AIRFLOW_CONN_GIT_DEFAULT" not in detect._child_environment()


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cli_prints_the_kind_and_exits_0(
    templates_dir: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(templates_dir / KINDS[kind].template)]) == 0

    captured = capsys.readouterr()
    assert captured.out == f"{kind}\n"
    assert captured.err == ""


def test_cli_json_prints_the_detection(templates_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = templates_dir / KINDS["knn"].template

    assert main(["--json", str(path)]) == 0

    payload = json.loads(capsys.readouterr().out)
    assert payload["kind"] == "knn"
    assert payload["filename"] == str(path)
    assert {"qualified_name": "sklearn.neighbors.KNeighborsClassifier", "line": 35} in payload["evidence"]


def test_cli_prints_the_reason_on_stderr_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
        from keras import layers
        from sklearn.neighbors import KNeighborsClassifier

        a = layers.Conv2D(8, 3)
        b = KNeighborsClassifier()
        """,
    )

    assert main([str(path)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "found both cnn (keras.layers.Conv2D at line 4) and knn" in captured.err


def test_cli_json_reports_a_failure_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "import os\n")

    assert main(["--json", str(path)]) == 1

    payload = json.loads(capsys.readouterr().out)
    assert payload["reason"] == "no_kind"
    assert "no model kind found" in payload["error"]


@pytest.mark.parametrize(
    "argv",
    [[], ["--no-such-option", "model.py"], ["a.py", "b.py"], ["--timeout", "0", "model.py"]],
    ids=["no-path", "unknown-option", "two-paths", "zero-timeout"],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2

    assert "usage:" in capsys.readouterr().err


def test_python_dash_m_pushtrain_detect_works(project_root: Path, templates_dir: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(project_root / "plugins")}

    completed = subprocess.run(
        [sys.executable, "-m", "pushtrain.detect", str(templates_dir / KINDS["linear"].template)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=30,
        check=False,
    )

    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "linear\n", "")


# ---------------------------------------------------------------------------------- trees and other estimators


@pytest.mark.parametrize("name", ["DecisionTreeClassifier", "ExtraTreeClassifier"])
def test_single_trees_are_forest(name: str) -> None:
    text = f"""
        from sklearn.tree import {name}

        def build_estimator(hp):
            return {name}(max_depth=hp["max_depth"], random_state=hp["seed"])
        """
    detection = detect_source(source(text), "model.py")
    assert detection.kind == "forest"
    assert names(detection) == [f"sklearn.tree.{name}"]


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("naive_bayes", "GaussianNB"),
        ("ensemble", "GradientBoostingClassifier"),
        ("ensemble", "HistGradientBoostingClassifier"),
        ("neural_network", "MLPClassifier"),
        ("tree", "DecisionTreeRegressor"),
    ],
)
def test_an_estimator_of_no_kind_is_named_with_the_kinds_and_what_to_do(module: str, name: str) -> None:
    text = f"""
        from sklearn.preprocessing import StandardScaler
        from sklearn.{module} import {name}

        def build_estimator(hp):
            return {name}(**hp)
        """
    with pytest.raises(DetectionError) as caught:
        detect_source(source(text), "model.py")

    message = str(caught.value)
    assert caught.value.reason == "no_kind"
    assert (
        f"sklearn.{module}.{name} at line 5 is a scikit-learn estimator that no kind of pushtrain tunes"
        in message
    )
    # Every kind of the table is named, and the honest limit of `kind = ...` in pushtrain.toml.
    assert all(f"{kind} (" in message for kind in KINDS)
    assert "DecisionTreeClassifier" in message and "include/model_templates/" in message
    assert (
        "`kind` in pushtrain.toml trains the file as it is, but the tweaks then move only that kind's"
        in message
    )
    assert f"not made for the {name}" in message
