"""The platform's half of model tests: run a repository's ``model_tests.py`` in the evaluation sandbox.

After the gate and before registration, ``steps.register_model`` calls :func:`run_model_tests`. With no
tests file in the repository (``model_tests`` in ``pushtrain.toml``, default ``model_tests.py``) nothing
runs. Otherwise one container of the kind's image, sandboxed as evaluation is (no network, read-only root,
non-root, no platform records: only the model, the tests file and the held-out split, all read-only, and
an empty output dir), runs ``python -m pushtrain.runner model-tests``.

**A failure stops the promotion**: the version is still registered (its lineage and figures are worth
keeping) but becomes ``challenger``, never ``champion``, and is tagged ``model_tests=failed``; the mail lists
each failing test with its message. A tests file that cannot be imported, or a container that fails, counts
as a failure with that message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pushtrain import images
from pushtrain.runner import contract
from pushtrain.runner.model_tests import RESULT_FILE
from pushtrain.sandbox import ContainerSpec, Sandbox, docker_client, prepare_output_dir, run_container
from pushtrain.supervision import ROLE_LABEL, STATE_DIR_LABEL

ROLE = "model-tests"


@dataclass(frozen=True)
class ModelTestsOutcome:
    ran: bool
    tests: list[dict] = field(default_factory=list)  # {"name", "passed", "message", "seconds"}

    @property
    def failed(self) -> list[dict]:
        return [test for test in self.tests if not test["passed"]]

    @property
    def passed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        if not self.ran:
            return "no model tests"
        if self.passed:
            return f"{len(self.tests)} model test(s) passed"
        return f"{len(self.failed)} of {len(self.tests)} model test(s) failed: " + "; ".join(
            f"{test['name']}: {test['message']}" for test in self.failed
        )

    def to_xcom(self) -> dict:
        return {"ran": self.ran, "passed": self.passed, "summary": self.summary(), "tests": self.tests}


def run_model_tests(
    *,
    tests_file: Path,
    model_dir: Path,
    held_out_dir: Path,
    out_dir: Path,
    kind: str,
    container_name: str,
    log=print,
) -> ModelTestsOutcome:
    """Run ``tests_file`` on the model in ``model_dir`` against ``held_out_dir``; no file, no run."""
    if not tests_file.is_file():
        return ModelTestsOutcome(False)
    prepare_output_dir(out_dir)
    (out_dir / RESULT_FILE).unlink(missing_ok=True)
    from docker.types import Mount

    mounts = [
        Mount(target="/model", source=str(model_dir), type="bind", read_only=True),
        Mount(target=f"/tests/{tests_file.name}", source=str(tests_file), type="bind", read_only=True),
        Mount(target="/data", source=str(held_out_dir), type="bind", read_only=True),
        Mount(target="/out", source=str(out_dir), type="bind", read_only=False),
    ]
    spec = ContainerSpec(
        name=container_name,
        image=images.image_for_kind(kind),
        command=[
            "model-tests",
            "--model-dir",
            "/model",
            "--tests",
            f"/tests/{tests_file.name}",
            "--data",
            "/data",
            "--out",
            "/out",
        ],
        mounts=mounts,
        labels={ROLE_LABEL: ROLE, STATE_DIR_LABEL: str(out_dir)},
    )
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        log(line)

    outcome = run_container(docker_client(), spec, Sandbox(), keep)
    result = out_dir / RESULT_FILE
    if not outcome.succeeded or not result.exists():
        error = out_dir / contract.ERROR_FILE
        message = json.loads(error.read_text())["message"] if error.exists() else outcome.describe()
        return ModelTestsOutcome(
            True,
            [
                {
                    "name": tests_file.name,
                    "passed": False,
                    "seconds": 0.0,
                    "message": f"the model tests did not run: {message}; last lines: "
                    + " | ".join(lines[-3:]),
                }
            ],
        )
    return ModelTestsOutcome(True, list(json.loads(result.read_text())["tests"]))
