"""``pushtrain adapt`` over the corpus of ordinary training scripts in tests/fixtures/scripts/.

Each script's expected outcome is in tests/fixtures/scripts/expected.json: adapted (kind, data set and
the exact HPARAMS) or refused (the line and the words of the reason). Every adapted file must then meet
the contract, keep nothing that trains, loads or talks to the outside world, be byte-identical when adapted
again from the same script, and come back unchanged when adapted itself.
"""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest

from pushtrain import adapt, contract_check

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
EXPECTED = {
    name: outcome
    for name, outcome in json.loads((SCRIPTS / "expected.json").read_text()).items()
    if not name.startswith("_")
}
ADAPTED = sorted(name for name, outcome in EXPECTED.items() if outcome["outcome"] == "adapted")
REFUSED = sorted(name for name, outcome in EXPECTED.items() if outcome["outcome"] == "refused")

# Calls an adapted file must not make anywhere: the platform loads, trains, evaluates, saves and mails.
GONE = (
    "load_data",
    "load_digits",
    "fetch_openml",
    "read_csv",
    "image_dataset_from_directory",
    "fit",
    "fit_generator",
    "evaluate",
    "predict",
    "save",
    "print",
    "system",
    "run",
    "send_message",
    "dump",
    "train_test_split",
    "to_categorical",
    "parse_args",
)


@functools.cache
def adapted(name: str) -> adapt.Adaptation:
    """One adaptation per script for the tests that only read it (adapt takes about a second)."""
    return adapt.adapt_file(SCRIPTS / name)


def called_names(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_the_corpus_is_large_enough_and_every_script_has_an_expected_outcome():
    scripts = sorted(path.name for path in SCRIPTS.glob("*.py"))
    assert scripts == sorted(EXPECTED)
    assert len(scripts) >= 15
    # The issue expects about two thirds of ordinary scripts to go through; the corpus has both sides.
    assert len(ADAPTED) >= 2 * len(REFUSED) >= 10


@pytest.mark.parametrize("name", ADAPTED)
def test_adapted_script_has_the_expected_kind_knobs_and_data_set(name):
    expected = EXPECTED[name]
    result = adapted(name)

    assert result.changed
    assert result.kind == expected["kind"]
    assert result.dataset == expected["dataset"]
    assert result.hparams == expected["hparams"]
    assert list(result.hparams) == list(expected["hparams"])  # the file's order, templates' knobs first
    if expected["dataset"] is None:
        assert "pushtrain.toml" in result.dataset_note


@pytest.mark.parametrize("name", ADAPTED)
def test_adapted_script_meets_the_contract_and_keeps_nothing_that_runs_at_import(name):
    result = adapted(name)

    checked = contract_check.check_source(result.adapted, name)
    assert checked.ok, checked.report()
    assert checked.kind == result.kind
    assert checked.builder == result.builder
    assert not called_names(result.adapted) & set(GONE)
    # The module runs nothing but imports and literals: everything else is inside the builder.
    module = ast.parse(result.adapted)
    for statement in module.body:
        assert isinstance(statement, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.Assign | ast.Expr), (
            ast.dump(statement)
        )
        if isinstance(statement, ast.Assign | ast.Expr):
            ast.literal_eval(statement.value)


@pytest.mark.parametrize("name", ADAPTED)
def test_adapt_is_deterministic_and_idempotent(name):
    first = adapted(name)
    second = adapt.adapt_file(SCRIPTS / name)
    assert first.adapted == second.adapted
    assert first.changes == second.changes

    again = adapt.adapt_source(first.adapted, str(SCRIPTS / name))
    assert again.adapted == first.adapted
    assert not again.changed
    assert again.kind == first.kind and again.hparams == first.hparams


@pytest.mark.parametrize("name", ADAPTED)
def test_every_change_is_reported_on_its_own_line_with_the_scripts_line(name):
    result = adapted(name)
    source_lines = len((SCRIPTS / name).read_text().splitlines())
    assert result.changes
    for change in result.changes:
        assert "\n" not in change.message
        assert change.line is None or 1 <= change.line <= source_lines
    report = result.report().splitlines()
    assert len(report) == len(result.changes) + 2
    for knob in result.hparams:
        assert any(f'HPARAMS["{knob}"]' in change.message for change in result.changes), knob


@pytest.mark.parametrize("name", REFUSED)
def test_refused_script_says_why_at_the_line(name):
    expected = EXPECTED[name]
    with pytest.raises(adapt.AdaptRefused) as refused:
        adapt.adapt_file(SCRIPTS / name)
    problems = refused.value.problems
    assert any(
        problem.line == expected["line"] and expected["reason"] in problem.message for problem in problems
    ), refused.value.report()
    assert f"line {expected['line']}" in refused.value.report()
