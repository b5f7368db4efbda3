"""Load the user's model file and run its code, turning every failure into a message with file and line.

User code runs only here, inside the sandboxed container. Errors it causes are reported as the user's
(``UserCodeError``), errors in its shape as contract errors (``ContractError``: exit code 4). A
``UserCodeError`` carries the stage it failed at, which decides whether a restart could help (see
``pushtrain.runner.contract``): a syntax error, a missing module or name (exit 6) and a builder that raises
(exit 7) fail the same way every time; an exception during training (exit 5) may not. It also carries
what the user should do about it, for the platform to lead its message with.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pushtrain.kinds import KINDS, Framework
from pushtrain.runner import contract

T = TypeVar("T")

# Stages user code runs in; with the exception's type they give error.json's category.
LOAD, BUILD, RUNTIME = "load", "build", "runtime"
# Import names whose package, as requirements.txt names it, is spelled differently.
PACKAGE_OF_MODULE = {
    "sklearn": "scikit-learn",
    "PIL": "Pillow",
    "cv2": "opencv-python-headless",
    "yaml": "PyYAML",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
}


class UserCodeError(Exception):
    """User code failed. ``category`` is error.json's (``contract.FAILURE_CATEGORIES``), ``fix`` what to do."""

    def __init__(self, message: str, category: str = RUNTIME, fix: str = "") -> None:
        super().__init__(message)
        self.category = category
        self.fix = fix


class ContractError(Exception):
    """The model file does not expose what the contract asks for (HPARAMS, a builder)."""


@dataclass
class ModelFile:
    path: Path
    module: ModuleType
    hparams: dict[str, Any]
    code_sha256: str

    def builder(self, framework: Framework) -> Callable:
        builder = getattr(self.module, framework.builder, None)
        if not callable(builder):
            raise ContractError(
                f"{self.path} defines no function {framework.builder}(): "
                f"{_needs(framework)}; see include/model_templates/"
            )
        return builder

    def kind_of_builder(self) -> str:
        """The first kind in the table whose builder the file defines, for a run that names no kind."""
        for kind in KINDS.values():
            if callable(getattr(self.module, kind.builder, None)):
                return kind.name
        frameworks = dict.fromkeys(kind.framework for kind in KINDS.values())
        raise ContractError(
            f"{self.path} defines no builder: "
            + "; ".join(map(_needs, frameworks))
            + "; see include/model_templates/"
        )


def _needs(framework: Framework) -> str:
    return f"a {framework.title} model file needs {framework.builder_call}"


def _user_frame(exc: BaseException, path: Path) -> traceback.FrameSummary | None:
    """The innermost traceback frame inside the user's file, if the error passed through it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return frames[-1] if frames else None


def shown(path: str | Path) -> str:
    """A path as the user knows it: relative to their repository when it is inside the model mount."""
    try:
        return Path(path).relative_to(contract.MODEL_MOUNT).as_posix()
    except ValueError:
        return str(path)


def describe_user_error(exc: BaseException, path: Path, doing: str) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{shown(exc.filename)}, line {exc.lineno}"
        return f"{where}: SyntaxError: {exc.msg} (while {doing}){_caret(exc)}"
    frame = _user_frame(exc, path)
    where = f"{shown(path)}, line {frame.lineno}" if frame else shown(path)
    code = f"\n    {frame.line}" if frame and frame.line else ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Keras colours its messages for a terminal
    return f"{where}: {type(exc).__name__}: {text} (while {doing}){code}"


def _caret(exc: SyntaxError) -> str:
    """The offending line and a caret under the spot, as Python prints them."""
    if not exc.text:
        return ""
    line = exc.text.rstrip("\n")
    code = line.lstrip()
    if not exc.offset:
        return f"\n    {code.rstrip()}"
    start = max(exc.offset - 1 - (len(line) - len(code)), 0)
    same_line = exc.end_lineno in (None, exc.lineno) and (exc.end_offset or 0) > exc.offset
    width = exc.end_offset - exc.offset if same_line else 1
    return f"\n    {code.rstrip()}\n    {' ' * start}{'^' * width}"


def category_of(exc: BaseException, stage: str) -> str:
    """A syntax error or a failed import is that at any stage: the same code fails the same way again."""
    if isinstance(exc, SyntaxError):
        return "syntax"
    if isinstance(exc, ImportError):
        return "import"
    return stage


def fix_for(exc: BaseException, path: Path, category: str, doing: str) -> str:
    """One sentence saying what the user should change; empty where a restart may be the fix."""
    if category == "syntax":
        return (
            f"fix the syntax error in {shown(exc.filename or path)} at line {exc.lineno} (marked below), "
            "then push again"
        )
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        module = exc.name.partition(".")[0]
        if (path.parent / f"{module}.py").exists() or (path.parent / module).is_dir():
            return (
                f"`{module}` is a file of your repository, but only {path.name} is loaded: move what "
                f"{path.name} needs from it into {path.name}"
            )
        return (
            f"add `{PACKAGE_OF_MODULE.get(module, module)}` to requirements.txt next to your model file "
            f"({shown(path)}), then push again"
        )
    if isinstance(exc, ImportError):
        missing = re.search(r"cannot import name '([^']+)' from '([^']+)'", str(exc))
        if missing:
            name, module = missing.groups()
            return (
                f"`{module}`{_installed_version(module)} has no `{name}`: check the spelling, or declare "
                "the version that has it in requirements.txt next to your model file"
            )
        return "fix the import below, then push again"
    if category in (LOAD, BUILD):
        return f"fix the error below (raised while {doing}), then push again"
    return ""


def _installed_version(module: str) -> str:
    package = PACKAGE_OF_MODULE.get(module.partition(".")[0], module.partition(".")[0])
    try:
        return f" ({package} {importlib.metadata.version(package)} here)"
    except importlib.metadata.PackageNotFoundError:
        return ""


def run_user_code(
    path: Path, doing: str, function: Callable[..., T], *args: Any, stage: str = RUNTIME, **kwargs: Any
) -> T:
    """Call user code; any exception it raises becomes a UserCodeError naming file, line, step and fix.

    ``stage`` is ``LOAD`` (running the model file), ``BUILD`` (the builder, model construction, compile:
    before the first epoch) or ``RUNTIME`` (training, evaluation).
    """
    try:
        return function(*args, **kwargs)
    except (UserCodeError, ContractError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        category = category_of(exc, stage)
        raise UserCodeError(
            describe_user_error(exc, path, doing), category, fix_for(exc, path, category, doing)
        ) from exc


def load_model_file(path: Path) -> ModelFile:
    path = Path(path).resolve()
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ContractError(f"cannot read the model file {path}: {exc.strerror}") from None

    def load() -> ModuleType:
        code = compile(source, str(path), "exec")
        module = ModuleType("user_model")
        module.__file__ = str(path)
        # Registered so pickling-based libraries can find classes the user defined.
        sys.modules["user_model"] = module
        exec(code, module.__dict__)
        return module

    sys.dont_write_bytecode = True  # the model mount is read-only
    module = run_user_code(path, "loading the model file", load, stage=LOAD)
    hparams = getattr(module, "HPARAMS", None)
    if not isinstance(hparams, dict):
        raise ContractError(
            f"{path} has no HPARAMS dict: expose the knobs as one module-level literal, "
            'e.g. HPARAMS = {"epochs": 5}; see include/model_templates/'
        )
    return ModelFile(path, module, dict(hparams), hashlib.sha256(source).hexdigest())


def module_spec_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
