"""Evaluation step wall time: the labelled evaluation against the label-blind one (issue 15).

* ``labelled`` (before): the held-out split mounted as ``/data/<label>/<n>.png``; the container loads it,
  predicts and computes the scores, hashes, and writes ``evaluation.json``. The runner no longer has that
  command, so the same steps run in the same image through ``python -c`` (``LABELLED_EVALUATION``).
* ``blind`` (after): ``blind.prepare_blind_evaluation`` on the host, the runner's ``predict`` container,
  then ``blind.score`` and writing ``evaluation.json`` on the host.

Both containers start the same way (Docker API create with the sandbox's host config and user, start,
wait, logs, remove), so the difference is the label-blind view and the trusted scoring, nothing else. Each
container's work runs under a small Python parent that prints the CPU seconds (user + system) its child
used: on a busy machine wall time swings by tens of percent from run to run, CPU time much less. The blind
variant's CPU figure adds the host-side CPU of preparing the view and scoring. Each
case trains its model once (not timed), runs each variant once untimed to warm the page cache, then
``--repeats`` times interleaved (AB, BA, ...). Cases: the demo's model (``cnn_keras.py`` template on
``mnist5k``, 1,000 held-out images, tensorflow image) and a KNN on ``digits`` (359 images, sklearn image,
the shortest evaluation, where a fixed cost weighs most).

Goal: blind / labelled <= 1.10 for every case. The last line prints the ratios of the median wall times,
of the fastest runs, and of the median CPU seconds; the blind step's host-side parts (``prepare``,
``score``) are the added cost itself. The JSON (``benchmarks/results/bench_evaluation.json``) keeps every
sample.

Run: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_evaluation.py [--repeats 5] [--cases cnn,knn]``.
Containers are named ``pushtrain-bench-eval-*`` and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from results_file import results_path, write_results

from pushtrain import blind, datasets, images, kinds, localrun, sandbox
from pushtrain.runner import contract

RESULTS = results_path(__file__)
PREFIX = f"pushtrain-bench-eval-{os.getpid()}"
TEMPLATES = Path(__file__).resolve().parents[1] / "include" / "model_templates"

# runner.evaluate.evaluate_saved_model as it was before the label-blind view, step for step.
LABELLED_EVALUATION = """
import hashlib, sys
from datetime import UTC, datetime
from pathlib import Path
from pushtrain.runner import contract
from pushtrain.runner.data import load_image_folder
from pushtrain.runner.evaluate import predict_images, read_signature
from pushtrain.runner.metrics import classification_scores
model_dir, data_dir, out_dir, model_file = (Path(a) for a in sys.argv[1:5])
signature = read_signature(model_dir)
data = load_image_folder(data_dir, class_names=signature["class_names"])
predicted, probabilities = predict_images(signature, model_dir, data.images, model_file)
result = {**classification_scores(data.labels, predicted, signature["class_names"], probabilities),
          "schema_version": contract.SCHEMA_VERSION, "kind": signature["kind"], "evaluated_on": "test",
          "dataset_sha256": data.sha256,
          "model_sha256": hashlib.sha256((model_dir / signature["file"]).read_bytes()).hexdigest(),
          "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
contract.write_json_atomic(out_dir / "evaluation.json", result)
print(f"accuracy={result['accuracy']:.4f}", flush=True)
"""


@dataclass(frozen=True)
class Case:
    template: str
    kind: str
    dataset: str
    hparams: dict


CASES = {
    "cnn": Case("cnn_keras.py", "cnn", "mnist5k", {}),
    "knn": Case("knn_sklearn.py", "knn", "digits", {"n_neighbors": 3, "weights": "distance", "p": 2}),
}


# The container's entrypoint for both variants: run the work as a child, then report its CPU time.
CPU_REPORTER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"CPU-SECONDS {usage.ru_utime + usage.ru_stime:.4f}", flush=True)
sys.exit(code)
"""
PYTHON = "/opt/venv/bin/python"


class BenchError(RuntimeError):
    pass


def _run(client, name: str, image: str, work: list[str], mounts: list) -> float:
    """Run ``work`` (a command line) in a sandboxed container; return the CPU seconds it used."""
    box = sandbox.Sandbox()
    container = client.create_container(
        image=image,
        entrypoint=[PYTHON, "-c", CPU_REPORTER],
        command=work,
        name=name,
        user=sandbox.container_user(),
        host_config=client.create_host_config(**box.host_config_kwargs(mounts)),
    )
    try:
        client.start(container["Id"])
        status = client.wait(container["Id"])
        output = client.logs(container["Id"]).decode(errors="replace")
        if int(status["StatusCode"]) != 0:
            raise BenchError(f"{name} exited with {status['StatusCode']}: {output[-2000:]}")
    finally:
        sandbox.remove_container(client, container["Id"])
    return float(next(line for line in output.splitlines() if line.startswith("CPU-SECONDS ")).split()[1])


def _model_mounts(code_dir: Path, trained: Path) -> list:
    from docker.types import Mount

    return [
        Mount(contract.MODEL_MOUNT, str(code_dir), type="bind", read_only=True),
        Mount(contract.EVALUATED_MODEL_MOUNT, str(trained / contract.MODEL_DIR), type="bind", read_only=True),
    ]


def labelled(
    client, name: str, case: Case, code_dir: Path, trained: Path, test_dir: Path, work: Path
) -> dict[str, float]:
    from docker.types import Mount

    out = work / "labelled-out"
    shutil.rmtree(out, ignore_errors=True)
    sandbox.prepare_output_dir(out)
    started = time.perf_counter()
    cpu = _run(
        client,
        name,
        images.image_for_kind(case.kind),
        [
            PYTHON,
            "-c",
            LABELLED_EVALUATION,
            contract.EVALUATED_MODEL_MOUNT,
            contract.DATA_MOUNT,
            contract.EVALUATION_OUT_MOUNT,
            f"{contract.MODEL_MOUNT}/model.py",
        ],
        [
            *_model_mounts(code_dir, trained),
            Mount(contract.DATA_MOUNT, str(test_dir), type="bind", read_only=True),
            Mount(contract.EVALUATION_OUT_MOUNT, str(out), type="bind"),
        ],
    )
    return {"total": time.perf_counter() - started, "cpu": cpu}


def label_blind(
    client, name: str, case: Case, code_dir: Path, trained: Path, test_dir: Path, work: Path
) -> dict[str, float]:
    from docker.types import Mount

    out, evaluation_dir = work / "predictions", work / "evaluation"
    shutil.rmtree(out, ignore_errors=True)
    started, started_cpu = time.perf_counter(), time.process_time()
    view = blind.prepare_blind_evaluation(test_dir, work / "view")
    sandbox.prepare_output_dir(out)
    prepared, prepared_cpu = time.perf_counter(), time.process_time()
    container_cpu = _run(
        client,
        name,
        images.image_for_kind(case.kind),
        [
            PYTHON,
            "-m",
            "pushtrain.runner",
            "predict",
            "--model-dir",
            contract.EVALUATED_MODEL_MOUNT,
            "--data",
            contract.DATA_MOUNT,
            "--out",
            contract.EVALUATION_OUT_MOUNT,
            "--model",
            f"{contract.MODEL_MOUNT}/model.py",
        ],
        [
            *_model_mounts(code_dir, trained),
            Mount(contract.DATA_MOUNT, str(view.data_dir), type="bind", read_only=True),
            Mount(contract.EVALUATION_OUT_MOUNT, str(out), type="bind"),
        ],
    )
    predicted, predicted_cpu = time.perf_counter(), time.process_time()
    evaluation = blind.score(view, out, trained / contract.MODEL_DIR)
    contract.write_json_atomic(evaluation_dir / blind.EVALUATION_FILE, evaluation)
    finished, finished_cpu = time.perf_counter(), time.process_time()
    host_cpu = (prepared_cpu - started_cpu) + (finished_cpu - predicted_cpu)
    return {
        "total": finished - started,
        "prepare": prepared - started,
        "container": predicted - prepared,
        "score": finished - predicted,
        "cpu": container_cpu + host_cpu,
        "host_cpu": host_cpu,
    }


VARIANTS = {"labelled": labelled, "blind": label_blind}


def measure(client, key: str, case: Case, repeats: int, work: Path) -> dict:
    manifest = datasets.ensure_dataset(case.dataset)
    code_dir = work / "code"
    code_dir.mkdir(parents=True)
    shutil.copy(TEMPLATES / case.template, code_dir / "model.py")
    lines: list[str] = []
    trained = localrun.train(
        model=code_dir / "model.py",
        data=manifest.train_dir,
        out=work / "train",
        kind=case.kind,
        hparams=case.hparams,
        name=f"{PREFIX}-{key}-train",
        log=lines.append,
    )
    if not trained.succeeded:
        raise BenchError(f"training {key} failed: {trained.summary()}")
    args = (case, code_dir, work / "train", manifest.test_dir, work)
    for variant, run in VARIANTS.items():  # untimed warm-up: page cache, image layers
        run(client, f"{PREFIX}-{key}-warmup-{variant}", *args)
    samples: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for i in range(repeats):
        order = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            samples[variant].append(VARIANTS[variant](client, f"{PREFIX}-{key}-{i}-{variant}", *args))
    before = json.loads((work / "labelled-out" / "evaluation.json").read_text())
    after = json.loads((work / "evaluation" / blind.EVALUATION_FILE).read_text())
    same = all(before[k] == after[k] for k in ("accuracy", "precision", "recall", "f1", "loss", "per_class"))
    return {
        "case": vars(case),
        "n_test": manifest.counts["test"],
        "samples_s": samples,
        "median_s": {
            variant: {part: statistics.median(s[part] for s in runs) for part in runs[0]}
            for variant, runs in samples.items()
        },
        "min_s": {
            variant: {part: min(s[part] for s in runs) for part in runs[0]}
            for variant, runs in samples.items()
        },
        "accuracy": {"labelled": before["accuracy"], "blind": after["accuracy"]},
        "same_scores": same,
    }


def cleanup(client) -> None:
    for container in client.containers(all=True, filters={"name": PREFIX}):
        if any(name.lstrip("/").startswith(PREFIX) for name in container["Names"]):
            sandbox.remove_container(client, container["Id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant and case (default 5)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    if any(k not in CASES for k in keys) or args.repeats < 1:
        parser.error(f"--cases from {', '.join(CASES)}; --repeats at least 1")

    client = sandbox.docker_client()
    for kind in {CASES[k].kind for k in keys}:
        images.ensure_image(kinds.kind(kind).image)
    results: dict[str, dict] = {}
    work_root = Path(tempfile.mkdtemp(prefix="pushtrain-bench-eval-"))
    try:
        for key in keys:
            print(
                f"[bench] {key}: training once, then {args.repeats} timed runs per variant (+1 warm-up)",
                flush=True,
            )
            results[key] = measure(client, key, CASES[key], args.repeats, work_root / key)
    except BenchError as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        cleanup(client)
        shutil.rmtree(work_root, ignore_errors=True)

    print()
    print(
        f"{'case':<5} {'figure':<7} {'images':>6} {'labelled s':>10} {'blind s':>8} {'prepare':>8} "
        f"{'container':>9} {'score':>6} {'cpu before':>10} {'cpu after':>9} {'wall ratio':>10} "
        f"{'cpu ratio':>9} {'same scores':>11}"
    )
    ratio_parts = []
    for key, result in results.items():
        result["ratio_blind_over_labelled"] = {}
        for figure in ("median", "min"):
            before, after = result[f"{figure}_s"]["labelled"], result[f"{figure}_s"]["blind"]
            wall = result["ratio_blind_over_labelled"][f"wall_{figure}"] = after["total"] / before["total"]
            cpu = result["ratio_blind_over_labelled"][f"cpu_{figure}"] = after["cpu"] / before["cpu"]
            print(
                f"{key:<5} {figure:<7} {result['n_test']:>6} {before['total']:>10.3f} {after['total']:>8.3f} "
                f"{after['prepare']:>8.3f} {after['container']:>9.3f} {after['score']:>6.3f} "
                f"{before['cpu']:>10.3f} {after['cpu']:>9.3f} {wall:>10.3f} {cpu:>9.3f} "
                f"{str(result['same_scores']):>11}"
            )
        ratios = result["ratio_blind_over_labelled"]
        ratio_parts.append(
            f"{key}: wall median={ratios['wall_median']:.3f} wall min={ratios['wall_min']:.3f} "
            f"cpu median={ratios['cpu_median']:.3f}"
        )
    print()
    write_results(
        __file__,
        {
            "benchmark": "bench_evaluation",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_1m_at_end": os.getloadavg()[0],
            },
            "repeats": args.repeats,
            "goal": "blind / labelled <= 1.10",
            "cases": results,
        },
    )
    print(f"[bench] results written to {RESULTS}")
    print("ratios blind/labelled of the evaluation step: " + "; ".join(ratio_parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
