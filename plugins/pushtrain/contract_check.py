"""Check a model file against the contract before anything runs: parsed with LibCST, never imported.

The runner finds out that a file breaks the contract only after it imported the whole module inside the
training container, so a plain training script fails late and for the wrong reason (a download that the
sandbox blocks, a CSV that is not there). :func:`check_source` reads the file as text and lists every
problem with its line:

* no ``HPARAMS``, or an ``HPARAMS`` that is not one module-level literal dict (the rules of
  :mod:`pushtrain.tweak`, which rewrites it),
* no builder, or a builder with the wrong parameters: ``build_model(hp, input_shape, num_classes)`` for
  Keras, ``build_estimator(hp)`` for scikit-learn,
* statements that would train, download, load data or run programs when the module is imported (``fit``,
  ``load_data``, ``fetch_*``, ``urlopen``, ``requests.*``, ``os.system``, ``subprocess``, ``sys.argv``...);
  code under ``if __name__ == "__main__":`` and inside functions does not run at import and is left alone,
* Keras 2 names that Keras 3 (the training image's) no longer has (``keras.layers.convolutional``,
  ``np_utils``, ``lr=``, ``fit_generator``...).

A file without problems gets its kind, read from the library calls of the file (the builder and the
helpers it calls). The kinds are those of
:mod:`pushtrain.kinds` (``KIND_OF_ESTIMATOR``; ``keras`` for Keras networks without convolutions) plus the
generic ``sklearn`` for other estimators, so a file can be checked before its kind is in the table.

The library-name helpers here (:class:`NameReader`, :func:`canonical_name`) are shared with
:mod:`pushtrain.adapt`, which rewrites a plain training script into a file that passes this check.
``python -m pushtrain check PATH`` prints the kind (exit 0) or the problems and the advice to run
``python -m pushtrain adapt PATH`` (exit 1).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider, QualifiedNameProvider, QualifiedNameSource

from pushtrain import tweak
from pushtrain.detect import SKLEARN_ESTIMATOR_MODULES, DetectionError, read_model_source
from pushtrain.kinds import KERAS, SCIKIT_LEARN

ADVICE = "run `python -m pushtrain adapt {path}` to rewrite it into a file that meets the contract"

# Frameworks pushtrain does not train, by import root, with the name users know them by.
OTHER_FRAMEWORKS = {
    "torch": "PyTorch",
    "torchvision": "PyTorch",
    "lightning": "PyTorch Lightning",
    "pytorch_lightning": "PyTorch Lightning",
    "jax": "JAX",
    "flax": "Flax",
    "xgboost": "XGBoost",
    "lightgbm": "LightGBM",
    "catboost": "CatBoost",
    "mxnet": "MXNet",
    "paddle": "PaddlePaddle",
    "theano": "Theano",
}

# scikit-learn classifiers pushtrain knows, by class name: the kind it trains them as (rows of the kinds
# table); any other estimator is the generic `sklearn`, which adapt proposes but the table does not have.
KIND_OF_ESTIMATOR = {
    "LogisticRegression": "linear",
    "SGDClassifier": "linear",
    "LinearSVC": "linear",
    "RidgeClassifier": "linear",
    "Perceptron": "linear",
    "PassiveAggressiveClassifier": "linear",
    "KNeighborsClassifier": "knn",
    "RadiusNeighborsClassifier": "knn",
    "NearestCentroid": "knn",
    "SVC": "svm",
    "NuSVC": "svm",
    "RandomForestClassifier": "forest",
    "ExtraTreesClassifier": "forest",
    "DecisionTreeClassifier": "forest",
    "ExtraTreeClassifier": "forest",
}
GENERIC_SKLEARN_KIND = "sklearn"
GENERIC_KERAS_KIND = "keras"
# The one problem that is about the kind rather than the contract: a file whose kind is set in pushtrain.toml
# may build a model of its own (a duck-typed estimator), and the pipeline does not hold that against it.
UNKNOWN_MODEL = "builds no model pushtrain knows"
_SKLEARN_COMPOSITES = frozenset({"Pipeline", "make_pipeline", "FeatureUnion", "make_union"})
SKLEARN_SEARCHES = frozenset(
    {"GridSearchCV", "RandomizedSearchCV", "HalvingGridSearchCV", "HalvingRandomSearchCV"}
)

# Keras 2 module paths that Keras 3 folded into `keras.layers` / `keras.utils` / `keras.optimizers`.
LEGACY_LAYER_MODULES = frozenset(
    {
        "convolutional",
        "core",
        "pooling",
        "normalization",
        "recurrent",
        "embeddings",
        "merge",
        "advanced_activations",
        "noise",
        "local",
        "wrappers",
        "experimental",
        "preprocessing",
        "convolutional_recurrent",
        "normalization_v2",
    }
)
KERAS_OPTIMIZERS = frozenset(
    {"Adam", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "AdamW", "Ftrl", "Lion"}
)
_CONV_LAYER = re.compile(
    r"(Conv|Convolution|SeparableConv|SeparableConvolution|DepthwiseConv|ConvLSTM)[123]D"
)
_TRAINING_METHODS = frozenset({"fit", "fit_generator", "train_on_batch", "partial_fit"})


# --------------------------------------------------------------------------------------------------------
# Library names
# --------------------------------------------------------------------------------------------------------


def canonical_name(qualified: str) -> str:
    """One spelling per library object: ``tensorflow.keras.layers.convolutional.Conv2D`` -> ``keras.layers.Conv2D``.

    ``tensorflow.keras``, ``tensorflow.python.keras``, ``tf_keras`` and ``keras.src`` are all ``keras``;
    Keras 2's layer sub-modules collapse into ``keras.layers``, ``keras.utils.np_utils`` into
    ``keras.utils``, ``keras.models.Sequential`` is ``keras.Sequential``. Other names are returned as given.
    """
    parts = qualified.split(".")
    if parts[0] == "tensorflow" and parts[1:2] == ["keras"]:
        parts = ["keras", *parts[2:]]
    elif parts[0] == "tensorflow" and parts[1:3] == ["python", "keras"]:
        parts = ["keras", *parts[3:]]
    elif parts[0] == "tf_keras":
        parts = ["keras", *parts[1:]]
    if parts[0] != "keras":
        return ".".join(parts)
    if parts[1:2] == ["src"]:
        parts = ["keras", *parts[2:]]
    if len(parts) >= 3 and parts[1] == "layers" and parts[2] in LEGACY_LAYER_MODULES:
        parts = ["keras", "layers", *parts[-1:]] if len(parts) > 3 else ["keras", "layers"]
    elif len(parts) >= 3 and parts[1:3] == ["utils", "np_utils"]:
        parts = ["keras", "utils", *parts[3:]]
    elif len(parts) >= 3 and parts[1:3] == ["optimizers", "legacy"]:
        parts = ["keras", "optimizers", *parts[3:]]
    elif len(parts) == 3 and parts[1] in ("models", "engine") and parts[2] in ("Sequential", "Model"):
        parts = ["keras", parts[2]]
    elif len(parts) == 3 and parts[1] == "layers" and parts[2] == "Input":
        parts = ["keras", "Input"]
    return ".".join(parts)


def is_legacy_keras_path(qualified: str) -> bool:
    """True for a Keras 2 module path or name that Keras 3 does not have under that name."""
    parts = qualified.split(".")
    if parts[0] == "tensorflow" and parts[1:3] == ["python", "keras"]:
        return True
    if parts[0] == "tensorflow" and parts[1:2] == ["keras"]:
        parts = ["keras", *parts[2:]]
    if parts[0] != "keras":
        return False
    return (
        (len(parts) > 2 and parts[1] == "layers" and parts[2] in LEGACY_LAYER_MODULES)
        or parts[1:3] == ["utils", "np_utils"]
        or parts[1:3] == ["optimizers", "legacy"]
    )


def is_conv_layer(name: str) -> bool:
    parts = name.split(".")
    return parts[:2] == ["keras", "layers"] and len(parts) == 3 and bool(_CONV_LAYER.fullmatch(parts[2]))


def is_keras(name: str | None) -> bool:
    return name is not None and name.split(".")[0] == "keras"


def is_keras_model_constructor(name: str | None) -> bool:
    return name in ("keras.Sequential", "keras.Model")


def sklearn_class(name: str | None) -> str | None:
    """The class (or factory) name of a scikit-learn estimator, composite or search; None otherwise."""
    if name is None:
        return None
    parts = name.split(".")
    if parts[0] != "sklearn" or len(parts) < 3:
        return None
    leaf = parts[-1]
    if parts[1] in SKLEARN_ESTIMATOR_MODULES and leaf[:1].isupper():
        return leaf
    if parts[1] == "pipeline" and leaf in _SKLEARN_COMPOSITES:
        return leaf
    if parts[1] == "model_selection" and leaf in SKLEARN_SEARCHES:
        return leaf
    return None


def is_sklearn_estimator(name: str | None) -> bool:
    leaf = sklearn_class(name)
    return leaf is not None and leaf not in _SKLEARN_COMPOSITES and leaf not in SKLEARN_SEARCHES


def kind_of_estimator(class_name: str) -> str:
    return KIND_OF_ESTIMATOR.get(class_name, GENERIC_SKLEARN_KIND)


def other_framework(qualified: str) -> str | None:
    return OTHER_FRAMEWORKS.get(qualified.split(".")[0])


class NameReader:
    """The library names behind a module's expressions, found through its imports (LibCST metadata).

    Besides imports it follows one simple alias level at module scope, ``L = tf.keras.layers``, which
    LibCST's qualified names do not.
    """

    def __init__(self, wrapper: MetadataWrapper) -> None:
        self.wrapper = wrapper
        self.module = wrapper.module
        self._qualified = wrapper.resolve(QualifiedNameProvider)
        self._positions = wrapper.resolve(PositionProvider)
        self._aliases: dict[str, str] = {}
        for statement in self.module.body:
            if not isinstance(statement, cst.SimpleStatementLine):
                continue
            for small in statement.body:
                if (
                    isinstance(small, cst.Assign)
                    and len(small.targets) == 1
                    and isinstance(small.targets[0].target, cst.Name)
                    and isinstance(small.value, cst.Attribute | cst.Name)
                ):
                    target = small.value
                    resolved = self._imported(target)
                    if resolved:
                        self._aliases[small.targets[0].target.value] = resolved
        # `from keras.layers import *`: names nothing else binds may come from there.
        self.star_names: dict[str, str] = {}  # name -> the star-imported module it was taken from
        self._star_modules = [
            canonical_name(self.module.code_for_node(node.module))
            for node in walk(self.module)
            if isinstance(node, cst.ImportFrom)
            and isinstance(node.names, cst.ImportStar)
            and node.module is not None
            and not node.relative
        ]
        # A class of the file that subclasses a scikit-learn estimator is that estimator to the kind rules,
        # as it is to scikit-learn (`class Logged(SGDClassifier)` is a linear model). Keras subclasses are
        # not followed: a subclassed Keras model is a different thing (no layers to read, no knobs).
        self._estimator_subclasses: dict[str, str] = {}
        for statement in self.module.body:
            if isinstance(statement, cst.ClassDef):
                for base in statement.bases:
                    resolved = self.canonical(base.value)
                    if resolved and is_sklearn_estimator(resolved):
                        self._estimator_subclasses[statement.name.value] = resolved
                        break

    def line(self, node: cst.CSTNode) -> int:
        return self._positions[node].start.line

    def _names(self, node: cst.CSTNode) -> set | frozenset:
        names = self._qualified.get(node)
        if names is not None and not isinstance(names, set | frozenset):
            names = names()  # LibCST computes qualified names lazily
        return names or set()

    def _from_star(self, name: str) -> str | None:
        """The star-imported module a free name most plausibly comes from (none is ever imported to know)."""
        # Specific modules first: `Adam` is an optimizer even when `from keras.layers import *` comes first.
        rules = (
            lambda module: module in ("keras", "keras.models") and name in ("Sequential", "Model", "Input"),
            lambda module: module == "keras.optimizers" and name in KERAS_OPTIMIZERS,
            lambda module: module == "keras.layers" and name[:1].isupper() and name not in KERAS_OPTIMIZERS,
            lambda module: (
                module.startswith("sklearn.")
                and (name[:1].isupper() or name.startswith(("make_", "load_", "fetch_")))
            ),
        )
        for rule in rules:
            for module in self._star_modules:
                if rule(module):
                    self.star_names[name] = module
                    return f"{module}.{name}"
        return None

    def _imported(self, node: cst.CSTNode) -> str | None:
        names = self._names(node)
        # Several qualified names happen for a name bound differently on different paths; any library
        # one will do, and sorting makes the pick deterministic.
        found = sorted(
            name.name
            for name in names or ()
            if name.source in (QualifiedNameSource.IMPORT, QualifiedNameSource.BUILTIN)
        )
        for qualified in found:
            if not qualified.startswith(("<", ".")):
                return qualified
        return None

    def qualified(self, node: cst.CSTNode) -> str | None:
        """The dotted library name of a ``Name`` or ``Attribute`` as written (not canonical), if any."""
        if not isinstance(node, cst.Name | cst.Attribute):
            return None
        found = self._imported(node)
        if found is not None and found.split(".")[0] not in self._aliases:
            return found
        chain = attribute_chain(node)
        if chain and chain[0] in self._aliases:
            return ".".join([self._aliases[chain[0]], *chain[1:]])
        if found is None and chain and self._star_modules:
            base: cst.CSTNode = node
            while isinstance(base, cst.Attribute):
                base = base.value
            if not self._names(base):
                module = self._from_star(chain[0])
                if module is not None:
                    return ".".join([module, *chain[1:]])
        return found

    def canonical(self, node: cst.CSTNode) -> str | None:
        qualified = self.qualified(node)
        return canonical_name(qualified) if qualified else None

    def callee(self, call: cst.Call) -> str | None:
        if isinstance(call.func, cst.Name) and call.func.value in self._estimator_subclasses:
            return self._estimator_subclasses[call.func.value]
        return self.canonical(call.func)


def attribute_chain(node: cst.CSTNode) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None when the chain does not start at a plain name."""
    parts: list[str] = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if not isinstance(node, cst.Name):
        return None
    parts.append(node.value)
    return parts[::-1]


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (itself included), parents before children, in source order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def is_main_guard(statement: cst.CSTNode) -> bool:
    """``if __name__ == "__main__":``, in either order of the comparison and either quote."""
    if not isinstance(statement, cst.If) or not isinstance(statement.test, cst.Comparison):
        return False
    test = statement.test
    if len(test.comparisons) != 1 or not isinstance(test.comparisons[0].operator, cst.Equal):
        return False
    sides = [test.left, test.comparisons[0].comparator]
    names = [side for side in sides if isinstance(side, cst.Name) and side.value == "__name__"]
    strings = [
        side for side in sides if isinstance(side, cst.SimpleString) and side.evaluated_value == "__main__"
    ]
    return len(names) == 1 and len(strings) == 1


def parse(source: str, filename: str) -> MetadataWrapper:
    """The module's LibCST tree with metadata; :class:`ParseError` (with the line) on a syntax error."""
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as error:
        line, message = error.raw_line, f"{error.message} (column {error.raw_column})"
        try:  # Python's own parser (parsing only, nothing runs) names the place a user sees as wrong
            ast.parse(source, filename)
        except SyntaxError as exact:
            line, message = exact.lineno or line, exact.msg
        except (ValueError, RecursionError, MemoryError):
            pass
        raise ParseError(Problem(line, f"the file does not parse: {message}")) from None
    except RecursionError:
        raise ParseError(Problem(None, "the file is nested too deeply to parse")) from None
    return MetadataWrapper(module, unsafe_skip_copy=True)


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineNote:
    """A message about one line of a model file (line None when it concerns the whole file)."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message

    def to_json_dict(self) -> dict[str, object]:
        return {"line": self.line, "message": self.message}


class Problem(LineNote):
    """One thing to change, at its line."""


class ParseError(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one file: ``ok`` with its ``kind``, or every problem found (sorted by line)."""

    filename: str
    kind: str | None
    builder: str | None
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        """What ``pushtrain check`` prints: the kind, or the problems and the advice."""
        if self.ok:
            return f"{self.filename}: meets the contract (kind {self.kind}, builder {self.builder})"
        lines = [f"{self.filename}: does not meet the contract:"]
        lines += [f"  {self.filename}, {problem}" for problem in self.problems]
        lines.append(ADVICE.format(path=self.filename))
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "ok": self.ok,
            "kind": self.kind,
            "builder": self.builder,
            "problems": [problem.to_json_dict() for problem in self.problems],
        }


# --------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------


def import_time_statements(module: cst.Module) -> Iterator[cst.BaseStatement]:
    """The module's statements that run when it is imported, compound ones before their bodies: not
    function or class bodies, not the ``if __name__ == "__main__":`` block."""
    stack: list[cst.BaseStatement] = list(reversed(module.body))
    while stack:
        statement = stack.pop()
        if isinstance(statement, cst.FunctionDef | cst.ClassDef) or is_main_guard(statement):
            continue
        yield statement
        if isinstance(statement, cst.BaseCompoundStatement):
            stack.extend(reversed(direct_statements(statement)))


def direct_statements(compound: cst.BaseCompoundStatement) -> list[cst.BaseStatement]:
    found: list[cst.BaseStatement] = []
    for block_owner in [compound, *_else_parts(compound)]:
        body = getattr(block_owner, "body", None)
        if isinstance(body, cst.IndentedBlock):
            found.extend(body.body)
        elif isinstance(body, cst.SimpleStatementSuite):
            found.append(cst.SimpleStatementLine(body=body.body))
    if isinstance(compound, cst.Try | cst.TryStar):
        for handler in compound.handlers:
            if isinstance(handler.body, cst.IndentedBlock):
                found.extend(handler.body.body)
    return found


def _else_parts(compound: cst.CSTNode) -> list[cst.CSTNode]:
    parts: list[cst.CSTNode] = []
    orelse = getattr(compound, "orelse", None)
    while orelse is not None:
        parts.append(orelse)
        orelse = getattr(orelse, "orelse", None) if isinstance(orelse, cst.If) else None
    finalbody = getattr(compound, "finalbody", None)
    if finalbody is not None:
        parts.append(finalbody)
    return parts


def _import_time_problems(reader: NameReader) -> list[Problem]:
    problems = []
    for statement in import_time_statements(reader.module):
        if isinstance(statement, cst.BaseCompoundStatement):
            # Only the header runs as part of this statement; the body's statements come on their own.
            header_nodes: list[cst.CSTNode] = [
                getattr(statement, name) for name in ("test", "iter", "items") if hasattr(statement, name)
            ]
            nodes = [node for header in header_nodes for node in _flatten(header)]
        else:
            nodes = list(walk(statement))
        for node in nodes:
            problem = _runs_at_import(reader, node)
            if problem:
                problems.append(problem)
    return problems


def _flatten(value: object) -> list[cst.CSTNode]:
    if isinstance(value, cst.CSTNode):
        return list(walk(value))
    if isinstance(value, Sequence):
        return [node for item in value for node in _flatten(item)]
    return []


def _runs_at_import(reader: NameReader, node: cst.CSTNode) -> Problem | None:
    """A problem when ``node`` trains, downloads, loads data, runs a program or reads the command line."""
    if isinstance(node, cst.Attribute) and reader.qualified(node) == "sys.argv":
        return Problem(
            reader.line(node),
            "`sys.argv` is read when the file is imported; the training "
            "container passes no arguments of yours",
        )
    if not isinstance(node, cst.Call):
        return None
    line = reader.line(node)
    shown = _short(reader.module, node)
    name = reader.callee(node)
    if name is None:
        if isinstance(node.func, cst.Attribute) and node.func.attr.value in _TRAINING_METHODS:
            return Problem(
                line,
                f"`{shown}` trains when the file is imported; the platform trains the "
                "model the builder returns",
            )
        return None
    parts = name.split(".")
    leaf = parts[-1]
    why = None
    if leaf in _TRAINING_METHODS and len(parts) > 1:
        why = "trains when the file is imported; the platform trains the model the builder returns"
    elif leaf == "load_data" or leaf.startswith("fetch_") or parts[:2] == ["tensorflow_datasets", "load"]:
        why = (
            "downloads a data set when the file is imported; the sandbox has no network and the "
            "platform passes the data"
        )
    elif parts[:2] in (["sklearn", "datasets"],) or leaf in (
        "read_csv",
        "read_parquet",
        "image_dataset_from_directory",
        "loadtxt",
        "genfromtxt",
    ):
        why = "loads data when the file is imported; the platform passes the data set"
    elif parts[:2] in (["urllib", "request"], ["urllib2", "urlopen"]) or parts[0] in (
        "requests",
        "httpx",
        "wget",
    ):
        why = "uses the network when the file is imported; the sandbox has none"
    elif parts[:2] in (["keras", "utils"],) and leaf == "get_file":
        why = "downloads a file when the file is imported; the sandbox has no network"
    elif name in ("os.system", "os.popen") or parts[0] == "subprocess" or parts[:2] == ["os", "exec"]:
        why = "runs another program when the file is imported; training runs nothing but the model"
    elif parts[0] == "smtplib":
        why = "sends mail when the file is imported; pushtrain mails the results"
    if why is None:
        return None
    return Problem(line, f"`{shown}` {why}")


def _short(module: cst.Module, node: cst.CSTNode, limit: int = 60) -> str:
    text = " ".join(module.code_for_node(node).split())
    return text if len(text) <= limit else text[: limit - 4] + "...)"


def _legacy_keras_problems(reader: NameReader) -> list[Problem]:
    problems = []
    for node in walk(reader.module):
        if isinstance(node, cst.ImportFrom) and node.module is not None and not node.relative:
            module_name = reader.module.code_for_node(node.module)
            paths = [module_name]
            if not isinstance(node.names, cst.ImportStar):
                paths += [f"{module_name}.{alias.evaluated_name}" for alias in node.names]
            legacy = next((path for path in paths if is_legacy_keras_path(path)), None)
            if legacy:
                problems.append(
                    Problem(
                        reader.line(node),
                        f"`{legacy}` is Keras 2; the training image has "
                        f"Keras 3, where it is `{canonical_name(legacy)}`",
                    )
                )
        elif isinstance(node, cst.Import):
            for alias in node.names:
                path = reader.module.code_for_node(alias.name)
                if is_legacy_keras_path(path):
                    problems.append(
                        Problem(
                            reader.line(node),
                            f"`{path}` is Keras 2; the training image "
                            f"has Keras 3, where it is `{canonical_name(path)}`",
                        )
                    )
        elif isinstance(node, cst.Call):
            name = reader.callee(node)
            if name and name.startswith("keras.optimizers."):
                for argument in node.args:
                    if argument.keyword is not None and argument.keyword.value in ("lr", "decay"):
                        fix = (
                            "learning_rate=" if argument.keyword.value == "lr" else "a learning-rate schedule"
                        )
                        problems.append(
                            Problem(
                                reader.line(argument),
                                f"`{argument.keyword.value}=` of "
                                f"{name.split('.')[-1]} is Keras 2; Keras 3 takes {fix}",
                            )
                        )
            if isinstance(node.func, cst.Attribute) and node.func.attr.value == "fit_generator":
                problems.append(
                    Problem(reader.line(node), "`fit_generator` is Keras 2; Keras 3 has only `fit`")
                )
    return problems


def _hparams_problems(module: cst.Module, reader: NameReader, source: str) -> list[Problem]:
    assignments = [
        small
        for statement in module.body
        if isinstance(statement, cst.SimpleStatementLine)
        for small in statement.body
        if isinstance(small, cst.Assign | cst.AnnAssign) and _assigns_hparams(small)
    ]
    try:
        tweak.read_hparams(source)
    except tweak.TweakError as error:
        line = reader.line(assignments[0]) if assignments else None
        return [Problem(line, str(error))]
    return []


def _assigns_hparams(statement: cst.Assign | cst.AnnAssign) -> bool:
    targets = (
        [target.target for target in statement.targets]
        if isinstance(statement, cst.Assign)
        else [statement.target]
    )
    return any(isinstance(target, cst.Name) and target.value == tweak.HPARAMS_NAME for target in targets)


def _builders(module: cst.Module) -> dict[str, cst.FunctionDef]:
    return {
        statement.name.value: statement
        for statement in module.body
        if isinstance(statement, cst.FunctionDef)
        and statement.name.value in (KERAS.builder, SCIKIT_LEARN.builder)
    }


def builder_parameters_problem(function: cst.FunctionDef, positional: int) -> str | None:
    """Why ``function`` cannot be called with ``positional`` positional arguments, or None if it can."""
    params = function.params
    ordered = [*params.posonly_params, *params.params]
    required = [param for param in ordered if param.default is None]
    keyword_only_required = [param.name.value for param in params.kwonly_params if param.default is None]
    takes_any = isinstance(params.star_arg, cst.Param)
    if len(required) > positional:
        return f"it requires {len(required)} arguments"
    if len(ordered) < positional and not takes_any:
        return f"it takes only {len(ordered)} positional arguments"
    if keyword_only_required:
        return f"it requires keyword-only arguments ({', '.join(keyword_only_required)})"
    return None


def _builder_problems(builders: dict[str, cst.FunctionDef], reader: NameReader) -> list[Problem]:
    if not builders:
        return [
            Problem(
                None,
                f"no builder: a Keras model file defines {KERAS.builder_call}, a scikit-learn "
                f"one {SCIKIT_LEARN.builder_call}, at the top level of the file",
            )
        ]
    problems = []
    for framework in (KERAS, SCIKIT_LEARN):
        function = builders.get(framework.builder)
        if function is None:
            continue
        count = len(framework.builder_parameters.split(","))
        why = builder_parameters_problem(function, count)
        if why:
            problems.append(
                Problem(
                    reader.line(function),
                    f"{framework.builder}() must be {framework.builder_call}, but {why}",
                )
            )
    if len(builders) > 1:
        problems.append(
            Problem(
                reader.line(builders[SCIKIT_LEARN.builder]),
                f"the file defines both "
                f"{KERAS.builder}() and {SCIKIT_LEARN.builder}(); keep the one of its framework",
            )
        )
    return problems


def kind_of_code(reader: NameReader, node: cst.CSTNode) -> tuple[str | None, list[str]]:
    """The kind the library calls under ``node`` point to, and what they were if not exactly one kind."""
    keras_seen = conv_seen = False
    estimator_kinds: dict[str, str] = {}
    for child in walk(node):
        if not isinstance(child, cst.Call):
            continue
        name = reader.callee(child)
        if name is None:
            continue
        if is_keras(name):
            keras_seen = True
            conv_seen = conv_seen or is_conv_layer(name)
        elif is_sklearn_estimator(name):
            leaf = name.split(".")[-1]
            estimator_kinds.setdefault(kind_of_estimator(leaf), leaf)
    if keras_seen and estimator_kinds:
        return None, ["Keras", *estimator_kinds.values()]
    if keras_seen:
        return ("cnn" if conv_seen else GENERIC_KERAS_KIND), []
    if len(estimator_kinds) == 1:
        return next(iter(estimator_kinds)), []
    return None, list(estimator_kinds.values())


def check_source(source: str, filename: str = "model.py") -> CheckResult:
    """Check the text of a model file; nothing in it is imported or run."""
    try:
        wrapper = parse(source, filename)
    except ParseError as error:
        return CheckResult(filename, None, None, (error.problem,))
    reader = NameReader(wrapper)
    module = wrapper.module
    builders = _builders(module)
    problems = [
        *_hparams_problems(module, reader, source),
        *_builder_problems(builders, reader),
        *_import_time_problems(reader),
        *_legacy_keras_problems(reader),
    ]
    kind = builder = None
    if builders and not problems:
        builder, function = next(iter(builders.items()))
        # The whole file: a builder may call helpers (a conv block function) that hold the layers.
        kind, seen = kind_of_code(reader, module)
        framework = KERAS if builder == KERAS.builder else SCIKIT_LEARN
        if kind is None:
            what = (
                f"it uses {', '.join(seen)}" if seen else "it calls no Keras layer or scikit-learn estimator"
            )
            problems.append(Problem(reader.line(function), f"{builder}() {UNKNOWN_MODEL}: {what}"))
        elif (kind in ("cnn", GENERIC_KERAS_KIND)) != (framework is KERAS):
            problems.append(
                Problem(
                    reader.line(function),
                    f"{builder}() builds a {kind} model, whose builder is "
                    f"{(KERAS if framework is SCIKIT_LEARN else SCIKIT_LEARN).builder_call}",
                )
            )
    unique = sorted(set(problems), key=lambda problem: (problem.line or 0, problem.message))
    return CheckResult(filename, kind if not unique else None, builder if not unique else None, tuple(unique))


def check_file(path: str | os.PathLike[str]) -> CheckResult:
    """Read (as :mod:`pushtrain.detect` does: size cap, encoding) and check a model file."""
    try:
        source = read_model_source(path)
    except DetectionError as error:
        return CheckResult(str(path), None, None, (Problem(None, error.message),))
    return check_source(source, str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m pushtrain check [--json] PATH``: exit 0 and the kind, or 1 and every problem."""
    parser = argparse.ArgumentParser(
        prog="python -m pushtrain check",
        description="Check a model file against the contract, parsing it only.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    arguments = parser.parse_args(argv)
    result = check_file(arguments.path)
    if arguments.json:
        print(json.dumps(result.to_json_dict(), indent=2))
    elif result.ok:
        print(result.kind)
    if not result.ok and not arguments.json:
        print(result.report(), file=sys.stderr)
    return 0 if result.ok else 1
