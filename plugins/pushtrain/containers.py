"""What a training or evaluation container is, described once for every caller.

The train and evaluate operators and the local ``python -m pushtrain train`` describe their container with
``container_spec``: the kind's image, the runner's command line, the mounts at the paths the runner
contract names (``contract.MODEL_MOUNT`` and the others), and the labels container_health reads
(``pushtrain.supervision``). ``pushtrain.sandbox`` then runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pushtrain import images, supervision
from pushtrain.runner import contract
from pushtrain.sandbox import ContainerSpec

TRAIN = "train"  # a pipeline attempt's training; container_health heals it
EVALUATE = "evaluate"  # a pipeline attempt's evaluation; container_health heals it
LOCAL = "local"  # python -m pushtrain train: the same training, not healed


def container_spec(
    role: str,
    *,
    name: str,
    run_key: str,
    kind: str,
    code_dir: Path,
    entry: str,
    data_dir: Path,
    output_dir: Path,
    state_dir: Path,
    evaluation_dir: Path | None = None,
    image: str | None = None,
    environment: dict[str, str] | None = None,
    hparams: dict | None = None,
    warm_start: Path | None = None,
    checkpoints: bool = True,
    model_dir: Path | None = None,
) -> ContainerSpec:
    """The container of one attempt's training (``TRAIN``, ``LOCAL``) or evaluation (``EVALUATE``).

    :param name: the container's fixed name: a retry finds and adopts it.
    :param run_key: pipeline and attempt; keys the runner's checkpoints.
    :param kind: the model kind; picks the image unless ``image`` is given.
    :param code_dir: the repository as trained, mounted read-only; ``entry`` is the model file inside it.
    :param data_dir: the images to train on (training), or the label-blind view to predict (evaluation),
        mounted read-only.
    :param output_dir: the training output: writable for training, its ``model/`` read-only for evaluation.
    :param state_dir: where the waiting task keeps its lease and container_health its restart log.
    :param evaluation_dir: evaluation only: where it writes ``predictions.json`` (and nothing else).
    :param environment: the container's only environment variables (none by default).
    :param hparams: training only: values that override the model file's HPARAMS.
    :param warm_start: training only: an earlier attempt's output that this one continues (read-only).
    :param checkpoints: training only: off only for benchmarks (such a run cannot resume).
    :param model_dir: evaluation only: the saved model to score, when it is not ``output_dir``'s ``model/``
        (a registered version's artifact), mounted read-only.
    """
    from docker.types import Mount

    model_file = f"{contract.MODEL_MOUNT}/{entry}"
    mounts = [
        Mount(contract.MODEL_MOUNT, str(code_dir), type="bind", read_only=True),
        Mount(contract.DATA_MOUNT, str(data_dir), type="bind", read_only=True),
    ]
    if role == EVALUATE:
        if evaluation_dir is None:
            raise ValueError("an evaluation container needs an evaluation_dir")
        command = [
            "predict",
            "--model-dir",
            contract.EVALUATED_MODEL_MOUNT,
            "--data",
            contract.DATA_MOUNT,
            "--out",
            contract.EVALUATION_OUT_MOUNT,
            "--model",
            model_file,
        ]
        mounts += [
            Mount(
                contract.EVALUATED_MODEL_MOUNT,
                str(model_dir if model_dir is not None else Path(output_dir) / contract.MODEL_DIR),
                type="bind",
                read_only=True,
            ),
            Mount(contract.EVALUATION_OUT_MOUNT, str(evaluation_dir), type="bind"),
        ]
        result_file = Path(evaluation_dir) / contract.PREDICTIONS_FILE
    elif role in (TRAIN, LOCAL):
        command = [
            "train",
            "--model",
            model_file,
            "--data",
            contract.DATA_MOUNT,
            "--out",
            contract.OUT_MOUNT,
            "--hparams",
            json.dumps(hparams or {}),
            "--kind",
            kind,
            "--run-key",
            run_key,
        ]
        mounts.append(Mount(contract.OUT_MOUNT, str(output_dir), type="bind"))
        if warm_start is not None:
            command += ["--warm-start", contract.WARM_START_MOUNT]
            mounts.append(Mount(contract.WARM_START_MOUNT, str(warm_start), type="bind", read_only=True))
        if not checkpoints:
            command.append("--no-checkpoints")
        result_file = Path(output_dir) / contract.METRICS_FILE
    else:
        raise ValueError(f"unknown container role {role!r}")
    return ContainerSpec(
        name=name,
        image=image or images.image_for_kind(kind),
        command=command,
        mounts=mounts,
        labels=supervision.labels(role, run_key, state_dir, result_file),
        environment=dict(environment or {}),
    )
