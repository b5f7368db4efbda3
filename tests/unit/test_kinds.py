"""Unit tests of pushtrain.kinds: the table checks its rows, and the runner can carry it into the images."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pushtrain import images, kinds
from pushtrain.kinds import INT, KINDS, SCIKIT_LEARN, Kind, Knob, Move

PACKAGE = Path(kinds.__file__).resolve().parent


def test_an_unknown_kind_is_named_with_the_kinds_there_are() -> None:
    with pytest.raises(
        ValueError, match=r"unknown model kind 'gbm'; known kinds: cnn, linear, knn, keras, svm, forest"
    ):
        kinds.kind("gbm")


def test_knob_rejects_unknown_type_and_a_tuned_number_without_bounds() -> None:
    with pytest.raises(ValueError, match="unknown knob type"):
        Knob("complex")
    with pytest.raises(ValueError, match="a tuned number knob needs low and high"):
        Knob(INT, 1, None)
    assert Knob(INT, tuned=False).low is None  # a seed: any int, never tuned


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": ("double",)}, r"\('double',\) is not an operation"),
        ({"epochs": ("toward", 1, 5)}, r"\('toward', 1, 5\) is not an operation"),
        ({"epochs": ()}, r"\(\) is not an operation"),
    ],
)
def test_a_move_with_a_misspelt_operation_fails_when_the_table_is_built(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Move("typo", changes)


def test_a_move_of_a_knob_the_kind_lacks_fails_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match=r"move 'more C' changes C, which are not among its knobs"):
        Kind(
            name="svc",
            framework=SCIKIT_LEARN,
            image="sklearn",
            template="svc_sklearn.py",
            knobs={"epochs": Knob(INT, 1, 10)},
            default_moves=(Move("more C", {"C": ("mul", 2)}),),
        )


def test_rows_cannot_be_changed_in_place() -> None:
    with pytest.raises(TypeError):
        KINDS["cnn"].knobs["epochs"] = Knob(INT, 1, 1000)  # type: ignore[index]
    with pytest.raises(TypeError):
        KINDS["cnn"].default_moves[0].changes["epochs"] = ("set", 1)  # type: ignore[index]


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_has_its_image_and_template(project_root: Path, templates_dir: Path, name: str) -> None:
    row = kinds.kind(name)
    assert (project_root / "images" / row.image / "Dockerfile").is_file()
    assert row.image in images.IMAGE_NAMES  # `python -m pushtrain images` builds it
    template = (templates_dir / row.template).read_text()
    assert f"def {row.builder}(" in template


# ----------------------------------------------------------------------------------------- the import rule


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names (``from a import b``: a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_runner_imports_nothing_of_pushtrain_but_the_kinds_table_and_itself() -> None:
    allowed = ("pushtrain.kinds", "pushtrain.runner")
    for path in sorted((PACKAGE / "runner").rglob("*.py")):
        package = "pushtrain." + ".".join(path.parent.relative_to(PACKAGE).parts)
        for module in _imported_modules(path, package):
            if module.split(".")[0] == "pushtrain":
                assert any(module == name or module.startswith(f"{name}.") for name in allowed), (
                    path,
                    module,
                )


def test_the_kinds_table_imports_the_standard_library_only() -> None:
    for module in _imported_modules(PACKAGE / "kinds.py", "pushtrain"):
        assert module.split(".")[0] in sys.stdlib_module_names, module


def test_the_image_build_context_holds_everything_the_runner_imports(tmp_path: Path) -> None:
    """The staged context alone (no plugins/ on the path) imports the runner and finds a trainer per kind."""
    wheelhouse = tmp_path / "no-wheels"
    wheelhouse.mkdir()
    context = images._stage_context("sklearn", wheelhouse)
    try:
        probe = (
            "import pushtrain.kinds, pushtrain.runner.__main__\n"
            "from pushtrain.runner.train import trainer_for\n"
            "print(pushtrain.kinds.__file__, *(trainer_for(k).__name__ for k in pushtrain.kinds.KINDS))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(context)},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        location, *trainers = result.stdout.split()
        assert Path(location).is_relative_to(context)
        assert trainers == [
            {"keras": "train_keras", "sklearn": "train_sklearn"}[KINDS[name].framework.name] for name in KINDS
        ]
    finally:
        shutil.rmtree(context, ignore_errors=True)
