"""``python -m pushtrain train``: one attempt on a data scientist's machine, exactly as the pipeline runs it.

Same image, same sandbox, same runner and the same metrics.json as an Airflow attempt, without Airflow.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushtrain import images
from pushtrain.containers import LOCAL, container_spec
from pushtrain.runner import contract
from pushtrain.sandbox import ContainerOutcome, Sandbox, docker_client, prepare_output_dir, run_container


class LocalRunError(Exception):
    """Bad input to a local run; the message names the problem and the fix."""


@dataclass
class LocalRunResult:
    outcome: ContainerOutcome
    out_dir: Path
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None

    @property
    def succeeded(self) -> bool:
        return self.outcome.succeeded and self.metrics is not None

    def summary(self) -> dict[str, Any]:
        if self.succeeded:
            keys = (
                "kind",
                "accuracy",
                "precision",
                "recall",
                "f1",
                "loss",
                "evaluated_on",
                "epochs_run",
                "resumed_from_epoch",
                "train_seconds",
            )
            return {"status": "completed", "out_dir": str(self.out_dir), **{k: self.metrics[k] for k in keys}}
        error = self.error if self.error and not self.outcome.oom_killed else {}
        return {
            "status": "failed",
            "out_dir": str(self.out_dir),
            "exit_code": self.outcome.exit_code,
            "reason": self.outcome.describe(),
            "healable": self.outcome.healable,
            "category": error.get("category"),
            "fix": error.get("fix") or None,
            "message": error.get("message"),
        }


def train(
    *,
    model: Path,
    data: Path,
    out: Path,
    hparams: dict | None = None,
    kind: str | None = None,
    memory: str | None = None,
    cpus: float | None = None,
    name: str | None = None,
    log=None,
    checkpoints: bool = True,
    warm_start: Path | None = None,
) -> LocalRunResult:
    model, data, out = Path(model).resolve(), Path(data).resolve(), Path(out).resolve()
    if not model.is_file():
        raise LocalRunError(f"model file {model} does not exist: pass the path of your model.py")
    if not data.is_dir():
        raise LocalRunError(
            f"data directory {data} does not exist: pass an image folder "
            "<data>/<label>/*.png (run `python -m pushtrain datasets` for the built-in ones)"
        )
    if kind is None:
        from pushtrain.detect import DetectionError, detect_kind

        try:
            kind = detect_kind(model).kind
        except DetectionError as exc:
            raise LocalRunError(f"{exc} (or pass --kind)") from None
    image = images.image_for_kind(kind)
    if not images.image_id(image):
        raise LocalRunError(f"image {image} for kind {kind!r} is not built: run `make images`")

    sandbox = Sandbox(**{k: v for k, v in (("memory", memory), ("cpus", cpus)) if v is not None})
    prepare_output_dir(out)
    run_key = name or f"local-{hashlib.sha256(str(out).encode()).hexdigest()[:10]}"
    spec = container_spec(
        LOCAL,
        name=f"pushtrain-{run_key}",
        run_key=run_key,
        kind=kind,
        code_dir=model.parent,
        entry=model.name,
        data_dir=data,
        output_dir=out,
        state_dir=out,
        image=image,
        hparams=hparams,
        checkpoints=checkpoints,
        warm_start=Path(warm_start).resolve() if warm_start is not None else None,
    )
    outcome = run_container(
        docker_client(), spec, sandbox, log or (lambda line: print(line, file=sys.stderr))
    )
    metrics = contract.read_metrics(out) if outcome.succeeded else None
    return LocalRunResult(outcome, out, metrics, contract.read_error(out, outcome.exit_code))
