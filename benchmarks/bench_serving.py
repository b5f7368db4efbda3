"""Serving figures for the demo CNN on digits, in one run: HTTP against the in-process floor, and a switch.

1. Train the demo CNN template on digits in the real TensorFlow image (a few epochs), register it and serve it
   (``pushtrain.serving.deploy``: serving container + stable endpoint).
2. **Floor**: inside the same image and sandbox, load the model as the server does
   (``pushtrain.runner.serve.LoadedModel``) and time ``predict`` on the same inputs, batch 1 and batch 64.
3. **HTTP**: one keep-alive client posts ``{"instances": <pixel arrays>}`` to ``/invocations`` of the
   serving container directly and through the stable endpoint (the proxy); p50/p99 latency and
   throughput (images/s), batch 1 and batch 64.
   Steps 2 and 3 take turns, ``--requests / --rounds`` requests at a time against a floor container that
   stays up (the machine is shared: load comes and goes, and falls on all three alike this way); each
   figure pools the samples of all rounds.
   The floor also times the server's own request decoding (``json.loads`` and the conversion to a batch)
   of the very bodies the client sends: the part of the overhead that is CPU work, not transport.
4. **Blue-green**: a second version is promoted and deployed while a client sends 50 requests/s to the
   stable endpoint; every answer is checked, failures counted.

Goals (issue 13): HTTP overhead at batch 1 within 2 ms of the floor at p50; throughput at batch 64 within
1.2x of the floor; zero failed requests during the switch.

    PYTHONPATH=plugins .venv/bin/python benchmarks/bench_serving.py [--requests 300] [--rounds 10]

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

from pushtrain import datasets, images, localrun, serving, settings  # noqa: E402
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
from pushtrain.runner.serve import LoadedModel, payload_items, to_batch
batches = json.loads(sys.argv[1])
model = LoadedModel("/model")
rng = np.random.default_rng(0)
bodies_rng = np.random.default_rng(0)  # the HTTP client's bodies, drawn as it draws them
inputs, bodies = {}, {}
for batch in batches:
    inputs[batch] = rng.random((batch, *model.input_shape), dtype=np.float32)
    sent = np.round(bodies_rng.random((batch, *model.input_shape)), 4).tolist()
    bodies[batch] = json.dumps({"instances": sent}).encode()
def predict(batch):
    model.predict(inputs[batch])
def decode(batch):
    to_batch(payload_items(json.loads(bodies[batch])), model.input_shape, model.is_image, 256,
             may_hold_booleans=False)
for batch in batches:
    for _ in range(20):
        predict(batch)
print("ready", flush=True)
for line in sys.stdin:
    what, batch, count = line.split()
    call, batch = (predict if what == "predict" else decode), int(batch)
    times = []
    for _ in range(int(count)):
        start = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - start)
    print(json.dumps(times), flush=True)
"""


def figures(seconds: list[float], batch: int) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "throughput_images_per_s": round(batch * len(ms) / (ms.sum() / 1000), 1),
    }


class Floor:
    """The in-process floor: a long-lived container in the serving image and sandbox, timing on request."""

    def __init__(self, version, stderr) -> None:
        command = [
            "docker",
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cpus",  # the serving container's CPU quota: the floor gets the same CPUs
            str(settings.container_cpus()),
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
            serving.serving_image(version),
            "-c",
            FLOOR_SCRIPT,
            json.dumps(BATCHES),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the floor container did not start: {self.process.wait()}")

    def times(self, what: str, batch: int, count: int) -> list[float]:
        self.process.stdin.write(f"{what} {batch} {count}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


class Client:
    """One keep-alive client posting the same ``{"instances": ...}`` bodies the floor decodes."""

    def __init__(self, port: int, input_shape: list[int]) -> None:
        rng = np.random.default_rng(0)
        self.bodies = {
            batch: json.dumps({"instances": np.round(rng.random((batch, *input_shape)), 4).tolist()}).encode()
            for batch in BATCHES
        }
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for batch in BATCHES:
            self.times(batch, 20)  # warm up

    def times(self, batch: int, count: int) -> list[float]:
        headers = {"Content-Type": "application/json"}
        times = []
        for _ in range(count):
            start = time.perf_counter()
            self.connection.request("POST", "/invocations", body=self.bodies[batch], headers=headers)
            response = self.connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:300]!r}")
            times.append(time.perf_counter() - start)
        return times


def interleaved(version, ports: dict[str, int], input_shape: list[int], requests: int, rounds: int) -> dict:
    """Floor, direct and stable endpoint timed in turn, ``requests / rounds`` at a time, so that the load of a
    shared machine falls on all three alike; the samples of all rounds pooled."""
    per_round = max(1, requests // rounds)
    samples: dict[str, dict[int, list[float]]] = {
        key: {batch: [] for batch in BATCHES} for key in ("floor", "decode", *ports)
    }
    with tempfile.TemporaryFile("w+") as stderr:
        floor = Floor(version, stderr)
        try:
            clients = {key: Client(port, input_shape) for key, port in ports.items()}
            for _ in range(rounds):
                for batch in BATCHES:
                    samples["floor"][batch] += floor.times("predict", batch, per_round)
                    samples["decode"][batch] += floor.times("decode", batch, per_round)
                    for key, client in clients.items():
                        samples[key][batch] += client.times(batch, per_round)
        finally:
            floor.close()
    result = {key: {batch: figures(samples[key][batch], batch) for batch in BATCHES} for key in samples}
    for batch in BATCHES:
        result["floor"][batch]["server_decoding_p50_ms"] = result["decode"][batch]["p50_ms"]
    del result["decode"]
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
    parser.add_argument(
        "--rounds", type=int, default=10, help="floor and HTTP timed in turn, requests/rounds at a time"
    )
    args = parser.parse_args()

    images.ensure_all_images(("tensorflow",))  # rebuilt (layer cache) when the runner's code has changed
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
            measured = interleaved(
                first,
                {"direct": serving.upstream(MODEL)["port"], "stable": serving.endpoint(MODEL).port},
                input_shape,
                args.requests,
                args.rounds,
            )
            in_process, direct, stable = measured["floor"], measured["direct"], measured["stable"]
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
        "rounds": args.rounds,
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
