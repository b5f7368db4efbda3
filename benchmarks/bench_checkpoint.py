"""What per-epoch checkpointing costs: epoch time of a Keras CNN with checkpoints against without.

Trains ``include/model_templates/cnn_keras.py`` on MNIST-5k (``mnist5k/v1/train``) through
``localrun.train`` (the real image, sandbox and runner), ``--repeats`` pairs of runs, one with per-epoch
checkpoints and one with ``--no-checkpoints``, alternating the order from pair to pair (AB BA AB ...) so
that drift of the machine hits both sides alike.

What is measured, and why: the runner's own per-epoch ``seconds`` (``metrics.json`` history) runs from
``on_epoch_begin`` to the start of ``on_epoch_end``, and the checkpoint is written *after* that inside
``on_epoch_end``, so those figures (and ``train_seconds``, their sum) do not contain the save at all. The
container wall time does, but it is dominated by a fixed start-up (TensorFlow import, data loading, graph
tracing in epoch 1, the final model save). The headline figure is therefore the **epoch interval**: the
time between two consecutive ``epoch k/N`` progress lines as the host receives them from the container's
log stream (timestamped in the ``log`` callback). The runner prints that line at the end of
``on_epoch_end``, after the checkpoint is saved, so an interval is exactly one epoch of training plus
validation plus one checkpoint save plus the fixed per-line cost. Epoch 1 (graph tracing) has no preceding
epoch line and is left out, so the medians are over epochs 2..N of every run.

Epochs of this small CNN take well under a second on 2 cores, so the load of a shared machine moves the
interval by more than the save costs. Two figures are therefore given for the goal: the direct ratio of the
median intervals (with / without), and the *derived* ratio ``1 + save / interval``, where ``save`` is the
difference between the two sides of the median of (interval - the runner's own epoch seconds). That
difference is taken within each epoch, so machine drift largely cancels; it is the steadier figure.

Goal: median epoch interval with checkpoints / without <= 1.05 (direct and derived).

Run: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_checkpoint.py [--repeats 3] [--epochs 6]``.
Containers are named ``pushtrain-bench-ckpt-*``; outputs go to a temporary directory that is removed.
Results: ``benchmarks/results/bench_checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from docker.errors import APIError
from results_file import results_path, write_results

from pushtrain import images, localrun, settings
from pushtrain.runner import contract

RESULTS = results_path(__file__)
MODEL = settings.PROJECT_ROOT / "include" / "model_templates" / "cnn_keras.py"
EPOCH_LINE = re.compile(r"\[pushtrain\] epoch (\d+)/(\d+) .*seconds=([0-9.]+)")
TRAINING_LINE = re.compile(r"\[pushtrain\] training \d+ epochs")
GOAL_RATIO = 1.05
MAX_TRIES = 3


class BenchError(RuntimeError):
    pass


class RetryableRun(BenchError):
    """A run that failed in a way another try may not (e.g. its container was removed by someone else)."""


def one_run(
    workdir: Path,
    index: int,
    checkpoints: bool,
    data: Path,
    hparams: dict,
    verbose: bool,
    try_number: int = 0,
) -> dict:
    mode = "with" if checkpoints else "without"
    out = workdir / f"run-{index}-{mode}-{try_number}"
    lines: list[tuple[float, str]] = []

    def log(line: str) -> None:
        lines.append((time.perf_counter(), line))
        if verbose:
            print(f"    {line}", flush=True)

    started = time.perf_counter()
    try:
        result = localrun.train(
            model=MODEL,
            data=data,
            out=out,
            hparams=hparams,
            kind="cnn",
            name=f"bench-ckpt-{os.getpid()}-{index}-{mode}-{try_number}",
            checkpoints=checkpoints,
            log=log,
        )
        metrics = result.metrics if result.succeeded else None
        problem = None if result.succeeded else result.outcome.describe()
    except APIError as exc:
        # localrun labels its containers io.pushtrain.role=train, so the health check (or a test suite's
        # clean-up) running beside us may remove a finished one while run_container removes it too (409).
        # The attempt's own files say whether training completed.
        try:
            metrics, problem = contract.read_metrics(out), None
        except ValueError as unreadable:
            metrics, problem = None, f"{exc.explanation or exc} ({unreadable})"
    container_wall = time.perf_counter() - started
    if metrics is None:
        tail = " | ".join(line for _, line in lines[-5:])
        raise RetryableRun(f"run {index} ({mode} checkpoints) failed: {problem}: {tail}")

    epoch_times = {int(m.group(1)): t for t, line in lines if (m := EPOCH_LINE.search(line))}
    training_started = next((t for t, line in lines if TRAINING_LINE.search(line)), None)
    epochs = hparams["epochs"]
    if sorted(epoch_times) != list(range(1, epochs + 1)) or training_started is None:
        raise BenchError(
            f"run {index} ({mode}): expected progress lines for epochs 1..{epochs}, "
            f"got {sorted(epoch_times)}; the runner's line format may have changed"
        )
    history = metrics["history"]
    intervals = [epoch_times[k] - epoch_times[k - 1] for k in range(2, epochs + 1)]
    runner_seconds = [float(record["seconds"]) for record in history[1:]]
    checkpoint_files = sorted((out / contract.CHECKPOINT_DIR).rglob("epoch-*.keras"))
    return {
        "index": index,
        "checkpoints": checkpoints,
        "container_wall_s": container_wall,
        "fit_wall_s": epoch_times[epochs] - training_started,  # "training ..." line to the last epoch line
        "train_seconds": float(metrics["train_seconds"]),
        "epoch_interval_s": intervals,  # epochs 2..N, host-observed, save included
        "runner_epoch_s": runner_seconds,  # epochs 2..N, runner-measured, save excluded
        "accuracy": float(metrics["accuracy"]),
        "tries": try_number + 1,
        "checkpoint_bytes": checkpoint_files[-1].stat().st_size if checkpoint_files else 0,
        "checkpoint_files_left": len(checkpoint_files),
    }


def summarize(runs: list[dict]) -> dict:
    intervals = [x for run in runs for x in run["epoch_interval_s"]]
    runner = [x for run in runs for x in run["runner_epoch_s"]]
    overhead = [
        i - r for run in runs for i, r in zip(run["epoch_interval_s"], run["runner_epoch_s"], strict=True)
    ]
    return {
        "runs": len(runs),
        "epoch_interval_median_s": statistics.median(intervals),
        "epoch_interval_min_s": min(intervals),
        "epoch_interval_max_s": max(intervals),
        "runner_epoch_median_s": statistics.median(runner),
        "outside_runner_seconds_median_s": statistics.median(overhead),  # save + per-line cost
        "fit_wall_median_s": statistics.median(run["fit_wall_s"] for run in runs),
        "container_wall_median_s": statistics.median(run["container_wall_s"] for run in runs),
        "train_seconds_median": statistics.median(run["train_seconds"] for run in runs),
        "checkpoint_bytes": max(run["checkpoint_bytes"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (with, without); default 3")
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per run (default 10; epoch 1 is not timed)"
    )
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--dense-units", type=int, default=64)
    parser.add_argument("--dataset", default="mnist5k", help="data set under data/datasets/<name>/v1/train")
    parser.add_argument("--verbose", action="store_true", help="echo the containers' log lines")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.epochs < 2:
        parser.error("--repeats must be >= 1 and --epochs >= 2 (epoch 1 is warm-up)")
    data = settings.datasets_dir() / args.dataset / "v1" / "train"
    if not data.is_dir():
        print(
            f"[bench] data set {data} is missing: run `PYTHONPATH=plugins .venv/bin/python -m pushtrain "
            "datasets`",
            file=sys.stderr,
        )
        return 1
    hparams = {"epochs": args.epochs, "filters": args.filters, "dense_units": args.dense_units}
    image = images.ensure_image("tensorflow")

    runs: list[dict] = []
    workdir = Path(tempfile.mkdtemp(prefix="pushtrain-bench-ckpt-"))
    try:
        index = 0
        for pair in range(args.repeats):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for checkpoints in order:
                for try_number in range(MAX_TRIES):
                    try:
                        run = one_run(workdir, index, checkpoints, data, hparams, args.verbose, try_number)
                        break
                    except RetryableRun as exc:
                        if try_number + 1 == MAX_TRIES:
                            raise
                        print(f"[bench] {exc}; trying again", file=sys.stderr, flush=True)
                runs.append(run)
                print(
                    f"[bench] run {index} {'with   ' if checkpoints else 'without'} checkpoints: "
                    f"interval median {statistics.median(run['epoch_interval_s']):.3f}s, runner epoch median "
                    f"{statistics.median(run['runner_epoch_s']):.3f}s, fit {run['fit_wall_s']:.1f}s, "
                    f"container {run['container_wall_s']:.1f}s, accuracy {run['accuracy']:.3f}",
                    flush=True,
                )
                index += 1
    except (BenchError, localrun.LocalRunError) as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    with_ckpt = summarize([r for r in runs if r["checkpoints"]])
    without = summarize([r for r in runs if not r["checkpoints"]])
    ratios = {
        key: with_ckpt[f"{key}_median_s"] / without[f"{key}_median_s"]
        for key in ("epoch_interval", "runner_epoch", "fit_wall", "container_wall")
    }
    save_cost = with_ckpt["outside_runner_seconds_median_s"] - without["outside_runner_seconds_median_s"]
    ratios["derived_epoch_interval"] = 1 + save_cost / without["epoch_interval_median_s"]
    pair_ratios = []
    for first, second in zip(runs[0::2], runs[1::2], strict=True):  # runs were appended pair by pair
        with_run, without_run = (first, second) if first["checkpoints"] else (second, first)
        pair_ratios.append(
            statistics.median(with_run["epoch_interval_s"])
            / statistics.median(without_run["epoch_interval_s"])
        )
    ratios["epoch_interval_per_pair"] = pair_ratios

    print()
    print(
        f"image {image}; {args.dataset} train; hparams {json.dumps(hparams)}; {args.repeats} pairs; "
        f"medians over epochs 2..{args.epochs} of every run"
    )
    print(f"{'figure':<44} {'with':>9} {'without':>9} {'ratio':>7}")
    rows = [
        ("epoch interval, host-observed (save incl.) s", "epoch_interval_median_s", "epoch_interval"),
        ("runner epoch seconds (save excluded) s", "runner_epoch_median_s", "runner_epoch"),
        ("fit wall, all epochs incl. epoch 1 s", "fit_wall_median_s", "fit_wall"),
        ("container wall (start-up, fit, final save) s", "container_wall_median_s", "container_wall"),
    ]
    for label, key, ratio_key in rows:
        print(f"{label:<44} {with_ckpt[key]:>9.3f} {without[key]:>9.3f} {ratios[ratio_key]:>7.3f}")
    print(
        f"{'interval minus runner seconds (median) s':<44} {with_ckpt['outside_runner_seconds_median_s']:>9.3f} "
        f"{without['outside_runner_seconds_median_s']:>9.3f}"
    )
    print(
        f"estimated checkpoint save per epoch: {save_cost * 1000:.0f} ms "
        f"({save_cost / without['epoch_interval_median_s'] * 100:.1f}% of an epoch); "
        f"checkpoint file {with_ckpt['checkpoint_bytes'] / 1024:.0f} KiB"
    )
    print(f"per-pair interval ratios (with/without): {', '.join(f'{r:.3f}' for r in pair_ratios)}")
    verdict = {
        key: "meets" if ratios[key] <= GOAL_RATIO else "MISSES"
        for key in ("epoch_interval", "derived_epoch_interval")
    }
    print()
    write_results(
        __file__,
        {
            "benchmark": "bench_checkpoint",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "image": image,
            "dataset": args.dataset,
            "hparams": hparams,
            "repeats": args.repeats,
            "method": "epoch interval = time between consecutive 'epoch k/N' log lines received on the host; the "
            "runner prints that line after the checkpoint save, so it includes the save. Epoch 1 excluded.",
            "goal": {
                "epoch_interval_ratio_max": GOAL_RATIO,
                "met_direct": ratios["epoch_interval"] <= GOAL_RATIO,
                "met_derived": ratios["derived_epoch_interval"] <= GOAL_RATIO,
            },
            "with_checkpoints": with_ckpt,
            "without_checkpoints": without,
            "ratios_with_over_without": ratios,
            "estimated_save_cost_s": save_cost,
            "runs": runs,
        },
    )
    print(f"[bench] results written to {RESULTS}")
    print(
        f"ratios (with/without checkpoints, goal <= {GOAL_RATIO}): "
        f"epoch-interval={ratios['epoch_interval']:.3f} ({verdict['epoch_interval']}) "
        f"derived={ratios['derived_epoch_interval']:.3f} ({verdict['derived_epoch_interval']}) "
        f"runner-epoch={ratios['runner_epoch']:.3f} fit-wall={ratios['fit_wall']:.3f} "
        f"container-wall={ratios['container_wall']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
