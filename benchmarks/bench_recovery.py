"""Recovery cost of self-healing: one training with a kill in the middle against the same training without.

The training runs through the operators' ``run_supervised`` with a lease, as an Airflow task runs it; the health
check runs in a thread every ``--interval`` seconds, calling the function the container_health DAG calls.
The kill lands just after epoch ``--kill-after`` finished.

Figures: T(run with one kill) / T(run without), the epochs trained twice, and the goal
1 + (epoch time + check interval + container start) / T, with at most one epoch redone.

Usage: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_recovery.py [--interval 10] [--epochs 10]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from results_file import write_results

TEMPLATE = Path(__file__).resolve().parents[1] / "include" / "model_templates" / "cnn_keras.py"


class Lines(list):
    """Every line an operator logs: the container's and its own."""

    def info(self, message: str, *args) -> None:
        self.append(str(message) % args if args else str(message))

    warning = error = info


def run_once(name: str, epochs: int, kill_after: int | None, interval: float) -> dict:
    from pushtrain import datasets, health
    from pushtrain.containers import TRAIN, container_spec
    from pushtrain.operators import SandboxedDockerOperator
    from pushtrain.runner import contract
    from pushtrain.sandbox import docker_client, prepare_output_dir
    from pushtrain.supervision import Lease

    data = datasets.ensure_dataset("mnist5k").train_dir
    with tempfile.TemporaryDirectory(prefix="pushtrain-bench-recovery-") as root:
        out = Path(root) / "output"
        prepare_output_dir(out)
        hparams = {"epochs": epochs, "filters": 16, "dense_units": 64}
        spec = container_spec(
            TRAIN,
            name=name,
            run_key=name,
            kind="cnn",
            code_dir=TEMPLATE.parent,
            entry=TEMPLATE.name,
            data_dir=data,
            output_dir=out,
            state_dir=Path(root),
            hparams=hparams,
        )
        lines = Lines()

        class Recorded(SandboxedDockerOperator):
            log = property(lambda self: lines)

        operator = Recorded(task_id="train", image=spec.image)
        stop = threading.Event()

        def heal() -> None:
            client = docker_client()
            while not stop.wait(interval):
                health.check_containers(client, log=lambda _: None)

        def kill_when_due() -> None:
            while not stop.is_set():
                if any(f"epoch {kill_after}/{epochs} " in line for line in lines):
                    subprocess.run(["docker", "kill", name], capture_output=True)
                    return
                time.sleep(0.05)

        threads = [threading.Thread(target=heal, daemon=True)]
        if kill_after:
            threads.append(threading.Thread(target=kill_when_due, daemon=True))
        for thread in threads:
            thread.start()
        started = time.monotonic()
        outcome = operator.run_supervised(spec, Lease(Path(root), TRAIN, holder="benchmark"))
        wall = time.monotonic() - started
        stop.set()
        metrics = contract.read_metrics(out) if outcome.succeeded else {}
        epoch_lines = [int(n) for n in re.findall(rf"epoch (\d+)/{epochs} ", "\n".join(lines))]
        epoch_seconds = [h["seconds"] for h in metrics.get("history", [])]
        return {
            "wall_s": wall,
            "succeeded": outcome.succeeded,
            "restarts": outcome.restarts,
            "epochs_redone": len(epoch_lines) - epochs,
            "resumed_from": metrics.get("resumed_from_epoch"),
            "median_epoch_s": statistics.median(epoch_seconds) if epoch_seconds else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=10.0, help="health check interval, seconds")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--kill-after", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ["PUSHTRAIN_HEALTH_INTERVAL_SECONDS"] = str(int(args.interval))

    from pushtrain import images

    images.ensure_image("tensorflow")
    subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "true", images.image_for_kind("cnn")], check=True
    )  # warm-up: the first start after a build is slower
    probe_started = time.monotonic()
    subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "true", images.image_for_kind("cnn")], check=True
    )
    container_start_s = time.monotonic() - probe_started

    plain, killed = [], []
    for repeat in range(args.repeats):
        plain.append(run_once(f"pushtrain-bench-recovery-plain-{repeat}", args.epochs, None, args.interval))
        killed.append(
            run_once(f"pushtrain-bench-recovery-kill-{repeat}", args.epochs, args.kill_after, args.interval)
        )
    t_plain = statistics.median(r["wall_s"] for r in plain)
    t_killed = statistics.median(r["wall_s"] for r in killed)
    epoch_s = statistics.median(r["median_epoch_s"] for r in plain if r["median_epoch_s"])
    goal = 1 + (epoch_s + args.interval + container_start_s) / t_plain
    result = {
        "interval_s": args.interval,
        "epochs": args.epochs,
        "kill_after_epoch": args.kill_after,
        "t_without_kill_s": round(t_plain, 2),
        "t_with_kill_s": round(t_killed, 2),
        "ratio": round(t_killed / t_plain, 3),
        "goal_ratio": round(goal, 3),
        "epochs_redone": [r["epochs_redone"] for r in killed],
        "restarts": [r["restarts"] for r in killed],
        "median_epoch_s": round(epoch_s, 2),
        "container_start_s": round(container_start_s, 2),
        "runs": {"without": plain, "with_kill": killed},
    }
    print(
        f"T without kill {t_plain:.1f}s, with one kill {t_killed:.1f}s: ratio {result['ratio']} "
        f"(goal <= {result['goal_ratio']} = 1 + (epoch {epoch_s:.1f}s + interval {args.interval:.0f}s + start "
        f"{container_start_s:.1f}s) / T); epochs redone {result['epochs_redone']} (goal <= 1); "
        f"restarts {result['restarts']}"
    )
    print(f"results written to {write_results(__file__, result)}")


if __name__ == "__main__":
    main()
