"""Load the user's model file and run its code, turning every failure into a message with file and line.

User code runs only here, inside the sandboxed container. Errors it causes are reported as the user's
(``UserCodeError``: exit code 5), errors in its shape as contract errors (``ContractError``: exit code 4).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pushtrain.kinds import KINDS, Framework

T = TypeVar("T")


class UserCodeError(Exception):
    """User code failed: a syntax error, or an exception raised while it ran."""


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
            raise ContractError(f"{self.path} defines no function {framework.builder}(): "
                                f"{_needs(framework)}; see include/model_templates/")
        return builder

    def kind_of_builder(self) -> str:
        """The first kind in the table whose builder the file defines, for a run that names no kind."""
        for kind in KINDS.values():
            if callable(getattr(self.module, kind.builder, None)):
                return kind.name
        frameworks = dict.fromkeys(kind.framework for kind in KINDS.values())
        raise ContractError(f"{self.path} defines no builder: "
                            + "; ".join(map(_needs, frameworks)) + "; see include/model_templates/")


def _needs(framework: Framework) -> str:
    return f"a {framework.title} model file needs {framework.builder_call}"


def _user_frame(exc: BaseException, path: Path) -> traceback.FrameSummary | None:
    """The innermost traceback frame inside the user's file, if the error passed through it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return frames[-1] if frames else None


def describe_user_error(exc: BaseException, path: Path, doing: str) -> str:
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename) == path:
        where = f"{path}, line {exc.lineno}"
        detail = f"SyntaxError: {exc.msg}"
        if exc.text:
            detail += f"\n    {exc.text.rstrip()}"
        return f"{where}: {detail} (while {doing})"
    frame = _user_frame(exc, path)
    where = f"{path}, line {frame.lineno}" if frame else str(path)
    code = f"\n    {frame.line}" if frame and frame.line else ""
    return f"{where}: {type(exc).__name__}: {exc} (while {doing}){code}"


def run_user_code(path: Path, doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call user code; any exception it raises becomes a UserCodeError naming file, line and step."""
    try:
        return function(*args, **kwargs)
    except (UserCodeError, ContractError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise UserCodeError(describe_user_error(exc, path, doing)) from exc


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
    module = run_user_code(path, "loading the model file", load)
    hparams = getattr(module, "HPARAMS", None)
    if not isinstance(hparams, dict):
        raise ContractError(
            f"{path} has no HPARAMS dict: expose the knobs as one module-level literal, "
            'e.g. HPARAMS = {"epochs": 5}; see include/model_templates/'
        )
    return ModelFile(path, module, dict(hparams), hashlib.sha256(source).hexdigest())


def module_spec_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
