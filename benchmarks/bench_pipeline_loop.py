"""Loop overhead of the pipeline under a real scheduler (Airflow standalone, LocalExecutor, SQLite), and how
soon a push starts training with the git webhook against the git sensor.

Scenarios, each a fresh local model repo pushed to a fresh embedded Airflow:

* ``demo``: the demo's weak CNN on MNIST-5k with target 0.80 (the tweak loop runs until the target); the
  sensor notices the push.
* ``demo-webhook``: the same, the push delivered to the webhook (``POST /pushtrain/hooks/git``) at once.
* ``long``: one attempt whose training takes about a minute (target 0.0, so attempt 1 ends the pipeline).
* ``latency``: push-to-first-training-container, ``--pushes`` pushes with the webhook and as many without
  (the sensor, poking every 30 s), alternating, each after a random pause of up to 30 s so that pushes
  land at every point of the sensor's cycle. A push is a KNN model on digits with one attempt; the next push
  waits until its pipeline ended. The clock starts when ``git push`` returned and stops at the Docker
  ``start`` event of the pipeline's first training container (goal: under 5 s at the median with the webhook).

Figures, from the attempt records and Airflow's task instance times:

* per attempt: (attempt wall - container wall) / attempt wall, where the attempt wall runs from the start of
  ``prepare_attempt`` to the end of ``judge_attempt`` and the container wall is training + evaluation
  containers (goal <= 0.05 for a 60 s training);
* pipeline wall (push to the pipeline's summary) / sum of container walls (goal <= 1.10);
* push-to-mail wall time;
* push-to-first-training-container seconds, median and range, webhook against sensor.

Usage: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_pipeline_loop.py
[--scenarios demo,demo-webhook,long,latency] [--pushes 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from results_file import results_path, write_results

from pushtrain.ui.webhook import SECRET_ENV, deliver_push

SCENARIOS = {
    "demo": {
        "template": "cnn_keras.py",
        "config": {"dataset": "mnist5k", "target": 0.80, "max_attempts": 6},
        "hparams": None,
        "webhook": False,
    },
    "demo-webhook": {
        "template": "cnn_keras.py",
        "hparams": None,
        "webhook": True,
        "config": {"dataset": "mnist5k", "target": 0.80, "max_attempts": 6},
    },
    "long": {
        "template": "cnn_keras.py",
        "config": {"dataset": "mnist5k", "target": 0.01, "max_attempts": 1},
        "hparams": {"epochs": 100, "filters": 32, "dense_units": 128, "learning_rate": 0.002},
        "webhook": False,
    },
}
LATENCY_CONFIG = {"dataset": "digits", "target": 0.01, "max_attempts": 1}
MAX_PAUSE_S = 30.0
WEBHOOK_SECRET = secrets.token_hex(20)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def task_times(airflow, dag_id: str, run_id: str) -> dict[str, tuple[datetime, datetime]]:
    listed = airflow.airflow("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json")
    document = json.loads(listed.stdout[listed.stdout.index("[") :])
    times = {}
    for row in document:
        if row.get("start_date") and row.get("end_date"):
            times[row["task_id"]] = (
                datetime.fromisoformat(row["start_date"]),
                datetime.fromisoformat(row["end_date"]),
            )
    return times


def run_scenario(name: str, root: Path) -> dict:
    from pushtrain import datasets, pipeline
    from pushtrain.demo import commit_and_push, make_model_repo, wait_for_pipeline
    from pushtrain.mailsink import MailSink
    from pushtrain.standalone import EmbeddedAirflow

    spec = SCENARIOS[name]
    os.environ["PUSHTRAIN_DATA_DIR"] = str(root / "data")
    datasets.ensure_dataset(spec["config"]["dataset"])
    bare, work = make_model_repo(root / "repo", template=spec["template"], config=spec["config"])
    if spec["hparams"]:
        from pushtrain.tweak import apply_hparams

        model = work / "model.py"
        model.write_text(apply_hparams(model.read_text(), spec["hparams"]))
    smtp_port = free_port()
    airflow = EmbeddedAirflow(
        home=root / "airflow",
        data_dir=root / "data",
        repo_url=str(bare),
        smtp_port=smtp_port,
        port=free_port(),
        extra_env={SECRET_ENV: WEBHOOK_SECRET},
    )
    with MailSink(root / "mail", port=smtp_port) as sink:
        airflow.start(root / "standalone.log")
        try:
            airflow.wait_until_healthy()
            airflow.wait_for_dags(["train_on_push", "tweak_and_retrain"])
            airflow.unpause("train_on_push", "tweak_and_retrain")
            commit = commit_and_push(work, f"benchmark {name}")
            pushed = time.monotonic()
            if spec["webhook"]:
                status, answer = deliver_push(
                    f"{airflow.url}/pushtrain/hooks/git", WEBHOOK_SECRET, str(bare), commit
                )
                print(f"  webhook: {status} {answer.get('status')}", flush=True)
            summary = wait_for_pipeline(commit, 1800, report=lambda line: print(f"  {line}", flush=True))
            pipeline_wall = time.monotonic() - pushed
            while not sink.messages() and time.monotonic() - pushed < pipeline_wall + 60:
                time.sleep(0.5)
            push_to_mail = time.monotonic() - pushed
            attempts = []
            for record in pipeline.attempt_records(summary.pipeline_id):
                times = task_times(airflow, record.airflow.dag_id, record.airflow.run_id)
                wall = (times["judge_attempt"][1] - times["prepare_attempt"][0]).total_seconds()
                container = record.timings.train_container_seconds + record.timings.evaluate_container_seconds
                attempts.append(
                    {
                        "attempt": record.attempt,
                        "attempt_wall_s": round(wall, 2),
                        "container_wall_s": round(container, 2),
                        "train_seconds": record.timings.train_seconds,
                        "overhead": round((wall - container) / wall, 3),
                    }
                )
        finally:
            airflow.stop()
    container_total = sum(a["container_wall_s"] for a in attempts)
    return {
        "scenario": name,
        "outcome": summary.outcome,
        "attempts": attempts,
        "pipeline_wall_s": round(pipeline_wall, 1),
        "push_to_mail_s": round(push_to_mail, 1),
        "container_wall_total_s": round(container_total, 1),
        "pipeline_wall_over_container_wall": round(pipeline_wall / container_total, 2),
    }


class TrainingStarts:
    """Docker ``start`` events of training containers, by run key (``<pipeline id>/attempt-<n>``)."""

    def __init__(self) -> None:
        from pushtrain.sandbox import docker_client
        from pushtrain.supervision import ROLE_LABEL

        self._events = docker_client().events(
            decode=True, filters={"type": "container", "event": "start", "label": f"{ROLE_LABEL}=train"}
        )
        self.started: dict[str, float] = {}
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from pushtrain.supervision import RUN_KEY_LABEL

        try:
            for event in self._events:
                run_key = event.get("Actor", {}).get("Attributes", {}).get(RUN_KEY_LABEL)
                if run_key and run_key not in self.started:
                    self.started[run_key] = event["timeNano"] / 1e9
        except Exception:  # the stream closed
            return

    def first_for(self, sha: str) -> float | None:
        """When the first training container of the commit's pipeline started (wall clock), if it did."""
        return self.started.get(
            next(
                (key for key in self.started if key.startswith(f"{sha[:8]}-") and key.endswith("/attempt-1")),
                "",
            )
        )

    def close(self) -> None:
        self._events.close()


def run_latency(root: Path, pushes: int) -> dict:
    """Push-to-first-training-container seconds with the webhook and with the sensor, on one Airflow."""
    from pushtrain import datasets
    from pushtrain.demo import commit_and_push, make_model_repo, wait_for_pipeline
    from pushtrain.mailsink import MailSink
    from pushtrain.standalone import EmbeddedAirflow

    os.environ["PUSHTRAIN_DATA_DIR"] = str(root / "data")
    datasets.ensure_dataset("digits")
    bare, work = make_model_repo(root / "repo", template="knn_sklearn.py", config=LATENCY_CONFIG)
    smtp_port = free_port()
    airflow = EmbeddedAirflow(
        home=root / "airflow",
        data_dir=root / "data",
        repo_url=str(bare),
        smtp_port=smtp_port,
        port=free_port(),
        extra_env={SECRET_ENV: WEBHOOK_SECRET},
    )
    samples: dict[str, list[float]] = {"webhook": [], "sensor": []}
    rng = random.Random(20261130)
    with MailSink(root / "mail", port=smtp_port):
        airflow.start(root / "standalone.log")
        starts = TrainingStarts()
        try:
            airflow.wait_until_healthy()
            airflow.wait_for_dags(["train_on_push", "tweak_and_retrain"])
            airflow.unpause("train_on_push", "tweak_and_retrain")
            for n in range(2 * pushes):
                mode = ("webhook", "sensor")[n % 2]
                time.sleep(rng.uniform(0, MAX_PAUSE_S))
                with (work / "CHANGES.md").open("a") as changes:
                    changes.write(f"- push {n}\n")
                sha = commit_and_push(work, f"latency push {n} ({mode})")
                pushed = time.time()
                if mode == "webhook":
                    status, answer = deliver_push(
                        f"{airflow.url}/pushtrain/hooks/git", WEBHOOK_SECRET, str(bare), sha
                    )
                    if status >= 300:  # 200 "already_claimed": a poke fetched it in the same instant
                        raise RuntimeError(f"the webhook answered {status}: {answer}")
                deadline = time.monotonic() + 600
                while starts.first_for(sha) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                started = starts.first_for(sha)
                if started is None:
                    raise TimeoutError(f"no training container for push {n} ({mode}) within 600 s")
                samples[mode].append(round(started - pushed, 2))
                print(
                    f"  push {n} ({mode}): first training container after {started - pushed:.1f}s", flush=True
                )
                wait_for_pipeline(sha, 900, report=lambda line: None)
        finally:
            starts.close()
            airflow.stop()
    return {
        "scenario": "latency",
        "pushes_per_mode": pushes,
        "max_pause_s": MAX_PAUSE_S,
        "poke_interval_s": airflow.poke_interval_s,
        "watch_interval_minutes": airflow.watch_interval_minutes,
        **{
            mode: {
                "samples_s": values,
                "median_s": round(statistics.median(values), 2),
                "min_s": min(values),
                "max_s": max(values),
            }
            for mode, values in samples.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="demo,demo-webhook,long,latency")
    parser.add_argument(
        "--pushes", type=int, default=5, help="latency: pushes with the webhook (and as many without)"
    )
    args = parser.parse_args()
    results = []
    for name in args.scenarios.split(","):
        print(f"== scenario {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"pushtrain-bench-{name}-") as root:
            if name == "latency":
                result = run_latency(Path(root), args.pushes)
                results.append(result)
                for mode in ("webhook", "sensor"):
                    print(
                        f"{mode}: push to first training container median {result[mode]['median_s']}s "
                        f"({result[mode]['min_s']}-{result[mode]['max_s']}s)",
                        flush=True,
                    )
                continue
            result = run_scenario(name, Path(root))
        results.append(result)
        print(
            f"{'attempt':>7} {'attempt wall s':>15} {'container wall s':>17} {'train s':>8} {'overhead':>9}"
        )
        for a in result["attempts"]:
            print(
                f"{a['attempt']:>7} {a['attempt_wall_s']:>15.1f} {a['container_wall_s']:>17.1f} "
                f"{a['train_seconds']:>8.1f} {a['overhead']:>9.3f}"
            )
        print(
            f"outcome {result['outcome']}; pipeline wall {result['pipeline_wall_s']}s; push to mail "
            f"{result['push_to_mail_s']}s; container wall {result['container_wall_total_s']}s; "
            f"pipeline/container = {result['pipeline_wall_over_container_wall']} (goal <= 1.10)",
            flush=True,
        )
    # A run of some scenarios replaces theirs and keeps the others' last figures.
    path = results_path(__file__)
    kept = [
        r
        for r in (json.loads(path.read_text()) if path.exists() else [])
        if r.get("scenario") not in {result["scenario"] for result in results}
    ]
    print(f"results written to {write_results(__file__, kept + results)}")


if __name__ == "__main__":
    main()
