"""Unit tests of pushtrain.tweak: HPARAMS is read without running the file and rewritten value by value.

The promise under test is the one the retrain loop's recorded diff depends on: a tweak changes the
values it was asked to change and not one other byte of the user's file.
"""

from __future__ import annotations

import ast
import io
import random
import tokenize

import pytest

from pushtrain.tweak import TweakError, apply_hparams, read_hparams, render_literal, unified_diff

TEMPLATES = ["cnn_keras.py", "linear_sklearn.py", "knn_sklearn.py"]
CONTRACT = "HPARAMS must be one module-level dict literal of plain values"

# A changed value for every knob of every template, of the same type.
CHANGES = {
    "cnn_keras.py": {
        "epochs": 12,
        "batch_size": 32,
        "learning_rate": 0.003,
        "conv_blocks": 2,
        "filters": 16,
        "kernel_size": 5,
        "dense_units": 64,
        "dropout": 0.25,
        "seed": 7,
    },
    "linear_sklearn.py": {"epochs": 30, "alpha": 0.0001, "eta0": 0.05, "average": True, "seed": 3},
    "knn_sklearn.py": {"n_neighbors": 3, "weights": "distance", "p": 2},
}


def comments(source: str) -> list[str]:
    return [
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]


def assert_compiles(source: str) -> None:
    compile(source, "model.py", "exec", dont_inherit=True)


@pytest.fixture(params=TEMPLATES)
def template(request, templates_dir) -> tuple[str, str]:
    return request.param, (templates_dir / request.param).read_text()


# ------------------------------------------------------------------------------------------------ templates


def test_templates_read_as_literal_dicts(template):
    name, source = template
    hparams = read_hparams(source)
    assert list(hparams) == list(CHANGES[name])
    assert all(not isinstance(value, dict | set) for value in hparams.values())


def test_template_round_trip_keeps_comments_and_compiles(template):
    name, source = template
    new = apply_hparams(source, CHANGES[name])
    assert read_hparams(new) == CHANGES[name]
    assert comments(new) == comments(source)
    assert_compiles(new)
    # Applying the values back restores the original byte for byte.
    assert apply_hparams(new, read_hparams(source)) == source


def test_only_hparams_value_lines_change(template):
    name, source = template
    original = read_hparams(source)
    updates = dict(list(CHANGES[name].items())[::2])  # every other knob changes, the rest must not
    new = apply_hparams(source, updates)
    old_lines, new_lines = source.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines)
    changed = 0
    for old_line, new_line in zip(old_lines, new_lines, strict=True):
        entry = next((key for key in updates if old_line.lstrip().startswith(f'"{key}":')), None)
        if entry is None:
            assert new_line == old_line
        else:
            expected = old_line.replace(
                repr(original[entry]).replace("'", '"'), render_literal(updates[entry]), 1
            )
            assert new_line == expected
            changed += 1
    assert changed == len(updates)


def test_random_updates_round_trip(template):
    """Property-style: any plain values, including awkward strings, read back exactly as written."""
    _name, source = template
    rng = random.Random(1234)
    keys = list(read_hparams(source))
    awkward = ['it\'s "quoted"', "back\\slash", "tab\tnew\nline", "ünïcode ✓", "", "'", '"']

    def plain_value(depth: int = 0):
        pick = rng.randrange(8 if depth < 2 else 6)
        if pick == 0:
            return rng.randint(-(10**12), 10**12)
        if pick == 1:
            return rng.choice([0.001, 1e-5, 3.0, -0.25, 1e20, 0.1 + 0.2, rng.random()])
        if pick == 2:
            return rng.choice([True, False])
        if pick == 3:
            return None
        if pick in (4, 5):
            return rng.choice(awkward)
        if pick == 6:
            return [plain_value(depth + 1) for _ in range(rng.randrange(3))]
        return tuple(plain_value(depth + 1) for _ in range(rng.randrange(3)))

    for _ in range(40):
        updates = {key: plain_value() for key in rng.sample(keys, rng.randrange(1, len(keys) + 1))}
        if rng.random() < 0.3:
            updates["added_knob"] = plain_value()
        new = apply_hparams(source, updates)
        assert_compiles(new)
        assert read_hparams(new) == {**read_hparams(source), **updates}
        assert comments(new) == comments(source)


# ------------------------------------------------------------------------------------------ formatting kept

INLINE = """\
'''Model.'''
import os

HPARAMS = {
    # capacity
    "epochs": 1,  # more is slower
    "lr": 0.0005,   # Adam

    "name" :  'small',
    "shape": (28, 28),
    "layers": [
        8,  # first
        16,
    ],
}
EPOCHS_FROM_ENV = os.environ.get("EPOCHS")
"""


def test_inline_comment_survives_a_change_of_its_value():
    new = apply_hparams(INLINE, {"epochs": 5, "lr": 0.002})
    assert '    "epochs": 5,  # more is slower\n' in new
    assert '    "lr": 0.002,   # Adam\n' in new
    assert comments(new) == comments(INLINE)


def test_spacing_and_quote_style_of_an_entry_are_kept():
    new = apply_hparams(INLINE, {"name": "large"})
    assert "    \"name\" :  'large',\n" in new  # the value keeps its own single quotes and odd spacing
    assert new.replace("'large'", "'small'") == INLINE


def test_value_spanning_lines_is_replaced_whole():
    new = apply_hparams(INLINE, {"layers": [32, 64], "shape": (8, 8)})
    assert '    "layers": [32, 64],\n' in new
    assert '    "shape": (8, 8),\n' in new
    assert read_hparams(new)["layers"] == [32, 64]
    assert "# first" not in new  # it belonged to the replaced value's own lines
    assert new.splitlines()[:8] == INLINE.splitlines()[:8]
    assert new.endswith('EPOCHS_FROM_ENV = os.environ.get("EPOCHS")\n')


def test_unchanged_value_keeps_its_spelling():
    source = 'HPARAMS = {"lr": 1e-3, "epochs": 0x10}\n'
    assert apply_hparams(source, {"lr": 0.001, "epochs": 16}) == source


def test_type_change_counts_as_change():
    assert apply_hparams('HPARAMS = {"a": 1}\n', {"a": 1.0}) == 'HPARAMS = {"a": 1.0}\n'
    assert apply_hparams('HPARAMS = {"a": 1}\n', {"a": True}) == 'HPARAMS = {"a": True}\n'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.001, "0.001"),
        (0.0005, "0.0005"),
        (1e-5, "1e-5"),
        (1e20, "1e20"),
        (2.5e-7, "2.5e-7"),
        (3.0, "3.0"),
        (-0.25, "-0.25"),
        (10, "10"),
        (True, "True"),
        (None, "None"),
        ("distance", '"distance"'),
        ('say "hi"', "'say \"hi\"'"),
        ("it's", '"it\'s"'),
        ([1, "a"], '[1, "a"]'),
        ((2,), "(2,)"),
        ((), "()"),
    ],
)
def test_render_literal(value, text):
    assert render_literal(value) == text
    assert ast.literal_eval(text) == value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, {"a": 1}, b"x", 1j, object()])
def test_values_without_plain_literal_form_are_refused(bad):
    with pytest.raises(TweakError, match="HPARAMS\\['epochs'\\]"):
        apply_hparams('HPARAMS = {"epochs": 1}\n', {"epochs": bad})


def test_parenthesised_value_keeps_its_parentheses_and_comment():
    source = 'HPARAMS = {\n    "lr": (  # tuned by hand\n        0.01\n    ),\n}\n'
    new = apply_hparams(source, {"lr": 0.02})
    assert new == source.replace("0.01", "0.02")


def test_crlf_line_endings_are_kept():
    source = 'HPARAMS = {\r\n    "a": 1,  # x\r\n    "b": 2,\r\n}\r\n'
    new = apply_hparams(source, {"a": 3, "c": 4})
    assert new == 'HPARAMS = {\r\n    "a": 3,  # x\r\n    "b": 2,\r\n    "c": 4,\r\n}\r\n'


def test_no_updates_or_equal_values_return_source_unchanged(template):
    _name, source = template
    assert apply_hparams(source, {}) == source
    assert apply_hparams(source, read_hparams(source)) == source


# ---------------------------------------------------------------------------------------------- adding keys


def test_new_key_goes_at_the_end_in_the_dicts_style(template):
    _name, source = template
    new = apply_hparams(source, {"label_smoothing": 0.1})
    assert '    "seed": 0,\n    "label_smoothing": 0.1,\n}\n' in new or (
        '    "p": 1,\n    "label_smoothing": 0.1,\n}\n' in new
    )
    assert list(read_hparams(new))[-1] == "label_smoothing"
    assert new.replace('    "label_smoothing": 0.1,\n', "", 1) == source


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('HPARAMS = {"a": 1, "b": 2}\n', 'HPARAMS = {"a": 1, "b": 2, "c": 3}\n'),
        ('HPARAMS = {"a": 1, "b": 2,}\n', 'HPARAMS = {"a": 1, "b": 2, "c": 3,}\n'),
        ("HPARAMS = {'a': 1}\n", "HPARAMS = {'a': 1, 'c': 3}\n"),
        ("HPARAMS = {}\n", 'HPARAMS = {"c": 3}\n'),
        ("HPARAMS = {\n}\n", 'HPARAMS = {\n    "c": 3,\n}\n'),
        (
            'HPARAMS = {"a": 1,\n           "b": 2}\n',
            'HPARAMS = {"a": 1,\n           "b": 2,\n           "c": 3}\n',
        ),
        (
            'HPARAMS = {\n    "a": 1,\n    "b": 2  # last\n}\n',
            'HPARAMS = {\n    "a": 1,\n    "b": 2,  # last\n    "c": 3\n}\n',
        ),
        (
            'HPARAMS = {\n  "a": 1,  # a\n  # "old": 0,\n}\n',
            'HPARAMS = {\n  "a": 1,  # a\n  "c": 3,\n  # "old": 0,\n}\n',
        ),
        ("HPARAMS: dict = {'a': 1}  # knobs\n", "HPARAMS: dict = {'a': 1, 'c': 3}  # knobs\n"),
    ],
    ids=[
        "one-line",
        "one-line-trailing-comma",
        "single-quotes",
        "empty",
        "empty-multiline",
        "hanging-indent",
        "no-trailing-comma-inline-comment",
        "closing-comment-lines-stay-last",
        "annotated",
    ],
)
def test_adding_a_key_to_odd_layouts(source, expected):
    new = apply_hparams(source, {"c": 3})
    assert new == expected
    assert_compiles(new)
    assert read_hparams(new)["c"] == 3


def test_several_new_keys_keep_their_order():
    new = apply_hparams('HPARAMS = {\n    "a": 1,\n}\n', {"z": 1, "b": [2], "a": 0})
    assert new == 'HPARAMS = {\n    "a": 0,\n    "z": 1,\n    "b": [2],\n}\n'


# ------------------------------------------------------------------------------------------ contract errors


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("EPOCHS = 1\n", ["no module-level HPARAMS", CONTRACT]),
        ("def f():\n    HPARAMS = {'a': 1}\n", ["no module-level HPARAMS"]),
        ("HPARAMS = {'a': 1}\nHPARAMS = {'a': 2}\n", ["2 times", "line 1", "line 2", CONTRACT]),
        ("HPARAMS = {'a': 1}\nHPARAMS['a'] = 2\n", ["line 2 (changed after its definition)", CONTRACT]),
        ("HPARAMS = {'a': 1}\nHPARAMS.update(a=2)\n", ["line 2", ".update", CONTRACT]),
        ("HPARAMS = {'a': 1}\nHPARAMS |= {'b': 2}\n", ["line 2", CONTRACT]),
        ("import os\nif os.name:\n    HPARAMS = {'a': 1}\n", ["line 3", "inside a block", CONTRACT]),
        ("HPARAMS = dict(a=1)\n", ["`dict(a=1)`", "not a dict literal", CONTRACT]),
        ("from config import HPARAMS\n", ["rebound by an import", CONTRACT]),
        (
            "LR = 0.1\nHPARAMS = {\n    'lr': LR,\n}\n",
            ["'lr'", "line 3", "`LR`", "not a plain literal", CONTRACT],
        ),
        ("HPARAMS = {'lr': 1 / 1000}\n", ["'lr'", "`1 / 1000`", CONTRACT]),
        ("HPARAMS = {'n': int('3')}\n", ["'n'", "`int('3')`", CONTRACT]),
        ("HPARAMS = {'s': {1, 2}}\n", ["'s'", "int, float, bool, str, None"]),
        ("BASE = {}\nHPARAMS = {**BASE, 'a': 1}\n", ["unpacks another mapping", CONTRACT]),
        ("HPARAMS = {1: 'a'}\n", ["key `1`", "not a string literal"]),
        ("HPARAMS = {'a': 1, 'a': 2}\n", ["'a' appears twice", "lines 1 and 1"]),
        ("HPARAMS = {'a': 1\n", ["does not parse"]),
    ],
    ids=[
        "missing",
        "only-in-function",
        "twice",
        "item-assignment",
        "update-call",
        "augmented",
        "in-if-block",
        "not-a-dict-literal",
        "imported",
        "name-value",
        "expression-value",
        "call-value",
        "set-value",
        "unpacking",
        "non-string-key",
        "duplicate-key",
        "syntax-error",
    ],
)
def test_contract_violations_raise_helpful_errors(source, fragments):
    with pytest.raises(TweakError) as caught:
        read_hparams(source)
    for fragment in fragments:
        assert fragment in str(caught.value)
    with pytest.raises(TweakError):
        apply_hparams(source, {"a": 3})
    assert isinstance(caught.value, ValueError)


def test_local_hparams_in_functions_and_classes_are_not_the_modules():
    source = (
        "HPARAMS = {'a': 1}\n"
        "def build(hp):\n    HPARAMS = dict(hp)\n    HPARAMS['a'] = 2\n    return HPARAMS\n"
        "class Config:\n    HPARAMS = None\n"
        "fn = lambda HPARAMS: HPARAMS\n"
    )
    assert read_hparams(source) == {"a": 1}
    assert apply_hparams(source, {"a": 5}) == source.replace("{'a': 1}", "{'a': 5}")


def test_refuses_non_string_update_keys():
    with pytest.raises(TweakError, match="non-empty strings"):
        apply_hparams("HPARAMS = {'a': 1}\n", {1: 2})


# ----------------------------------------------------------------------------------------------------- diff


def test_unified_diff_shows_only_the_changed_values(template):
    name, source = template
    knob, value = next(iter(CHANGES[name].items()))
    new = apply_hparams(source, {knob: value})
    diff = unified_diff(source, new, "model.py")
    assert diff.startswith("--- a/model.py\n+++ b/model.py\n@@ ")
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(removed) == len(added) == 1
    assert (
        removed[0].startswith(f'-    "{knob}": ') and added[0] == f'+    "{knob}": {render_literal(value)},'
    )


def test_unified_diff_of_identical_text_is_empty():
    assert unified_diff("a\n", "a\n", "model.py") == ""


def test_unified_diff_marks_a_missing_final_newline():
    diff = unified_diff("x = 1", "x = 2", "m.py")
    assert diff.endswith("-x = 1\n\\ No newline at end of file\n+x = 2\n\\ No newline at end of file\n")
