"""Rewrite a plain Keras or scikit-learn training script into a model file that meets the contract.

``python -m pushtrain adapt SCRIPT [-o OUT]`` is a codemod: the script is parsed with LibCST and rewritten,
never imported or run. The output has ``HPARAMS`` and ``build_model(hp, input_shape, num_classes)`` (Keras)
or ``build_estimator(hp)`` (scikit-learn); stderr gets one line per change, with the script's line and why.

**What is kept.** The model and only the model: the statements that build it (a ``Sequential`` at module
level or in a function, a ``Sequential([...])`` list, the functional API ending in ``Model(inputs, outputs)``,
a scikit-learn estimator or ``Pipeline``), found by following, backwards from the model, the names each
kept statement reads; its ``compile``; the imports, constants and helper functions they use; their comments.
The first layer's input shape becomes ``input_shape``, the output layer's units ``num_classes``.

**What becomes a knob.** Every literal the tweak strategies know how to move is an ``HPARAMS`` entry read
from ``hp``: ``epochs`` and ``batch_size`` of ``fit``, the optimizer's learning rate (an optimizer given
by name gets its Keras default made explicit), conv filters and kernel size, repeated conv blocks (as a
loop over ``hp["conv_blocks"]``), hidden ``Dense`` units, ``Dropout`` rates; ``n_neighbors``, ``weights``,
``p``, ``C``, ``kernel``, ``gamma``, ``alpha``, ``max_iter``, ``eta0``, ``average``, ``n_estimators``,
``max_depth`` and ``random_state`` (as ``seed``) of the classifier, with the estimator's defaults made
explicit for the knobs of its kind. A value may come through names: constants, a config dict, a function's
default, an ``argparse`` or environment default, the first value of a loop over literals.

**What goes.** Everything else: data loading, the preprocessing the platform does (scaling, one-hot labels,
reshapes), ``fit``/``evaluate``/``predict``/``save``, prints, files, mail, other programs, the command line.
Augmentation and preprocessing layers stay, except a ``Rescaling(1/255)``: the images already arrive in
[0, 1]. Labels arrive as integers, so a one-hot loss becomes the sparse one and a binary head (one sigmoid
unit) becomes a softmax over ``num_classes``. Keras 2 names are modernised for Keras 3.

**Refusals** (:class:`AdaptRefused`) carry every reason with its line: a knob computed at run time with no
literal default, a subclassed Keras model, ``weights="imagenet"`` (the sandbox has no network), two models,
another framework, or a model that uses values computed from the data. Nothing is written on a refusal.

The result is deterministic, and an adapted file (which meets the contract) is returned unchanged.

Entry points: :func:`adapt_source` and :func:`adapt_file` (in this process), :func:`adapt_bounded` (in a
child process with time and memory limits: what the Airflow side calls), :func:`config_with_dataset` (the
``pushtrain.toml`` text naming the data set), and :func:`main` (``python -m pushtrain adapt``).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import subprocess
import symtable
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libcst as cst

from pushtrain import contract_check as cc
from pushtrain import tweak
from pushtrain.contract_check import LineNote, NameReader, Problem
from pushtrain.detect import DetectionError, read_model_source
from pushtrain.kinds import KERAS, KINDS, SCIKIT_LEARN

CONFIG_FILE = "pushtrain.toml"
# Bounds of adapt_bounded: LibCST's tree and metadata for a 1 MiB file fit easily; more means trouble.
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 2048

# Where the data sets a script loads come from, and the platform's data set that stands in for them.
DATASET_OF_LOADER = {
    "keras.datasets.mnist.load_data": "mnist5k",
    "sklearn.datasets.load_digits": "digits",
}
_OPENML_MNIST = frozenset({"mnist_784", "mnist"})

# Knobs adapt makes explicit when the script leaves them at the estimator's default, so that the
# strategies can move them: (argument, scikit-learn's default).
ESTIMATOR_DEFAULTS: dict[str, tuple[tuple[str, Any], ...]] = {
    "KNeighborsClassifier": (("n_neighbors", 5), ("weights", "uniform"), ("p", 2)),
    "SVC": (("C", 1.0), ("kernel", "rbf")),
    "NuSVC": (("kernel", "rbf"),),
    "RandomForestClassifier": (("n_estimators", 100),),
    "ExtraTreesClassifier": (("n_estimators", 100),),
    "LogisticRegression": (("C", 1.0), ("max_iter", 100)),
    "LinearSVC": (("C", 1.0), ("max_iter", 1000)),
    "SGDClassifier": (("alpha", 0.0001), ("max_iter", 1000)),
    "Perceptron": (("alpha", 0.0001), ("max_iter", 1000)),
    "RidgeClassifier": (("alpha", 1.0),),
    "PassiveAggressiveClassifier": (("C", 1.0), ("max_iter", 1000)),
}
# Estimator arguments that become knobs when written as literals, with the type a knob of that name has.
_NUMBER, _INTEGER, _TEXT, _FLAG = "number", "integer", "text", "flag"
ESTIMATOR_KNOBS = {
    "n_neighbors": _INTEGER,
    "weights": _TEXT,
    "p": _INTEGER,
    "C": _NUMBER,
    "kernel": _TEXT,
    "gamma": _NUMBER,
    "alpha": _NUMBER,
    "max_iter": _INTEGER,
    "eta0": _NUMBER,
    "average": _FLAG,
    "n_estimators": _INTEGER,
    "max_depth": _INTEGER,
    "random_state": _INTEGER,
}
_KNOB_NAME_OF_ARGUMENT = {"random_state": "seed"}
_FIRST_POSITIONAL = {
    "KNeighborsClassifier": "n_neighbors",
    "RandomForestClassifier": "n_estimators",
    "ExtraTreesClassifier": "n_estimators",
}
# Keras optimizers by the names compile() accepts, with Keras 3's default learning rate.
OPTIMIZER_DEFAULT_LEARNING_RATE = {
    "Adam": 0.001,
    "SGD": 0.01,
    "RMSprop": 0.001,
    "Adagrad": 0.001,
    "Adadelta": 0.001,
    "Adamax": 0.001,
    "Nadam": 0.001,
    "AdamW": 0.001,
    "Ftrl": 0.001,
    "Lion": 0.001,
}
_OPTIMIZER_BY_STRING = {name.lower(): name for name in OPTIMIZER_DEFAULT_LEARNING_RATE}
# HPARAMS order: the templates' order, then whatever else in order of appearance.
_KNOB_ORDER = (
    "epochs",
    "batch_size",
    "learning_rate",
    "conv_blocks",
    "filters",
    "kernel_size",
    "dense_units",
    "dropout",
    "n_neighbors",
    "weights",
    "p",
    "C",
    "kernel",
    "gamma",
    "alpha",
    "max_iter",
    "eta0",
    "average",
    "n_estimators",
    "max_depth",
    "seed",
)
_KERAS_FIT_DEFAULTS = (("epochs", 1), ("batch_size", 32))
_MUTATING_METHODS = frozenset({"add", "compile", "build", "pop", "set_params"})
_TRAINING_CALLS = frozenset({"fit", "fit_generator"})
# Layers that neither change the features' shape nor decide whether a Flatten is needed before a Dense.
_SHAPE_NEUTRAL_LAYERS = frozenset(
    {
        "Input",
        "InputLayer",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "BatchNormalization",
        "LayerNormalization",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "Rescaling",
        "Normalization",
    }
)
_POOLING = re.compile(r"(Max|Average|Avg)Pool(ing)?[123]D")
_BLOCK_EXTRAS = frozenset({"BatchNormalization", "Activation", "ReLU", "LeakyReLU"})
_DROPOUTS = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"})
_ACCURACY_METRICS = frozenset({"accuracy", "acc", "sparse_categorical_accuracy"})
_MAX_EVALUATION_DEPTH = 40
_MAX_POWER = 64


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


class Change(LineNote):
    """One thing adapt did and why, at the script's line."""


@dataclass(frozen=True)
class Adaptation:
    """The adapted file and what adapt found.

    ``adapted`` is the new text (``source`` itself when the file already met the contract);
    ``kind`` is the model kind adapt determined (it may be one the kinds table does not have yet, see
    ``kind_known``); ``hparams`` the knobs in file order; ``dataset`` the platform's data set the script
    used, or None with ``dataset_note`` saying which one must be named.
    """

    filename: str
    source: str
    adapted: str
    kind: str
    framework: str
    hparams: dict[str, Any]
    changes: tuple[Change, ...]
    dataset: str | None
    dataset_note: str

    @property
    def changed(self) -> bool:
        return self.adapted != self.source

    @property
    def builder(self) -> str:
        return KERAS.builder if self.framework == KERAS.name else SCIKIT_LEARN.builder

    @property
    def kind_known(self) -> bool:
        return self.kind in KINDS

    def diff(self, path: str | None = None) -> str:
        """The adaptation as a unified diff (empty when nothing changed), for mails and reviews."""
        return tweak.unified_diff(self.source, self.adapted, path or Path(self.filename).name)

    def report(self) -> str:
        """What ``pushtrain adapt`` prints on stderr: one line per change, then the verdict."""
        lines = [f"{self.filename}, {change}" for change in self.changes]
        known = (
            ""
            if self.kind_known
            else " (no kind of pushtrain tunes it: `python -m pushtrain detect` on the result says what to use)"
        )
        lines.append(
            f"{self.filename}: kind {self.kind}{known}, {self.builder}(), knobs: "
            + (", ".join(f"{name}={value!r}" for name, value in self.hparams.items()) or "none")
        )
        lines.append(f"{self.filename}: data set: {self.dataset or 'not known'} ({self.dataset_note})")
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "changed": self.changed,
            "kind": self.kind,
            "framework": self.framework,
            "builder": self.builder,
            "hparams": self.hparams,
            "dataset": self.dataset,
            "dataset_note": self.dataset_note,
            "changes": [{"line": change.line, "message": change.message} for change in self.changes],
            "source": self.source,
            "adapted": self.adapted,
        }

    @classmethod
    def from_json_dict(cls, payload: dict[str, Any]) -> Adaptation:
        return cls(
            filename=str(payload["filename"]),
            source=str(payload["source"]),
            adapted=str(payload["adapted"]),
            kind=str(payload["kind"]),
            framework=str(payload["framework"]),
            hparams=dict(payload["hparams"]),
            changes=tuple(Change(change["line"], str(change["message"])) for change in payload["changes"]),
            dataset=payload["dataset"],
            dataset_note=str(payload["dataset_note"]),
        )


class AdaptRefused(Exception):
    """The script cannot be adapted; ``problems`` says why, each at its line, and what to change."""

    def __init__(self, filename: str, problems: Sequence[Problem]) -> None:
        self.filename = filename
        self.problems = tuple(sorted(set(problems), key=lambda problem: (problem.line or 0, problem.message)))
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"{self.filename}: adapt refused; nothing was written:"]
        lines += [f"  {self.filename}, {problem}" for problem in self.problems]
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "refused": True,
            "problems": [problem.to_json_dict() for problem in self.problems],
        }


class _Refusal(Exception):
    """Raised inside the adapter to stop at the first reason that makes the rest meaningless."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(line, message)


# --------------------------------------------------------------------------------------------------------
# Statements, bodies and the names they bind and read
# --------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Stmt:
    """A statement of a body in execution order; a compound statement comes before its own statements."""

    node: cst.BaseStatement
    index: int
    body: _Body
    parents: tuple[cst.BaseCompoundStatement, ...]
    binds: frozenset[str]
    line: int
    last_line: int


@dataclass(eq=False)
class _Body:
    """The module (with its ``if __name__ == "__main__":`` block inlined) or one function's body."""

    owner: cst.FunctionDef | None
    parent: _Body | None
    stmts: list[_Stmt] = field(default_factory=list)

    @property
    def params(self) -> dict[str, cst.Param]:
        if self.owner is None:
            return {}
        params = self.owner.params
        every = [*params.posonly_params, *params.params, *params.kwonly_params]
        return {param.name.value: param for param in every}


def _target_names(target: cst.BaseExpression) -> Iterator[str]:
    if isinstance(target, cst.Name):
        yield target.value
    elif isinstance(target, cst.Tuple | cst.List):
        for element in target.elements:
            yield from _target_names(element.value)
    elif isinstance(target, cst.StarredElement):
        yield from _target_names(target.value)


def _binds(node: cst.BaseStatement) -> frozenset[str]:
    names: set[str] = set()
    if isinstance(node, cst.SimpleStatementLine):
        for small in node.body:
            if isinstance(small, cst.Assign):
                for target in small.targets:
                    names.update(_target_names(target.target))
            elif isinstance(small, cst.AnnAssign | cst.AugAssign):
                names.update(_target_names(small.target))
            elif isinstance(small, cst.Import):
                for alias in small.names:
                    bound = alias.asname.name if alias.asname else alias.name
                    names.add(cst.Module([]).code_for_node(bound).split(".")[0])
            elif isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                for alias in small.names:
                    bound = alias.asname.name if alias.asname else alias.name
                    names.add(cst.Module([]).code_for_node(bound))
    elif isinstance(node, cst.FunctionDef | cst.ClassDef):
        names.add(node.name.value)
    elif isinstance(node, cst.For):
        names.update(_target_names(node.target))
    elif isinstance(node, cst.With):
        for item in node.items:
            if item.asname is not None:
                names.update(_target_names(item.asname.name))
    return frozenset(names)


def _header_nodes(node: cst.BaseCompoundStatement) -> list[cst.CSTNode]:
    """The expressions a compound statement evaluates itself (not its body's statements)."""
    if isinstance(node, cst.If | cst.While):
        return [node.test]
    if isinstance(node, cst.For):
        return [node.iter]
    if isinstance(node, cst.With):
        return [item.item for item in node.items]
    return []


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def _short(node: cst.CSTNode, limit: int = 70) -> str:
    """One line of code for messages, without the comments above a statement."""
    if isinstance(node, cst.SimpleStatementLine | cst.BaseCompoundStatement):
        node = node.with_changes(leading_lines=[])
    if isinstance(node, cst.SimpleStatementLine):
        node = node.with_changes(trailing_whitespace=cst.TrailingWhitespace())
    text = " ".join(_code(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reads(node: cst.CSTNode, skip: set[int] | frozenset[int] = frozenset()) -> list[cst.Name]:
    """The names ``node`` reads, in source order: not attribute names, keywords, assignment targets, or
    names bound by a comprehension or lambda inside it; subtrees whose id is in ``skip`` are left out."""
    found: list[cst.Name] = []
    local: set[str] = set()
    stack: list[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if id(current) in skip:
            continue
        if isinstance(current, cst.Name):
            found.append(current)
        elif isinstance(current, cst.Attribute | cst.Arg):
            stack.append(current.value)
        elif isinstance(current, cst.CompFor):
            local.update(_target_names(current.target))
            inner = [current.iter, *[condition.test for condition in current.ifs]]
            if current.inner_for_in is not None:
                inner.append(current.inner_for_in)
            stack.extend(reversed(inner))
        elif isinstance(current, cst.Lambda):
            local.update(param.name.value for param in current.params.params)
            stack.append(current.body)
        elif isinstance(current, cst.Assign | cst.AugAssign | cst.AnnAssign):
            targets = (
                [target.target for target in current.targets]
                if isinstance(current, cst.Assign)
                else [current.target]
            )
            values = [current.value] if current.value is not None else []
            # An attribute or subscript target reads its base; a plain name is only written (but += reads it).
            reads_target = isinstance(current, cst.AugAssign)
            stack.extend(
                reversed(
                    [*values, *[target for target in targets if reads_target or not _is_name_target(target)]]
                )
            )
        elif isinstance(current, cst.For):
            stack.extend(
                reversed([current.iter, current.body, *([current.orelse] if current.orelse else [])])
            )
        elif isinstance(current, cst.FunctionDef | cst.ClassDef | cst.Import | cst.ImportFrom):
            continue
        else:
            stack.extend(reversed(current.children))
    return [name for name in found if name.value not in local]


def _is_name_target(target: cst.BaseExpression) -> bool:
    if isinstance(target, cst.Name):
        return True
    if isinstance(target, cst.Tuple | cst.List):
        return all(_is_name_target(element.value) for element in target.elements)
    if isinstance(target, cst.StarredElement):
        return _is_name_target(target.value)
    return False


# --------------------------------------------------------------------------------------------------------
# Values: what a name or expression is worth without running anything
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Const:
    """A value known from the text; ``note`` says where it came from when that was not a plain literal."""

    value: Any
    note: str | None = None
    origin: _Stmt | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Runtime:
    """A value only the running script knows; ``reason`` says from what."""

    reason: str
    line: int | None = None


_Value = _Const | _Runtime

# Library names whose results only the running script knows, and how to say so.
_RUNTIME_SOURCES = (
    ("sys.argv", "the command line"),
    ("random.", "a random draw"),
    ("numpy.random.", "a random draw"),
    ("os.environ", "the environment"),
    ("os.getenv", "the environment"),
    ("builtins.open", "a file"),
    ("builtins.input", "keyboard input"),
    ("json.load", "a file"),
    ("pickle.load", "a file"),
    ("yaml.", "a file"),
    ("pandas.read_", "a file"),
    ("numpy.load", "a file"),
    ("csv.", "a file"),
    ("configparser.", "a file"),
    ("time.", "the clock"),
    ("datetime.", "the clock"),
)
_PURE_BUILTINS = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "round": round,
    "abs": abs,
    "min": min,
    "max": max,
    "tuple": tuple,
    "list": list,
}


def _safe_binary(operator: cst.BaseBinaryOp, left: Any, right: Any) -> Any:
    numbers = (int, float)
    if isinstance(operator, cst.Power):
        if not (isinstance(left, numbers) and isinstance(right, numbers)) or abs(right) > _MAX_POWER:
            raise ValueError("power out of range")
        return left**right
    if isinstance(operator, cst.Multiply):
        sequence, count = (left, right) if isinstance(left, str | tuple | list) else (right, left)
        if isinstance(sequence, str | tuple | list) and (not isinstance(count, int) or count > 1000):
            raise ValueError("repetition out of range")
    operations: dict[type, Callable[[Any, Any], Any]] = {
        cst.Add: lambda a, b: a + b,
        cst.Subtract: lambda a, b: a - b,
        cst.Multiply: lambda a, b: a * b,
        cst.Divide: lambda a, b: a / b,
        cst.FloorDivide: lambda a, b: a // b,
        cst.Modulo: lambda a, b: a % b,
    }
    operation = operations.get(type(operator))
    if operation is None:
        raise ValueError("operator not evaluated")
    return operation(left, right)


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def _first_of(value: Any) -> Any:
    if isinstance(value, range):
        return value[0] if len(value) else None
    return value[0] if isinstance(value, list | tuple) and value else None


# --------------------------------------------------------------------------------------------------------
# The adapter: reading the script
# --------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Candidate:
    """A call that builds a model: a Keras model or application, a scikit-learn estimator, pipeline or search."""

    call: cst.Call
    name: str
    stmt: _Stmt
    var: str | None

    @property
    def framework(self) -> str:
        return KERAS.name if cc.is_keras(self.name) else SCIKIT_LEARN.name

    @property
    def label(self) -> str:
        return self.name.split(".")[-1]


@dataclass(eq=False)
class _Slot:
    """An argument position adapt may rewrite: an input shape, output units, or a knob."""

    role: str
    call: cst.Call
    arg: cst.Arg | None
    layer: str

    @property
    def value(self) -> cst.BaseExpression | None:
        return self.arg.value if self.arg is not None else None


class _Reading:
    """The script's statements, bodies, bindings and library names; values found without running it."""

    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename
        self.wrapper = cc.parse(source, filename)
        self.reader = NameReader(self.wrapper)
        self.module = self.wrapper.module
        # LibCST computes `children` by visiting a node; the tree never changes, so once is enough.
        self.kids: dict[int, Sequence[cst.CSTNode]] = {}
        self.parent: dict[int, cst.CSTNode] = {}
        stack: list[cst.CSTNode] = [self.module]
        while stack:
            node = stack.pop()
            children = node.children
            self.kids[id(node)] = children
            for child in children:
                self.parent[id(child)] = node
            stack.extend(children)
        self.stmt_of: dict[int, _Stmt] = {}
        self.bodies: dict[int, _Body] = {}
        self.module_body = _Body(owner=None, parent=None)
        self._flatten(self.module.body, self.module_body, ())

    # ---------------------------------------------------------------------------------------- structure

    def line(self, node: cst.CSTNode) -> int:
        return self.reader.line(node)

    def walk(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        """:func:`contract_check.walk` over the script's own tree, from the children found once."""
        stack = [node]
        while stack:
            current = stack.pop()
            yield current
            children = self.kids.get(id(current))
            stack.extend(reversed(children if children is not None else current.children))

    def _end_line(self, node: cst.CSTNode) -> int:
        return self.wrapper.resolve(cc.PositionProvider)[node].end.line

    def _add(
        self,
        node: cst.BaseStatement,
        body: _Body,
        parents: tuple[cst.BaseCompoundStatement, ...],
        own: Iterable[cst.CSTNode],
    ) -> _Stmt:
        stmt = _Stmt(
            node=node,
            index=len(body.stmts),
            body=body,
            parents=parents,
            binds=_binds(node),
            line=self.line(node),
            last_line=self._end_line(node),
        )
        body.stmts.append(stmt)
        for part in own:
            for child in self.walk(part):
                self.stmt_of.setdefault(id(child), stmt)
        return stmt

    def _flatten(
        self,
        statements: Sequence[cst.BaseStatement],
        body: _Body,
        parents: tuple[cst.BaseCompoundStatement, ...],
    ) -> None:
        for statement in statements:
            if isinstance(statement, cst.FunctionDef):
                self._add(statement, body, parents, [*statement.decorators, *_defaults(statement)])
                self.stmt_of.setdefault(id(statement), body.stmts[-1])
                inner = _Body(owner=statement, parent=body)
                self.bodies[id(statement)] = inner
                if isinstance(statement.body, cst.IndentedBlock):
                    self._flatten(statement.body.body, inner, ())
            elif isinstance(statement, cst.BaseCompoundStatement) and _blocks(statement) is not None:
                self._add(statement, body, parents, _header_nodes(statement))
                self.stmt_of.setdefault(id(statement), body.stmts[-1])
                self._flatten(_blocks(statement) or [], body, (*parents, statement))
            else:
                self._add(statement, body, parents, [statement])

    def function_named(self, name: str) -> cst.FunctionDef | None:
        for stmt in self.module_body.stmts:
            if isinstance(stmt.node, cst.FunctionDef) and stmt.node.name.value == name:
                return stmt.node
        return None

    def body_of_node(self, node: cst.CSTNode) -> _Body:
        return self.stmt_of[id(node)].body

    # ----------------------------------------------------------------------------------------- bindings

    def reaching(self, name: str, stmt: _Stmt) -> _Stmt | cst.Param | None:
        """The statement (or parameter) whose binding of ``name`` a read in ``stmt`` sees, if any."""
        body = stmt.body
        for candidate in reversed(body.stmts[: stmt.index]):
            if name in candidate.binds:
                return candidate
        while body.owner is not None:
            if name in body.params:
                return body.params[name]
            outer = body.parent
            assert outer is not None
            for candidate in reversed(outer.stmts):
                if name in candidate.binds:
                    return candidate
            body = outer
        return None

    def canonical(self, node: cst.CSTNode) -> str | None:
        return self.reader.canonical(node)

    def callee(self, call: cst.Call) -> str | None:
        return self.reader.callee(call)

    # ------------------------------------------------------------------------------------------- values

    def evaluate(self, node: cst.BaseExpression, stmt: _Stmt, depth: int = 0) -> _Value:
        """The value of ``node`` as read in ``stmt``, from literals and the names bound to them."""
        if depth > _MAX_EVALUATION_DEPTH:
            return _Runtime("names that refer to each other too deeply", self.line(node))
        try:
            return self._evaluate(node, stmt, depth)
        except (ValueError, TypeError, ZeroDivisionError, OverflowError, KeyError, IndexError):
            return _Runtime(f"`{_short(node)}`, which adapt cannot work out", self.line(node))

    def _evaluate(self, node: cst.BaseExpression, stmt: _Stmt, depth: int) -> _Value:
        if isinstance(node, cst.Integer | cst.Float | cst.SimpleString | cst.ConcatenatedString):
            return _Const(ast.literal_eval(_code(node).strip()))
        if isinstance(node, cst.Name):
            if node.value in ("True", "False", "None"):
                return _Const({"True": True, "False": False, "None": None}[node.value])
            return self._value_of_name(node, stmt, depth)
        if isinstance(node, cst.UnaryOperation):
            inner = self.evaluate(node.expression, stmt, depth + 1)
            if isinstance(inner, _Runtime):
                return inner
            if isinstance(node.operator, cst.Minus):
                return _Const(-inner.value, inner.note, inner.origin)
            if isinstance(node.operator, cst.Plus):
                return inner
            if isinstance(node.operator, cst.Not):
                return _Const(not inner.value, inner.note, inner.origin)
            raise ValueError("operator not evaluated")
        if isinstance(node, cst.BinaryOperation):
            left = self.evaluate(node.left, stmt, depth + 1)
            right = self.evaluate(node.right, stmt, depth + 1)
            for side in (left, right):
                if isinstance(side, _Runtime):
                    return side
            assert isinstance(left, _Const) and isinstance(right, _Const)
            return _Const(_safe_binary(node.operator, left.value, right.value), left.note or right.note)
        if isinstance(node, cst.Tuple | cst.List):
            items = []
            for element in node.elements:
                if isinstance(element, cst.StarredElement):
                    raise ValueError("starred element")
                value = self.evaluate(element.value, stmt, depth + 1)
                if isinstance(value, _Runtime):
                    return value
                items.append(value.value)
            return _Const(tuple(items) if isinstance(node, cst.Tuple) else items)
        if isinstance(node, cst.Dict):
            mapping = {}
            for element in node.elements:
                if not isinstance(element, cst.DictElement):
                    raise ValueError("dict unpacking")
                key = self.evaluate(element.key, stmt, depth + 1)
                value = self.evaluate(element.value, stmt, depth + 1)
                if isinstance(key, _Runtime):
                    return key
                if isinstance(value, _Runtime):
                    return value
                mapping[key.value] = value.value
            return _Const(mapping)
        if isinstance(node, cst.IfExp):
            body = self.evaluate(node.body, stmt, depth + 1)
            orelse = self.evaluate(node.orelse, stmt, depth + 1)
            test = self.evaluate(node.test, stmt, depth + 1)
            if isinstance(test, _Const):
                return body if test.value else orelse
            literal = [value for value in (body, orelse) if isinstance(value, _Const)]
            if len(literal) == 1:
                return _Const(
                    literal[0].value, f"the literal default of `{_short(node, 50)}`", literal[0].origin
                )
            return _Runtime(f"a condition decided when the script runs ({test.reason})", self.line(node))
        if isinstance(node, cst.BooleanOperation) and isinstance(node.operator, cst.Or):
            left = self.evaluate(node.left, stmt, depth + 1)
            right = self.evaluate(node.right, stmt, depth + 1)
            if isinstance(left, _Runtime) and isinstance(right, _Const):
                return _Const(right.value, f"the literal default of `{_short(node, 50)}`", right.origin)
            if isinstance(left, _Const):
                return left if left.value else right
            return left
        if isinstance(node, cst.Subscript):
            return self._subscript(node, stmt, depth)
        if isinstance(node, cst.Attribute):
            return self._attribute(node, stmt, depth)
        if isinstance(node, cst.Call):
            return self._call(node, stmt, depth)
        return _Runtime(self.cause(node), self.line(node))

    def cause(self, node: cst.CSTNode, depth: int = 0) -> str:
        """In words, what the running script computes ``node`` from, following names to where they are bound."""
        for child in self.walk(node):
            if isinstance(child, cst.Name | cst.Attribute):
                qualified = self.reader.qualified(child) or ""
                for prefix, words in _RUNTIME_SOURCES:
                    if qualified == prefix or qualified.startswith(prefix):
                        return f"{words} (`{_short(node, 50)}`)"
        if depth < 4 and id(node) in self.stmt_of:
            stmt = self.stmt_of[id(node)]
            for name in _reads(node):
                binding = self.reaching(name.value, stmt)
                if not isinstance(binding, _Stmt):
                    continue
                if isinstance(binding.node, cst.With):
                    for item in binding.node.items:
                        if item.asname is not None and name.value in set(_target_names(item.asname.name)):
                            return self.cause(item.item, depth + 1) + f" at line {binding.line}"
                if isinstance(binding.node, cst.SimpleStatementLine):
                    value = getattr(binding.node.body[0], "value", None)
                    if isinstance(value, cst.BaseExpression):
                        found = self.cause(value, depth + 1)
                        if not found.startswith("`"):
                            return found + f" at line {binding.line}"
        return f"`{_short(node, 50)}`"

    def _value_of_name(self, node: cst.Name, stmt: _Stmt, depth: int) -> _Value:
        binding = self.reaching(node.value, stmt)
        if binding is None:
            if node.value in _PURE_BUILTINS:
                raise ValueError("a builtin is not a value")
            return _Runtime(f"`{node.value}`, which the file does not define", self.line(node))
        if isinstance(binding, cst.Param):
            return self._value_of_param(binding, depth)
        return self._value_bound_by(node.value, binding, depth)

    def _value_bound_by(self, name: str, binding: _Stmt, depth: int) -> _Value:
        node = binding.node
        if isinstance(node, cst.For):
            values = self.evaluate(node.iter, binding, depth + 1)
            if isinstance(values, _Runtime):
                return values
            if not isinstance(node.target, cst.Name):
                raise ValueError("unpacking loop target")
            first = _first_of(values.value)
            return _Const(first, f"the first value of the loop at line {binding.line}")
        if isinstance(node, cst.SimpleStatementLine):
            for small in reversed(node.body):
                if isinstance(small, cst.Assign):
                    for target in small.targets:
                        found = self._match_target(name, target.target, small.value, binding, depth)
                        if found is not None:
                            return found
                elif isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                    if small.target.value == name and small.value is not None:
                        return self._with_origin(self.evaluate(small.value, binding, depth + 1), binding)
                elif isinstance(small, cst.AugAssign):
                    return _Runtime(
                        f"`{_short(small, 50)}`, a change made when the script runs", binding.line
                    )
                elif isinstance(small, cst.Import | cst.ImportFrom):
                    return _Runtime(f"`{name}`, imported at line {binding.line}", binding.line)
        if isinstance(node, cst.ClassDef):
            return _Const(_ClassConstants(node, binding))
        if isinstance(node, cst.With):
            return _Runtime(self.cause(node.items[0].item), binding.line)
        return _Runtime(f"`{name}` as bound at line {binding.line}", binding.line)

    def _with_origin(self, value: _Value, binding: _Stmt) -> _Value:
        if isinstance(value, _Const) and value.origin is None:
            return _Const(value.value, value.note, binding)
        return value

    def _match_target(
        self, name: str, target: cst.BaseExpression, value: cst.BaseExpression, binding: _Stmt, depth: int
    ) -> _Value | None:
        if isinstance(target, cst.Name):
            if target.value != name:
                return None
            return self._with_origin(self.evaluate(value, binding, depth + 1), binding)
        if isinstance(target, cst.Tuple | cst.List):
            for position, element in enumerate(target.elements):
                if name not in set(_target_names(element.value)):
                    continue
                if isinstance(value, cst.Tuple | cst.List) and len(value.elements) == len(target.elements):
                    return self._match_target(
                        name, element.value, value.elements[position].value, binding, depth
                    )
                whole = self.evaluate(value, binding, depth + 1)
                if isinstance(whole, _Runtime):
                    return whole
                if isinstance(element.value, cst.Name) and isinstance(whole.value, tuple | list):
                    return _Const(whole.value[position], whole.note, binding)
                raise ValueError("nested unpacking")
        return None

    def _value_of_param(self, param: cst.Param, depth: int) -> _Value:
        function = self.parent_function(param)
        site = self.call_site(function)
        if site is not None:
            call, site_stmt = site
            ordered = [*function.params.posonly_params, *function.params.params]
            for position, argument in enumerate(call.args):
                if (
                    argument.keyword is None
                    and argument.star == ""
                    and position < len(ordered)
                    and (ordered[position] is param)
                ):
                    return self.evaluate(argument.value, site_stmt, depth + 1)
                if argument.keyword is not None and argument.keyword.value == param.name.value:
                    return self.evaluate(argument.value, site_stmt, depth + 1)
        if param.default is not None:
            value = self.evaluate(param.default, self.stmt_of[id(function)], depth + 1)
            if isinstance(value, _Const):
                return _Const(
                    value.value, f"the default of parameter `{param.name.value}` of {function.name.value}()"
                )
            return value
        return _Runtime(
            f"parameter `{param.name.value}` of {function.name.value}(), which has no default",
            self.line(param),
        )

    def parent_function(self, node: cst.CSTNode) -> cst.FunctionDef:
        current = self.parent.get(id(node))
        while current is not None and not isinstance(current, cst.FunctionDef):
            current = self.parent.get(id(current))
        assert current is not None
        return current

    def call_site(self, function: cst.FunctionDef) -> tuple[cst.Call, _Stmt] | None:
        """The first call of a module-level function by name, with its statement."""
        for node in self.walk(self.module):
            if (
                isinstance(node, cst.Call)
                and isinstance(node.func, cst.Name)
                and (node.func.value == function.name.value)
                and id(node) in self.stmt_of
            ):
                return node, self.stmt_of[id(node)]
        return None

    def _subscript(self, node: cst.Subscript, stmt: _Stmt, depth: int) -> _Value:
        if self.reader.qualified(node.value) in ("sys.argv", "os.environ"):
            return _Runtime(self.cause(node), self.line(node))
        base = self.evaluate(node.value, stmt, depth + 1)
        if isinstance(base, _Runtime):
            return base
        if len(node.slice) != 1 or not isinstance(node.slice[0].slice, cst.Index):
            raise ValueError("slices are not evaluated")
        key = self.evaluate(node.slice[0].slice.value, stmt, depth + 1)
        if isinstance(key, _Runtime):
            return key
        return _Const(base.value[key.value], base.note, base.origin)

    def _attribute(self, node: cst.Attribute, stmt: _Stmt, depth: int) -> _Value:
        qualified = self.reader.qualified(node)
        if qualified:
            return _Runtime(self.cause(node), self.line(node))
        if isinstance(node.value, cst.Name):
            option = self._argparse_default(node, stmt, depth)
            if option is not None:
                return option
        base = self.evaluate(node.value, stmt, depth + 1)
        if isinstance(base, _Const) and isinstance(base.value, _ClassConstants):
            return base.value.attribute(self, node.attr.value, depth)
        if isinstance(base, _Runtime):
            return base
        raise ValueError("attribute of a value")

    def _argparse_default(self, node: cst.Attribute, stmt: _Stmt, depth: int) -> _Value | None:
        """``args.alpha`` where ``args = parser.parse_args()``: the option's literal default."""
        binding = self.reaching(node.value.value, stmt)  # type: ignore[union-attr]
        if not isinstance(binding, _Stmt) or not isinstance(binding.node, cst.SimpleStatementLine):
            return None
        small = binding.node.body[0]
        if not (
            isinstance(small, cst.Assign)
            and isinstance(small.value, cst.Call)
            and isinstance(small.value.func, cst.Attribute)
            and small.value.func.attr.value in ("parse_args", "parse_known_args")
        ):
            return None
        wanted = node.attr.value
        for candidate in self.walk(self.module):
            if not (
                isinstance(candidate, cst.Call)
                and isinstance(candidate.func, cst.Attribute)
                and candidate.func.attr.value == "add_argument"
            ):
                continue
            if _argparse_dest(candidate) != wanted:
                continue
            option = next(
                (_code(argument.value) for argument in candidate.args if argument.keyword is None), wanted
            )
            default = next(
                (
                    argument.value
                    for argument in candidate.args
                    if argument.keyword is not None and argument.keyword.value == "default"
                ),
                None,
            )
            if default is None:
                return _Runtime(
                    f"the command-line option {option}, which has no default", self.line(candidate)
                )
            value = self.evaluate(default, self.stmt_of[id(candidate)], depth + 1)
            if isinstance(value, _Runtime):
                return value
            cast = next(
                (
                    argument.value
                    for argument in candidate.args
                    if argument.keyword is not None and argument.keyword.value == "type"
                ),
                None,
            )
            result = value.value
            if isinstance(cast, cst.Name) and cast.value in ("int", "float") and isinstance(result, str):
                result = _PURE_BUILTINS[cast.value](result)
            return _Const(result, f"the default of the command-line option {option}")
        return _Runtime(f"`{_short(node)}`, a command-line option adapt did not find", self.line(node))

    def _call(self, node: cst.Call, stmt: _Stmt, depth: int) -> _Value:
        qualified = self.reader.qualified(node.func) or ""
        if qualified in ("os.environ.get", "os.getenv"):
            positional = [argument for argument in node.args if argument.keyword is None]
            default = (
                positional[1].value
                if len(positional) > 1
                else next(
                    (
                        argument.value
                        for argument in node.args
                        if argument.keyword is not None and argument.keyword.value == "default"
                    ),
                    None,
                )
            )
            variable = _code(positional[0].value) if positional else "?"
            if default is None:
                return _Runtime(f"the environment variable {variable}, which has no default", self.line(node))
            value = self.evaluate(default, stmt, depth + 1)
            if isinstance(value, _Const):
                return _Const(value.value, f"the default of the environment variable {variable}")
            return value
        if (
            isinstance(node.func, cst.Name)
            and node.func.value in _PURE_BUILTINS
            and self.reaching(node.func.value, stmt) is None
        ):
            values = []
            for argument in node.args:
                if argument.keyword is not None or argument.star:
                    raise ValueError("keyword arguments are not evaluated")
                value = self.evaluate(argument.value, stmt, depth + 1)
                if isinstance(value, _Runtime):
                    return value
                values.append(value)
            result = _PURE_BUILTINS[node.func.value](*(value.value for value in values))
            return _Const(
                result,
                next((value.note for value in values if value.note), None),
                next((value.origin for value in values if value.origin), None),
            )
        if (
            isinstance(node.func, cst.Name)
            and node.func.value == "range"
            and self.reaching("range", stmt) is None
        ):
            values = [self.evaluate(argument.value, stmt, depth + 1) for argument in node.args]
            for value in values:
                if isinstance(value, _Runtime):
                    return value
            numbers = [value.value for value in values if isinstance(value, _Const)]
            if not all(isinstance(number, int) for number in numbers) or not 1 <= len(numbers) <= 3:
                raise ValueError("range of non-integers")
            return _Const(range(*numbers))
        return _Runtime(self.cause(node), self.line(node))


class _ClassConstants:
    """A class used as a namespace of settings (``class Config: EPOCHS = 10``)."""

    def __init__(self, node: cst.ClassDef, stmt: _Stmt) -> None:
        self.node = node
        self.stmt = stmt

    def attribute(self, reading: _Reading, name: str, depth: int) -> _Value:
        if isinstance(self.node.body, cst.IndentedBlock):
            for statement in self.node.body.body:
                if isinstance(statement, cst.SimpleStatementLine):
                    for small in statement.body:
                        if isinstance(small, cst.Assign) and any(
                            isinstance(target.target, cst.Name) and target.target.value == name
                            for target in small.targets
                        ):
                            value = reading.evaluate(small.value, self.stmt, depth + 1)
                            if isinstance(value, _Const):
                                return _Const(value.value, f"{self.node.name.value}.{name}")
                            return value
        return _Runtime(f"{self.node.name.value}.{name}, which the class does not set", self.stmt.line)


def _argparse_dest(call: cst.Call) -> str | None:
    for argument in call.args:
        if argument.keyword is not None and argument.keyword.value == "dest":
            return argument.value.evaluated_value if isinstance(argument.value, cst.SimpleString) else None
    options = [
        argument.value.evaluated_value
        for argument in call.args
        if argument.keyword is None and isinstance(argument.value, cst.SimpleString)
    ]
    long = [option for option in options if isinstance(option, str) and option.startswith("--")]
    chosen = long[0] if long else (options[0] if options else None)
    if not isinstance(chosen, str):
        return None
    return chosen.lstrip("-").replace("-", "_")


def _defaults(function: cst.FunctionDef) -> list[cst.CSTNode]:
    params = function.params
    return [
        param.default
        for param in [*params.posonly_params, *params.params, *params.kwonly_params]
        if param.default is not None
    ]


def _blocks(statement: cst.BaseCompoundStatement) -> list[cst.BaseStatement] | None:
    """The statements inside a compound statement, all blocks in order; None for a one-line suite."""
    owners: list[cst.CSTNode] = [statement]
    orelse = getattr(statement, "orelse", None)
    while orelse is not None:
        owners.append(orelse)
        orelse = getattr(orelse, "orelse", None) if isinstance(orelse, cst.If) else None
    if isinstance(statement, cst.Try | cst.TryStar):
        owners[1:1] = list(statement.handlers)
        if statement.finalbody is not None:
            owners.append(statement.finalbody)
    found: list[cst.BaseStatement] = []
    for owner in owners:
        body = getattr(owner, "body", None)
        if isinstance(body, cst.IndentedBlock):
            found.extend(body.body)
        elif body is not None:
            return None
    return found


# --------------------------------------------------------------------------------------------------------
# Small rewriting helpers
# --------------------------------------------------------------------------------------------------------


def _hp(name: str) -> cst.BaseExpression:
    return cst.parse_expression(f'hp["{name}"]')


def _argument(
    call: cst.Call, keyword: str | None = None, position: int | None = None, aliases: Sequence[str] = ()
) -> cst.Arg | None:
    """The argument passed by ``keyword`` (or one of its aliases) or at ``position``, if any."""
    names = {keyword, *aliases} - {None}
    for argument in call.args:
        if argument.keyword is not None and argument.keyword.value in names:
            return argument
    if position is not None:
        positional = [argument for argument in call.args if argument.keyword is None and not argument.star]
        if len(positional) > position and all(not argument.star for argument in call.args[: position + 1]):
            return positional[position]
    return None


def _with_keyword(call: cst.Call, keyword: str, value: cst.BaseExpression) -> cst.Call:
    """``call`` with one more keyword argument at the end, laid out like the arguments before it."""
    new = cst.Arg(
        keyword=cst.Name(keyword),
        value=value,
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
        ),
    )
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new])
    last = args[-1]
    if isinstance(last.comma, cst.Comma):
        # `f(\n    a,\n)`: the new argument goes on a line of its own and takes over the closing comma.
        if len(args) >= 2 and isinstance(args[-2].comma, cst.Comma):
            separator = args[-2].comma.whitespace_after
        else:
            separator = call.whitespace_before_args
        args[-1] = last.with_changes(comma=last.comma.with_changes(whitespace_after=separator))
        new = new.with_changes(comma=last.comma)
    else:
        args[-1] = last.with_changes(
            comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
            whitespace_after_arg=cst.SimpleWhitespace(""),
        )
        new = new.with_changes(whitespace_after_arg=last.whitespace_after_arg)
    args.append(new)
    return call.with_changes(args=args)


def _string_like(original: cst.BaseExpression, text: str) -> cst.SimpleString:
    """A string literal with ``text``, in the quote style of ``original`` when that is a string."""
    quote = '"'
    if isinstance(original, cst.SimpleString):
        prefix_end = len(original.value) - len(original.value.lstrip("rbuRBU"))
        quote = original.value[prefix_end]
    return cst.SimpleString(f"{quote}{text}{quote}")


def _literal_node(value: Any, quote: str = '"') -> cst.BaseExpression:
    return cst.parse_expression(tweak.render_literal(value, quote=quote))


def _strip_blank_lines(lines: Sequence[cst.EmptyLine]) -> list[cst.EmptyLine]:
    """Comment lines only: the emitter decides where blank lines go."""
    return [line for line in lines if line.comment is not None]


def _leading_comments(node: cst.BaseStatement) -> list[str]:
    return [line.comment.value for line in getattr(node, "leading_lines", ()) if line.comment is not None]


def _trailing_comment(node: cst.BaseStatement) -> str | None:
    if isinstance(node, cst.SimpleStatementLine) and node.trailing_whitespace.comment is not None:
        return node.trailing_whitespace.comment.value
    return None


def _with_leading(node: cst.BaseStatement, lines: Sequence[cst.EmptyLine]) -> cst.BaseStatement:
    return node.with_changes(leading_lines=list(lines))


def _tidy_leading(node: cst.BaseStatement, first: bool) -> cst.BaseStatement:
    """Comments kept; at most one blank line between statements, none before the first, no stray spaces."""
    lines: list[cst.EmptyLine] = []
    for line in getattr(node, "leading_lines", ()):
        if line.comment is not None:
            lines.append(line)
        elif (lines or not first) and not (lines and lines[-1].comment is None):
            lines.append(cst.EmptyLine(indent=False))
    if first:
        while lines and lines[0].comment is None:
            lines.pop(0)
    return node.with_changes(leading_lines=lines) if hasattr(node, "leading_lines") else node


def _blank() -> cst.EmptyLine:
    return cst.EmptyLine()


def _leaf(name: str | None) -> str:
    return name.split(".")[-1] if name else ""


def _is_layer(name: str | None) -> bool:
    return bool(name) and (name.startswith("keras.layers.") or name == "keras.Input")  # type: ignore[union-attr]


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )


class _Rewriter(cst.CSTTransformer):
    """Applies the planned edits, keyed by the identity of the original nodes."""

    def __init__(self, edits: dict[int, list[Callable[[cst.CSTNode], cst.CSTNode]]]) -> None:
        super().__init__()
        self.edits = edits

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> Any:
        result: Any = updated_node
        for edit in self.edits.get(id(original_node), ()):
            result = edit(result)
        return result


# --------------------------------------------------------------------------------------------------------
# The adapter: finding the model
# --------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Plan:
    """Where the model is built and how it becomes the builder."""

    candidate: _Candidate
    body: _Body  # the statements that build the model come from here
    seeds: list[_Stmt]
    model_expression: cst.BaseExpression | None  # returned as it is when no statement binds the model
    var: str | None  # the model's variable in `body`
    function: cst.FunctionDef | None  # a function that builds and returns the model: it becomes the builder
    site_stmt: _Stmt | None  # where the script uses the model (fit, compile), for a model function
    site_var: str | None
    unwrapped: str | None = None  # a search (GridSearchCV) whose estimator became the model


@dataclass(eq=False)
class _Slice:
    builder: list[_Stmt]
    module: set[_Stmt]
    whole: set[int]  # compound statements kept as they are (a loop that adds layers)
    # (name, id(read statement)) -> (read statement, binding, value): names the model reads as values
    values: dict[tuple[str, int], tuple[_Stmt, _Stmt | cst.Param, _Value]]
    argparse_reads: list[tuple[cst.Attribute, _Stmt]]


class _Adapter(_Reading):
    def __init__(self, source: str, filename: str) -> None:
        super().__init__(source, filename)
        self.changes: list[Change] = []
        self.problems: list[Problem] = []
        self.edits: dict[int, list[Callable[[cst.CSTNode], cst.CSTNode]]] = {}
        self.knobs: dict[str, Any] = {}
        self.knob_comments: dict[str, tuple[list[str], str | None]] = {}
        self.knob_lines: dict[str, int] = {}
        self.slot_values: set[int] = set()
        self.groups: dict[int, list[cst.BaseStatement]] = {}  # first statement -> statements of a conv loop
        self.dropped: set[int] = (
            set()
        )  # statements of the builder left out (moved into a loop, removed layers)
        self.inserted_before: dict[int, list[cst.BaseStatement]] = {}
        self.added_imports: list[str] = []
        self.prelude: list[cst.BaseStatement] = []
        self.kind = ""
        self.binary_head = False
        self.modelish_cache: dict[int, bool] = {}
        self.touched: set[int] = set()  # arguments already rewritten
        self.dropped_calls: set[int] = set()  # layer calls of removed code (later conv blocks, Rescaling)
        self.loop_headers: dict[int, str] = {}
        self.list_ops: dict[int, _ListOp] = {}
        self.revived: set[_Stmt] = set()  # module-level imports the rewritten code refers to
        self.knob_origins: list[_Stmt] = []  # constants that became knobs
        self.whole_loops: set[int] = set()
        self.pipeline_steps: tuple[cst.BaseExpression, str] | None = None

    def note(self, line: int | None, message: str) -> None:
        self.changes.append(Change(line, message))

    def refuse(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(line, message))

    def edit(self, node: cst.CSTNode, function: Callable[[Any], Any]) -> None:
        self.edits.setdefault(id(node), []).append(function)

    # ------------------------------------------------------------------------------------- what is there

    def refuse_what_cannot_be_adapted(self) -> None:
        for node in self.walk(self.module):
            if isinstance(node, cst.Import | cst.ImportFrom):
                for path in self._imported_paths(node):
                    framework = cc.other_framework(path)
                    if framework:
                        raise _Refusal(
                            self.line(node),
                            f"the script uses {framework} (`{_short(node)}`); "
                            "pushtrain trains Keras and scikit-learn models only",
                        )
            if isinstance(node, cst.ClassDef):
                for base in node.bases:
                    if self.canonical(base.value) in ("keras.Model", "keras.Sequential"):
                        raise _Refusal(
                            self.line(node),
                            f"class {node.name.value} subclasses keras.Model: "
                            "adapt rewrites Sequential and functional models only. Write "
                            f"{KERAS.builder_call} returning {node.name.value}(...) yourself, "
                            "with its settings in HPARAMS",
                        )

    def _imported_paths(self, node: cst.Import | cst.ImportFrom) -> list[str]:
        if isinstance(node, cst.Import):
            return [_code(alias.name) for alias in node.names]
        if node.module is None or node.relative:
            return []
        return [_code(node.module)]

    def _is_model_call(self, name: str | None) -> bool:
        if name is None:
            return False
        if cc.is_keras_model_constructor(name):
            return True
        parts = name.split(".")
        if parts[:2] == ["keras", "applications"] and parts[-1][:1].isupper():
            return True
        return cc.sklearn_class(name) is not None

    def candidates(self) -> list[_Candidate]:
        found: list[_Candidate] = []
        nested: set[int] = set()
        for node in self.walk(self.module):
            if not isinstance(node, cst.Call) or id(node) in nested or id(node) not in self.stmt_of:
                continue
            name = self.callee(node)
            if not self._is_model_call(name):
                continue
            assert name is not None
            stmt = self.stmt_of[id(node)]
            found.append(_Candidate(node, name, stmt, self._assigned_var(node, stmt)))
            nested.update(id(child) for child in self.walk(node) if child is not node)
        return found

    def _assigned_var(self, call: cst.Call, stmt: _Stmt) -> str | None:
        if isinstance(stmt.node, cst.SimpleStatementLine) and len(stmt.node.body) == 1:
            small = stmt.node.body[0]
            if isinstance(small, cst.Assign) and small.value is call and len(small.targets) == 1:
                target = small.targets[0].target
                if isinstance(target, cst.Name):
                    return target.value
        return None

    def plan(self, candidate: _Candidate) -> _Plan:
        body = candidate.stmt.body
        function = body.owner
        expression: cst.BaseExpression | None = None
        unwrapped = None
        if cc.sklearn_class(candidate.name) in cc.SKLEARN_SEARCHES:
            inner = _argument(candidate.call, "estimator", 0)
            if inner is None:
                raise _Refusal(candidate.stmt.line, f"{candidate.label} without an estimator")
            expression, unwrapped = inner.value, candidate.label
        elif candidate.var is None and not self._returned(candidate):
            expression = candidate.call
        seeds = [] if expression is not None else [candidate.stmt]
        if function is not None and self._builds_and_returns(function, candidate):
            returns = [
                stmt
                for stmt in body.stmts
                if isinstance(stmt.node, cst.SimpleStatementLine)
                and isinstance(stmt.node.body[0], cst.Return)
                and not stmt.parents
            ]
            site = self.call_site(function)
            site_stmt = site[1] if site else None
            site_var = self._assigned_var(site[0], site[1]) if site else None
            return _Plan(
                candidate,
                body,
                [*seeds, *returns],
                expression if not returns else None,
                candidate.var,
                function,
                site_stmt,
                site_var,
                unwrapped,
            )
        return _Plan(
            candidate, body, seeds, expression, candidate.var, None, candidate.stmt, candidate.var, unwrapped
        )

    def _returned(self, candidate: _Candidate) -> bool:
        node = candidate.stmt.node
        return isinstance(node, cst.SimpleStatementLine) and isinstance(node.body[0], cst.Return)

    def _builds_and_returns(self, function: cst.FunctionDef, candidate: _Candidate) -> bool:
        """True for a function that returns the model and does not train it (a model factory)."""
        body = self.bodies[id(function)]
        returns_model = False
        for stmt in body.stmts:
            if not isinstance(stmt.node, cst.SimpleStatementLine):
                continue
            for node in self.walk(stmt.node):
                if (
                    isinstance(node, cst.Call)
                    and isinstance(node.func, cst.Attribute)
                    and (node.func.attr.value in _TRAINING_CALLS)
                ):
                    return False
            small = stmt.node.body[0]
            if isinstance(small, cst.Return) and small.value is not None:
                value = small.value
                if value is candidate.call or (isinstance(value, cst.Name) and value.value == candidate.var):
                    returns_model = True
                elif cc.sklearn_class(candidate.name) in cc.SKLEARN_SEARCHES and isinstance(value, cst.Name):
                    returns_model = True
        return returns_model

    # ------------------------------------------------------------------------------------ the model slice

    _KERAS_MODEL_PARTS = frozenset(
        {
            "layers",
            "Sequential",
            "Model",
            "Input",
            "optimizers",
            "losses",
            "metrics",
            "regularizers",
            "initializers",
            "constraints",
            "activations",
            "applications",
            "ops",
        }
    )
    _SKLEARN_PART_MODULES = frozenset(
        {
            "preprocessing",
            "decomposition",
            "feature_selection",
            "impute",
            "kernel_approximation",
            "compose",
            "random_projection",
            "feature_extraction",
            "manifold",
            "cluster",
            "neighbors",
        }
    )

    def _modelish_name(self, name: str | None) -> bool:
        if name is None:
            return False
        parts = name.split(".")
        if parts[0] == "keras":
            return len(parts) > 1 and parts[1] in self._KERAS_MODEL_PARTS
        if parts[0] == "sklearn":
            if cc.sklearn_class(name) is not None:
                return True
            return (
                len(parts) > 2
                and parts[1] in self._SKLEARN_PART_MODULES
                and (parts[-1][:1].isupper() or parts[-1].startswith("make_"))
            )
        return False

    def modelish(self, stmt: _Stmt) -> bool:
        """True for a statement that computes part of a model (a layer, an optimizer, an estimator...)."""
        key = id(stmt)
        if key in self.modelish_cache:
            return self.modelish_cache[key]
        self.modelish_cache[key] = False  # a cycle through names is not evidence
        result = False
        if isinstance(stmt.node, cst.SimpleStatementLine):
            for small in stmt.node.body:
                value = getattr(small, "value", None)
                if not isinstance(value, cst.BaseExpression):
                    continue
                if any(
                    isinstance(node, cst.Call) and self._modelish_name(self.callee(node))
                    for node in self.walk(value)
                ):
                    result = True
                    break
                for name in _reads(value):
                    binding = self.reaching(name.value, stmt)
                    if isinstance(binding, _Stmt) and self.modelish(binding):
                        result = True
                        break
                if result:
                    break
        self.modelish_cache[key] = result
        return result

    def mutates(self, stmt: _Stmt, name: str) -> bool:
        """True for a statement that changes the object ``name`` (``model.add``, ``base.trainable = False``)."""
        node = stmt.node
        if isinstance(node, cst.SimpleStatementLine):
            return all(self._small_mutates(small, {name}) for small in node.body)
        if isinstance(node, cst.For | cst.If):
            names = {name}
            if isinstance(node, cst.For):
                # `for layer in base.layers: layer.trainable = False` changes base through its loop variable.
                rooted = cc.attribute_chain(_base_of(node.iter))
                if rooted and rooted[0] == name:
                    names.update(_target_names(node.target))
            inner = [child for child in self.walk(node) if isinstance(child, cst.SimpleStatementLine)]
            return bool(inner) and all(
                all(self._small_mutates(small, names) for small in child.body) for child in inner
            )
        return False

    def _small_mutates(self, small: cst.BaseSmallStatement, names: set[str]) -> bool:
        if isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
            func = small.value.func
            return (
                isinstance(func, cst.Attribute)
                and isinstance(func.value, cst.Name)
                and func.value.value in names
                and func.attr.value in _MUTATING_METHODS
            )
        if isinstance(small, cst.Assign | cst.AugAssign):
            targets = (
                [target.target for target in small.targets]
                if isinstance(small, cst.Assign)
                else [small.target]
            )
            for target in targets:
                if not isinstance(target, cst.Attribute | cst.Subscript):
                    return False
                chain = cc.attribute_chain(_base_of(target))
                if not chain or chain[0] not in names:
                    return False
            return True
        return False

    def slots(self, call: cst.Call) -> list[_Slot]:
        """The rewritable argument positions of one call (empty for calls adapt does not rewrite)."""
        name = self.callee(call)
        if name is None:
            return []
        leaf = _leaf(name)
        found: list[_Slot] = []

        def add(
            role: str,
            keyword: str | None,
            position: int | None = None,
            aliases: Sequence[str] = (),
            wire: bool = False,
        ) -> None:
            argument = _argument(call, keyword, position, aliases)
            if argument is not None or wire:
                found.append(_Slot(role, call, argument, leaf))

        if _is_layer(name):
            for keyword in ("input_shape", "batch_input_shape"):
                add("input", keyword)
            add("input_dim", "input_dim")
            if leaf in ("Input", "InputLayer"):
                add("input", "shape", 0 if leaf == "Input" else None, aliases=("batch_shape",))
            if cc.is_conv_layer(name):
                add("filters", "filters", 0)
                add("kernel_size", "kernel_size", 1)
            elif leaf == "Dense":
                add("units", "units", 0, aliases=("output_dim",))
            elif leaf in _DROPOUTS:
                add("dropout", "rate", 0)
        elif name.startswith("keras.optimizers.") and leaf in OPTIMIZER_DEFAULT_LEARNING_RATE:
            add("learning_rate", "learning_rate", 0, aliases=("lr",), wire=True)
            add("decay", "decay")
        elif name.startswith("keras.applications.") and leaf[:1].isupper():
            add("input", "input_shape")
            add("classes", "classes")
            add("weights", "weights")
        elif cc.is_sklearn_estimator(name):
            for keyword in ESTIMATOR_KNOBS:
                position = 0 if _FIRST_POSITIONAL.get(leaf) == keyword else None
                add(f"estimator:{keyword}", keyword, position)
        return found

    def _excluded(self, node: cst.CSTNode) -> set[int]:
        """The argument values under ``node`` that adapt replaces, so their names need not be kept."""
        excluded: set[int] = set()
        for child in self.walk(node):
            if isinstance(child, cst.Call):
                for slot in self.slots(child):
                    if slot.arg is not None and slot.role not in ("weights",):
                        excluded.add(id(slot.arg.value))
        return excluded

    def slice(self, plan: _Plan) -> _Slice:
        """The statements the model needs: kept in the builder, kept at module level, or turned into values."""
        builder: dict[int, _Stmt] = {}
        module: set[_Stmt] = set()
        values: dict[tuple[str, int], tuple[_Stmt, _Stmt | cst.Param, _Value]] = {}
        argparse_reads: list[tuple[cst.Attribute, _Stmt]] = []
        whole: set[int] = set()
        queue: list[tuple[_Stmt, str]] = [(stmt, "builder") for stmt in plan.seeds]
        reads_to_resolve: list[tuple[cst.Name, _Stmt, str]] = []
        if plan.model_expression is not None:
            for name in _reads(plan.model_expression, self._excluded(plan.model_expression)):
                reads_to_resolve.append((name, plan.candidate.stmt, "builder"))
        if plan.function is not None and plan.site_stmt is not None and plan.site_var:
            for stmt in plan.site_stmt.body.stmts[plan.site_stmt.index + 1 :]:
                if self.mutates(stmt, plan.site_var):
                    queue.append((stmt, "site"))

        def keep(stmt: _Stmt, where: str) -> None:
            queue.append((stmt, where))

        def placement(binding: _Stmt, model_part: bool) -> str:
            # Module-level model statements move into the builder; imports, constants and helpers stay.
            if binding.body.owner is None:
                return "builder" if model_part and plan.body.owner is None else "module"
            return "builder"

        while queue or reads_to_resolve:
            if queue:
                stmt, where = queue.pop(0)
                if id(stmt) in builder or stmt in module:
                    continue
                if where == "module":
                    module.add(stmt)
                else:
                    builder[id(stmt)] = stmt
                if isinstance(stmt.node, cst.For | cst.If | cst.While | cst.With):
                    whole.add(id(stmt.node))
                    for child in stmt.body.stmts[stmt.index + 1 :]:
                        if stmt.node in child.parents:
                            queue.append((child, where))
                for bound in stmt.binds:
                    for later in stmt.body.stmts[stmt.index + 1 :]:
                        if self.mutates(later, bound):
                            queue.append((later, where))
                own: list[cst.CSTNode]
                if isinstance(stmt.node, cst.FunctionDef | cst.ClassDef):
                    own = [stmt.node]
                elif isinstance(stmt.node, cst.BaseCompoundStatement):
                    own = _header_nodes(stmt.node)
                else:
                    own = [stmt.node]
                for part in own:
                    for name in _reads(part, self._excluded(part)):
                        reads_to_resolve.append((name, stmt, where))
                continue
            name, at, where = reads_to_resolve.pop(0)
            if where == "site" and name.value == plan.site_var:
                continue  # the model the function returns, renamed in the builder
            binding = self.reaching(name.value, at)
            if binding is None:
                continue
            if isinstance(binding, cst.Param):
                if name.value in ("hp", "input_shape", "num_classes") and plan.function is not None:
                    continue
                values[(name.value, id(at))] = (at, binding, self.evaluate(name, at))
                continue
            parent = self.parent.get(id(name))
            if (
                isinstance(parent, cst.Attribute)
                and parent.value is name
                and self._is_argparse_namespace(binding)
            ):
                argparse_reads.append((parent, at))
                continue
            if isinstance(binding.node, cst.FunctionDef | cst.ClassDef) or _is_import(binding.node):
                keep(binding, placement(binding, False))
            elif self.modelish(binding):
                keep(binding, placement(binding, True))
            else:
                value = self.evaluate(name, at)
                values[(name.value, id(at))] = (at, binding, value)
                if isinstance(value, _Const) and _is_constant_statement(binding, self):
                    keep(binding, placement(binding, False))
        ordered = sorted(
            builder.values(), key=lambda stmt: (0 if id(stmt.body) == id(plan.body) else 1, stmt.index)
        )
        inner = [stmt for stmt in ordered if not any(id(parent) in whole for parent in stmt.parents)]
        return _Slice(inner, module, whole, values, argparse_reads)

    def _is_argparse_namespace(self, binding: _Stmt) -> bool:
        node = binding.node
        if not isinstance(node, cst.SimpleStatementLine) or not isinstance(node.body[0], cst.Assign):
            return False
        value = node.body[0].value
        return (
            isinstance(value, cst.Call)
            and isinstance(value.func, cst.Attribute)
            and value.func.attr.value in ("parse_args", "parse_known_args")
        )

    # ------------------------------------------------------------------------------------------- knobs

    def lift(self, name: str, value: Any, line: int | None, origin: _Const | None, why: str) -> str:
        """Make ``value`` the knob ``name`` (or ``name_2``... when ``name`` holds another value); its key."""
        key = name
        number = 2
        while key in self.knobs and not _same_value(self.knobs[key], value):
            key = f"{name}_{number}"
            number += 1
        if key not in self.knobs:
            self.knobs[key] = value
            self.knob_lines[key] = line or 0
            where = f" ({origin.note})" if origin is not None and origin.note else ""
            self.note(line, f'{why} {tweak.render_literal(value)}{where} -> HPARAMS["{key}"]')
            if origin is not None and origin.origin is not None:
                self.knob_origins.append(origin.origin)
                comments = _leading_comments(origin.origin.node)
                trailing = _trailing_comment(origin.origin.node)
                if comments or trailing:
                    self.knob_comments[key] = (comments, trailing)
        return key

    def family(
        self, name: str, value: Any, line: int, origin: _Const, why: str, related: bool = True
    ) -> cst.BaseExpression:
        """A knob of a family (filters, units...): the first value is the knob, later layers scale with it."""
        first = self.knobs.get(name)
        if first is None or _same_value(first, value):
            return _hp(self.lift(name, value, line, origin, why))
        if related and isinstance(value, int) and isinstance(first, int) and value > 0 and first > 0:
            if value % first == 0:
                self.note(
                    line,
                    f'{why} {value} -> HPARAMS["{name}"] * {value // first} (it scales with the first one)',
                )
                return cst.parse_expression(f'hp["{name}"] * {value // first}')
            if first % value == 0:
                self.note(
                    line,
                    f'{why} {value} -> HPARAMS["{name}"] // {first // value} (it scales with the first one)',
                )
                return cst.parse_expression(f'max(1, hp["{name}"] // {first // value})')
        return _hp(self.lift(name, value, line, origin, why))

    def slot_value(self, slot: _Slot) -> _Value:
        assert slot.value is not None
        return self.evaluate(slot.value, self.stmt_of[id(slot.call)])

    def in_kept_loop(self, slot: _Slot) -> bool:
        """True when the value reads the variable of a loop that stays a loop (each pass adds a layer)."""
        if slot.value is None:
            return False
        stmt = self.stmt_of[id(slot.call)]
        for name in _reads(slot.value):
            binding = self.reaching(name.value, stmt)
            if (
                isinstance(binding, _Stmt)
                and isinstance(binding.node, cst.For)
                and id(binding.node) in (self.whole_loops)
            ):
                return True
        return False

    def replace_value(self, slot: _Slot, new: cst.BaseExpression) -> None:
        assert slot.arg is not None
        self.touched.add(id(slot.arg))
        self.edit(slot.arg, lambda argument: argument.with_changes(value=new))

    def rename_keyword(self, slot: _Slot, keyword: str) -> None:
        assert slot.arg is not None
        self.edit(slot.arg, lambda argument: argument.with_changes(keyword=cst.Name(keyword)))

    def drop_argument(self, call: cst.Call, argument: cst.Arg) -> None:
        self.touched.add(id(argument))
        self.edit(argument, lambda _argument: cst.RemoveFromParent())
        last_comma = call.args[-1].comma

        def tidy(updated: cst.Call) -> cst.Call:
            # The new last argument takes the old last one's comma (usually none), not a dangling ", ".
            if updated.args and len(updated.args) < len(call.args):
                return updated.with_changes(
                    args=[*updated.args[:-1], updated.args[-1].with_changes(comma=last_comma)]
                )
            return updated

        self.edit(call, tidy)

    def runtime_knob(self, what: str, slot_line: int, value: _Runtime, example: str) -> None:
        where = (
            f" at line {value.line}"
            if value.line and value.line != slot_line and (" at line " not in value.reason)
            else ""
        )
        self.refuse(
            slot_line,
            f"{what} comes from {value.reason}{where}, which is known only when the script "
            f"runs, and has no literal default to start from: write the value itself (e.g. {example}) "
            "and run adapt again",
        )

    # ------------------------------------------------------------------------------------- Keras model

    def builder_calls(self, plan: _Plan, sl: _Slice) -> list[cst.Call]:
        """Every call in the code that goes into the builder, in source order."""
        roots: list[cst.CSTNode] = [stmt.node for stmt in sl.builder]
        if plan.model_expression is not None:
            roots.append(plan.model_expression)
        calls = [node for root in roots for node in self.walk(root) if isinstance(node, cst.Call)]
        positions = self.wrapper.resolve(cc.PositionProvider)
        return sorted(calls, key=lambda call: (positions[call].start.line, positions[call].start.column))

    def adapt_keras(self, plan: _Plan, sl: _Slice) -> None:
        calls = self.builder_calls(plan, sl)
        layers = [call for call in calls if _is_layer(self.callee(call))]
        dense = [call for call in layers if _leaf(self.callee(call)) == "Dense"]
        output = dense[-1] if dense else None
        feature = next(
            (
                call
                for call in layers
                if _leaf(self.callee(call)) not in _SHAPE_NEUTRAL_LAYERS
                and not _leaf(self.callee(call)).startswith("Random")
            ),
            None,
        )
        flatten_first = feature is not None and _leaf(self.callee(feature)) == "Dense"
        conv = any(cc.is_conv_layer(self.callee(call) or "") for call in layers)
        self.kind = "cnn" if conv else cc.GENERIC_KERAS_KIND
        handled = self.conv_loop(plan, sl)
        if output is not None:
            self.output_layer(output)
        moved_input = False
        for call in calls:
            if id(call) in self.dropped_calls:
                continue
            line = self.line(call)
            layer = _leaf(self.callee(call))
            for slot in self.slots(call):
                if (id(call), slot.role) in handled:
                    continue
                if self.in_kept_loop(slot):
                    self.touched.add(id(slot.arg))
                    self.note(
                        line, f"`{_short(slot.value, 30)}` of {layer} changes with its loop; left as written"
                    )
                    continue
                if slot.role == "input" and call is feature and flatten_first:
                    self.drop_argument(call, slot.arg)  # type: ignore[arg-type]
                    moved_input = True
                elif slot.role == "input":
                    self.input_slot(slot)
                elif slot.role == "input_dim":
                    self.drop_argument(call, slot.arg)  # type: ignore[arg-type]
                    moved_input = True
                    if not (call is feature and flatten_first):
                        self.refuse(line, f"`input_dim` of a {layer} that is not the first layer")
                elif slot.role == "units" and call is output:
                    continue
                elif slot.role == "units":
                    self.number_knob(
                        slot, "dense_units", f"number of units of the hidden {layer}", int, related=True
                    )
                elif slot.role == "filters":
                    self.number_knob(slot, "filters", f"filters of {layer}", int, related=True)
                elif slot.role == "kernel_size":
                    self.kernel_knob(slot)
                elif slot.role == "dropout":
                    self.number_knob(slot, "dropout", f"rate of {layer}", float, related=False)
                elif slot.role == "learning_rate":
                    self.learning_rate(slot)
                elif slot.role == "decay":
                    self.drop_argument(call, slot.arg)  # type: ignore[arg-type]
                    self.note(
                        line,
                        f"removed `decay=` of {layer}: Keras 3 optimizers have no decay argument "
                        "(a learning-rate schedule replaces it)",
                    )
                elif slot.role == "classes":
                    self.replace_value(slot, cst.Name("num_classes"))
                    self.note(line, f"classes of {layer} -> num_classes")
                elif slot.role == "weights":
                    self.weights(slot)
        if flatten_first and feature is not None:
            self.insert_flatten(plan, sl, feature, moved_input)
        self.remove_rescaling(plan, sl, layers)
        for call in calls:
            if (
                isinstance(call.func, cst.Attribute)
                and call.func.attr.value == "compile"
                and (id(call) not in self.dropped_calls)
            ):
                self.compile_call(call)
        self.loss_objects(calls)

    def number_knob(self, slot: _Slot, name: str, what: str, kind: type, related: bool) -> None:
        if slot.arg is not None:
            self.touched.add(id(slot.arg))
        line = self.line(slot.call)
        value = self.slot_value(slot)
        if isinstance(value, _Runtime):
            self.runtime_knob(f"the {what}", line, value, f"{slot.layer}({_example(name)})")
            return
        number = value.value
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or (kind is int and not isinstance(number, int))
        ):
            self.literal(slot, value)
            return
        self.replace_value(slot, self.family(name, number, line, value, f"{what}:", related))

    def kernel_knob(self, slot: _Slot) -> None:
        if slot.arg is not None:
            self.touched.add(id(slot.arg))
        line = self.line(slot.call)
        value = self.slot_value(slot)
        if isinstance(value, _Runtime):
            self.runtime_knob(f"the kernel size of {slot.layer}", line, value, "3")
            return
        size = value.value
        if isinstance(size, list | tuple) and size and all(item == size[0] for item in size):
            size = size[0]
        if isinstance(size, bool) or not isinstance(size, int):
            self.literal(slot, value)
            return
        self.replace_value(
            slot,
            self.family("kernel_size", size, line, value, f"kernel size of {slot.layer}:", related=False),
        )

    def literal(self, slot: _Slot, value: _Value) -> None:
        """A value adapt does not make a knob, written out when it came through names the output lacks."""
        if slot.arg is not None:
            self.touched.add(id(slot.arg))
        assert slot.value is not None
        if isinstance(value, _Runtime):
            line = self.line(slot.call)
            self.runtime_knob(f"`{_short(slot.value, 40)}` of {slot.layer}", line, value, "a number")
            return
        if _is_literal_node(slot.value) or not _is_plain(value.value):
            return
        self.replace_value(slot, _literal_node(value.value))

    def input_slot(self, slot: _Slot) -> None:
        assert slot.arg is not None
        if (
            isinstance(slot.value, cst.Name)
            and slot.value.value == "input_shape"
            and (slot.arg.keyword is None or slot.arg.keyword.value in ("input_shape", "shape"))
        ):
            self.touched.add(id(slot.arg))  # already the builder's parameter
            return
        self.replace_value(slot, cst.Name("input_shape"))
        keyword = slot.arg.keyword.value if slot.arg.keyword else None
        if keyword == "batch_input_shape":
            self.rename_keyword(slot, "input_shape")
        elif keyword == "batch_shape":
            self.rename_keyword(slot, "shape")
        self.note(
            self.line(slot.call),
            f"input shape `{_short(slot.arg.value, 40)}` of {slot.layer} -> "
            "input_shape: the platform passes the data set's image shape",
        )

    def output_layer(self, call: cst.Call) -> None:
        line = self.line(call)
        units = next((slot for slot in self.slots(call) if slot.role == "units"), None)
        if units is None or units.arg is None:
            return
        value = self.slot_value(units)
        self.replace_value(units, cst.Name("num_classes"))
        if isinstance(value, _Const) and value.value == 1:
            self.binary_head = True
            activation = _argument(call, "activation", 1)
            if (
                activation is not None
                and isinstance(activation.value, cst.SimpleString)
                and (activation.value.evaluated_value == "sigmoid")
            ):
                self.edit(
                    activation,
                    lambda argument: argument.with_changes(value=_string_like(argument.value, "softmax")),
                )
            self.note(
                line,
                "binary head Dense(1, sigmoid) -> Dense(num_classes, softmax): the platform's labels "
                "are class indices and it evaluates the most probable class",
            )
        elif not (isinstance(units.value, cst.Name) and units.value.value == "num_classes"):
            self.note(
                line,
                f"units `{_short(units.value, 30)}` of the output Dense -> num_classes: "
                "the platform passes the data set's number of classes",
            )

    def learning_rate(self, slot: _Slot) -> None:
        if slot.arg is not None:
            self.touched.add(id(slot.arg))
        line = self.line(slot.call)
        optimizer = slot.layer
        if slot.arg is None:
            default = OPTIMIZER_DEFAULT_LEARNING_RATE[optimizer]
            key = self.lift(
                "learning_rate",
                default,
                line,
                None,
                f"{optimizer}'s default learning rate (Keras 3) made explicit:",
            )
            self.edit(slot.call, lambda call: _with_keyword(call, "learning_rate", _hp(key)))
            return
        value = self.slot_value(slot)
        if isinstance(value, _Runtime):
            self.runtime_knob(
                f"the learning rate of {optimizer}", line, value, f"{optimizer}(learning_rate=0.001)"
            )
            return
        if isinstance(value.value, bool) or not isinstance(value.value, int | float):
            self.literal(slot, value)
            return
        if slot.arg.keyword is not None and slot.arg.keyword.value == "lr":
            self.rename_keyword(slot, "learning_rate")
            self.note(line, f"`lr=` of {optimizer} -> `learning_rate=` (Keras 2 -> Keras 3)")
        key = self.lift("learning_rate", value.value, line, value, f"learning rate of {optimizer}:")
        self.replace_value(slot, _hp(key))

    def weights(self, slot: _Slot) -> None:
        value = self.slot_value(slot)
        if (
            isinstance(value, _Const)
            and isinstance(value.value, str)
            and (value.value == "imagenet" or not re.search(r"[/\\]|\.(h5|keras|weights)$", value.value))
        ):
            self.refuse(
                self.line(slot.call),
                f"{slot.layer}(weights={value.value!r}) downloads pretrained "
                "weights, and training runs in a sandbox without network: use weights=None to "
                "train from scratch, or ship the weights file in the repository and load it with "
                "load_weights(...)",
            )

    # ------------------------------------------------------------------------------- layer sequences

    def layer_sequences(self, plan: _Plan, sl: _Slice) -> list[tuple[str, list[tuple[cst.Call | None, Any]]]]:
        """Runs of consecutive layers as written: ``model.add`` lines, a ``Sequential([...])`` list, or
        functional ``x = Layer(...)(x)`` lines; each item is (layer call or None, its statement or element)."""
        sequences: list[tuple[str, list[tuple[cst.Call | None, Any]]]] = []
        for call in self.builder_calls(plan, sl):
            if cc.is_keras_model_constructor(self.callee(call)) and self.callee(call) == "keras.Sequential":
                layers = _argument(call, "layers", 0)
                if layers is not None and isinstance(layers.value, cst.List):
                    items = [
                        (
                            element.value
                            if isinstance(element.value, cst.Call) and _is_layer(self.callee(element.value))
                            else None,
                            element,
                        )
                        for element in layers.value.elements
                    ]
                    sequences.append(("list", items))
        for style in ("add", "functional"):
            run: list[tuple[cst.Call | None, Any]] = []
            previous: _Stmt | None = None
            for stmt in sl.builder:
                layer = self._layer_of_statement(stmt, style)
                adjacent = (
                    previous is not None and stmt.body is previous.body and stmt.index == previous.index + 1
                )
                if layer is None or not adjacent:
                    if len(run) > 1:
                        sequences.append((style, run))
                    run = []
                if layer is not None:
                    run.append((layer, stmt))
                    previous = stmt
                else:
                    previous = None
            if len(run) > 1:
                sequences.append((style, run))
        return sequences

    def _layer_of_statement(self, stmt: _Stmt, style: str) -> cst.Call | None:
        node = stmt.node
        if not isinstance(node, cst.SimpleStatementLine) or len(node.body) != 1 or stmt.parents:
            return None
        small = node.body[0]
        if style == "add" and isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
            func = small.value.func
            if isinstance(func, cst.Attribute) and func.attr.value == "add" and len(small.value.args) == 1:
                layer = small.value.args[0].value
                if isinstance(layer, cst.Call) and _is_layer(self.callee(layer)):
                    return layer
        if (
            style == "functional"
            and isinstance(small, cst.Assign)
            and len(small.targets) == 1
            and isinstance(small.targets[0].target, cst.Name)
        ):
            value = small.value
            if (
                isinstance(value, cst.Call)
                and isinstance(value.func, cst.Call)
                and len(value.args) == 1
                and (isinstance(value.args[0].value, cst.Name) and _is_layer(self.callee(value.func)))
            ):
                return value.func
        return None

    def conv_loop(self, plan: _Plan, sl: _Slice) -> set[tuple[int, str]]:
        """Repeated conv blocks (conv layers, a pooling layer, maybe a dropout) as a loop over
        ``hp["conv_blocks"]``; returns the (call, role) slots it took care of."""
        for style, items in self.layer_sequences(plan, sl):
            found = self._repeated_blocks(items)
            if found is None:
                continue
            start, length, count, ratio, filters = found
            if style == "functional" and not self._chained(items[start : start + length * count]):
                continue
            return self._loop(plan, style, items, start, length, count, ratio, filters)
        return set()

    def _repeated_blocks(
        self, items: list[tuple[cst.Call | None, Any]]
    ) -> tuple[int, int, int, int, int] | None:
        leaves = [_leaf(self.callee(call)) if call is not None else "" for call, _ in items]
        convs = [
            index
            for index, (call, _) in enumerate(items)
            if call is not None and cc.is_conv_layer(self.callee(call) or "")
        ]
        if not convs:
            return None
        start = convs[0]
        blocks: list[tuple[int, int]] = []
        position = start
        while position < len(items) and position in convs:
            end = position
            while end < len(items) and (end in convs or leaves[end] in _BLOCK_EXTRAS):
                end += 1
            if end >= len(items) or not _POOLING.fullmatch(leaves[end]):
                break
            end += 1
            if end < len(items) and leaves[end] in _DROPOUTS:
                end += 1
            blocks.append((position, end))
            position = end
        if len(blocks) < 2:
            return None
        first = blocks[0]
        signature = self._block_signature(items, first)
        filters = self._block_filters(items, first)
        if signature is None or filters is None:
            return None
        count, ratio = 1, 0
        for block in blocks[1:]:
            if block[1] - block[0] != first[1] - first[0] or self._block_signature(items, block) != signature:
                break
            these = self._block_filters(items, block)
            step = {filters * 2**count: 2, filters: 1}.get(these or -1)
            if step is None or (ratio and step != ratio):
                break
            ratio = step
            count += 1
        if count < 2:
            return None
        return start, first[1] - first[0], count, ratio, filters

    def _block_signature(
        self, items: list[tuple[cst.Call | None, Any]], block: tuple[int, int]
    ) -> tuple | None:
        signature = []
        for call, _ in items[block[0] : block[1]]:
            if call is None:
                return None
            conv = cc.is_conv_layer(self.callee(call) or "")
            positional = [
                " ".join(_code(argument.value).split()) for argument in call.args if argument.keyword is None
            ][1 if conv else 0 :]
            keywords = sorted(
                (argument.keyword.value, " ".join(_code(argument.value).split()))
                for argument in call.args
                if argument.keyword is not None
                and argument.keyword.value
                not in ("filters", "input_shape", "batch_input_shape", "input_dim", "name")
            )
            signature.append((_leaf(self.callee(call)), tuple(positional), tuple(keywords)))
        return tuple(signature)

    def _block_filters(self, items: list[tuple[cst.Call | None, Any]], block: tuple[int, int]) -> int | None:
        values = set()
        for call, _ in items[block[0] : block[1]]:
            if call is None or not cc.is_conv_layer(self.callee(call) or ""):
                continue
            slot = next((slot for slot in self.slots(call) if slot.role == "filters"), None)
            if slot is None:
                return None
            value = self.slot_value(slot)
            if (
                not isinstance(value, _Const)
                or isinstance(value.value, bool)
                or not isinstance(value.value, int)
            ):
                return None
            values.add(value.value)
        return values.pop() if len(values) == 1 else None

    def _chained(self, items: list[tuple[cst.Call | None, Any]]) -> bool:
        """Functional lines that all assign one name and feed each other (``x = L(...)(x)``)."""
        targets = set()
        for position, (_, stmt) in enumerate(items):
            small = stmt.node.body[0]
            target = small.targets[0].target.value
            targets.add(target)
            if position and small.value.args[0].value.value != target:
                return False
        return len(targets) == 1

    def _loop(
        self,
        plan: _Plan,
        style: str,
        items: list[tuple[cst.Call | None, Any]],
        start: int,
        length: int,
        count: int,
        ratio: int,
        filters: int,
    ) -> set[tuple[int, str]]:
        handled: set[tuple[int, str]] = set()
        first_call = items[start][0]
        assert first_call is not None
        line = self.line(first_call)
        blocks_key = self.lift("conv_blocks", count, line, None, f"{count} repeated conv blocks:")
        first_key = self.lift("filters", filters, line, None, "filters of the first conv block:")
        growth = " * 2**block" if ratio == 2 else ""
        self.note(
            line,
            f"the {count} conv blocks at lines {line}-{self.line(items[start + length * count - 1][0])}"
            f' -> one loop over hp["{blocks_key}"]' + (", filters doubling per block" if ratio == 2 else ""),
        )
        block = items[start : start + length]
        for call, _ in block:
            if call is not None and cc.is_conv_layer(self.callee(call) or ""):
                slot = next(slot for slot in self.slots(call) if slot.role == "filters")
                self.replace_value(slot, cst.parse_expression(f'hp["{first_key}"]{growth}'))
                handled.add((id(call), "filters"))
        for call, _ in items[start + length : start + length * count]:
            if call is not None:
                self.dropped_calls.update(id(node) for node in self.walk(call) if isinstance(node, cst.Call))
        input_slot = next(
            (slot for slot in self.slots(first_call) if slot.role in ("input", "input_dim")), None
        )
        input_layer = None
        if input_slot is not None:
            self.drop_argument(first_call, input_slot.arg)  # type: ignore[arg-type]
            handled.add((id(first_call), input_slot.role))
            self.note(
                line,
                f"input shape `{_short(input_slot.value, 30)}` -> keras.Input(shape=input_shape) "
                "before the loop: the platform passes the data set's image shape",
            )
            input_layer = cst.Call(
                func=self.ref("keras.Input"),
                args=[
                    cst.Arg(
                        keyword=cst.Name("shape"),
                        value=cst.Name("input_shape"),
                        equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")),
                    )
                ],
            )
        header = f'for block in range(hp["{blocks_key}"]):\n    pass\n'
        if style in ("add", "functional"):
            statements = [stmt for _, stmt in items[start : start + length * count]]
            first_stmt = statements[0]
            self.groups[id(first_stmt.node)] = [stmt.node for stmt in statements[:length]]
            self.dropped.update(id(stmt.node) for stmt in statements[1:])
            self.loop_headers[id(first_stmt.node)] = header
            before: list[cst.BaseStatement] = []
            if style == "add" and input_layer is not None:
                receiver = first_stmt.node.body[0].value.func.value
                before.append(
                    cst.SimpleStatementLine(
                        [
                            cst.Expr(
                                cst.Call(
                                    func=cst.Attribute(receiver, cst.Name("add")), args=[cst.Arg(input_layer)]
                                )
                            )
                        ]
                    )
                )
            if style == "functional":
                small = first_stmt.node.body[0]
                target = small.targets[0].target.value
                source = small.value.args[0].value.value
                if source != target:
                    before.append(cst.parse_statement(f"{target} = {source}\n"))
                    application = small.value
                    self.edit(
                        application,
                        lambda call, target=target: call.with_changes(
                            args=[call.args[0].with_changes(value=cst.Name(target))]
                        ),
                    )
            if before:
                self.inserted_before.setdefault(id(first_stmt.node), []).extend(before)
        else:
            elements = [element for _, element in items]
            container = self.parent[id(elements[0])]
            self.list_op(container).star = (start, start + length * count, length, header)
            if input_layer is not None:
                self.list_op(container).insert.setdefault(start, []).append(input_layer)
        return handled

    def list_op(self, node: cst.List) -> _ListOp:
        op = self.list_ops.get(id(node))
        if op is None:
            op = self.list_ops[id(node)] = _ListOp()
            self.edit(node, lambda updated, op=op, original=node: _apply_list_op(original, updated, op))
        return op

    def container_of(self, call: cst.Call) -> tuple[str, Any]:
        """How a layer call sits in the model: in a list, in a ``model.add`` line, or applied to a tensor."""
        parent = self.parent.get(id(call))
        if isinstance(parent, cst.Element) and isinstance(self.parent.get(id(parent)), cst.List):
            return "list", parent
        if isinstance(parent, cst.Arg):
            outer = self.parent.get(id(parent))
            if (
                isinstance(outer, cst.Call)
                and isinstance(outer.func, cst.Attribute)
                and outer.func.attr.value == "add"
            ):
                return "add", self.stmt_of[id(call)]
        if isinstance(parent, cst.Call) and parent.func is call:
            return "functional", parent
        return "other", None

    def insert_flatten(self, plan: _Plan, sl: _Slice, dense: cst.Call, moved_input: bool) -> None:
        flatten = self.ref("keras.layers.Flatten")
        arguments = [
            cst.Arg(
                keyword=cst.Name("input_shape"),
                value=cst.Name("input_shape"),
                equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")),
            )
        ]
        style, where = self.container_of(dense)
        line = self.line(dense)
        if style == "list":
            self.list_op(self.parent[id(where)]).insert.setdefault(
                self.parent[id(where)].elements.index(where), []
            ).append(cst.Call(func=flatten, args=arguments if moved_input else []))
        elif style == "add":
            receiver = where.node.body[0].value.func.value
            layer = cst.Call(func=flatten, args=arguments if moved_input else [])
            self.inserted_before.setdefault(id(where.node), []).append(
                cst.SimpleStatementLine(
                    [cst.Expr(cst.Call(func=cst.Attribute(receiver, cst.Name("add")), args=[cst.Arg(layer)]))]
                )
            )
        elif style == "functional":
            self.edit(
                where,
                lambda call: call.with_changes(
                    args=[
                        call.args[0].with_changes(
                            value=cst.Call(func=cst.Call(func=flatten), args=[cst.Arg(call.args[0].value)])
                        )
                    ]
                ),
            )
        else:
            return
        self.note(
            line,
            "added a Flatten layer before the first Dense: the platform passes images as "
            "(height, width, channels), not flattened vectors",
        )

    def remove_rescaling(self, plan: _Plan, sl: _Slice, layers: list[cst.Call]) -> None:
        for call in layers:
            if _leaf(self.callee(call)) != "Rescaling" or id(call) in self.dropped_calls:
                continue
            scale = _argument(call, "scale", 0)
            offset = _argument(call, "offset", 1)
            if scale is None:
                continue
            value = self.evaluate(scale.value, self.stmt_of[id(call)])
            shift = self.evaluate(offset.value, self.stmt_of[id(call)]) if offset is not None else _Const(0)
            if not (
                isinstance(value, _Const)
                and isinstance(value.value, int | float)
                and abs(value.value - 1 / 255) < 1e-6
                and isinstance(shift, _Const)
                and shift.value == 0
            ):
                continue
            line = self.line(call)
            why = "removed Rescaling(1/255): the platform's images already are float32 in [0, 1]"
            input_slot = next((slot for slot in self.slots(call) if slot.role == "input"), None)
            style, where = self.container_of(call)
            if input_slot is not None and style in ("list", "add"):
                # The layer also said the input shape: an Input layer keeps that part.
                replacement = cst.Call(
                    func=self.ref("keras.Input"),
                    args=[
                        cst.Arg(
                            keyword=cst.Name("shape"),
                            value=cst.Name("input_shape"),
                            equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")),
                        )
                    ],
                )
                self.edit(call, lambda _call, replacement=replacement: replacement)
            elif style == "list":
                self.list_op(self.parent[id(where)]).remove.add(self.parent[id(where)].elements.index(where))
            elif style == "add":
                self.dropped.add(id(where.node))
            elif style == "functional":
                stmt = self.stmt_of[id(call)]
                small = stmt.node.body[0] if isinstance(stmt.node, cst.SimpleStatementLine) else None
                source = where.args[0].value if where.args else None
                if isinstance(small, cst.Assign) and small.value is where and isinstance(source, cst.Name):
                    target = small.targets[0].target
                    if isinstance(target, cst.Name) and target.value == source.value:
                        self.dropped.add(id(stmt.node))
                    else:
                        self.edit(where, lambda _call, source=source: source)
                else:
                    continue
            else:
                continue
            self.dropped_calls.add(id(call))
            self.note(line, why)

    def compile_call(self, call: cst.Call) -> None:
        line = self.line(call)
        optimizer = _argument(call, "optimizer", 0)
        if optimizer is None:
            new = self.optimizer_from_name("rmsprop", line, "compile() without an optimizer uses RMSprop;")
            self.edit(call, lambda updated, new=new: _with_keyword(updated, "optimizer", new))
        elif isinstance(optimizer.value, cst.SimpleString) and str(
            optimizer.value.evaluated_value
        ).lower() in (_OPTIMIZER_BY_STRING):
            new = self.optimizer_from_name(
                str(optimizer.value.evaluated_value), line, f"optimizer {optimizer.value.value} ->"
            )
            self.edit(optimizer, lambda argument, new=new: argument.with_changes(value=new))
        loss = _argument(call, "loss", 1)
        if loss is not None:
            self.loss_value(loss, line)
        metrics = _argument(call, "metrics", 2)
        if metrics is not None and isinstance(metrics.value, cst.List | cst.Tuple):
            self.metrics_value(metrics.value, line)

    def optimizer_from_name(self, name: str, line: int, why: str) -> cst.BaseExpression:
        optimizer = _OPTIMIZER_BY_STRING[name.lower()]
        default = OPTIMIZER_DEFAULT_LEARNING_RATE[optimizer]
        key = self.lift(
            "learning_rate",
            default,
            line,
            None,
            f"{why} {optimizer}(learning_rate=...) so the learning rate can be tuned; Keras' default",
        )
        return cst.Call(
            func=self.ref(f"keras.optimizers.{optimizer}"),
            args=[
                cst.Arg(
                    keyword=cst.Name("learning_rate"),
                    value=_hp(key),
                    equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")),
                )
            ],
        )

    def loss_value(self, loss: cst.Arg, line: int) -> None:
        value = loss.value
        name = value.evaluated_value if isinstance(value, cst.SimpleString) else None
        if name is None and isinstance(value, cst.Name | cst.Attribute):
            reference = self.canonical(value) or ""
            name = reference.removeprefix("keras.losses.") if reference.startswith("keras.losses.") else None
        sparse = {"categorical_crossentropy": "one-hot labels"}
        if self.binary_head:
            sparse["binary_crossentropy"] = "a binary head"
        if name in sparse:
            self.edit(
                loss,
                lambda argument: argument.with_changes(
                    value=_string_like(argument.value, "sparse_categorical_crossentropy")
                ),
            )
            self.note(
                line,
                f"loss {name} -> sparse_categorical_crossentropy: the platform's labels are class "
                f"indices, not {sparse[name]}",
            )

    def metrics_value(self, metrics: cst.List | cst.Tuple, line: int) -> None:
        renamed = {
            "categorical_accuracy": "sparse_categorical_accuracy",
            "top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy",
        }
        if self.binary_head:
            renamed["binary_accuracy"] = "accuracy"
        keep_objects = {
            "SparseCategoricalAccuracy",
            "SparseTopKCategoricalAccuracy",
            "CategoricalAccuracy",
            "TopKCategoricalAccuracy",
            "Accuracy",
        }
        dropped: list[int] = []
        for index, element in enumerate(metrics.elements):
            value = element.value
            if isinstance(value, cst.SimpleString):
                text = str(value.evaluated_value)
                if text in renamed:
                    self.edit(value, lambda node, text=text: _string_like(node, renamed[text]))
                    self.note(line, f"metric {text} -> {renamed[text]}: the labels are class indices")
                elif text not in _ACCURACY_METRICS and text not in renamed.values():
                    dropped.append(index)
            elif isinstance(value, cst.Call) and _leaf(self.canonical(value.func)) not in keep_objects:
                dropped.append(index)
        if dropped:
            shown = ", ".join(_short(metrics.elements[index].value, 30) for index in dropped)
            self.note(
                line,
                f"removed the metrics {shown}: they need one-hot labels; the platform reports "
                "accuracy, precision, recall and F1 itself",
            )
            if len(dropped) == len(metrics.elements):
                self.edit(metrics, lambda node: cst.parse_expression('["accuracy"]'))
            else:
                self.edit(metrics, lambda node, dropped=tuple(dropped): _without_elements(node, dropped))

    def loss_objects(self, calls: list[cst.Call]) -> None:
        for call in calls:
            name = self.callee(call) or ""
            leaf = _leaf(name)
            if not name.startswith(("keras.losses.", "keras.metrics.")) or id(call) in self.dropped_calls:
                continue
            sparse = {
                "CategoricalCrossentropy": "SparseCategoricalCrossentropy",
                "CategoricalAccuracy": "SparseCategoricalAccuracy",
                "TopKCategoricalAccuracy": "SparseTopKCategoricalAccuracy",
            }
            if self.binary_head:
                sparse["BinaryCrossentropy"] = "SparseCategoricalCrossentropy"
                sparse["BinaryAccuracy"] = "SparseCategoricalAccuracy"
            if leaf not in sparse:
                continue
            module = ".".join(name.split(".")[:2])
            new = self.ref(f"{module}.{sparse[leaf]}")
            self.edit(
                call,
                lambda updated, new=new: _without_keyword(updated.with_changes(func=new), "label_smoothing"),
            )
            self.note(self.line(call), f"{leaf} -> {sparse[leaf]}: the platform's labels are class indices")

    # -------------------------------------------------------------------------------------- imports

    def import_table(self) -> dict[str, tuple[str, _Stmt]]:
        """Module-level imports: bound name -> (canonical library name, its statement)."""
        table: dict[str, tuple[str, _Stmt]] = {}
        for stmt in self.module_body.stmts:
            if stmt.parents or not _is_import(stmt.node):
                continue
            for small in stmt.node.body:
                if isinstance(small, cst.Import):
                    for alias in small.names:
                        dotted = _code(alias.name)
                        if alias.asname is not None:
                            table[_code(alias.asname.name)] = (cc.canonical_name(dotted), stmt)
                        else:
                            root = dotted.split(".")[0]
                            table[root] = (cc.canonical_name(root), stmt)
                elif (
                    isinstance(small, cst.ImportFrom)
                    and small.module is not None
                    and not small.relative
                    and (not isinstance(small.names, cst.ImportStar))
                ):
                    module = _code(small.module)
                    for alias in small.names:
                        bound = _code(alias.asname.name) if alias.asname else _code(alias.name)
                        table[bound] = (cc.canonical_name(f"{module}.{_code(alias.name)}"), stmt)
        return table

    def ref(self, canonical: str) -> cst.BaseExpression:
        """An expression for a Keras name, through the script's own imports if it has one that fits."""
        table = self.import_table()
        for bound, (target, stmt) in sorted(table.items()):
            if target == canonical:
                self.revived.add(stmt)
                return cst.Name(bound)
        prefixes = sorted(
            (
                (len(target), bound, target, stmt)
                for bound, (target, stmt) in table.items()
                if canonical.startswith(target + ".")
            ),
            key=lambda item: (-item[0], item[1]),
        )
        if prefixes:
            _, bound, target, stmt = prefixes[0]
            self.revived.add(stmt)
            return cst.parse_expression(bound + canonical[len(target) :])
        tensorflow = sorted(bound for bound, (target, _) in table.items() if target == "tensorflow")
        if tensorflow and canonical.startswith("keras."):
            self.revived.add(table[tensorflow[0]][1])
            return cst.parse_expression(f"{tensorflow[0]}.{canonical}")
        if canonical.startswith("keras."):
            if "import keras" not in self.added_imports:
                self.added_imports.append("import keras")
            return cst.parse_expression(canonical)
        module, leaf = canonical.rsplit(".", 1)
        statement = f"from {module} import {leaf}"
        if statement not in self.added_imports:
            self.added_imports.append(statement)
        return cst.Name(leaf)

    def modern_import(self, node: cst.SimpleStatementLine, line: int) -> cst.SimpleStatementLine:
        """Keras 2 and ``tensorflow.keras`` import paths as Keras 3 has them (``import keras``)."""
        pieces: list[str] = []
        changed = False
        for small in node.body:
            if (
                isinstance(small, cst.ImportFrom)
                and small.module is not None
                and not small.relative
                and (not isinstance(small.names, cst.ImportStar))
            ):
                module = _code(small.module)
                target = _modern_module(module)
                changed = changed or target != module
                groups: dict[str, list[str]] = {}
                for alias in small.names:
                    name = _code(alias.name)
                    bound = _code(alias.asname.name) if alias.asname else name
                    if module == "tensorflow" and name == "keras":
                        pieces.append("import keras" + ("" if bound == "keras" else f" as {bound}"))
                        changed = True
                        continue
                    moved = _moved_module(target, name)
                    if moved is not None:
                        parent, name = moved
                        changed = True
                    else:
                        parent = target
                    groups.setdefault(parent, []).append(name if name == bound else f"{name} as {bound}")
                pieces += [f"from {parent} import {', '.join(names)}" for parent, names in groups.items()]
            elif isinstance(small, cst.Import):
                texts = []
                for alias in small.names:
                    dotted = _code(alias.name)
                    modern = _modern_module(dotted)
                    changed = changed or modern != dotted
                    bound = _code(alias.asname.name) if alias.asname else None
                    texts.append(modern if bound in (None, modern) else f"{modern} as {bound}")
                pieces.append(f"import {', '.join(texts)}")
            else:
                pieces.append(_code(small))
        if not changed:
            return node
        parsed = cst.parse_statement("; ".join(pieces) + "\n")
        assert isinstance(parsed, cst.SimpleStatementLine)
        new = node.with_changes(body=parsed.body)
        self.note(line, f"`{_short(node)}` -> `{_short(new)}` (Keras 3 import paths)")
        return new

    def prune_imports(self, node: cst.SimpleStatementLine, used: set[str]) -> cst.SimpleStatementLine | None:
        """The import statement with only the names the adapted file uses; None if it uses none."""
        kept_body: list[cst.BaseSmallStatement] = []
        for small in node.body:
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                if small.module is not None and _code(small.module) == "__future__":
                    if any(_code(alias.name) == "annotations" for alias in small.names):
                        kept_body.append(small)
                    continue
                aliases = [
                    alias
                    for alias in small.names
                    if (_code(alias.asname.name) if alias.asname else _code(alias.name)) in used
                ]
                if aliases:
                    kept_body.append(
                        small.with_changes(names=_tidy_aliases(aliases, small.names))
                        if len(aliases) < len(small.names)
                        else small
                    )
            elif isinstance(small, cst.Import):
                aliases = [
                    alias
                    for alias in small.names
                    if (_code(alias.asname.name) if alias.asname else _code(alias.name).split(".")[0]) in used
                ]
                if aliases:
                    kept_body.append(
                        small.with_changes(names=_tidy_aliases(aliases, small.names))
                        if len(aliases) < len(small.names)
                        else small
                    )
            else:
                kept_body.append(small)
        if not kept_body:
            return None
        return node.with_changes(body=kept_body)

    # ---------------------------------------------------------------------------------- scikit-learn

    def final_estimator(self, node: cst.BaseExpression, stmt: _Stmt, depth: int = 0) -> cst.Call | None:
        """The classifier at the end of a pipeline (or inside a search), following names to their calls."""
        if depth > _MAX_EVALUATION_DEPTH:
            return None
        if isinstance(node, cst.Name):
            binding = self.reaching(node.value, stmt)
            if isinstance(binding, _Stmt) and isinstance(binding.node, cst.SimpleStatementLine):
                small = binding.node.body[0]
                if isinstance(small, cst.Assign):
                    return self.final_estimator(small.value, binding, depth + 1)
            return None
        if not isinstance(node, cst.Call):
            return None
        leaf = cc.sklearn_class(self.callee(node))
        if leaf == "make_pipeline":
            positional = [argument for argument in node.args if argument.keyword is None]
            return self.final_estimator(positional[-1].value, stmt, depth + 1) if positional else None
        if leaf == "Pipeline":
            steps = _argument(node, "steps", 0)
            if steps is not None and isinstance(steps.value, cst.List | cst.Tuple) and steps.value.elements:
                last = steps.value.elements[-1].value
                if isinstance(last, cst.Tuple) and len(last.elements) == 2:
                    return self.final_estimator(last.elements[1].value, stmt, depth + 1)
            return None
        if leaf in cc.SKLEARN_SEARCHES:
            inner = _argument(node, "estimator", 0)
            return self.final_estimator(inner.value, stmt, depth + 1) if inner else None
        return node if cc.is_sklearn_estimator(self.callee(node)) else None

    def adapt_sklearn(self, plan: _Plan, sl: _Slice) -> cst.Call | None:
        root = plan.model_expression if plan.model_expression is not None else plan.candidate.call
        classifier = self.final_estimator(root, plan.candidate.stmt)
        if classifier is None:
            raise _Refusal(
                plan.candidate.stmt.line,
                f"adapt found no classifier in `{_short(root)}`: the "
                "pipeline must end in a scikit-learn estimator",
            )
        leaf = _leaf(self.callee(classifier))
        self.kind = cc.kind_of_estimator(leaf)
        line = self.line(classifier)
        given = set()
        for slot in self.slots(classifier):
            keyword = slot.role.split(":", 1)[1]
            given.add(keyword)
            value = self.slot_value(slot)
            if isinstance(value, _Runtime):
                self.runtime_knob(f"{keyword} of {leaf}", line, value, f"{keyword}={_example(keyword)}")
                continue
            if keyword == "kernel" and value.value == "precomputed":
                self.refuse(
                    self.line(slot.arg) if slot.arg is not None else line,
                    f'{leaf}(kernel="precomputed") expects a Gram matrix (kernel values between samples), but '
                    "the platform passes the model feature vectors (flattened pixels or table columns): use "
                    'one of the kernels "rbf", "poly", "sigmoid" or "linear"',
                )
                continue
            if not _fits(ESTIMATOR_KNOBS[keyword], value.value):
                self.literal(slot, value)
                continue
            key = self.lift(
                _KNOB_NAME_OF_ARGUMENT.get(keyword, keyword),
                value.value,
                line,
                value,
                f"{keyword} of {leaf}:",
            )
            self.replace_value(slot, _hp(key))
            if slot.arg is not None and slot.arg.keyword is None:
                self.rename_keyword(slot, keyword)
                self.edit(
                    slot.arg,
                    lambda argument: argument.with_changes(
                        equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace(""))
                    ),
                )
        for keyword, default in ESTIMATOR_DEFAULTS.get(leaf, ()):
            if keyword in given:
                continue
            key = self.lift(
                keyword,
                default,
                line,
                None,
                f"{leaf}'s default {keyword} made explicit so the strategies can move it:",
            )
            self.edit(
                classifier, lambda call, keyword=keyword, key=key: _with_keyword(call, keyword, _hp(key))
            )
        self.fitted_transformers(plan, sl)
        return classifier

    def fitted_transformers(self, plan: _Plan, sl: _Slice) -> None:
        """Scalers and the like that the script fits on its data before the model: into a pipeline with it.

        ``X_train = scaler.fit_transform(X_train)`` outside the model means the model was trained on scaled
        data; the platform passes pixels in [0, 1] to the model itself, so the scaler must be part of it.
        """
        site = plan.site_stmt.body if plan.site_stmt is not None else plan.body
        transformers: list[tuple[str, _Stmt]] = []
        for stmt in site.stmts:
            if not isinstance(stmt.node, cst.SimpleStatementLine):
                continue
            for node in self.walk(stmt.node):
                if not (
                    isinstance(node, cst.Call)
                    and isinstance(node.func, cst.Attribute)
                    and isinstance(node.func.value, cst.Name)
                    and node.func.attr.value in ("fit_transform", "fit")
                ):
                    continue
                name = node.func.value.value
                binding = self.reaching(name, stmt)
                if not (
                    isinstance(binding, _Stmt) and binding.body is site and self._is_transformer(binding)
                ):
                    continue
                if name not in {known for known, _ in transformers} and name != plan.var:
                    transformers.append((name, binding))
        if not transformers or plan.model_expression is not None or not plan.var or plan.function is not None:
            return
        for _name, binding in transformers:
            sl.builder.append(binding)
            for read in _reads(binding.node):
                imported = self.reaching(read.value, binding)
                if isinstance(imported, _Stmt) and _is_import(imported.node):
                    (
                        self.revived.add(imported)
                        if imported.body.owner is None
                        else sl.builder.append(imported)
                    )
            self.note(
                binding.line,
                f"`{_short(binding.node, 40)}` is fitted on the data outside the model: it "
                "becomes the first step of a pipeline with the classifier, so the model scales its "
                "inputs as the script did",
            )
        sl.builder.sort(key=lambda stmt: stmt.index)
        steps = ", ".join([name for name, _ in transformers] + [plan.var])
        self.pipeline_steps = (self.ref("sklearn.pipeline.make_pipeline"), steps)

    def _is_transformer(self, stmt: _Stmt) -> bool:
        node = stmt.node
        if not isinstance(node, cst.SimpleStatementLine) or not isinstance(node.body[0], cst.Assign):
            return False
        value = node.body[0].value
        if not isinstance(value, cst.Call):
            return False
        parts = (self.callee(value) or "").split(".")
        return (
            parts[0] == "sklearn"
            and len(parts) > 2
            and parts[1]
            in (
                "preprocessing",
                "decomposition",
                "feature_selection",
                "kernel_approximation",
                "random_projection",
            )
            and parts[-1][:1].isupper()
        )

    # ------------------------------------------------------------------------------------------ training

    def fit_knobs(self, plan: _Plan) -> None:
        """``epochs`` and ``batch_size`` from the script's ``fit`` (Keras' defaults when it has none)."""
        fits: list[tuple[cst.Call, _Stmt]] = []
        if plan.site_stmt is not None and plan.site_var:
            for stmt in plan.site_stmt.body.stmts:
                own = (
                    [stmt.node]
                    if not isinstance(stmt.node, cst.BaseCompoundStatement)
                    else _header_nodes(stmt.node)
                )
                for root in own:
                    for node in self.walk(root):
                        if (
                            isinstance(node, cst.Call)
                            and isinstance(node.func, cst.Attribute)
                            and isinstance(node.func.value, cst.Name)
                            and node.func.value.value == plan.site_var
                            and node.func.attr.value in _TRAINING_CALLS
                        ):
                            fits.append((node, stmt))
        if not fits:
            for name, default in _KERAS_FIT_DEFAULTS:
                self.lift(name, default, None, None, f"no model.fit() found: Keras' default {name}")
            return
        call, stmt = fits[0]
        line = self.line(call)
        generator = call.func.attr.value == "fit_generator"  # type: ignore[union-attr]
        epochs = _argument(call, "epochs", 2 if generator else 3, aliases=("nb_epoch",))
        batch = None if generator else _argument(call, "batch_size", 2)
        if batch is None:
            source = _argument(call, "x", 0) if not generator else _argument(call, "generator", 0)
            if (
                source is not None
                and isinstance(source.value, cst.Call)
                and isinstance(source.value.func, cst.Attribute)
                and source.value.func.attr.value in ("flow", "flow_from_directory")
            ):
                batch = _argument(source.value, "batch_size")
        for name, argument in (("epochs", epochs), ("batch_size", batch)):
            if argument is None:
                default = dict(_KERAS_FIT_DEFAULTS)[name]
                self.lift(name, default, line, None, f"model.fit() leaves {name} at Keras' default")
                continue
            value = self.evaluate(argument.value, stmt)
            if isinstance(value, _Runtime):
                self.runtime_knob(f"{name} of {_short(call.func)}()", line, value, f"{name}=10")
                continue
            if isinstance(value.value, bool) or not isinstance(value.value, int):
                self.refuse(line, f"{name} of model.fit() is {value.value!r}, not a whole number")
                continue
            self.lift(name, value.value, line, value, f"{name} of model.fit():")
        if generator:
            self.note(line, "fit_generator (Keras 2) is gone: the platform calls fit itself")

    # -------------------------------------------------------------------------------------------- data

    def dataset(self) -> tuple[str | None, str]:
        """The platform's data set the script used, or None and what to name in pushtrain.toml instead."""
        platform: dict[str, tuple[int, str]] = {}
        others: list[str] = []
        for node in self.walk(self.module):
            if not isinstance(node, cst.Call) or id(node) not in self.stmt_of:
                continue
            name = self.callee(node) or ""
            line = self.line(node)
            leaf = _leaf(name)
            first = next((argument.value for argument in node.args if argument.keyword is None), None)
            text = first.evaluated_value if isinstance(first, cst.SimpleString) else None
            if name in DATASET_OF_LOADER:
                platform.setdefault(DATASET_OF_LOADER[name], (line, f"{name}()"))
            elif leaf == "fetch_openml":
                wanted = _argument(node, "name", 0)
                value = (
                    wanted.value.evaluated_value
                    if wanted and isinstance(wanted.value, cst.SimpleString)
                    else None
                )
                if isinstance(value, str) and value.lower() in _OPENML_MNIST:
                    platform.setdefault("mnist5k", (line, f"fetch_openml({value!r})"))
                else:
                    others.append(
                        f"line {line} fetches {value or 'a data set'} from OpenML, which the platform "
                        "does not have"
                    )
            elif name.startswith("keras.datasets.") and leaf == "load_data":
                others.append(
                    f"line {line} loads Keras' {name.split('.')[2]}, which the platform does not have"
                )
            elif leaf in ("image_dataset_from_directory", "flow_from_directory") and isinstance(text, str):
                folder = text.strip("/")
                if folder and not Path(folder).is_absolute() and ".." not in Path(folder).parts:
                    platform.setdefault(f"{REPO_DATASET_PREFIX}{folder}", (line, text))
                else:
                    others.append(f"line {line} reads images from {text}, outside the repository")
            elif leaf.startswith("read_") and name.startswith("pandas.") or leaf in ("loadtxt", "genfromtxt"):
                others.append(f"line {line} reads {text or 'a file'}")
        if len(platform) == 1:
            ((dataset, (line, source)),) = platform.items()
            if dataset.startswith(REPO_DATASET_PREFIX):
                return dataset, (
                    f"line {line} reads images from {source}, a folder of the repository: "
                    f"the data set {dataset}"
                )
            stands_in = "5,000 MNIST digits" if dataset == "mnist5k" else "scikit-learn's 8x8 digits"
            return (
                dataset,
                f"line {line} loads `{source}`; pushtrain's {dataset} ({stands_in}) stands in for it",
            )
        choose = (
            f'name one in {CONFIG_FILE} (dataset = "digits" or "mnist5k", or "{REPO_DATASET_PREFIX}<folder>")'
        )
        if len(platform) > 1:
            found = ", ".join(f"{dataset} (line {line})" for dataset, (line, _) in platform.items())
            return None, f"the script loads several data sets: {found}; {choose}"
        if others:
            return None, "; ".join(others) + f"; {choose}"
        return None, f"adapt found no data loading it knows; {choose}"

    # ---------------------------------------------------------------------------- values and leftovers

    def resolve_values(self, plan: _Plan, sl: _Slice) -> None:
        """Names the model reads that the script computes: constants stay, run-time values are refused."""
        kept = {id(stmt) for stmt in sl.builder} | {id(stmt) for stmt in sl.module}
        synthesized: set[str] = set()
        for (name, _), (at, binding, value) in sorted(
            sl.values.items(), key=lambda item: (item[1][0].line, item[0][0])
        ):
            if isinstance(value, _Runtime):
                where = (
                    f" at line {value.line}"
                    if value.line and value.line != at.line and (" at line " not in value.reason)
                    else ""
                )
                self.refuse(
                    at.line,
                    f"the model uses `{name}`, which comes from {value.reason}{where}, known "
                    "only when the script runs: give it a literal value and run adapt again",
                )
                continue
            if isinstance(binding, _Stmt) and id(binding) in kept or name in synthesized:
                continue
            if not _is_plain(value.value):
                self.refuse(at.line, f"the model uses `{name}`, whose value adapt cannot write as a literal")
                continue
            synthesized.add(name)
            statement = cst.parse_statement(f"{name} = {tweak.render_literal(value.value)}\n")
            self.prelude.append(statement)
            self.note(
                at.line,
                f"`{name}` is the constant {tweak.render_literal(value.value)}"
                + (f" ({value.note})" if value.note else ""),
            )
        for attribute, at in sl.argparse_reads:
            value = self.evaluate(attribute, at)
            if isinstance(value, _Runtime):
                self.refuse(
                    at.line,
                    f"the model uses `{_code(attribute)}`, which comes from {value.reason}: "
                    "give the option a default and run adapt again",
                )
                continue
            self.edit(attribute, lambda _node, value=value.value: _literal_node(value))
            self.note(at.line, f"`{_code(attribute)}` -> {tweak.render_literal(value.value)} ({value.note})")

    def leftover_slots(self, plan: _Plan, sl: _Slice) -> None:
        """Arguments the slice did not follow (they were to be rewritten) but that stayed: write them out."""
        for call in self.builder_calls(plan, sl):
            if id(call) in self.dropped_calls:
                continue
            for slot in self.slots(call):
                if slot.arg is None or id(slot.arg) in self.touched or slot.role == "weights":
                    continue
                self.literal(slot, self.slot_value(slot))

    # ------------------------------------------------------------------------------------ what went

    def removed_notes(self, plan: _Plan, sl: _Slice) -> None:
        kept = (
            {id(stmt) for stmt in sl.builder}
            | {id(stmt) for stmt in sl.module}
            | {id(stmt) for stmt in self.revived}
        )
        origins = {id(origin) for origin in self.knob_origins}
        bodies = [self.module_body]
        for body in (plan.body, plan.site_stmt.body if plan.site_stmt else None):
            if body is not None and body.owner is not None and body not in bodies:
                bodies.append(body)
        for body in bodies:
            for stmt in body.stmts:
                node = stmt.node
                if stmt.parents and not (
                    body is self.module_body and all(cc.is_main_guard(parent) for parent in stmt.parents)
                ):
                    continue
                if id(stmt) in kept or id(stmt) in origins or _is_import(node) or _is_docstring(node):
                    continue
                if isinstance(node, cst.FunctionDef):
                    if node is plan.function:
                        continue
                    lines = f"lines {stmt.line}-{stmt.last_line}"
                    if node is plan.body.owner:
                        self.note(
                            stmt.line,
                            f"removed function {node.name.value}() ({lines}); its model "
                            f"statements are now {self.builder_name(plan)}()",
                        )
                    else:
                        self.note(
                            stmt.line,
                            f"removed function {node.name.value}() ({lines}): not part of the model",
                        )
                    continue
                if cc.is_main_guard(node):
                    continue
                inner = [child for child in body.stmts if node in child.parents and id(child) in kept]
                if inner:
                    shown = ", ".join(f"`{_short(child.node, 40)}`" for child in inner)
                    self.note(
                        stmt.line,
                        f"removed the {_keyword(node)} block at lines {stmt.line}-"
                        f"{stmt.last_line} except {shown}",
                    )
                    continue
                self.note(stmt.line, f"removed `{_short(node, 60)}`: {self.why_removed(node)}")

    def builder_name(self, plan: _Plan) -> str:
        return KERAS.builder if plan.candidate.framework == KERAS.name else SCIKIT_LEARN.builder

    def why_removed(self, node: cst.CSTNode) -> str:
        names: list[str] = []
        methods: list[str] = []
        divides = False
        for child in self.walk(node):
            if isinstance(child, cst.Call):
                names.append(self.callee(child) or "")
                if isinstance(child.func, cst.Attribute):
                    methods.append(child.func.attr.value)
                elif isinstance(child.func, cst.Name):
                    names.append(f"builtins.{child.func.value}")
            elif isinstance(child, cst.Name | cst.Attribute):
                qualified = self.reader.qualified(child)
                if qualified:
                    names.append(qualified)
            elif (
                isinstance(child, cst.BinaryOperation)
                and isinstance(child.operator, cst.Divide)
                or isinstance(child, cst.AugAssign)
                and isinstance(child.operator, cst.DivideAssign)
            ):
                divides = True
        leaves = {_leaf(name) for name in names} | set(methods)
        roots = {name.split(".")[0] for name in names}

        def has(*words: str) -> bool:
            return any(word in leaves for word in words)

        if (
            has(
                "load_data",
                "load_digits",
                "fetch_openml",
                "read_csv",
                "image_dataset_from_directory",
                "flow_from_directory",
                "loadtxt",
                "genfromtxt",
                "load_iris",
            )
            or "tensorflow_datasets" in roots
        ):
            return "loads data: the platform passes the data set"
        if has("write", "writelines") and not has("load_data", "read_csv"):
            return "writes files: the platform keeps the model, metrics and logs"
        if has("to_categorical"):
            return (
                "one-hot encodes the labels: the platform passes class indices (the loss is the sparse one)"
            )
        if has("train_test_split"):
            return "splits the data: the platform holds out its own validation and test images"
        if has("fit", "fit_generator", "partial_fit", "train_on_batch"):
            return "trains: the platform trains the model the builder returns"
        if has(
            "evaluate",
            "predict",
            "score",
            "cross_val_score",
            "accuracy_score",
            "classification_report",
            "confusion_matrix",
            "predict_proba",
        ):
            return "evaluates: the platform evaluates the model on its held-out split"
        if (
            has("save", "save_weights", "dump", "to_json", "savetxt")
            or "pickle" in roots
            or "joblib" in roots
        ):
            return "saves results: the platform saves and registers the model"
        if "smtplib" in roots or has("EmailMessage", "MIMEText", "send_message", "sendmail"):
            return "sends mail: pushtrain mails the results"
        if "subprocess" in roots or has("system", "popen"):
            return "runs another program: training runs nothing but the model"
        if "sys.argv" in names or "argparse" in roots or has("parse_args", "add_argument", "ArgumentParser"):
            return "reads the command line: the knobs are HPARAMS now"
        if has("open", "write", "makedirs", "mkdir"):
            return "writes files: the platform keeps the model, metrics and logs"
        if has("print", "summary", "info", "debug", "warning") or "matplotlib" in roots or "logging" in roots:
            return "prints or plots"
        if has("ImageDataGenerator", "flow"):
            return (
                "augments the data outside the model: put augmentation layers (RandomRotation, RandomZoom...) "
                "in the model to keep it"
            )
        if has("reshape", "expand_dims", "astype", "fit_transform", "transform", "StandardScaler") or divides:
            return (
                "preprocesses the data: the platform passes float32 images in [0, 1], shaped (n, height, "
                "width, channels) for Keras and flattened for scikit-learn"
            )
        if any(name.startswith("keras.callbacks.") for name in names):
            return (
                'a training callback: the platform trains for HPARAMS["epochs"] and checkpoints every epoch'
            )
        if has("set_seed", "seed"):
            return 'seeds random numbers: HPARAMS["seed"] seeds training'
        if has("image_data_format", "set_image_data_format", "set_image_dim_ordering"):
            return "picks an image layout: the platform's is channels-last"
        return "not part of the model"

    # ----------------------------------------------------------------------------------- writing it out

    def hparams_statement(self) -> cst.SimpleStatementLine:
        rank = {name: position for position, name in enumerate(_KNOB_ORDER)}

        def order(key: str) -> tuple[int, int, int]:
            base = re.sub(r"_\d+$", "", key)
            return (rank.get(base, len(rank)), self.knob_lines.get(key, 0), 0 if base == key else 1)

        lines = ["HPARAMS = {"]
        for key in sorted(self.knobs, key=order):
            comments, trailing = self.knob_comments.get(key, ([], None))
            lines += [f"    {comment}" for comment in comments]
            entry = f'    "{key}": {tweak.render_literal(self.knobs[key])},'
            lines.append(entry + (f"  {trailing}" if trailing else ""))
        lines.append("}")
        text = "\n".join(lines) + "\n" if self.knobs else "HPARAMS = {}\n"
        statement = cst.parse_statement(text)
        assert isinstance(statement, cst.SimpleStatementLine)
        return statement

    def emit(self, plan: _Plan, sl: _Slice) -> str:
        rewriter = _Rewriter(self.edits)
        builder_name = self.builder_name(plan)
        target_var = plan.var or plan.site_var or "model"
        site_body = plan.site_stmt.body if plan.function is not None and plan.site_stmt is not None else None
        if site_body is not None and plan.site_var and plan.site_var != target_var:
            for stmt in sl.builder:
                if stmt.body is site_body:
                    for name in _reads(stmt.node):
                        if name.value == plan.site_var:
                            self.edit(name, lambda node: node.with_changes(value=target_var))

        body: list[cst.BaseStatement] = list(self.prelude)
        if plan.function is not None and isinstance(plan.function.body, cst.IndentedBlock):
            first = plan.function.body.body[0] if plan.function.body.body else None
            if first is not None and _is_docstring(first):
                body.insert(0, first)
        returns: list[cst.BaseStatement] = []
        site: list[cst.BaseStatement] = []
        for stmt in sl.builder:
            node = stmt.node
            if id(node) in self.dropped:
                continue
            if (
                isinstance(node, cst.SimpleStatementLine)
                and isinstance(node.body[0], cst.Return)
                and (stmt.body is plan.body)
            ):
                returns.append(node.visit(rewriter))
                continue
            out = site if stmt.body is site_body and site_body is not plan.body else body
            out.extend(self.inserted_before.get(id(node), []))
            if id(node) in self.groups:
                members = [member.visit(rewriter) for member in self.groups[id(node)]]
                loop = cst.parse_statement(self.loop_headers[id(node)])
                assert isinstance(loop, cst.For)
                leading = members[0].leading_lines
                members[0] = _with_leading(members[0], [])
                out.append(
                    loop.with_changes(body=loop.body.with_changes(body=members), leading_lines=leading)
                )
                continue
            new = node.visit(rewriter)
            if _is_import(new):
                new = self.modern_import(new, stmt.line)
            out.append(new)
        if site and returns:
            only = returns[-1]
            value = only.body[0].value  # type: ignore[attr-defined]
            if not (isinstance(value, cst.Name) and value.value == target_var):
                body.append(cst.parse_statement(f"{target_var} = {_code(value)}\n"))
                returns = [cst.parse_statement(f"return {target_var}\n")]
        body.extend(site)
        if returns:
            body.extend(returns)
        elif plan.model_expression is not None:
            body.append(cst.SimpleStatementLine([cst.Return(plan.model_expression.visit(rewriter))]))
        elif self.pipeline_steps is not None:
            function, steps = self.pipeline_steps
            body.append(cst.parse_statement(f"return {_code(function)}({steps})\n"))
        else:
            body.append(cst.parse_statement(f"return {target_var}\n"))
        body = [_tidy_leading(node, first=position == 0) for position, node in enumerate(body)]

        parameters = (KERAS if builder_name == KERAS.builder else SCIKIT_LEARN).builder_parameters
        template = cst.parse_statement(f"def {builder_name}({parameters}):\n    pass\n")
        assert isinstance(template, cst.FunctionDef)
        if plan.function is not None:
            builder = plan.function.with_changes(
                name=template.name,
                params=template.params,
                decorators=[],
                body=plan.function.body.with_changes(body=body),
            )
            if plan.function.name.value != builder_name:
                self.note(
                    self.line(plan.function),
                    f"function {plan.function.name.value}() -> "
                    f"{builder_name}({parameters}), the builder the platform calls",
                )
        else:
            builder = template.with_changes(body=template.body.with_changes(body=body))

        # Module level: docstring, imports, constants, HPARAMS, functions (the builder last unless it was one).
        kept = {id(stmt) for stmt in sl.module} | {id(stmt) for stmt in self.revived}
        star_modules = set(self.reader.star_names.values())
        for stmt in self.module_body.stmts:
            small = stmt.node.body[0] if isinstance(stmt.node, cst.SimpleStatementLine) else None
            if (
                isinstance(small, cst.ImportFrom)
                and isinstance(small.names, cst.ImportStar)
                and (small.module is not None and cc.canonical_name(_code(small.module)) in star_modules)
            ):
                kept.add(id(stmt))
        docstring = self.module.body[0] if self.module.body and _is_docstring(self.module.body[0]) else None
        imports: list[cst.BaseStatement] = []
        constants: list[cst.BaseStatement] = []
        functions: list[cst.BaseStatement] = []
        builder_placed = False
        for stmt in self.module_body.stmts:
            node = stmt.node
            if node is plan.function:
                functions.append(builder)
                builder_placed = True
                continue
            if id(stmt) not in kept or node is docstring:
                continue
            if _is_import(node):
                imports.append(self.modern_import(node.visit(rewriter), stmt.line))
            elif isinstance(node, cst.FunctionDef | cst.ClassDef):
                functions.append(node.visit(rewriter))
            else:
                constants.append(node.visit(rewriter))
        if not builder_placed:
            functions.append(builder)
        imports = [cst.parse_statement(f"{text}\n") for text in self.added_imports] + imports

        def assemble(import_nodes: list[cst.BaseStatement]) -> cst.Module:
            statements: list[cst.BaseStatement] = []
            if docstring is not None:
                statements.append(_with_leading(docstring, []))
            groups = [import_nodes, constants, [self.hparams_statement()], functions]
            for number, group in enumerate(groups):
                for position, node in enumerate(group):
                    comments = _strip_blank_lines(getattr(node, "leading_lines", []))
                    blank = (
                        []
                        if not statements
                        else ([_blank()] * (2 if number == 3 else 1) if position == 0 or number == 3 else [])
                    )
                    statements.append(_with_leading(node, [*blank, *comments]))
            return self.module.with_changes(body=statements, footer=[])

        draft = assemble(imports)
        used = {name for node in draft.body if not _is_import(node) for name in _names_used(node)}
        pruned: list[cst.BaseStatement] = []
        dropped_names: list[str] = []
        for node in imports:
            assert isinstance(node, cst.SimpleStatementLine)
            kept_node = self.prune_imports(node, used)
            before = _bound_names(node)
            after = _bound_names(kept_node) if kept_node is not None else set()
            dropped_names += sorted(before - after)
            if kept_node is not None:
                pruned.append(kept_node)
        emitted = {id(stmt.node) for stmt in self.module_body.stmts if id(stmt) in kept}
        for stmt in self.module_body.stmts:
            if _is_import(stmt.node) and id(stmt.node) not in emitted and not stmt.parents:
                dropped_names += sorted(_bound_names(stmt.node))
        if dropped_names:
            self.note(None, f"removed imports that only the removed code used: {', '.join(dropped_names)}")
        final = assemble(pruned)
        final = final.with_changes(body=[self._prune_builder_imports(node, used) for node in final.body])
        return final.code

    def _prune_builder_imports(self, node: cst.BaseStatement, used: set[str]) -> cst.BaseStatement:
        if not isinstance(node, cst.FunctionDef) or not isinstance(node.body, cst.IndentedBlock):
            return node
        inner = []
        for statement in node.body.body:
            if _is_import(statement):
                assert isinstance(statement, cst.SimpleStatementLine)
                kept = self.prune_imports(statement, used)
                if kept is not None:
                    inner.append(kept)
            else:
                inner.append(statement)
        return node.with_changes(body=node.body.with_changes(body=inner))

    # --------------------------------------------------------------------------------------- checking

    def validate(self, text: str) -> cc.CheckResult:
        """The output must compile, define every name it reads, and pass the contract check."""
        try:
            ast.parse(text)
        except SyntaxError as error:
            raise _Refusal(
                None,
                f"adapt produced code that does not compile ({error.msg}, line {error.lineno}); "
                "this is a bug in adapt: please report it with the script",
            ) from None
        undefined = [name for name in _undefined_names(text) if name not in self.reader.star_names]
        if undefined:
            raise _Refusal(
                None,
                "the model needs " + ", ".join(f"`{name}`" for name in undefined) + ", which "
                "the script computes in code adapt removed: define them as constants in the "
                "script and run adapt again",
            )
        result = cc.check_source(text, self.filename)
        if not result.ok:
            raise _Refusal(
                None,
                "the adapted file still breaks the contract: "
                + "; ".join(str(problem) for problem in result.problems),
            )
        return result

    def run(self) -> Adaptation:
        self.refuse_what_cannot_be_adapted()
        candidates = self.candidates()
        if not candidates:
            raise _Refusal(
                None,
                "adapt found no model: it looks for a keras.Sequential or keras.Model "
                "(functional API), a Keras application, or a scikit-learn estimator or Pipeline",
            )
        plans = {id(candidate): self.plan(candidate) for candidate in candidates}
        slices = {id(candidate): self.slice(plans[id(candidate)]) for candidate in candidates}
        inside: set[int] = set()
        for outer in candidates:
            covered = {id(stmt) for stmt in slices[id(outer)].builder} | {
                id(stmt) for stmt in slices[id(outer)].module
            }
            for other in candidates:
                if other is not outer and id(other.stmt) in covered:
                    inside.add(id(other))
        models = [candidate for candidate in candidates if id(candidate) not in inside]
        if len(models) > 1:
            listed = ", ".join(f"{model.label} at line {model.stmt.line}" for model in models)
            raise _Refusal(
                models[1].stmt.line,
                f"the script builds {len(models)} models ({listed}); pushtrain "
                "trains one model per file: keep the one to train and remove the others (or give "
                "each its own repository)",
            )
        plan = plans[id(models[0])]
        sl = slices[id(models[0])]
        self.whole_loops = sl.whole
        if tweak.HPARAMS_NAME in self.source:
            try:
                # A file that already has HPARAMS keeps its knobs: its code may read them from hp.
                self.knobs.update(tweak.read_hparams(self.source))
            except tweak.TweakError:
                pass
        if plan.unwrapped:
            self.note(
                plan.candidate.stmt.line,
                f"{plan.unwrapped} -> its estimator: pushtrain's tweak loop "
                "searches the hyperparameters itself (the grid is not carried over)",
            )
        if plan.candidate.framework == KERAS.name:
            self.adapt_keras(plan, sl)
            self.fit_knobs(plan)
        else:
            self.adapt_sklearn(plan, sl)
        self.resolve_values(plan, sl)
        self.leftover_slots(plan, sl)
        if self.problems:
            raise AdaptRefused(self.filename, self.problems)
        self.removed_notes(plan, sl)
        dataset, dataset_note = self.dataset()
        text = self.emit(plan, sl)
        checked = self.validate(text)
        if plan.candidate.framework == KERAS.name and checked.kind is not None:
            self.kind = checked.kind  # conv layers may sit in a helper function the builder calls
        return Adaptation(
            filename=self.filename,
            source=self.source,
            adapted=text,
            kind=self.kind,
            framework=plan.candidate.framework,
            hparams=dict(tweak.read_hparams(text)),
            changes=tuple(sorted(self.changes, key=lambda change: (change.line or 0,))),
            dataset=dataset,
            dataset_note=dataset_note,
        )


def _base_of(node: cst.CSTNode) -> cst.CSTNode:
    while isinstance(node, cst.Attribute | cst.Subscript | cst.Call):
        node = node.value if not isinstance(node, cst.Call) else node.func
    return node


def _is_import(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.SimpleStatementLine) and all(
        isinstance(small, cst.Import | cst.ImportFrom) for small in node.body
    )


def _is_constant_statement(stmt: _Stmt, reading: _Reading) -> bool:
    """``NAME = <literal expression>`` (or a tuple of names): safe to keep as it is."""
    node = stmt.node
    if not isinstance(node, cst.SimpleStatementLine) or len(node.body) != 1:
        return False
    small = node.body[0]
    if not isinstance(small, cst.Assign | cst.AnnAssign) or small.value is None:
        return False
    targets = [target.target for target in small.targets] if isinstance(small, cst.Assign) else [small.target]
    if not all(_is_name_target(target) for target in targets):
        return False
    return isinstance(reading.evaluate(small.value, stmt), _Const) and not any(
        isinstance(child, cst.Call) for child in reading.walk(small.value)
    )


# --------------------------------------------------------------------------------------------------------
# Helpers of the adapter
# --------------------------------------------------------------------------------------------------------

# A folder of the model repository as a data set (pushtrain.datasets' `repo:` sources).
REPO_DATASET_PREFIX = "repo:"


@dataclass
class _ListOp:
    """Changes to the elements of one ``Sequential([...])`` list, applied together."""

    remove: set[int] = field(default_factory=set)
    insert: dict[int, list[cst.BaseExpression]] = field(default_factory=dict)
    star: tuple[int, int, int, str] | None = None  # (first, end, block length, loop header) of conv blocks


def _apply_list_op(original: cst.List, updated: cst.List, op: _ListOp) -> cst.List:
    elements = list(updated.elements)
    new: list[cst.BaseElement] = []
    for index, element in enumerate(elements):
        for value in op.insert.get(index, []):
            new.append(cst.Element(value=value, comma=element.comma))
        if op.star is not None and op.star[0] <= index < op.star[1]:
            if index == op.star[0]:
                new.append(_starred_blocks(original, elements, op.star))
            continue
        if index in op.remove:
            continue
        new.append(element)
    if new and elements and new[-1] is not elements[-1]:
        new[-1] = new[-1].with_changes(comma=elements[-1].comma)
    return updated.with_changes(elements=new)


def _starred_blocks(
    original: cst.List, elements: list[cst.BaseElement], star: tuple[int, int, int, str]
) -> cst.BaseElement:
    """``*[layer for block in range(hp["conv_blocks"]) for layer in (...)]`` with the first block's layers."""
    first, end, length, header = star
    blocks_key = re.search(r'hp\["([^"]+)"\]', header).group(1)  # type: ignore[union-attr]
    before = (
        elements[first - 1].comma.whitespace_after
        if first > 0 and isinstance(elements[first - 1].comma, cst.Comma)
        else original.lbracket.whitespace_after
    )
    indent = before.last_line.value if isinstance(before, cst.ParenthesizedWhitespace) else None
    names = [f"__pushtrain_layer_{position}__" for position in range(length)]
    if indent is None:
        text = f'*[layer for block in range(hp["{blocks_key}"]) for layer in ({", ".join(names)},)]'
    else:
        inner = indent + "    "
        text = "\n".join(
            [
                "*[",
                f"{inner}layer",
                f'{inner}for block in range(hp["{blocks_key}"])',
                f"{inner}for layer in (",
                *[f"{inner}    {name}," for name in names],
                f"{inner})",
                f"{indent}]",
            ]
        )
    parsed = cst.parse_expression(f"[{text}]")
    assert isinstance(parsed, cst.List)
    values = {name: elements[first + position].value for position, name in enumerate(names)}

    class Fill(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
            return values.get(updated_node.value, updated_node)

    starred = parsed.elements[0].visit(Fill())
    assert isinstance(starred, cst.StarredElement)
    return starred.with_changes(comma=elements[end - 1].comma)


def _without_keyword(call: cst.Call, keyword: str) -> cst.Call:
    kept = [
        argument for argument in call.args if argument.keyword is None or argument.keyword.value != keyword
    ]
    if len(kept) == len(call.args):
        return call
    if kept:
        kept[-1] = kept[-1].with_changes(comma=call.args[-1].comma)
    return call.with_changes(args=kept)


def _without_elements(node: cst.List | cst.Tuple, dropped: Sequence[int]) -> cst.List | cst.Tuple:
    kept = [element for index, element in enumerate(node.elements) if index not in dropped]
    if kept and node.elements and kept[-1] is not node.elements[-1]:
        kept[-1] = kept[-1].with_changes(comma=node.elements[-1].comma)
    return node.with_changes(elements=kept)


def _tidy_aliases(kept: list[cst.ImportAlias], original: Sequence[cst.ImportAlias]) -> list[cst.ImportAlias]:
    if kept and original and kept[-1] is not original[-1]:
        kept = [*kept[:-1], kept[-1].with_changes(comma=original[-1].comma)]
    return kept


def _names_used(node: cst.CSTNode) -> set[str]:
    """Every name written in ``node`` other than attribute names and keywords (imports are kept by these)."""
    found: set[str] = set()
    stack: list[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Name):
            found.add(current.value)
        elif isinstance(current, cst.Attribute):
            stack.append(current.value)
        elif isinstance(current, cst.Arg):
            stack.append(current.value)
        elif not isinstance(current, cst.Import | cst.ImportFrom):
            stack.extend(current.children)
    return found


def _bound_names(node: cst.BaseStatement | None) -> set[str]:
    return set(_binds(node)) if node is not None else set()


def _modern_module(path: str) -> str:
    """A module path as Keras 3 spells it: ``tensorflow.keras.layers.convolutional`` -> ``keras.layers``."""
    parts = path.split(".")
    if parts[0] == "tensorflow" and parts[1:2] == ["keras"]:
        parts = ["keras", *parts[2:]]
    elif parts[0] == "tensorflow" and parts[1:3] == ["python", "keras"]:
        parts = ["keras", *parts[3:]]
    elif parts[0] == "tf_keras":
        parts = ["keras", *parts[1:]]
    if parts[0] != "keras":
        return path
    if parts[1:2] == ["src"]:
        parts = ["keras", *parts[2:]]
    if len(parts) >= 3 and parts[1] == "layers" and parts[2] in cc.LEGACY_LAYER_MODULES:
        parts = ["keras", "layers"]
    elif parts[1:3] == ["utils", "np_utils"]:
        parts = ["keras", "utils"]
    elif parts[1:3] == ["optimizers", "legacy"]:
        parts = ["keras", "optimizers"]
    return ".".join(parts)


def _moved_module(module: str, name: str) -> tuple[str, str] | None:
    """``from keras.utils import np_utils``: a name that is itself a Keras 2 module -> (parent, new name)."""
    if module == "keras.utils" and name == "np_utils":
        return "keras", "utils"
    if module == "keras.layers" and name in cc.LEGACY_LAYER_MODULES:
        return "keras", "layers"
    if module == "keras.optimizers" and name == "legacy":
        return "keras", "optimizers"
    return None


def _is_literal_node(node: cst.BaseExpression) -> bool:
    try:
        ast.literal_eval(_code(node).strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def _same_value(first: Any, second: Any) -> bool:
    if type(first) is not type(second):
        return False
    if isinstance(first, list | tuple):
        return len(first) == len(second) and all(
            _same_value(a, b) for a, b in zip(first, second, strict=True)
        )
    return first == second


def _fits(kind: str, value: Any) -> bool:
    if kind == _FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == _INTEGER:
        return isinstance(value, int)
    if kind == _NUMBER:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, str)


def _example(name: str) -> str:
    examples = {
        "dense_units": "64",
        "filters": "32",
        "dropout": "0.25",
        "n_neighbors": "5",
        "C": "1.0",
        "alpha": "0.0001",
        "max_iter": "100",
        "n_estimators": "100",
        "max_depth": "10",
        "gamma": "0.001",
        "kernel": '"rbf"',
        "weights": '"uniform"',
        "random_state": "0",
    }
    return examples.get(name, "1")


def _keyword(node: cst.CSTNode) -> str:
    return {cst.For: "for", cst.If: "if", cst.While: "while", cst.With: "with", cst.Try: "try"}.get(
        type(node), "compound"
    )


def _undefined_names(text: str) -> list[str]:
    """Names the code reads that nothing defines (compiled into symbol tables, never run)."""
    import builtins

    table = symtable.symtable(text, "<adapted>", "exec")
    defined = {
        symbol.get_name() for symbol in table.get_symbols() if symbol.is_assigned() or symbol.is_imported()
    }
    defined |= set(dir(builtins)) | {"__name__", "__file__"}
    missing: set[str] = set()
    stack = [table]
    while stack:
        current = stack.pop()
        for symbol in current.get_symbols():
            name = symbol.get_name()
            if (
                symbol.is_referenced()
                and not symbol.is_assigned()
                and not symbol.is_imported()
                and (not symbol.is_parameter())
                and (current.get_type() == "module" or symbol.is_global())
                and name not in defined
            ):
                missing.add(name)
        stack.extend(current.get_children())
    return sorted(missing)


# --------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------


def adapt_source(source: str, filename: str = "model.py") -> Adaptation:
    """Adapt the text of a training script; nothing in it is imported or run.

    :raises AdaptRefused: with every reason, each at its line, when the script cannot be adapted.
    """
    # Only a file with HPARAMS and a builder can meet the contract already; the check is not free.
    has_builder = any(f"def {framework.builder}(" in source for framework in (KERAS, SCIKIT_LEARN))
    checked = cc.check_source(source, filename) if tweak.HPARAMS_NAME in source and has_builder else None
    if checked is not None and checked.ok:
        assert checked.kind is not None and checked.builder is not None
        framework = KERAS.name if checked.builder == KERAS.builder else SCIKIT_LEARN.name
        return Adaptation(
            filename,
            source,
            source,
            checked.kind,
            framework,
            dict(tweak.read_hparams(source)),
            (Change(None, "already meets the contract: nothing to change"),),
            None,
            f"the file does not load data itself; {CONFIG_FILE} names the data set",
        )
    try:
        adapter = _Adapter(source, filename)
        return adapter.run()
    except cc.ParseError as error:
        raise AdaptRefused(filename, [error.problem]) from None
    except _Refusal as refusal:
        raise AdaptRefused(filename, [refusal.problem]) from None
    except RecursionError:
        raise AdaptRefused(filename, [Problem(None, "the script is nested too deeply for adapt")]) from None


def adapt_file(path: str | os.PathLike[str]) -> Adaptation:
    """Read a script (as ``pushtrain detect`` does: size cap, encoding) and adapt it."""
    try:
        source = read_model_source(path)
    except DetectionError as error:
        raise AdaptRefused(str(path), [Problem(None, error.message)]) from None
    return adapt_source(source, str(path))


# The child of adapt_bounded: limit its own address space, then adapt and answer in JSON on stdout.
_CHILD_BOOTSTRAP = (
    "import json, resource, sys\n"
    "limit = int(sys.argv[2]) * 1024 * 1024\n"
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "from pushtrain import adapt\n"
    "try:\n"
    "    print(json.dumps(adapt.adapt_file(sys.argv[1]).to_json_dict()))\n"
    "except adapt.AdaptRefused as refusal:\n"
    "    print(json.dumps(refusal.to_json_dict()))\n"
)


def adapt_bounded(
    path: str | os.PathLike[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB
) -> Adaptation:
    """:func:`adapt_file` in a child process with a wall-time and an address-space limit.

    What the Airflow side calls: a huge or pathological file ends in an :class:`AdaptRefused` saying so,
    not in a hung or killed task. The child gets no environment but ``PATH`` (connection secrets stay here).

    :raises AdaptRefused: the script's reasons, or why the child gave no answer.
    """
    filename = str(path)
    environment = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": os.environ.get("PATH", "")}
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _CHILD_BOOTSTRAP, filename, str(memory_mb)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=environment,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AdaptRefused(
            filename,
            [
                Problem(
                    None,
                    f"adapt took longer than {timeout_s:g} s and was stopped; the "
                    "file is unusually large or complex: adapt it by hand",
                )
            ],
        ) from None
    try:
        payload = json.loads(completed.stdout)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("refused"):
        problems = [Problem(item.get("line"), str(item["message"])) for item in payload["problems"]]
        raise AdaptRefused(filename, problems)
    if isinstance(payload, dict) and "adapted" in payload:
        return Adaptation.from_json_dict(payload)
    last = (completed.stderr.strip().splitlines() or [f"exit status {completed.returncode}"])[-1]
    why = "it ran out of memory" if "MemoryError" in completed.stderr else f"it failed: {last}"
    raise AdaptRefused(filename, [Problem(None, f"adapt could not finish ({why}); adapt the file by hand")])


def config_with_dataset(text: str | None, dataset: str) -> tuple[str, str]:
    """``pushtrain.toml`` text that names ``dataset``, and what changed (empty if nothing did).

    A file without a ``dataset`` gets one (under ``[pushtrain]`` when it has that table); a file that
    already names a data set keeps its choice, which the message points out if it differs.
    """
    text = text or ""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{CONFIG_FILE} is not valid TOML: {error}") from None
    table = document.get("pushtrain", document)
    current = table.get("dataset") if isinstance(table, dict) else None
    if current == dataset:
        return text, ""
    if current is not None:
        return text, f"{CONFIG_FILE} already names dataset {current!r}; kept it (the script used {dataset!r})"
    line = f"dataset = {tweak.render_literal(dataset)}  # set by pushtrain adapt\n"
    if "pushtrain" in document:
        header = re.search(r"^\[pushtrain\][^\n]*\n", text, flags=re.MULTILINE)
        assert header is not None
        new = text[: header.end()] + line + text[header.end() :]
    else:
        prefix = text if not text or text.endswith("\n") else text + "\n"
        first_table = re.search(r"^\[", prefix, flags=re.MULTILINE)
        new = (
            prefix[: first_table.start()] + line + prefix[first_table.start() :]
            if first_table
            else prefix + line
        )
    return new, f"{CONFIG_FILE}: dataset = {dataset!r}"


def _write_atomically(path: Path, text: str) -> None:
    """Temp file in the same folder, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp's file is private (0600); the result gets the mode an overwritten file had, else the
        # mode a new file gets under the umask, so a container's user can still read it.
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m pushtrain adapt SCRIPT [-o OUT] [--config PATH | --no-config] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pushtrain adapt",
        description="Rewrite a plain Keras or scikit-learn training script into a model file that meets the "
        "contract. The script is parsed, never run.",
        epilog="Exit status: 0 adapted (or nothing to do), 1 refused (reasons on stderr, nothing written).",
    )
    parser.add_argument("script", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="write the adapted file here (default: print it)")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"the {CONFIG_FILE} to write the data set into "
        f"(default: {CONFIG_FILE} beside the output, or beside the script)",
    )
    parser.add_argument("--no-config", action="store_true", help=f"do not write {CONFIG_FILE}")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout instead")
    arguments = parser.parse_args(argv)
    try:
        adaptation = adapt_file(arguments.script)
    except AdaptRefused as refusal:
        if arguments.json:
            print(json.dumps(refusal.to_json_dict(), indent=2))
        print(refusal.report(), file=sys.stderr)
        return 1
    config_message = ""
    config_path = None
    if adaptation.dataset and not arguments.no_config:
        config_path = (
            arguments.config or (arguments.output or arguments.script).resolve().parent / CONFIG_FILE
        )
        try:
            existing = config_path.read_text(encoding="utf-8") if config_path.exists() else None
            config_text, config_message = config_with_dataset(existing, adaptation.dataset)
        except (OSError, ValueError) as error:
            print(f"{arguments.script}: cannot update {config_path}: {error}", file=sys.stderr)
            return 1
    if arguments.output is not None:
        _write_atomically(arguments.output, adaptation.adapted)
    if config_message and config_path is not None and config_text != (existing or ""):
        _write_atomically(config_path, config_text)
    if arguments.json:
        print(json.dumps(adaptation.to_json_dict(), indent=2))
    elif arguments.output is None:
        sys.stdout.write(adaptation.adapted)
    print(adaptation.report(), file=sys.stderr)
    if config_message:
        print(f"{arguments.script}: {config_message}", file=sys.stderr)
    elif not adaptation.dataset and adaptation.changed:
        print(
            f"{arguments.script}: name the data set in {CONFIG_FILE}: {adaptation.dataset_note}",
            file=sys.stderr,
        )
    return 0
