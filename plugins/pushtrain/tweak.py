"""Read and rewrite the ``HPARAMS`` literal of a user's model file without running it.

The retrain loop changes hyperparameters by editing the user's own file, so that the winning attempt is a
commit-able file and its change is a reviewable diff. Two constraints shape this module:

* The Airflow side must never import or execute user code (user code runs only in the sandboxed
  containers), so values are read from the syntax tree: ``ast.literal_eval`` of one dict node, nothing
  else is evaluated.
* A tweak must change the values and nothing else: comments, quotes, trailing commas, blank lines and all
  other code stay byte-identical, so the recorded diff shows only what the strategy did. Regex or string
  insertion cannot promise that (the student projects that did it broke files); LibCST keeps every byte
  of whitespace and every comment in its tree, so replacing one value node changes exactly that value.

That is why the contract is strict: HPARAMS must be one top-level ``HPARAMS = {...}`` of plain literal
values, bound once and never changed later in the module (a later ``HPARAMS["x"] = ...`` would silently
override every tweak).
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

HPARAMS_NAME = "HPARAMS"
CONTRACT = "HPARAMS must be one module-level dict literal of plain values"
EXAMPLE = 'e.g. HPARAMS = {"epochs": 1, "learning_rate": 0.001}'
PLAIN_HINT = "plain values are int, float, bool, str, None, and lists or tuples of these"

# Calls on HPARAMS at module level that change the dict after its literal, making a tweak ineffective.
_MUTATING_METHODS = frozenset(
    {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
)
_DEFAULT_QUOTE = '"'


class TweakError(ValueError):
    """The model file's HPARAMS cannot be read or rewritten; the message says what to fix."""


# -------------------------------------------------------------------------------------------------- reading


def read_hparams(source: str) -> dict[str, Any]:
    """Return the values of the module-level ``HPARAMS`` dict literal in ``source``, in file order."""
    located = _locate(source)
    return {key: value for key, value, _element in located.entries}


@dataclass
class _Located:
    module: cst.Module
    dict_node: cst.Dict
    entries: list[tuple[str, Any, cst.DictElement]]


@dataclass
class _Binding:
    """One place at module scope where the name HPARAMS is bound or changed."""

    line: int
    what: str
    definition: cst.Assign | cst.AnnAssign | None = None


class _HparamsFinder(cst.CSTVisitor):
    """Collect every module-scope binding or mutation of HPARAMS, with its line."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self) -> None:
        super().__init__()
        self.bindings: list[_Binding] = []

    def _line(self, node: cst.CSTNode) -> int:
        return self.get_metadata(PositionProvider, node).start.line

    def _record_target(self, target: cst.BaseExpression, statement: cst.CSTNode, what: str) -> None:
        if isinstance(target, cst.Name) and target.value == HPARAMS_NAME:
            self.bindings.append(_Binding(self._line(statement), what))
        elif isinstance(target, cst.Tuple | cst.List):
            for element in target.elements:
                self._record_target(element.value, statement, what)
        elif isinstance(target, cst.StarredElement):
            self._record_target(target.value, statement, what)
        elif isinstance(target, cst.Subscript | cst.Attribute) and _is_hparams_name(target.value):
            self.bindings.append(_Binding(self._line(statement), "changed after its definition"))

    # Functions, classes and lambdas have their own scope: a local HPARAMS there is not the module's.
    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        if node.name.value == HPARAMS_NAME:
            self.bindings.append(_Binding(self._line(node), "redefined as a function"))
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        if node.name.value == HPARAMS_NAME:
            self.bindings.append(_Binding(self._line(node), "redefined as a class"))
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_Assign(self, node: cst.Assign) -> None:
        for assign_target in node.targets:
            target = assign_target.target
            if isinstance(target, cst.Name) and target.value == HPARAMS_NAME:
                self.bindings.append(_Binding(self._line(node), "assigned", definition=node))
            else:
                self._record_target(target, node, "assigned by unpacking")

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        target = node.target
        if isinstance(target, cst.Name) and target.value == HPARAMS_NAME:
            if node.value is None:
                return  # a bare annotation binds nothing
            self.bindings.append(_Binding(self._line(node), "assigned", definition=node))
        else:
            self._record_target(target, node, "assigned")

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        if _is_hparams_name(node.target):
            self.bindings.append(_Binding(self._line(node), "changed after its definition"))
        else:
            self._record_target(node.target, node, "changed after its definition")

    def visit_Del(self, node: cst.Del) -> None:
        if _is_hparams_name(node.target):
            self.bindings.append(_Binding(self._line(node), "deleted"))
        else:
            self._record_target(node.target, node, "changed after its definition")

    def visit_For(self, node: cst.For) -> None:
        self._record_target(node.target, node, "rebound by a for loop")

    def visit_WithItem(self, node: cst.WithItem) -> None:
        if node.asname is not None:
            self._record_target(node.asname.name, node, "rebound by a with statement")

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        self._record_target(node.target, node, "rebound by :=")

    def visit_ImportAlias(self, node: cst.ImportAlias) -> None:
        bound = node.asname.name if node.asname is not None else node.name
        if isinstance(bound, cst.Name) and bound.value == HPARAMS_NAME:
            self.bindings.append(_Binding(self._line(node), "rebound by an import"))

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if (
            isinstance(func, cst.Attribute)
            and _is_hparams_name(func.value)
            and func.attr.value in _MUTATING_METHODS
        ):
            self.bindings.append(
                _Binding(self._line(node), f"changed after its definition (.{func.attr.value})")
            )


def _is_hparams_name(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Name) and node.value == HPARAMS_NAME


def _parse(source: str) -> MetadataWrapper:
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise TweakError(
            f"the model file does not parse (line {exc.raw_line}, column {exc.raw_column}): {exc.message}; "
            f"fix the syntax error before pushing"
        ) from exc
    # unsafe_skip_copy: we want node identity with `module` so a later transform can find the dict node.
    return MetadataWrapper(module, unsafe_skip_copy=True)


def _locate(source: str) -> _Located:
    wrapper = _parse(source)
    module = wrapper.module
    finder = _HparamsFinder()
    wrapper.visit(finder)
    positions = wrapper.resolve(PositionProvider)

    bindings = finder.bindings
    if not bindings:
        raise TweakError(f"no module-level HPARAMS found; {CONTRACT}, {EXAMPLE}")
    definitions = [binding for binding in bindings if binding.definition is not None]
    if len(bindings) > 1:
        lines = ", ".join(f"line {binding.line} ({binding.what})" for binding in bindings)
        raise TweakError(
            f"HPARAMS is bound or changed {len(bindings)} times: {lines}; {CONTRACT}, defined once and never "
            f"reassigned or changed afterwards: keep one HPARAMS = {{...}} and merge the others into it"
        )
    if not definitions:
        only = bindings[0]
        raise TweakError(
            f"HPARAMS at line {only.line} is {only.what}, not assigned a dict; {CONTRACT}, {EXAMPLE}"
        )

    definition = definitions[0]
    statement = definition.definition
    assert statement is not None
    top_level = {
        id(small) for line in module.body if isinstance(line, cst.SimpleStatementLine) for small in line.body
    }
    if id(statement) not in top_level:
        raise TweakError(
            f"HPARAMS at line {definition.line} is defined inside a block (if/try/with/...); {CONTRACT} "
            f"at the top level of the file, so its values do not depend on how the file runs"
        )
    value = statement.value
    if not isinstance(value, cst.Dict):
        shown = _snippet(module, value)
        raise TweakError(
            f"HPARAMS at line {definition.line} is `{shown}`, not a dict literal; {CONTRACT}, {EXAMPLE}"
        )

    entries: list[tuple[str, Any, cst.DictElement]] = []
    seen: dict[str, int] = {}
    for element in value.elements:
        line = positions[element].start.line
        if not isinstance(element, cst.DictElement):
            raise TweakError(
                f"HPARAMS at line {line} unpacks another mapping (`{_snippet(module, element)}`); "
                f'{CONTRACT}: write every knob out as "name": value'
            )
        key = _literal(module, element.key)
        if not isinstance(key, str):
            raise TweakError(
                f"HPARAMS key `{_snippet(module, element.key)}` at line {line} is not a string literal; "
                f"{CONTRACT} with string keys, {EXAMPLE}"
            )
        if key in seen:
            raise TweakError(
                f"HPARAMS key {key!r} appears twice (lines {seen[key]} and {line}); Python keeps only the "
                f"last one, so delete the other"
            )
        seen[key] = line
        try:
            entry_value = _literal(module, element.value)
        except TweakError:
            entry_value = _NOT_LITERAL
        if entry_value is _NOT_LITERAL or not _is_plain(entry_value):
            raise TweakError(
                f"HPARAMS value of {key!r} at line {line} is `{_snippet(module, element.value)}`, which is "
                f"not a plain literal; {CONTRACT} ({PLAIN_HINT}): write the value itself instead of an "
                f"expression, a name or a call"
            )
        entries.append((key, entry_value, element))
    return _Located(module=module, dict_node=value, entries=entries)


_NOT_LITERAL = object()


def _literal(module: cst.Module, node: cst.CSTNode) -> Any:
    code = module.code_for_node(node)
    try:
        # Parentheses and a newline let a value that spans lines (or ends in a comment inside its own
        # parentheses) parse as one expression.
        return ast.literal_eval(f"(\n{code}\n)")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise TweakError(f"`{_snippet(module, node)}` is not a literal") from exc


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_plain(item) for item in value)
    return False


def _snippet(module: cst.Module, node: cst.CSTNode, limit: int = 60) -> str:
    text = " ".join(module.code_for_node(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -------------------------------------------------------------------------------------------------- writing


def apply_hparams(source: str, updates: Mapping[str, Any]) -> str:
    """Return ``source`` with the HPARAMS values of ``updates`` changed and everything else byte-identical.

    A key already in HPARAMS keeps its place, its key spelling and whatever surrounds the value (an inline
    comment, a trailing comma); only the value is re-rendered, and only when it actually changes (``1e-3``
    stays ``1e-3`` if the update is 0.001). A key not in HPARAMS is added at the end of the dict in the
    layout the dict already uses (one entry per line or all on one line, trailing comma or not), after the
    last entry and before any comment lines that close the dict.
    """
    for key in updates:
        if not isinstance(key, str) or not key:
            raise TweakError(f"hyperparameter names must be non-empty strings, got {key!r}")
    located = _locate(source)
    quote = _dominant_quote(element.key for _key, _value, element in located.entries)
    current = {key: value for key, value, _element in located.entries}

    replacements: dict[int, cst.DictElement] = {}
    for key, old_value, element in located.entries:
        if key in updates and not _same_literal(old_value, updates[key]):
            replacements[id(element)] = element.with_changes(
                value=_value_node(updates[key], old_node=element.value, quote=quote, key=key)
            )
    additions = [
        cst.DictElement(
            key=cst.SimpleString(_render_str(key, quote)),
            value=_value_node(value, old_node=None, quote=quote, key=key),
        )
        for key, value in updates.items()
        if key not in current
    ]
    if not replacements and not additions:
        return source

    new_dict = located.dict_node.with_changes(
        elements=[replacements.get(id(element), element) for element in located.dict_node.elements]
    )
    for element in additions:
        new_dict = _append_element(new_dict, element)
    new_module = located.module.deep_replace(located.dict_node, new_dict)
    assert isinstance(new_module, cst.Module)
    new_source = new_module.code
    _check_compiles(source, new_source)
    return new_source


def _same_literal(old: Any, new: Any) -> bool:
    """Equal and of the same types, so that 1 -> 1.0 or 1 -> True still counts as a change."""
    if type(old) is not type(new):
        return False
    if isinstance(old, list | tuple):
        return len(old) == len(new) and all(_same_literal(a, b) for a, b in zip(old, new, strict=True))
    return old == new


def _value_node(
    value: Any, *, old_node: cst.BaseExpression | None, quote: str, key: str
) -> cst.BaseExpression:
    if isinstance(old_node, cst.SimpleString):
        quote = old_node.value[-1]  # a string keeps its own quote style
    try:
        rendered = render_literal(value, quote=quote)
    except TweakError as exc:
        raise TweakError(f"cannot write HPARAMS[{key!r}]: {exc}") from exc
    node = cst.parse_expression(rendered)
    # Parentheses around the old value may hold comments; keep them unless the new value brings its own.
    if old_node is not None and old_node.lpar and not isinstance(node, cst.Tuple):
        node = node.with_changes(lpar=old_node.lpar, rpar=old_node.rpar)
    return node


def render_literal(value: Any, *, quote: str = _DEFAULT_QUOTE) -> str:
    """Python source for a plain value that ``ast.literal_eval`` turns back into an equal value."""
    if value is None or isinstance(value, bool):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(int(value))  # int subclasses (IntEnum) would repr as their class
    elif isinstance(value, float):
        text = _render_float(value)
    elif isinstance(value, str):
        text = _render_str(value, quote)
    elif isinstance(value, list):
        text = "[" + ", ".join(render_literal(item, quote=quote) for item in value) + "]"
    elif isinstance(value, tuple):
        inner = ", ".join(render_literal(item, quote=quote) for item in value)
        text = f"({inner},)" if len(value) == 1 else f"({inner})"
    else:
        raise TweakError(f"{value!r} ({type(value).__name__}) is not a plain value; {PLAIN_HINT}")
    return text


def _render_float(value: float) -> str:
    if not math.isfinite(value):
        raise TweakError(f"{value!r} has no literal form; use a finite number")
    # repr is the shortest text that round-trips (0.001, not 1e-03); only the exponent is tidied: 1e-5.
    text = repr(float(value))
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _render_str(value: str, quote: str) -> str:
    text = repr(str(value))
    if quote == '"' and text.startswith("'"):
        # In a single-quoted repr every ' is escaped and no " is: swap which of the two needs the backslash.
        body = text[1:-1].replace("\\'", "'").replace('"', '\\"')
        candidate = f'"{body}"'
        # Like Black: the preferred quote, unless it needs more escapes than the other one.
        if candidate.count("\\") <= text.count("\\") and ast.literal_eval(candidate) == value:
            text = candidate
    return text


def _dominant_quote(keys: Any) -> str:
    counts = {'"': 0, "'": 0}
    for key in keys:
        if isinstance(key, cst.SimpleString):
            counts[key.value[-1]] = counts.get(key.value[-1], 0) + 1
    return "'" if counts["'"] > counts['"'] else _DEFAULT_QUOTE


def _comment_free(whitespace: cst.BaseParenthesizableWhitespace) -> cst.BaseParenthesizableWhitespace:
    """The same line break and indentation, without a comment that belongs to another entry."""
    if isinstance(whitespace, cst.ParenthesizedWhitespace):
        return whitespace.with_changes(first_line=cst.TrailingWhitespace(), empty_lines=[])
    return whitespace


def _append_element(dict_node: cst.Dict, new: cst.DictElement) -> cst.Dict:
    elements = list(dict_node.elements)
    closing = dict_node.rbrace.whitespace_before
    opening = dict_node.lbrace.whitespace_after

    if not elements:
        if isinstance(opening, cst.ParenthesizedWhitespace):
            # `{` then a line break: write one indented entry per line with a trailing comma.
            if not opening.last_line.value:
                opening = opening.with_changes(last_line=cst.SimpleWhitespace("    "))
            new = new.with_changes(comma=cst.Comma())
            if not isinstance(closing, cst.ParenthesizedWhitespace):
                closing = cst.ParenthesizedWhitespace(indent=True)
            return dict_node.with_changes(
                elements=[new],
                lbrace=dict_node.lbrace.with_changes(whitespace_after=opening),
                rbrace=dict_node.rbrace.with_changes(whitespace_before=closing),
            )
        return dict_node.with_changes(elements=[new])

    last = elements[-1]
    had_trailing_comma = isinstance(last.comma, cst.Comma)
    if isinstance(closing, cst.ParenthesizedWhitespace):
        # `}` on its own line. The last entry's inline comment sits in the whitespace before `}`: it moves
        # into the last entry's new comma so it stays on the same line as that entry; comment lines just
        # above `}` stay there, after the new entry.
        indent = _entry_indent(elements, opening)
        separator = cst.Comma(
            whitespace_before=last.comma.whitespace_before
            if had_trailing_comma
            else cst.SimpleWhitespace(""),
            whitespace_after=cst.ParenthesizedWhitespace(
                first_line=closing.first_line, empty_lines=[], indent=True, last_line=indent
            ),
        )
        new = new.with_changes(comma=cst.Comma() if had_trailing_comma else cst.MaybeSentinel.DEFAULT)
        closing = closing.with_changes(first_line=cst.TrailingWhitespace())
        elements[-1] = last.with_changes(comma=separator)
        elements.append(new)
        return dict_node.with_changes(
            elements=elements, rbrace=dict_node.rbrace.with_changes(whitespace_before=closing)
        )

    # `}` on the line of the last entry: separate the new entry the way earlier entries are separated.
    if len(elements) >= 2 and isinstance(elements[-2].comma, cst.Comma):
        previous = elements[-2].comma
        separator = previous.with_changes(whitespace_after=_comment_free(previous.whitespace_after))
    elif isinstance(opening, cst.ParenthesizedWhitespace):
        separator = cst.Comma(
            whitespace_after=cst.ParenthesizedWhitespace(indent=True, last_line=opening.last_line)
        )
    else:
        separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    if had_trailing_comma:
        new = new.with_changes(comma=last.comma)
    elements[-1] = last.with_changes(comma=separator)
    elements.append(new)
    return dict_node.with_changes(elements=elements)


def _entry_indent(
    elements: list[cst.BaseDictElement], opening: cst.BaseParenthesizableWhitespace
) -> cst.SimpleWhitespace:
    for element in reversed(elements[:-1]):
        comma = element.comma
        if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
            return comma.whitespace_after.last_line
    if isinstance(opening, cst.ParenthesizedWhitespace):
        return opening.last_line
    return cst.SimpleWhitespace("    ")


def _check_compiles(old: str, new: str) -> None:
    try:
        ast.parse(old)
    except SyntaxError:
        return  # newer syntax than this Python knows: LibCST accepted it, nothing more to check here
    try:
        ast.parse(new)
    except SyntaxError as exc:  # a bug in this module, never the user's fault
        raise TweakError(f"rewriting HPARAMS produced code that does not compile: {exc}") from exc


# ----------------------------------------------------------------------------------------------------- diff


def unified_diff(old: str, new: str, path: str) -> str:
    """A ``git diff``-style unified diff of one file (empty when nothing changed), for the attempt record."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"a/{path}",
        tofile=f"b/{path}",
    )
    out = []
    for line in lines:
        if line.endswith("\n"):
            out.append(line)
        else:
            # Like git: mark a last line without newline instead of gluing it to the next diff line.
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)
