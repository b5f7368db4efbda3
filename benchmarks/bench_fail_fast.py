"""Fail fast: seconds from the training container's start to the failed training task, for a model file
that imports a package the training image does not have.

It runs what issue 17's new user ran, ``airflow dags test train_on_push -c '{"commit": "main", "repo_url":
...}'``, on a local bare repository whose model file starts with ``import xgboost``, in a throw-away
``AIRFLOW_HOME`` and data dir (the data sets are linked from the project's), without an ``smtp_default``
connection. The container's start and death come from the Docker engine's events, the task's end from
Airflow's record of the run. Also reported: how often the container started (1: no restart), whether the
task was retried (it must not be), the ``dags test`` wall time, whether the log said what to do, and
whether the failure notifier said once that no mail was sent instead of failing.

Before fail-fast this took about 225 s (issue 17: two 95 s waits for container_health to restart a
container that fails the same way, and an Airflow retry in between). Goal: under 15 s. Images:
``PUSHTRAIN_IMAGE_SKLEARN`` runs a given image instead of building the current source's.

Usage: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_fail_fast.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from results_file import write_results

MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / "missing_module.py"
BEFORE_S = 225.0  # issue 17, measured before fail-fast
GOAL_S = 15.0
NO_MAIL_WARNING = "no mail sent: there is no 'smtp_default' connection"


class BenchError(RuntimeError):
    pass


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _cli_json(cli: str, environment: dict[str, str], *args: str):
    """The JSON an ``airflow`` CLI command prints (its last line that is JSON: logging may come before)."""
    done = subprocess.run([cli, *args], env=environment, capture_output=True, text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(("[", "{")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise BenchError(
        f"airflow {' '.join(args[:2])} printed no JSON ({done.returncode}):\n{done.stdout[-2000:]}"
        f"\n{done.stderr[-2000:]}"
    )


def run_once(root: Path) -> dict:
    from pushtrain import datasets, settings
    from pushtrain.demo import commit_and_push, make_model_repo
    from pushtrain.standalone import VENV_BIN, EmbeddedAirflow

    datasets.ensure_dataset("digits")
    data_dir = root / "data"
    data_dir.mkdir()
    (data_dir / "datasets").symlink_to(settings.datasets_dir(), target_is_directory=True)
    bare, work = make_model_repo(
        root / "repos", template="knn_sklearn.py", config={"dataset": "digits"}, name="needs-xgboost"
    )
    shutil.copyfile(MODEL, work / "model.py")
    commit_and_push(work, "a KNN that imports xgboost")

    airflow = EmbeddedAirflow(home=root / "airflow", data_dir=data_dir, repo_url=str(bare), smtp_port=0)
    environment = airflow.environment()
    environment.pop("AIRFLOW_CONN_SMTP_DEFAULT")  # as on a fresh install: no mail connection
    cli = str(VENV_BIN / "airflow")
    subprocess.run([cli, "db", "migrate"], env=environment, check=True, capture_output=True, timeout=300)

    events = subprocess.Popen(
        [
            "docker",
            "events",
            "--format",
            "{{json .}}",
            "--filter",
            "type=container",
            "--filter",
            "label=io.pushtrain.role=train",
            "--filter",
            "event=start",
            "--filter",
            "event=die",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    test = subprocess.run(
        [cli, "dags", "test", "train_on_push", "-c", json.dumps({"commit": "main", "repo_url": str(bare)})],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.monotonic() - started
    time.sleep(1)  # the engine's last events
    events.terminate()
    seen = [json.loads(line) for line in events.communicate()[0].splitlines() if line.strip()]
    output = test.stdout + test.stderr

    runs = _cli_json(cli, environment, "dags", "list-runs", "train_on_push", "-o", "json")
    states = _cli_json(
        cli, environment, "tasks", "states-for-dag-run", "train_on_push", runs[0]["run_id"], "-o", "json"
    )
    train = next((s for s in states if s["task_id"] == "train_knn"), None)
    starts = [e for e in seen if e["Action"] == "start"]
    deaths = [e for e in seen if e["Action"] == "die"]
    if train is None or not starts or train["state"] != "failed":
        raise BenchError(
            f"train_knn did not run and fail as expected ({train}); dags test said:\n{output[-4000:]}"
        )
    container_started = starts[0]["timeNano"] / 1e9
    return {
        "container_start_to_failed_task_s": round(_seconds(train["end_date"]) - container_started, 2),
        "container_run_s": round(deaths[0]["timeNano"] / 1e9 - container_started, 2) if deaths else None,
        "dags_test_wall_s": round(wall, 1),
        "container_starts": len(starts),
        "exit_code": int(deaths[0]["Actor"]["Attributes"].get("exitCode", -1)) if deaths else None,
        "retried": "up_for_retry" in output.lower(),
        "fix_in_log": "What to do: add `xgboost` to requirements.txt" in output,
        "no_mail_warnings": output.count(NO_MAIL_WARNING),
        "smtp_errors": output.count("SMTP connection is not found"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pushtrain import images, settings

    if not settings.image_override("sklearn"):
        images.ensure_image("sklearn")
    samples = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="pushtrain-bench-fail-fast-") as root:
            sample = run_once(Path(root))
        samples.append(sample)
        print(
            f"run {repeat + 1}: container start -> failed task {sample['container_start_to_failed_task_s']} s "
            f"(container ran {sample['container_run_s']} s, exit {sample['exit_code']}; "
            f"{sample['container_starts']} start(s), retried: {sample['retried']}; dags test "
            f"{sample['dags_test_wall_s']} s; fix in log: {sample['fix_in_log']}; no-mail warnings "
            f"{sample['no_mail_warnings']}, SMTP errors {sample['smtp_errors']})",
            flush=True,
        )
    median = statistics.median(s["container_start_to_failed_task_s"] for s in samples)
    path = write_results(
        __file__,
        {
            "model": "import of a package the image lacks (tests/fixtures/models/missing_module.py)",
            "how": "airflow dags test train_on_push on a local bare repository, no smtp_default connection",
            "container_start_to_failed_task_s_median": median,
            "before_s": BEFORE_S,
            "goal_s": GOAL_S,
            "samples": samples,
        },
    )
    print(
        f"median {median} s from the container's start to the failed task (before: ~{BEFORE_S:.0f} s, goal "
        f"< {GOAL_S:.0f} s); {path}"
    )


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        raise SystemExit(f"bench_fail_fast: {exc}") from None
