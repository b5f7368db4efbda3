"""Serving figures for the demo CNN on digits, in one run: HTTP against the in-process floor, and a switch.

1. Train the demo CNN template on digits in the real TensorFlow image (a few epochs), register it and serve it
   (``pushtrain.serving.deploy``: serving container + stable endpoint).
2. **Floor**: inside the same image and sandbox, load the model as the server does
   (``pushtrain.runner.serve.LoadedModel``) and time ``predict`` on the same inputs, batch 1 and batch 64.
3. **HTTP**: one keep-alive client posts ``{"instances": <pixel arrays>}`` to ``/invocations`` of the
   serving container directly and through the stable endpoint (the proxy); p50/p99 latency and
   throughput (images/s), batch 1 and batch 64.
4. **Blue-green**: a second version is promoted and deployed while a client sends 50 requests/s to the
   stable endpoint; every answer is checked, failures counted.

Goals (issue 13): HTTP overhead at batch 1 within 2 ms of the floor at p50; throughput at batch 64 within
1.2x of the floor; zero failed requests during the switch.

    PYTHONPATH=plugins .venv/bin/python benchmarks/bench_serving.py [--requests 300]

Writes ``benchmarks/results/bench_serving.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402

from pushtrain import datasets, localrun, serving  # noqa: E402
from pushtrain.registry import ModelRegistry  # noqa: E402
from pushtrain.runner import contract  # noqa: E402
from pushtrain.sandbox import docker_client  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT / "include" / "model_templates" / "cnn_keras.py"
MODEL = "bench-cnn"
BATCHES = (1, 64)

FLOOR_SCRIPT = """
import json, sys, time
import numpy as np
from pushtrain.runner.serve import LoadedModel
requests, batches = int(sys.argv[1]), json.loads(sys.argv[2])
model = LoadedModel("/model")
rng = np.random.default_rng(0)
result = {}
for batch in batches:
    inputs = rng.random((batch, *model.input_shape), dtype=np.float32)
    for _ in range(20):
        model.predict(inputs)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        model.predict(inputs)
        times.append(time.perf_counter() - start)
    result[str(batch)] = times
print(json.dumps(result))
"""


def figures(seconds: list[float], batch: int) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "throughput_images_per_s": round(batch * len(ms) / (ms.sum() / 1000), 1),
    }


def floor(version, requests: int) -> dict:
    image = serving.serving_image(version)
    completed = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "10001:10001",
            "-v",
            f"{version.artifact_dir}:/model:ro",
            "--entrypoint",
            "/opt/venv/bin/python",
            image,
            "-c",
            FLOOR_SCRIPT,
            str(requests),
            json.dumps(BATCHES),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    times = json.loads(completed.stdout.strip().splitlines()[-1])
    return {batch: figures(times[str(batch)], batch) for batch in BATCHES}


def http_figures(port: int, input_shape: list[int], requests: int) -> dict:
    rng = np.random.default_rng(0)
    result = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for batch in BATCHES:
        body = json.dumps({"instances": np.round(rng.random((batch, *input_shape)), 4).tolist()}).encode()
        headers = {"Content-Type": "application/json"}
        times = []
        for index in range(requests + 20):
            start = time.perf_counter()
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:300]!r}")
            if index >= 20:
                times.append(time.perf_counter() - start)
        result[batch] = figures(times, batch)
    connection.close()
    return result


def switch_under_load(
    registry: ModelRegistry, artifact: Path, lineage: dict, accuracy: float, rate: float
) -> dict:
    port = serving.endpoint(MODEL).port
    body = {"instances": [np.zeros((8, 8, 1)).tolist()]}
    failures, sent, stop = [], [0], threading.Event()

    def load() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                status, answer = serving.request(port, "POST", "/invocations", body, timeout=10)
                if status != 200:
                    failures.append(f"{status}: {answer}")
            except OSError as error:
                failures.append(repr(error))
            sent[0] += 1
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    second = registry.register(MODEL, artifact, {"accuracy": accuracy}, lineage, pipeline_run_id="bench-2")
    registry.promote_if_not_worse(MODEL, second)
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(2)
    started = time.monotonic()
    result = serving.deploy(MODEL, by="user:bench")
    switch_s = time.monotonic() - started
    time.sleep(2)
    stop.set()
    thread.join(timeout=30)
    return {
        "rate_per_s": rate,
        "requests": sent[0],
        "failed": len(failures),
        "failures": failures[:5],
        "switched": result.switched,
        "deploy_seconds": round(switch_s, 1),
        "reason": result.reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    digits = datasets.ensure_dataset("digits")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as temp:
        root = Path(temp)
        os.environ["PUSHTRAIN_DATA_DIR"] = str(root / "data")
        (root / "data").mkdir()
        (root / "data" / "datasets").symlink_to(Path(digits.root).parents[1])
        os.environ.setdefault("PUSHTRAIN_SERVING_FIRST_PORT", "18601")
        trained = localrun.train(
            model=TEMPLATE,
            data=digits.train_dir,
            out=root / "attempt",
            hparams={"epochs": args.epochs},
            kind="cnn",
            name="pushtrain-bench-serving",
        )
        if not trained.succeeded:
            raise SystemExit(f"training failed: {trained.summary()}")
        accuracy = json.loads((root / "attempt" / contract.METRICS_FILE).read_text())["accuracy"]
        registry = ModelRegistry(root / "data" / "registry")
        artifact = root / "attempt" / contract.MODEL_DIR
        lineage = {"commit": "bench", "dataset": {"name": "digits", "split_version": digits.split_version}}
        first = registry.register(MODEL, artifact, {"accuracy": accuracy}, lineage, pipeline_run_id="bench-1")
        registry.promote_if_not_worse(MODEL, first)
        client = docker_client()
        try:
            deployed = serving.deploy(MODEL, by="user:bench")
            if not deployed.switched:
                raise SystemExit(deployed.reason)
            input_shape = json.loads((first.artifact_dir / "signature.json").read_text())["input_shape"]
            in_process = floor(first, args.requests)
            direct = http_figures(serving.upstream(MODEL)["port"], input_shape, args.requests)
            stable = http_figures(serving.endpoint(MODEL).port, input_shape, args.requests)
            switch = switch_under_load(registry, artifact, lineage, accuracy, 50.0)
        finally:
            serving.undeploy(MODEL, client)

    def verdicts(http: dict) -> dict:
        return {
            "batch1_p50_overhead_ms": round(http[1]["p50_ms"] - in_process[1]["p50_ms"], 3),
            "batch1_overhead_within_2ms": bool(http[1]["p50_ms"] - in_process[1]["p50_ms"] <= 2.0),
            "batch64_throughput_ratio": round(
                in_process[64]["throughput_images_per_s"] / http[64]["throughput_images_per_s"], 3
            ),
            "batch64_within_1_2x": bool(
                in_process[64]["throughput_images_per_s"] <= 1.2 * http[64]["throughput_images_per_s"]
            ),
        }

    document = {
        "model": "cnn_keras template on digits",
        "epochs": args.epochs,
        "requests": args.requests,
        "floor_in_process": in_process,
        "http_direct": direct,
        "http_stable_endpoint": stable,
        "goals_direct": verdicts(direct),
        "goals_stable_endpoint": verdicts(stable),
        "blue_green": switch,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(document, indent=2))
    print(f"written to {write_results(__file__, document)}")


if __name__ == "__main__":
    main()
