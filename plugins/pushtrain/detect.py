"""Detect the model kind of a user's model file by parsing it, never by running it.

A pushed model file is semi-trusted code: it may only run inside the training and evaluation containers.
The Airflow side therefore reads it with :mod:`ast` alone. Nothing in the file is imported or executed,
so a default argument such as ``__import__("os").system(...)`` stays inert text.

**What counts as evidence.** The kinds are those of the kinds table (``pushtrain.kinds``); each has its
rule in ``_RULES`` below (a kind without one is never detected: a repository of it sets ``kind`` in
``pushtrain.toml``). A name counts only where the code *uses* it and it resolves, through the file's own
imports and Python's scoping rules, to one of these:

==========  ===========================================================================================
kind        names
==========  ===========================================================================================
``cnn``     a Keras convolution layer (``Conv1D``/``Conv2D``/``Conv3D``, their ``Transpose`` forms,
            ``SeparableConv*``, ``DepthwiseConv*``, ``ConvLSTM*``, ``Convolution*``) from a ``layers``
            module of ``keras``, ``tensorflow.keras`` or ``tf_keras``
``linear``  anything from ``sklearn.linear_model``, and ``sklearn.svm.LinearSVC``
``knn``     ``KNeighborsClassifier``, ``RadiusNeighborsClassifier``, ``NearestCentroid`` from
            ``sklearn.neighbors``
``keras``   a Keras ``Dense`` layer (from a ``layers`` module, as for ``cnn``) in a file without a
            convolution layer: a file with both is ``cnn``
``svm``     ``SVC`` and ``NuSVC`` from ``sklearn.svm``
``forest``  ``RandomForestClassifier`` and ``ExtraTreesClassifier`` from ``sklearn.ensemble``, and the single
            trees ``DecisionTreeClassifier`` and ``ExtraTreeClassifier`` from ``sklearn.tree``
==========  ===========================================================================================

Other scikit-learn estimators (``GaussianNB``, gradient boosting, ``MLPClassifier``...) are no kind: their
knobs are not the knobs of any row, so the tweaks could not tune them. The message says so and what to do.

Resolution follows the imports wherever they are (module level or inside functions, as the templates
do), through aliases (``from sklearn import neighbors as nb`` then ``nb.KNeighborsClassifier``;
``import tensorflow as tf`` then ``tf.keras.layers.Conv2D``) and simple re-assignments
(``L = tf.keras.layers``) and star imports. A name defined by the file itself (a local ``class Conv2D``), an import that is
never used, and text in comments, strings or docstrings do not count. A name the file both imports and
rebinds counts as imported: conditional imports and fallbacks are common, and over-reporting ends in a
clear "found both" message rather than a wrong branch. Dynamic imports (``importlib``, ``__import__``)
are not followed; such a file sets ``kind`` in ``pushtrain.toml``.

Exactly one kind found gives a :class:`Detection` with its evidence; none or several raise a
:class:`DetectionError` that says what was found. Keras code with Dense layers only is ``keras``, not
``cnn``.

**Bounded.** :func:`detect_kind` is what the Airflow side calls: it parses in a child process with a
wall-time limit and an address-space limit, so a huge or pathologically nested file ends in a
:class:`DetectionError` instead of a hung or crashed task. :func:`detect_source` is the pure, in-process
analysis that the child runs. ``python -m pushtrain detect PATH`` (and ``python -m pushtrain.detect``)
prints the kind, or the reason on stderr.

Only the standard library and the kinds table are imported: the bounded child starts with nothing else.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tokenize
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pushtrain.kinds import KINDS

# Model files are code, not data: anything bigger is almost surely weights or a data set pasted in, and
# the parser's memory grows with the file.
MAX_MODEL_FILE_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512

_KERAS_ROOTS = frozenset({"keras", "tensorflow", "tf_keras"})
_CONV_LAYER_NAMES = frozenset(
    {
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "Convolution1D",
        "Convolution2D",
        "Convolution3D",
        "Convolution2DTranspose",
        "Convolution3DTranspose",
        "SeparableConv1D",
        "SeparableConv2D",
        "SeparableConvolution1D",
        "SeparableConvolution2D",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "ConvLSTM1D",
        "ConvLSTM2D",
        "ConvLSTM3D",
    }
)
_KNN_CLASSIFIER_NAMES = frozenset({"KNeighborsClassifier", "RadiusNeighborsClassifier", "NearestCentroid"})
_SVM_CLASSIFIER_NAMES = frozenset({"SVC", "NuSVC"})
_FOREST_CLASSIFIER_NAMES = frozenset({"RandomForestClassifier", "ExtraTreesClassifier"})
# Single trees share the forests' max_depth (and random_state); they have no n_estimators, so the strategies
# move only their depth. Gradient boosting is not here: it wants shallow trees, and the forest moves deepen.
_TREE_CLASSIFIER_NAMES = frozenset({"DecisionTreeClassifier", "ExtraTreeClassifier"})
# Modules of scikit-learn whose capitalised names are estimators (the model), as opposed to transformers
# and helpers; an unsupported one is named as such. contract_check reads the same set.
SKLEARN_ESTIMATOR_MODULES = frozenset(
    {
        "linear_model",
        "svm",
        "neighbors",
        "ensemble",
        "tree",
        "naive_bayes",
        "neural_network",
        "discriminant_analysis",
        "gaussian_process",
        "dummy",
        "semi_supervised",
        "multiclass",
        "calibration",
    }
)
# A kind found together with the kind that subsumes it is dropped: every CNN has Dense layers too.
_SUBSUMED_BY = {"keras": "cnn"}
# Libraries worth naming when no kind is found: they tell the user what we did see ("Dense only").
_ML_LIBRARY_ROOTS = frozenset(
    {"keras", "tensorflow", "tf_keras", "sklearn", "torch", "jax", "flax", "xgboost", "lightgbm", "catboost"}
)
_BUILTIN_NAMES = frozenset(dir(builtins))
_MAX_LISTED_FINDINGS = 5
# Bound on following `a = b.c` re-assignments, so that `a = b; b = a` cannot loop.
_MAX_ALIAS_DEPTH = 16

_WHAT_TO_DO = "set `kind` in pushtrain.toml to skip detection"

_KINDS_IN_WORDS = (
    "cnn (Keras convolution layers), keras (Keras Dense layers), linear (sklearn.linear_model, LinearSVC), "
    "knn (KNeighborsClassifier, RadiusNeighborsClassifier, NearestCentroid), svm (SVC, NuSVC) and forest "
    "(RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier, ExtraTreeClassifier)"
)


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One use of a library name that decided (or took part in) the detection."""

    qualified_name: str
    line: int

    def __str__(self) -> str:
        return f"{self.qualified_name} at line {self.line}"


@dataclass(frozen=True)
class Detection:
    """The one model kind found in a file, with every use that points to it (sorted by line)."""

    kind: str
    evidence: tuple[Evidence, ...]
    filename: str

    def to_json_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "filename": self.filename,
            "evidence": [
                {"qualified_name": item.qualified_name, "line": item.line} for item in self.evidence
            ],
        }

    @classmethod
    def from_json_dict(cls, payload: Mapping[str, object]) -> Detection:
        return cls(
            kind=str(payload["kind"]),
            filename=str(payload["filename"]),
            evidence=_evidence_from_json(payload.get("evidence", [])),
        )


class DetectionError(Exception):
    """The file's kind cannot be decided; the message says why and what to do.

    ``reason`` is a short machine-readable tag: ``no_kind``, ``ambiguous``, ``syntax``, ``unreadable``,
    ``too_large``, ``timeout``, ``memory``, ``nesting`` or ``crashed``. ``found`` maps each kind that
    was seen to its evidence (empty unless the reason is ``no_kind`` or ``ambiguous``).
    """

    def __init__(
        self, message: str, *, reason: str, found: Mapping[str, Sequence[Evidence]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.found: dict[str, tuple[Evidence, ...]] = {
            kind: tuple(items) for kind, items in (found or {}).items()
        }

    def to_json_dict(self) -> dict[str, object]:
        return {
            "error": self.message,
            "reason": self.reason,
            "found": {
                kind: [{"qualified_name": item.qualified_name, "line": item.line} for item in items]
                for kind, items in self.found.items()
            },
        }

    @classmethod
    def from_json_dict(cls, payload: Mapping[str, object]) -> DetectionError:
        found = payload.get("found") or {}
        return cls(
            str(payload["error"]),
            reason=str(payload.get("reason", "crashed")),
            found={str(kind): _evidence_from_json(items) for kind, items in dict(found).items()},
        )


def _evidence_from_json(items: object) -> tuple[Evidence, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(Evidence(str(item["qualified_name"]), int(item["line"])) for item in items)


# --------------------------------------------------------------------------------------------------------
# Which library names make a kind
# --------------------------------------------------------------------------------------------------------


def _is_keras_conv_layer(parts: Sequence[str]) -> bool:
    # keras.layers.Conv2D, tensorflow.keras.layers.Conv2D, keras.layers.convolutional.Conv2D,
    # keras.src.layers...: a Keras package, a `layers` module on the way, a convolution layer at the end.
    return (
        parts[0] in _KERAS_ROOTS
        and ("keras" in parts or parts[0] == "tf_keras")
        and "layers" in parts[:-1]
        and parts[-1] in _CONV_LAYER_NAMES
    )


def _is_keras_dense_layer(parts: Sequence[str]) -> bool:
    # keras.layers.Dense, tensorflow.keras.layers.Dense, keras.layers.core.Dense (Keras 2), ...
    return (
        parts[0] in _KERAS_ROOTS
        and ("keras" in parts or parts[0] == "tf_keras")
        and "layers" in parts[:-1]
        and parts[-1] == "Dense"
    )


def _is_support_vector_classifier(parts: Sequence[str]) -> bool:
    return list(parts[:2]) == ["sklearn", "svm"] and parts[-1] in _SVM_CLASSIFIER_NAMES


def _is_forest_classifier(parts: Sequence[str]) -> bool:
    return (list(parts[:2]) == ["sklearn", "ensemble"] and parts[-1] in _FOREST_CLASSIFIER_NAMES) or (
        list(parts[:2]) == ["sklearn", "tree"] and parts[-1] in _TREE_CLASSIFIER_NAMES
    )


def _is_linear_model(parts: Sequence[str]) -> bool:
    # Anything directly in sklearn.linear_model, and sklearn.svm.LinearSVC.
    return parts[0] == "sklearn" and (
        (parts[1] == "linear_model" and len(parts) == 3) or list(parts[1:]) == ["svm", "LinearSVC"]
    )


def _is_neighbours_classifier(parts: Sequence[str]) -> bool:
    return list(parts[:2]) == ["sklearn", "neighbors"] and parts[-1] in _KNN_CLASSIFIER_NAMES


# The detection rule of each kind in the kinds table: does a resolved dotted name (3+ parts) belong to it?
_RULES: dict[str, Callable[[Sequence[str]], bool]] = {
    "cnn": _is_keras_conv_layer,
    "linear": _is_linear_model,
    "knn": _is_neighbours_classifier,
    "keras": _is_keras_dense_layer,
    "svm": _is_support_vector_classifier,
    "forest": _is_forest_classifier,
}


def _kind_of_parts(parts: Sequence[str]) -> str | None:
    if len(parts) < 3:
        return None
    return next((kind for kind in KINDS if kind in _RULES and _RULES[kind](parts)), None)


def _match_kind(qualified_name: str) -> tuple[str, str] | None:
    """The kind and the matching name for a resolved use, e.g. ``layers.Conv2D.from_config`` → Conv2D."""
    parts = qualified_name.split(".")
    # Longest prefix first, so the evidence names the class and not a method called on it.
    for length in range(len(parts), 2, -1):
        kind = _kind_of_parts(parts[:length])
        if kind is not None:
            return kind, ".".join(parts[:length])
    return None


# --------------------------------------------------------------------------------------------------------
# Scopes, bindings and uses, collected in one pass over the tree
# --------------------------------------------------------------------------------------------------------

_MODULE, _FUNCTION, _CLASS, _COMPREHENSION = "module", "function", "class", "comprehension"


@dataclass(frozen=True, eq=False, slots=True)
class _Use:
    """A name read by the code, with the attributes read from it: ``tf.keras.layers.Conv2D``."""

    scope: _Scope
    name: str
    attributes: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class _Binding:
    """How a statement binds a name: to a module path (import), to another use (alias) or locally."""

    line: int
    imported: str | None = None
    alias_of: _Use | None = None

    @property
    def is_import_like(self) -> bool:
        return self.imported is not None or self.alias_of is not None


@dataclass(eq=False)
class _Scope:
    kind: str
    parent: _Scope | None
    bindings: dict[str, list[_Binding]] = field(default_factory=dict)
    star_imports: list[_Binding] = field(default_factory=list)
    global_names: set[str] = field(default_factory=set)
    nonlocal_names: set[str] = field(default_factory=set)

    def module(self) -> _Scope:
        scope = self
        while scope.parent is not None:
            scope = scope.parent
        return scope


class _Collector:
    """Walks the tree iteratively (deep but valid trees must not hit Python's recursion limit).

    It records every binding per scope and every use; resolution happens afterwards, when all bindings
    are known (a function may use a name the module imports further down).
    """

    def __init__(self) -> None:
        self.module_scope = _Scope(_MODULE, parent=None)
        self.uses: list[_Use] = []
        self._scopes: list[_Scope] = [self.module_scope]
        self._pending: list[tuple[ast.AST, _Scope]] = []

    def run(self, tree: ast.Module) -> None:
        self._pending.append((tree, self.module_scope))
        while self._pending:
            node, scope = self._pending.pop()
            self._visit(node, scope)
        self._apply_declarations()

    def _apply_declarations(self) -> None:
        """Move what ``global`` names bind to the module; drop what ``nonlocal`` names rebind.

        Done after the walk because the walk's order is not the source order, and a declaration applies
        to the whole function whatever its position.
        """
        for scope in self._scopes:
            if scope.kind == _MODULE:
                continue
            for name in scope.global_names & scope.bindings.keys():
                self.module_scope.bindings.setdefault(name, []).extend(scope.bindings.pop(name))
            for name in scope.nonlocal_names & scope.bindings.keys():
                # The name belongs to an enclosing function; rebinding it there imports nothing new.
                del scope.bindings[name]

    def _new_scope(self, kind: str, parent: _Scope) -> _Scope:
        scope = _Scope(kind, parent=parent)
        self._scopes.append(scope)
        return scope

    # -- helpers ---------------------------------------------------------------------------------------

    def _push(self, nodes: Iterable[ast.AST | None], scope: _Scope) -> None:
        self._pending.extend((node, scope) for node in nodes if node is not None)

    def _bind(self, scope: _Scope, name: str, binding: _Binding) -> None:
        scope.bindings.setdefault(name, []).append(binding)

    def _bind_local(self, scope: _Scope, name: str, line: int) -> None:
        self._bind(scope, name, _Binding(line=line))

    def _bind_arguments(self, arguments: ast.arguments, scope: _Scope, line: int) -> None:
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [arg for arg in (arguments.vararg, arguments.kwarg) if arg is not None]
        for argument in every:
            self._bind_local(scope, argument.arg, line)

    def _push_argument_outer_parts(self, arguments: ast.arguments, scope: _Scope) -> None:
        # Defaults and annotations are evaluated where the function is defined, not inside it.
        self._push(arguments.defaults, scope)
        self._push(arguments.kw_defaults, scope)
        every = [
            *arguments.posonlyargs,
            *arguments.args,
            *arguments.kwonlyargs,
            arguments.vararg,
            arguments.kwarg,
        ]
        self._push((arg.annotation for arg in every if arg is not None), scope)

    # -- the visit -------------------------------------------------------------------------------------

    def _visit(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self._bind(scope, alias.asname, _Binding(node.lineno, imported=alias.name))
                else:
                    # `import tensorflow.keras` binds `tensorflow`, and the code says the rest.
                    top = alias.name.split(".")[0]
                    self._bind(scope, top, _Binding(node.lineno, imported=top))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.level or not node.module:
                    # A relative import is the user's own code, never the library.
                    if alias.name != "*":
                        self._bind_local(scope, alias.asname or alias.name, node.lineno)
                elif alias.name == "*":
                    scope.star_imports.append(_Binding(node.lineno, imported=node.module))
                else:
                    qualified = f"{node.module}.{alias.name}"
                    self._bind(scope, alias.asname or alias.name, _Binding(node.lineno, imported=qualified))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._bind_local(scope, node.name, node.lineno)
            self._push(node.decorator_list, scope)
            self._push_argument_outer_parts(node.args, scope)
            self._push([node.returns], scope)
            inner = self._new_scope(_FUNCTION, scope)
            self._bind_arguments(node.args, inner, node.lineno)
            self._push(node.body, inner)
        elif isinstance(node, ast.Lambda):
            self._push(node.args.defaults, scope)
            self._push(node.args.kw_defaults, scope)
            inner = self._new_scope(_FUNCTION, scope)
            self._bind_arguments(node.args, inner, node.lineno)
            self._push([node.body], inner)
        elif isinstance(node, ast.ClassDef):
            self._bind_local(scope, node.name, node.lineno)
            self._push(node.decorator_list, scope)
            self._push(node.bases, scope)
            self._push((keyword.value for keyword in node.keywords), scope)
            self._push(node.body, self._new_scope(_CLASS, scope))
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = self._new_scope(_COMPREHENSION, scope)
            for position, generator in enumerate(node.generators):
                # The first iterable is evaluated in the enclosing scope, the rest inside the comprehension.
                self._push([generator.iter], scope if position == 0 else inner)
                self._push([generator.target, *generator.ifs], inner)
            if isinstance(node, ast.DictComp):
                self._push([node.key, node.value], inner)
            else:
                self._push([node.elt], inner)
        elif isinstance(node, ast.Global):
            scope.global_names.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            scope.nonlocal_names.update(node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and self._visit_alias_assignment(node, scope):
            pass
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.uses.append(_Use(scope, node.id, (), node.lineno))
            else:
                self._bind_local(scope, node.id, node.lineno)
        elif isinstance(node, ast.Attribute):
            self._visit_attribute(node, scope)
        else:
            if isinstance(node, ast.ExceptHandler) and node.name:
                self._bind_local(scope, node.name, node.lineno)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                self._bind_local(scope, node.name, node.lineno)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                self._bind_local(scope, node.rest, node.lineno)
            self._push(ast.iter_child_nodes(node), scope)

    def _visit_attribute(self, node: ast.Attribute, scope: _Scope) -> None:
        dotted = _dotted_name(node)
        if dotted is None:
            # `make().layers.Conv2D`: the base is an expression, whose own names still count.
            base: ast.expr = node
            while isinstance(base, ast.Attribute):
                base = base.value
            self._push([base], scope)
            return
        name, attributes = dotted
        if not isinstance(node.ctx, ast.Load):
            # `obj.attr = value` reads `obj`; the last attribute is written, not used.
            attributes = attributes[:-1]
        self.uses.append(_Use(scope, name, attributes, node.lineno))

    def _visit_alias_assignment(self, node: ast.Assign | ast.AnnAssign, scope: _Scope) -> bool:
        """``L = tf.keras.layers``: bind ``L`` to what the right-hand side resolves to."""
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1:
                return False
            target = node.targets[0]
        else:
            target = node.target
        value = node.value
        if not isinstance(target, ast.Name) or value is None:
            return False
        dotted = _dotted_name(value)
        if dotted is None:
            return False
        if isinstance(node, ast.AnnAssign):
            self._push([node.annotation], scope)
        right_hand_side = _Use(scope, dotted[0], dotted[1], value.lineno)
        # The right-hand side is a use in its own right: `Conv = layers.Conv2D` uses Conv2D.
        self.uses.append(right_hand_side)
        self._bind(scope, target.id, _Binding(node.lineno, alias_of=right_hand_side))
        return True


def _dotted_name(node: ast.expr) -> tuple[str, tuple[str, ...]] | None:
    """``a.b.c`` as ``("a", ("b", "c"))``; None when the chain does not start at a plain name."""
    attributes: list[str] = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return node.id, tuple(reversed(attributes))


class _Resolver:
    """Every qualified name a use may stand for, through imports and aliases; empty if none.

    Results are cached per use, so a hostile file with many re-assignments of many names stays linear.
    Chains of more than ``_MAX_ALIAS_DEPTH`` re-assignments are not followed further (no real model
    file has them).
    """

    def __init__(self) -> None:
        self._cache: dict[_Use, frozenset[str]] = {}

    def resolve(self, use: _Use, depth: int = 0) -> frozenset[str]:
        cached = self._cache.get(use)
        if cached is not None:
            return cached
        if depth > _MAX_ALIAS_DEPTH:
            return frozenset()
        resolved: set[str] = set()
        for binding in _import_bindings_for(use):
            if binding.imported is not None:
                resolved.add(".".join((binding.imported, *use.attributes)))
            elif binding.alias_of is not None and binding.alias_of is not use:  # `x = x.y` is no alias
                targets = self.resolve(binding.alias_of, depth + 1)
                resolved.update(".".join((target, *use.attributes)) for target in targets)
        self._cache[use] = frozenset(resolved)
        return self._cache[use]


def _import_bindings_for(use: _Use) -> list[_Binding]:
    """The import-like bindings of the use's name in the scope that owns the name (Python's LEGB rule).

    A use directly in the owning scope sees the bindings made up to its line; a use inside a function
    runs later, when the enclosing scope has made all of its bindings.
    """
    scope: _Scope | None = use.scope
    deferred = False
    starting_scope = use.scope
    while scope is not None:
        if use.name in scope.global_names and scope.kind != _MODULE:
            scope, deferred = scope.module(), True
            continue
        skip_class = scope.kind == _CLASS and scope is not starting_scope  # methods do not see class names
        if not skip_class and use.name not in scope.nonlocal_names and use.name in scope.bindings:
            return _visible(scope.bindings[use.name], use.line, deferred)
        if scope.kind == _MODULE:
            if use.name in _BUILTIN_NAMES:
                # `print` after `from sklearn.neighbors import *` is the builtin, not sklearn's.
                return []
            stars = _visible(scope.star_imports, use.line, deferred)
            return [_Binding(star.line, imported=f"{star.imported}.{use.name}") for star in stars]
        if scope.kind == _FUNCTION:
            deferred = True
        scope = scope.parent
    return []


def _visible(bindings: Iterable[_Binding], line: int, deferred: bool) -> list[_Binding]:
    return [binding for binding in bindings if binding.is_import_like and (deferred or binding.line <= line)]


# --------------------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Findings:
    by_kind: dict[str, tuple[Evidence, ...]]
    # Uses of ML libraries that are not a kind (Dense, Sequential, RandomForestClassifier, torch...).
    other_ml_names: tuple[Evidence, ...]


def _find(tree: ast.Module) -> _Findings:
    collector = _Collector()
    collector.run(tree)
    resolver = _Resolver()
    by_kind: dict[str, set[Evidence]] = {}
    first_other_use: dict[str, Evidence] = {}
    for use in collector.uses:
        for qualified_name in resolver.resolve(use):
            match = _match_kind(qualified_name)
            if match is not None:
                kind, matched_name = match
                by_kind.setdefault(kind, set()).add(Evidence(matched_name, use.line))
            elif qualified_name.split(".")[0] in _ML_LIBRARY_ROOTS:
                earlier = first_other_use.get(qualified_name)
                if earlier is None or use.line < earlier.line:
                    first_other_use[qualified_name] = Evidence(qualified_name, use.line)
    for weaker, stronger in _SUBSUMED_BY.items():
        if stronger in by_kind:
            by_kind.pop(weaker, None)
    return _Findings(
        by_kind={kind: _sorted(by_kind[kind]) for kind in KINDS if kind in by_kind},
        other_ml_names=_sorted(first_other_use.values()),
    )


def _sorted(evidence: Iterable[Evidence]) -> tuple[Evidence, ...]:
    return tuple(sorted(evidence, key=lambda item: (item.line, item.qualified_name)))


def _describe(evidence: Sequence[Evidence]) -> str:
    more = len(evidence) - 1
    return f"{evidence[0]}" + (f" and {more} more" if more else "")


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _nesting_error(filename: str) -> DetectionError:
    return DetectionError(
        f"{filename}: the code is nested too deeply to parse; flatten the deepest expressions or {_WHAT_TO_DO}",
        reason="nesting",
    )


def _memory_error(filename: str, memory_mb: int | None = None) -> DetectionError:
    # CPython's parser also reports an overflow of its own stack (deep nesting) as MemoryError; the
    # bounded child tells the two apart (see main) and the message covers both where it cannot.
    limit = f" (limit: {memory_mb} MiB)" if memory_mb is not None else ""
    return DetectionError(
        f"{filename}: parsing ran out of memory{limit}: the file is too large or nested too deeply; "
        f"simplify it{', raise `memory_mb`' if memory_mb is not None else ''} or {_WHAT_TO_DO}",
        reason="memory",
    )


def detect_source(source: str, filename: str) -> Detection:
    """Decide the model kind of ``source`` by parsing it; ``filename`` is used in messages only.

    Pure and in-process: nothing is imported or executed. It is not bounded in time or memory, so code
    that handles untrusted files calls :func:`detect_kind`, which runs this in a limited child process.

    :raises DetectionError: on a syntax error, or when no kind or more than one kind is found.
    """
    if "\x00" in source:
        # Python versions disagree on the exception (ValueError or SyntaxError); the answer is the same.
        raise DetectionError(
            f"{filename}: the file contains null bytes; the model file must be Python source text",
            reason="unreadable",
        )
    try:
        with warnings.catch_warnings():
            # SyntaxWarnings (invalid escape sequences...) are the user's business, not detection's.
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=filename)
        findings = _find(tree)
    except SyntaxError as error:
        line = error.lineno if error.lineno is not None else "?"
        text = (error.text or "").strip()
        shown = f" ({text[:80]}{'...' if len(text) > 80 else ''})" if text else ""
        raise DetectionError(
            f"{filename}, line {line}: {error.msg}{shown}. pushtrain could not parse the model file: "
            f"fix the syntax error (`python -m py_compile {filename}` shows it) and push again",
            reason="syntax",
        ) from None
    except RecursionError:
        raise _nesting_error(filename) from None
    except MemoryError:
        raise _memory_error(filename) from None

    if len(findings.by_kind) == 1:
        ((kind, evidence),) = findings.by_kind.items()
        return Detection(kind=kind, evidence=evidence, filename=filename)

    if findings.by_kind:
        described = [f"{kind} ({_describe(evidence)})" for kind, evidence in findings.by_kind.items()]
        both = "both " if len(described) == 2 else ""
        raise DetectionError(
            f"{filename}: found {both}{_join(described)}; pushtrain needs exactly one model kind per file: "
            "split the file or set `kind` in pushtrain.toml",
            reason="ambiguous",
            found=findings.by_kind,
        )

    seen = findings.other_ml_names
    estimators = [item for item in seen if _is_sklearn_estimator(item.qualified_name)]
    if estimators:
        first = estimators[0]
        name = first.qualified_name.split(".")[-1]
        raise DetectionError(
            f"{filename}: no model kind found: {first} is a scikit-learn estimator that no kind of pushtrain "
            f"tunes. The kinds are {_KINDS_IN_WORDS}. Use one of those estimators (the templates in "
            "include/model_templates/ show each; a RandomForestClassifier or ExtraTreesClassifier takes the "
            "place of gradient boosting, a Keras network of Dense layers that of an MLPClassifier). Setting "
            "`kind` in pushtrain.toml trains the file as it is, but the tweaks then move only that kind's "
            f"knobs by that kind's rules, which were not made for the {name}: they may find nothing to move "
            "or move it the wrong way",
            reason="no_kind",
        )
    if seen:
        listed = ", ".join(str(item) for item in seen[:_MAX_LISTED_FINDINGS])
        if len(seen) > _MAX_LISTED_FINDINGS:
            listed += f" and {len(seen) - _MAX_LISTED_FINDINGS} more"
        what_was_seen = f"it uses only {listed}"
    else:
        what_was_seen = "it uses no Keras or scikit-learn name at all"
    raise DetectionError(
        f"{filename}: no model kind found: no Keras convolution (cnn) or Dense layer (keras), scikit-learn "
        "linear model (linear), neighbours classifier (knn), SVC (svm) or forest or tree (forest) is used; "
        f"{what_was_seen}. Start from a template in include/model_templates/ or {_WHAT_TO_DO}",
        reason="no_kind",
    )


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


def _is_sklearn_estimator(qualified_name: str) -> bool:
    parts = qualified_name.split(".")
    return (
        len(parts) == 3
        and parts[0] == "sklearn"
        and parts[1] in SKLEARN_ESTIMATOR_MODULES
        and parts[2][:1].isupper()
    )


def _check_model_file(path: Path) -> None:
    """Fail early, with a clear message, on a missing, special or oversized file."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise DetectionError(f"{path}: no such model file", reason="unreadable") from None
    except OSError as error:
        raise DetectionError(
            f"{path}: cannot read the model file: {error.strerror}", reason="unreadable"
        ) from None
    if not stat.S_ISREG(status.st_mode):
        # A FIFO or device would block or never end; a directory is a wrong `entry` setting.
        raise DetectionError(f"{path}: not a regular file", reason="unreadable")
    if status.st_size > MAX_MODEL_FILE_BYTES:
        raise DetectionError(
            f"{path}: the model file is {status.st_size / 1024 / 1024:.1f} MiB; pushtrain parses model files "
            f"up to {MAX_MODEL_FILE_BYTES // 1024 // 1024} MiB: keep data and weights out of the model file "
            f"or {_WHAT_TO_DO}",
            reason="too_large",
        )


def read_model_source(path: str | os.PathLike[str]) -> str:
    """The text of a model file, decoded as Python decodes source (UTF-8, BOM or a PEP 263 cookie).

    :raises DetectionError: when the file is missing, not a regular file, over the size cap, or not
        decodable text.
    """
    model_path = Path(path)
    _check_model_file(model_path)
    try:
        with model_path.open("rb") as handle:
            # Read one byte past the cap: the file may have grown since the size check.
            raw = handle.read(MAX_MODEL_FILE_BYTES + 1)
    except OSError as error:
        raise DetectionError(
            f"{path}: cannot read the model file: {error.strerror}", reason="unreadable"
        ) from None
    if len(raw) > MAX_MODEL_FILE_BYTES:
        raise DetectionError(f"{path}: the model file grew past the size cap while read", reason="too_large")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding)
    except SyntaxError as error:
        # An unknown or inconsistent `# -*- coding: ... -*-` declaration.
        raise DetectionError(f"{path}: {error.msg}; save the file as UTF-8", reason="unreadable") from None
    except UnicodeDecodeError as error:
        raise DetectionError(
            f"{path}: not valid {error.encoding} text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "save the model file as UTF-8",
            reason="unreadable",
        ) from None


def detect_file(path: str | os.PathLike[str]) -> Detection:
    """Read and analyse a model file in this process, without time or memory bounds.

    For trusted callers (tests, the bounded child). The Airflow side calls :func:`detect_kind`.
    """
    return detect_source(read_model_source(path), str(path))


# --------------------------------------------------------------------------------------------------------
# The bounded entry point
# --------------------------------------------------------------------------------------------------------

# `-I -S` keeps the caller's environment, user site and site-packages out of the child; its sys.path gets
# the plugins folder only, for this module and the kinds table (both standard library only).
_CHILD_BOOTSTRAP = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from pushtrain.detect import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
_PLUGINS_DIR = Path(__file__).resolve().parents[1]


def _child_environment() -> dict[str, str]:
    # The Airflow task environment holds connection secrets (AIRFLOW_CONN_*); the child needs none of it.
    return {
        name: os.environ[name] for name in ("PATH", "LD_LIBRARY_PATH", "SYSTEMROOT") if name in os.environ
    }


def _peak_memory_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _limit_own_resources(memory_mb: int) -> None:
    """Cap this process's address space (so a blow-up is a MemoryError, not the host's OOM killer).

    The child calls this on itself before it reads the model file, which bounds the parse exactly as a
    ``preexec_fn`` would, without ``preexec_fn``'s risk of deadlocking a threaded parent (Airflow's task
    processes run threads).
    """
    import resource  # Unix only; imported here so that importing this module works anywhere.

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # A crash (segfault from pathological input) should leave no core file behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def detect_kind(
    path: str | os.PathLike[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> Detection:
    """Detect the model kind of the file at ``path``, parsing it in a time- and memory-limited child.

    :param path: the model file (for example ``<checkout>/model.py``).
    :param timeout_s: wall-clock seconds the child may take, Python's start-up included.
    :param memory_mb: address-space limit of the child, in MiB.
    :raises DetectionError: with a message saying what was found or what went wrong and what to do.
    """
    model_path = Path(path)
    # Cheap checks first: a missing or oversized file needs no process.
    _check_model_file(model_path)
    command = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _CHILD_BOOTSTRAP,
        str(_PLUGINS_DIR),
        "--in-process",
        "--json",
        "--memory-mb",
        str(memory_mb),
        "--",
        str(model_path),
    ]
    try:
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=_child_environment(),
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DetectionError(
            f"{model_path}: parsing took longer than {timeout_s:g} s and was stopped; the file is unusually "
            f"large or complex: simplify it or {_WHAT_TO_DO}",
            reason="timeout",
        ) from None
    except OSError as error:
        raise DetectionError(
            f"{model_path}: could not start the parser process ({sys.executable}): {error}", reason="crashed"
        ) from None
    return _result_from_child(model_path, completed, memory_mb)


def _result_from_child(
    model_path: Path, completed: subprocess.CompletedProcess[str], memory_mb: int
) -> Detection:
    try:
        payload = json.loads(completed.stdout)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        if completed.returncode == 0 and "kind" in payload:
            return Detection.from_json_dict(payload)
        if "error" in payload:
            raise DetectionError.from_json_dict(payload)

    # No answer: the child died before it could write one.
    stderr = completed.stderr.strip()
    if completed.returncode < 0:
        signal_number = -completed.returncode
        if signal_number == signal.SIGKILL:
            # Our own timeout is handled by the caller; any other SIGKILL is the OOM killer (or an operator).
            raise _memory_error(str(model_path), memory_mb)
        try:
            signal_name = signal.Signals(signal_number).name
        except ValueError:
            signal_name = f"signal {signal_number}"
        raise DetectionError(
            f"{model_path}: the parser process crashed ({signal_name}), most likely on pathologically deep "
            f"nesting; simplify the file or {_WHAT_TO_DO}",
            reason="crashed",
        )
    if "MemoryError" in stderr:
        raise _memory_error(str(model_path), memory_mb)
    if "RecursionError" in stderr:
        raise _nesting_error(str(model_path))
    last_line = stderr.splitlines()[-1] if stderr else "no output"
    raise DetectionError(
        f"{model_path}: the parser process failed (exit {completed.returncode}): {last_line}",
        reason="crashed",
    )


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def _detect_in_limited_child(path: str, memory_mb: int) -> Detection:
    """The child's side of :func:`detect_kind`: analyse here, and name a blow-up for what it was."""
    try:
        return detect_file(path)
    except DetectionError as error:
        if error.reason != "memory":
            raise
        # A parser stack overflow (deep nesting) raises MemoryError long before the address space is
        # used up; running out of the real limit leaves the peak near it.
        if _peak_memory_mb() < memory_mb / 4:
            raise _nesting_error(path) from None
        raise _memory_error(path, memory_mb) from None
    except RecursionError:
        # Raised outside the parse (reading, building the answer): still an answer, not a traceback.
        raise _nesting_error(path) from None
    except MemoryError:
        raise _memory_error(path, memory_mb) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pushtrain detect",
        description=f"Print the model kind ({', '.join(KINDS)}) of a model file, found by parsing it only.",
        epilog="Exit status: 0 kind found, 1 no single kind (reason on stderr), 2 usage error.",
    )
    parser.add_argument("path", help="the model file, e.g. model.py")
    parser.add_argument("--json", action="store_true", help="print the result (kind and evidence) as JSON")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS", help="time limit of the parse"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=DEFAULT_MEMORY_MB, metavar="MIB", help="memory limit of the parse"
    )
    # Internal: the bounded child analyses in its own process after limiting its own memory.
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m pushtrain detect [--json] PATH``: the kind on stdout (exit 0) or the reason on stderr (1).

    Usage errors exit 2.
    """
    parser = _build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help (0) and on usage errors (2)
        return exit_request.code if isinstance(exit_request.code, int) else 2
    if arguments.timeout <= 0 or arguments.memory_mb <= 0:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: --timeout and --memory-mb must be positive", file=sys.stderr)
        return 2

    try:
        if arguments.in_process:
            _limit_own_resources(arguments.memory_mb)
            detection = _detect_in_limited_child(arguments.path, arguments.memory_mb)
        else:
            detection = detect_kind(
                arguments.path, timeout_s=arguments.timeout, memory_mb=arguments.memory_mb
            )
    except DetectionError as error:
        if arguments.json:
            print(json.dumps(error.to_json_dict()))
        print(error.message, file=sys.stderr)
        return 1

    print(json.dumps(detection.to_json_dict()) if arguments.json else detection.kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
