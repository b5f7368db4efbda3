"""``python -m pushtrain train``: one attempt on a data scientist's machine, exactly as the pipeline runs it.

Same image, same sandbox, same runner and the same metrics.json as an Airflow attempt, without Airflow.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushtrain import images
from pushtrain.runner import contract
from pushtrain.sandbox import (
    RESULT_FILE_LABEL,
    ROLE_LABEL,
    RUN_KEY_LABEL,
    STATE_DIR_LABEL,
    ContainerOutcome,
    ContainerSpec,
    Sandbox,
    docker_client,
    prepare_output_dir,
    run_container,
)

MODEL_MOUNT = "/workspace/model"
DATA_MOUNT = "/data"
OUT_MOUNT = "/out"
WARM_START_MOUNT = "/warm-start"  # read-only: an earlier attempt's output that this one continues


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
            keys = ("kind", "accuracy", "precision", "recall", "f1", "loss", "evaluated_on", "epochs_run",
                    "resumed_from_epoch", "train_seconds")
            return {"status": "completed", "out_dir": str(self.out_dir), **{k: self.metrics[k] for k in keys}}
        message = self.error["message"] if self.error and not self.outcome.oom_killed else None
        return {"status": "failed", "out_dir": str(self.out_dir), "exit_code": self.outcome.exit_code,
                "reason": self.outcome.describe(), "message": message}


def training_command(model_file: str, hparams: dict, kind: str, run_key: str, checkpoints: bool = True,
                     warm_start: bool = False) -> list[str]:
    command = ["train", "--model", f"{MODEL_MOUNT}/{model_file}", "--data", DATA_MOUNT, "--out", OUT_MOUNT,
               "--hparams", json.dumps(hparams), "--kind", kind, "--run-key", run_key]
    if warm_start:
        command += ["--warm-start", WARM_START_MOUNT]
    return command if checkpoints else [*command, "--no-checkpoints"]


def train(*, model: Path, data: Path, out: Path, hparams: dict | None = None, kind: str | None = None,
          memory: str | None = None, cpus: float | None = None, name: str | None = None,
          log=None, checkpoints: bool = True, warm_start: Path | None = None) -> LocalRunResult:
    from docker.types import Mount

    model, data, out = Path(model).resolve(), Path(data).resolve(), Path(out).resolve()
    if not model.is_file():
        raise LocalRunError(f"model file {model} does not exist: pass the path of your model.py")
    if not data.is_dir():
        raise LocalRunError(f"data directory {data} does not exist: pass an image folder "
                            "<data>/<label>/*.png (run `python -m pushtrain datasets` for the built-in ones)")
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
    spec = ContainerSpec(
        name=f"pushtrain-{run_key}",
        image=image,
        command=training_command(model.name, hparams or {}, kind, run_key, checkpoints,
                                 warm_start=warm_start is not None),
        mounts=[Mount(MODEL_MOUNT, str(model.parent), type="bind", read_only=True),
                Mount(DATA_MOUNT, str(data), type="bind", read_only=True),
                Mount(OUT_MOUNT, str(out), type="bind"),
                *([Mount(WARM_START_MOUNT, str(Path(warm_start).resolve()), type="bind", read_only=True)]
                  if warm_start is not None else [])],
        labels={ROLE_LABEL: "local", RUN_KEY_LABEL: run_key, STATE_DIR_LABEL: str(out),
                RESULT_FILE_LABEL: str(out / contract.METRICS_FILE)},
    )
    outcome = run_container(docker_client(), spec, sandbox, log or (lambda line: print(line, file=sys.stderr)))
    metrics = error = None
    if outcome.succeeded:
        metrics = contract.read_metrics(out)
    elif (out / contract.ERROR_FILE).exists():
        error = json.loads((out / contract.ERROR_FILE).read_text())
    return LocalRunResult(outcome, out, metrics, error)
