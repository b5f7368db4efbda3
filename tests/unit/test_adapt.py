"""Unit tests of pushtrain.adapt: what a rewrite keeps, lifts, changes and refuses, and that it never runs code.

The corpus (tests/fixtures/scripts/, test_adapt_corpus.py) covers whole scripts; these tests pin one
behaviour each on a small script, so a failure names the rule that broke.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pushtrain import adapt, contract_check

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT_ROOT / "tests" / "fixtures" / "scripts"


def source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def adapted(text: str) -> adapt.Adaptation:
    result = adapt.adapt_source(source(text), "train.py")
    checked = contract_check.check_source(result.adapted, "model.py")
    assert checked.ok, checked.report() + "\n" + result.adapted
    return result


def refused(text: str) -> adapt.AdaptRefused:
    with pytest.raises(adapt.AdaptRefused) as caught:
        adapt.adapt_source(source(text), "train.py")
    return caught.value


def builder_source(result: adapt.Adaptation) -> str:
    module = ast.parse(result.adapted)
    function = next(node for node in module.body if isinstance(node, ast.FunctionDef))
    return ast.unparse(function)


KERAS_HEAD = """
    from tensorflow import keras
    from tensorflow.keras import layers
    (x_train, y_train), _ = keras.datasets.mnist.load_data()
"""


# --------------------------------------------------------------------------------------------------------
# Never run: a script whose import would leave a marker file behind
# --------------------------------------------------------------------------------------------------------

MARKER_STATEMENTS = [
    "open({marker!r}, 'w').write('ran')",
    "__import__('pathlib').Path({marker!r}).touch()",
    "__import__('os').system('touch ' + {marker!r})",
]


def with_side_effects(text: str, marker: Path, statement: str) -> str:
    """The script with the marker statement at the top, in a default argument and in a decorator."""
    line = statement.format(marker=str(marker))
    return (
        f"{line}\n"
        f"def _helper(value=({line}, 1)[1]):\n    return value\n"
        f"@(lambda function: ({line}, function)[1])\ndef _decorated():\n    pass\n"
        f"class _Settings:\n    EFFECT = {line}\n" + text
    )


# Every corpus script, each with one of the statements in turn (all of them on every script adds little).
CORPUS_WITH_EFFECTS = [
    (path.name, MARKER_STATEMENTS[position % len(MARKER_STATEMENTS)])
    for position, path in enumerate(sorted(SCRIPTS.glob("*.py")))
]


@pytest.mark.parametrize(("script", "statement"), CORPUS_WITH_EFFECTS)
def test_adapt_and_check_never_run_the_script(tmp_path, script, statement):
    marker = tmp_path / "imported"
    text = with_side_effects((SCRIPTS / script).read_text(), marker, statement)
    contract_check.check_source(text, script)
    try:
        result = adapt.adapt_source(text, script)
    except adapt.AdaptRefused:
        result = None
    assert not marker.exists(), f"{script}: adapt or check ran code of the script"
    if result is not None:
        # The side effects are not part of the model, so the adapted file does not carry them either.
        assert str(marker) not in result.adapted


def test_the_command_never_runs_the_script_either(tmp_path):
    marker = tmp_path / "imported"
    script = tmp_path / "train.py"
    script.write_text(
        with_side_effects((SCRIPTS / "mnist_cnn_module_level.py").read_text(), marker, MARKER_STATEMENTS[1])
    )
    completed = subprocess.run(
        [sys.executable, "-m", "pushtrain", "adapt", str(script), "-o", str(tmp_path / "model.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(PROJECT_ROOT / "plugins"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert not marker.exists()
    assert (tmp_path / "model.py").exists()


def test_a_layer_argument_with_a_call_in_it_is_read_never_evaluated(tmp_path):
    marker = tmp_path / "imported"
    touch = f'__import__("pathlib").Path({str(marker)!r}).touch()'
    # `call() or 64`: the literal is the default, so it becomes the knob and the call goes.
    result = adapted(
        KERAS_HEAD
        + f"""
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense({touch} or 64),
                              layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2)
    """
    )
    assert result.hparams["dense_units"] == 64 and "touch" not in result.adapted
    # The call alone has no value without running it: refused, at its line.
    problem = refused(
        KERAS_HEAD
        + f"""
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(len({touch})),
                              layers.Dense(10, activation="softmax")])
    """
    )
    assert any(item.line == 5 and "units of the hidden Dense" in item.message for item in problem.problems)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------
# The model: where it is, what becomes a parameter
# --------------------------------------------------------------------------------------------------------


def test_module_level_sequential_moves_into_build_model_with_its_compile():
    result = adapted(
        KERAS_HEAD
        + """
    model = keras.Sequential()
    model.add(layers.Flatten(input_shape=(28, 28)))
    model.add(layers.Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.summary()
    model.fit(x_train, y_train, epochs=2)
    """
    )
    body = builder_source(result)
    assert body.startswith("def build_model(hp, input_shape, num_classes):")
    assert "model.compile(" in body and "summary" not in body and "fit" not in body
    assert "Flatten(input_shape=input_shape)" in body
    assert "Dense(num_classes, activation='softmax')" in body
    assert body.rstrip().endswith("return model")


def test_a_builder_function_is_renamed_and_gets_the_contracts_parameters():
    result = adapted(
        KERAS_HEAD
        + """
    def make_net(units=32):
        '''The network.'''
        net = keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(units),
                                layers.Dense(10, activation="softmax")])
        return net

    net = make_net(units=48)
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    net.fit(x_train, y_train, epochs=2)
    """
    )
    body = builder_source(result)
    assert body.startswith('def build_model(hp, input_shape, num_classes):\n    """The network."""')
    # The call's argument wins over the default; the compile made at the call site moves into the builder.
    assert result.hparams["dense_units"] == 48
    assert "net.compile(" in body
    assert any("make_net() -> build_model" in change.message for change in result.changes)


def test_the_functional_api_is_kept_and_a_flat_input_gets_a_flatten():
    result = adapted(
        KERAS_HEAD
        + """
    inputs = keras.Input(shape=(784,))
    hidden = layers.Dense(64, activation="relu")(inputs)
    outputs = layers.Dense(10, activation="softmax")(hidden)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x_train.reshape(-1, 784), y_train, epochs=1)
    """
    )
    body = builder_source(result)
    assert "keras.Input(shape=input_shape)" in body
    assert "layers.Dense(hp['dense_units'], activation='relu')(layers.Flatten()(inputs))" in body
    assert result.hparams["learning_rate"] == 0.01  # SGD's default in Keras 3


def test_input_dim_of_a_first_dense_becomes_a_flatten_with_the_input_shape():
    result = adapted(
        KERAS_HEAD
        + """
    model = keras.Sequential()
    model.add(layers.Dense(32, input_dim=784, activation="relu"))
    model.add(layers.Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1)
    """
    )
    body = builder_source(result)
    assert (
        "model.add(layers.Flatten(input_shape=input_shape))\n    model.add(layers.Dense(hp['dense_units']"
        in body
    )
    assert "input_dim" not in body


def test_a_binary_head_becomes_a_softmax_over_the_classes():
    result = adapted(
        KERAS_HEAD
        + """
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["binary_accuracy", "AUC"])
    model.fit(x_train, y_train, epochs=1)
    """
    )
    body = builder_source(result)
    assert "layers.Dense(num_classes, activation='softmax')" in body
    assert "loss='sparse_categorical_crossentropy'" in body
    assert "metrics=['accuracy']" in body


def test_one_hot_losses_and_metrics_become_sparse_and_loss_objects_keep_their_arguments():
    result = adapted(
        KERAS_HEAD
        + """
    from tensorflow.keras.losses import CategoricalCrossentropy
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28)), layers.Dense(10)])
    model.compile(optimizer="adam", loss=CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                  metrics=["categorical_accuracy"])
    model.fit(x_train, keras.utils.to_categorical(y_train), epochs=1)
    """
    )
    body = builder_source(result)
    assert "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)" in body
    assert "'sparse_categorical_accuracy'" in body
    assert "CategoricalCrossentropy" not in result.adapted.replace("SparseCategoricalCrossentropy", "")


def test_rescaling_by_1_over_255_goes_and_augmentation_layers_stay():
    result = adapted(
        KERAS_HEAD
        + """
    model = keras.Sequential([
        layers.RandomFlip("horizontal", input_shape=(28, 28, 1)),
        layers.Rescaling(1.0 / 255),
        layers.Conv2D(8, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1)
    """
    )
    body = builder_source(result)
    assert "RandomFlip('horizontal', input_shape=input_shape)" in body
    assert "Rescaling" not in body
    assert any("Rescaling(1/255)" in change.message for change in result.changes)


def test_scikit_learn_pipeline_keeps_its_steps_and_lifts_the_classifiers_knobs():
    result = adapted("""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC
    X, y = load_digits(return_X_y=True)
    pipe = Pipeline([("pca", PCA(n_components=30)), ("svc", SVC(C=3.0, gamma=0.02, kernel="rbf"))])
    pipe.fit(X, y)
    """)
    assert result.kind == "svm" and result.builder == "build_estimator"
    assert result.hparams == {"C": 3.0, "kernel": "rbf", "gamma": 0.02}
    assert "PCA(n_components=30)" in builder_source(result)
    assert result.dataset == "digits"


def test_a_decision_tree_is_a_forest_with_its_depth_and_seed():
    result = adapted("""
    from sklearn.datasets import load_digits
    from sklearn.tree import DecisionTreeClassifier
    X, y = load_digits(return_X_y=True)
    tree = DecisionTreeClassifier(max_depth=8, random_state=0)
    tree.fit(X, y)
    """)
    assert result.kind == "forest" and result.kind_known
    assert result.hparams == {"max_depth": 8, "seed": 0}


def test_an_estimator_of_no_kind_is_adapted_and_the_report_says_it_is_not_tuned():
    result = adapted("""
    from sklearn.datasets import load_digits
    from sklearn.naive_bayes import GaussianNB
    X, y = load_digits(return_X_y=True)
    GaussianNB().fit(X, y)
    """)
    assert result.kind == "sklearn" and not result.kind_known
    assert "no kind of pushtrain tunes it: `python -m pushtrain detect`" in result.report()


def test_a_scaler_fitted_outside_the_model_joins_it_in_a_pipeline():
    result = adapted("""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler
    X, y = load_digits(return_X_y=True)
    scaler = MinMaxScaler()
    X = scaler.fit_transform(X)
    clf = LogisticRegression()
    clf.fit(X, y)
    """)
    body = builder_source(result)
    assert "scaler = MinMaxScaler()" in body
    assert body.rstrip().endswith("return make_pipeline(scaler, clf)")
    # LogisticRegression's defaults are made explicit so the strategies can move them.
    assert result.hparams == {"C": 1.0, "max_iter": 100}


# --------------------------------------------------------------------------------------------------------
# Knobs
# --------------------------------------------------------------------------------------------------------


def test_knobs_come_through_constants_config_dicts_environment_and_argparse_defaults():
    result = adapted(
        KERAS_HEAD
        + """
    import argparse
    import os
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    CONFIG = {"hidden": 256}
    EPOCHS = int(os.environ.get("EPOCHS", "7"))
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28)),
                              layers.Dense(CONFIG["hidden"], activation="relu"),
                              layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr=3e-4), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=args.batch_size)
    """
    )
    assert result.hparams == {"epochs": 7, "batch_size": 64, "learning_rate": 0.0003, "dense_units": 256}
    notes = " ".join(change.message for change in result.changes)
    assert "the default of the environment variable" in notes
    assert "the default of the command-line option" in notes
    assert "`lr=` of Adam -> `learning_rate=`" in notes
    assert "Adam(learning_rate=hp['learning_rate'])" in builder_source(result)


def test_comments_of_a_constant_that_becomes_a_knob_move_to_its_entry():
    result = adapted(
        KERAS_HEAD
        + """
    # more epochs overfit on this data
    EPOCHS = 4  # measured on 2024-03-01
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28)),  # images come as 28x28
                              layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=EPOCHS)
    """
    )
    assert (
        '    # more epochs overfit on this data\n    "epochs": 4,  # measured on 2024-03-01\n'
        in result.adapted
    )
    assert "# images come as 28x28" in result.adapted


def test_repeated_conv_blocks_become_a_loop_and_later_layers_scale_with_the_first():
    result = adapted(
        KERAS_HEAD
        + """
    model = keras.Sequential()
    model.add(layers.Conv2D(16, (3, 3), activation="relu", input_shape=(28, 28, 1)))
    model.add(layers.MaxPooling2D())
    model.add(layers.Conv2D(32, (3, 3), activation="relu"))
    model.add(layers.MaxPooling2D())
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1)
    """
    )
    body = builder_source(result)
    assert "model.add(keras.Input(shape=input_shape))\n    for block in range(hp['conv_blocks']):" in body
    assert "layers.Conv2D(hp['filters'] * 2 ** block, hp['kernel_size'], activation='relu')" in body
    assert "layers.Conv2D(hp['filters'] * 4, hp['kernel_size']" in body
    assert "layers.Dense(max(1, hp['dense_units'] // 2), activation='relu')" in body
    assert result.hparams["conv_blocks"] == 2 and result.hparams["filters"] == 16


def test_differing_dropouts_get_their_own_knobs_and_a_loop_variable_is_left_alone():
    result = adapted(
        KERAS_HEAD
        + """
    model = keras.Sequential([layers.Flatten(input_shape=(28, 28))])
    for width in [128, 64]:
        model.add(layers.Dense(width, activation="relu"))
    model.add(layers.Dropout(0.25))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1)
    """
    )
    assert result.hparams["dropout"] == 0.25 and result.hparams["dropout_2"] == 0.5
    assert "dense_units" not in result.hparams
    assert "layers.Dense(width, activation='relu')" in builder_source(result)


def test_a_script_that_already_meets_the_contract_is_returned_unchanged(templates_dir):
    for template in sorted(templates_dir.glob("*.py")):
        text = template.read_text()
        result = adapt.adapt_source(text, template.name)
        assert result.adapted == text and not result.changed
        assert result.diff() == ""


# --------------------------------------------------------------------------------------------------------
# Keras 2
# --------------------------------------------------------------------------------------------------------


def test_keras_2_imports_are_modernised():
    result = adapted("""
    from keras.datasets import mnist
    from keras.models import Sequential
    from keras.layers.core import Dense, Flatten
    from keras.utils import np_utils
    from keras.optimizers import SGD
    (x, y), _ = mnist.load_data()
    model = Sequential()
    model.add(Flatten(input_shape=(28, 28)))
    model.add(Dense(10, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer=SGD(lr=0.1, decay=1e-6, momentum=0.9))
    model.fit_generator(iter([]), steps_per_epoch=10, nb_epoch=3)
    """)
    assert "from keras.layers import Dense, Flatten" in result.adapted
    assert "np_utils" not in result.adapted  # only the removed preprocessing used it
    assert "SGD(learning_rate=hp['learning_rate'], momentum=0.9)" in builder_source(result)
    assert result.hparams["epochs"] == 3


# --------------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("import torch\nmodel = torch.nn.Linear(784, 10)\n", 1, "uses PyTorch"),
        ("import xgboost as xgb\nclf = xgb.XGBClassifier()\n", 1, "uses XGBoost"),
        (
            "from sklearn.svm import SVC\nfrom sklearn.tree import DecisionTreeClassifier\n"
            "a = SVC()\nb = DecisionTreeClassifier()\na.fit(X, y)\nb.fit(X, y)\n",
            4,
            "builds 2 models",
        ),
        (
            "import random\nfrom sklearn.neighbors import KNeighborsClassifier\n"
            "knn = KNeighborsClassifier(n_neighbors=random.randint(1, 9))\n",
            3,
            "a random draw",
        ),
        (
            "import os\nfrom sklearn.svm import SVC\nclf = SVC(C=float(os.environ['C']))\n",
            3,
            "the environment",
        ),
        (
            "import sys\nfrom sklearn.svm import SVC\nC = float(sys.argv[1])\nclf = SVC(C=C)\n",
            4,
            "the command line",
        ),
        (
            "import json\nfrom sklearn.svm import SVC\nsettings = json.load(open('settings.json'))\n"
            "clf = SVC(C=settings['C'])\n",
            4,
            "a file",
        ),
        ("print('no model here')\n", None, "adapt found no model"),
        (
            "from sklearn.svm import SVC\nclf = SVC(\n    C=10,\n    kernel='precomputed',\n)\n",
            4,
            'SVC(kernel="precomputed") expects a Gram matrix',
        ),
    ],
)
def test_refusals_name_the_line_and_the_reason(text, line, words):
    problem = refused(text)
    assert any(item.line == line and words in item.message for item in problem.problems), problem.report()


def test_subclassed_models_and_imagenet_weights_are_refused_with_what_to_do():
    subclassed = refused("""
    import tensorflow as tf
    class Net(tf.keras.Model):
        def call(self, x):
            return x
    model = Net()
    """)
    assert subclassed.problems[0].line == 2
    assert "build_model(hp, input_shape, num_classes) returning Net(...)" in subclassed.problems[0].message

    imagenet = refused("""
    import keras
    base = keras.applications.ResNet50(weights="imagenet", include_top=False, input_shape=(64, 64, 3))
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    """)
    assert imagenet.problems[0].line == 2
    assert "weights=None" in imagenet.problems[0].message


def test_a_syntax_error_is_refused_with_its_line():
    problem = refused("from sklearn.svm import SVC\nclf = SVC(C=1.0\nclf.fit(X, y)\n")
    assert problem.problems[0].line is not None and "does not parse" in problem.problems[0].message


# --------------------------------------------------------------------------------------------------------
# pushtrain.toml
# --------------------------------------------------------------------------------------------------------


def test_the_data_set_goes_into_pushtrain_toml_without_overriding_a_choice():
    text, message = adapt.config_with_dataset(None, "digits")
    assert text == 'dataset = "digits"  # set by pushtrain adapt\n' and "digits" in message

    table = "# team settings\n[pushtrain]\ntarget = 0.9\n\n[other]\nx = 1\n"
    text, _ = adapt.config_with_dataset(table, "mnist5k")
    assert (
        text == '# team settings\n[pushtrain]\ndataset = "mnist5k"  # set by pushtrain adapt\ntarget = 0.9\n'
        "\n[other]\nx = 1\n"
    )

    chosen = 'dataset = "digits"\n'
    text, message = adapt.config_with_dataset(chosen, "mnist5k")
    assert text == chosen and "kept it" in message
    assert adapt.config_with_dataset(chosen, "digits") == (chosen, "")


# --------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------


def run_command(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushtrain", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(PROJECT_ROOT / "plugins"), "PATH": "/usr/bin:/bin"},
    )


def test_adapt_prints_the_file_and_one_line_per_change_and_writes_the_data_set(tmp_path):
    script = tmp_path / "train.py"
    script.write_text((SCRIPTS / "svc_digits.py").read_text())
    completed = run_command("adapt", str(script), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    expected = adapt.adapt_file(script)
    assert completed.stdout == expected.adapted
    lines = completed.stderr.splitlines()
    assert len(lines) == len(expected.changes) + 3  # the changes, kind and knobs, data set, pushtrain.toml
    assert all(line.startswith(f"{script}") for line in lines)
    assert (tmp_path / "pushtrain.toml").read_text() == 'dataset = "digits"  # set by pushtrain adapt\n'
    assert script.read_text() == (SCRIPTS / "svc_digits.py").read_text()  # the script itself is untouched


def test_adapt_writes_the_output_file_and_json(tmp_path):
    script = tmp_path / "train.py"
    script.write_text((SCRIPTS / "knn_k_loop.py").read_text())
    completed = run_command(
        "adapt", str(script), "-o", str(tmp_path / "out" / "model.py"), "--json", "--no-config", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["kind"] == "knn" and result["hparams"]["n_neighbors"] == 1 and result["changed"]
    assert contract_check.check_file(tmp_path / "out" / "model.py").kind == "knn"
    assert not (tmp_path / "pushtrain.toml").exists() and not (tmp_path / "out" / "pushtrain.toml").exists()
    # Readable like any new file (the non-root training container reads it), not private as a temp file.
    assert (tmp_path / "out" / "model.py").stat().st_mode & 0o444 == 0o444


def test_adapt_over_an_existing_file_keeps_its_mode(tmp_path):
    script = tmp_path / "model.py"
    script.write_text((SCRIPTS / "knn_k_loop.py").read_text())
    script.chmod(0o640)
    completed = run_command("adapt", str(script), "-o", str(script), "--no-config", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert script.stat().st_mode & 0o777 == 0o640 and "def build_estimator(hp):" in script.read_text()


def test_a_refusal_writes_nothing_and_leaves_an_existing_output_alone(tmp_path):
    script = tmp_path / "train.py"
    script.write_text((SCRIPTS / "epochs_from_argv.py").read_text())
    output = tmp_path / "model.py"
    output.write_text("HPARAMS = {}\n")
    completed = run_command("adapt", str(script), "-o", str(output), cwd=tmp_path)
    assert completed.returncode == 1
    assert "line 17: epochs of model.fit() comes from the command line" in completed.stderr
    assert "nothing was written" in completed.stderr
    assert output.read_text() == "HPARAMS = {}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.py", "train.py"]


# --------------------------------------------------------------------------------------------------------
# Bounded, for the Airflow side
# --------------------------------------------------------------------------------------------------------


def test_adapt_bounded_answers_like_adapt_file_from_a_child_process():
    direct = adapt.adapt_file(SCRIPTS / "svc_digits.py")
    bounded = adapt.adapt_bounded(SCRIPTS / "svc_digits.py")
    assert bounded == direct

    with pytest.raises(adapt.AdaptRefused) as caught:
        adapt.adapt_bounded(SCRIPTS / "pytorch_mnist.py")
    assert [(problem.line, "PyTorch" in problem.message) for problem in caught.value.problems] == [(1, True)]


@pytest.mark.parametrize(
    ("limits", "words"),
    [({"timeout_s": 0.01}, "took longer than 0.01 s"), ({"memory_mb": 8}, "could not finish")],
)
def test_adapt_bounded_turns_a_blown_limit_into_a_refusal(limits, words):
    with pytest.raises(adapt.AdaptRefused) as caught:
        adapt.adapt_bounded(SCRIPTS / "svc_digits.py", **limits)
    assert words in caught.value.report()
