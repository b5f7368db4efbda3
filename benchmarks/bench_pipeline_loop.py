"""Loop overhead of the pipeline under a real scheduler (Airflow standalone, LocalExecutor, SQLite).

Two scenarios, each a fresh local model repo pushed to a fresh embedded Airflow:

* ``demo``: the demo's weak CNN on MNIST-5k with target 0.80 (the tweak loop runs until the target).
* ``long``: one attempt whose training takes about a minute (target 0.0, so attempt 1 ends the pipeline).

Figures, from the attempt records and Airflow's task instance times:

* per attempt: (attempt wall - container wall) / attempt wall, where the attempt wall runs from the start of
  ``prepare_attempt`` to the end of ``judge_attempt`` and the container wall is training + evaluation
  containers (goal <= 0.05 for a 60 s training);
* pipeline wall (push to the pipeline's summary) / sum of container walls (goal <= 1.10);
* push-to-mail wall time.

Usage: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_pipeline_loop.py [--scenarios demo,long]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from datetime import datetime
from pathlib import Path

from results_file import write_results

SCENARIOS = {
    "demo": {
        "template": "cnn_keras.py",
        "config": {"dataset": "mnist5k", "target": 0.80, "max_attempts": 6},
        "hparams": None,
    },
    "long": {
        "template": "cnn_keras.py",
        "config": {"dataset": "mnist5k", "target": 0.01, "max_attempts": 1},
        "hparams": {"epochs": 100, "filters": 32, "dense_units": 128, "learning_rate": 0.002},
    },
}


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
    )
    with MailSink(root / "mail", port=smtp_port) as sink:
        airflow.start(root / "standalone.log")
        try:
            airflow.wait_until_healthy()
            airflow.wait_for_dags(["train_on_push", "tweak_and_retrain"])
            airflow.unpause("train_on_push", "tweak_and_retrain")
            commit = commit_and_push(work, f"benchmark {name}")
            pushed = time.monotonic()
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="demo,long")
    args = parser.parse_args()
    results = []
    for name in args.scenarios.split(","):
        print(f"== scenario {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"pushtrain-bench-{name}-") as root:
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
    print(f"results written to {write_results(__file__, results)}")


if __name__ == "__main__":
    main()
