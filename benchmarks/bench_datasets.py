"""How fast a data set import is, against the floor of copying and hashing the same bytes, and whether its
memory stays flat as the number of images grows.

Source: a folder of ``--images`` (default 20,000) 28x28 grey PNGs in 10 class folders, made from the 5,000
real MNIST digits of ``mnist5k`` (each copy with a different pixel flipped, so no two files are equal). Such
images already have the data set's shape, the common case of a uniform folder: the import checks every
PNG (chunk CRCs, the pixel stream's length) and copies it byte for byte.

Measured, alternating the two sides ``--repeats`` times so that drift of a shared machine hits both alike:

* **floor**: one shell run of ``cp -r SRC DST && find DST -type f -print0 | xargs -0 sha256sum`` (the bytes
  copied once and hashed once, by tools written in C);
* **import**: ``python -c 'datasets.add_path(...)'`` in a fresh process and a fresh data dir (walk, hash and
  header pass, split, check-and-write pass, split hashes, manifest, rename), its wall time and peak RSS
  (``VmHWM`` from the process's own ``/proc/self/status`` at its end: ``ru_maxrss`` is no good here, Linux
  carries the forking parent's high-water mark into it across ``exec``). The same process, run on an
  unchanged folder a second time, measures a no-op re-add (hash pass only).

Goal: median import / median floor <= 2.0. Memory: the import's peak RSS at ``--small`` images and at
``--images`` images, minus the RSS of a process that only imports the same modules. No image is held
beyond the one being read, so what grows with the count is only the per-image bookkeeping (its path, its
sha256, its header, its output name): the figure ``growth_bytes_per_extra_image`` shows how much.

Run: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_datasets.py [--images 20000] [--small 5000]
[--repeats 3]``. Work files go to a temporary directory that is removed. Results:
``benchmarks/results/bench_datasets.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from results_file import results_path, write_results

from pushtrain import datasets, settings

RESULTS = results_path(__file__)
GOAL_RATIO = 2.0
FLOOR_COMMAND = "cp -r {src} {dst} && find {dst} -type f -print0 | xargs -0 sha256sum > /dev/null"
PEAK_RSS = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))"
IMPORT_SCRIPT = f"""
import sys, time
from pushtrain import datasets
started = time.perf_counter()
result = datasets.add_path(sys.argv[1], sys.argv[2], log=lambda line: None)
print(f"{{time.perf_counter() - started:.4f}} {{int(result.created)}} {{{PEAK_RSS}}}")
"""
BASELINE_SCRIPT = f"""
from pushtrain import datasets, dataset_images, dataset_tables
from PIL import Image
Image.init()
print(f"0 0 {{{PEAK_RSS}}}")
"""


def make_source(folder: Path, count: int) -> int:
    """``count`` distinct 28x28 grey PNGs from mnist5k's digits; returns their bytes."""
    rows = datasets.read_source_rows("mnist5k")
    total = 0
    for index in range(count):
        pixels, label = rows[index % len(rows)]
        pixels = list(pixels)
        spot = (index // len(rows)) * 97 % len(pixels)
        pixels[spot] = 255 - pixels[spot]
        target = folder / label / f"{index:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        content = datasets.grey_png(pixels, 28)
        target.write_bytes(content)
        total += len(content)
    return total


def timed_shell(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(["bash", "-c", command], check=True)
    return time.perf_counter() - started


def run_python(script: str, *args: str, env: dict[str, str]) -> tuple[str, float, int]:
    """(stdout, wall seconds, peak RSS in KiB) of a fresh interpreter running ``script``, which prints its
    own VmHWM last."""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, env=env, text=True)
    wall = time.perf_counter() - started
    if completed.returncode:
        raise RuntimeError(f"{script!r} failed with exit {completed.returncode}: {completed.stderr[-2000:]}")
    return completed.stdout, wall, int(completed.stdout.split()[-1])


def measure(source: Path, work: Path, repeats: int, env: dict[str, str]) -> dict:
    floors, imports, rss, no_ops = [], [], [], []
    timed_shell(f"cat $(find {source} -type f) > /dev/null")  # both sides start from a warm page cache
    for repeat in range(repeats):
        for side in ("floor", "import") if repeat % 2 == 0 else ("import", "floor"):
            if side == "floor":
                destination = work / "copy"
                floors.append(timed_shell(FLOOR_COMMAND.format(src=source, dst=destination)))
                shutil.rmtree(destination)
            else:
                data_dir = work / "data"
                run_env = {**env, "PUSHTRAIN_DATA_DIR": str(data_dir)}
                output, wall, peak = run_python(IMPORT_SCRIPT, "bench", str(source), env=run_env)
                assert output.split()[1] == "1", output
                imports.append(wall)
                rss.append(peak)
                output, wall, _ = run_python(IMPORT_SCRIPT, "bench", str(source), env=run_env)
                assert output.split()[1] == "0", output  # unchanged: a no-op
                no_ops.append(wall)
                shutil.rmtree(data_dir)
    return {
        "floor_s": floors,
        "import_s": imports,
        "no_op_readd_s": no_ops,
        "import_peak_rss_kib": rss,
        "floor_median_s": statistics.median(floors),
        "import_median_s": statistics.median(imports),
        "no_op_readd_median_s": statistics.median(no_ops),
        "ratio_import_to_floor": statistics.median(imports) / statistics.median(floors),
        "import_peak_rss_median_kib": statistics.median(rss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=5_000, help="the second size, for the memory comparison")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(settings.PROJECT_ROOT / "plugins")}
    work = Path(tempfile.mkdtemp(prefix="pushtrain-bench-datasets-"))
    try:
        _, _, baseline_rss = run_python(BASELINE_SCRIPT, env=env)
        sizes = {}
        for count in (args.small, args.images):
            source = work / f"source-{count}"
            source_bytes = make_source(source, count)
            print(
                f"[bench] {count} images, {source_bytes / 2**20:.1f} MiB: measuring {args.repeats} x "
                "(floor, import)",
                flush=True,
            )
            figures = measure(source, work, args.repeats, env)
            figures.update(
                images=count,
                source_bytes=source_bytes,
                rss_above_baseline_kib=figures["import_peak_rss_median_kib"] - baseline_rss,
            )
            sizes[str(count)] = figures
            print(
                f"[bench] {count}: floor {figures['floor_median_s']:.2f} s, import "
                f"{figures['import_median_s']:.2f} s (x{figures['ratio_import_to_floor']:.2f}), no-op re-add "
                f"{figures['no_op_readd_median_s']:.2f} s, peak RSS {figures['import_peak_rss_median_kib'] / 1024:.0f}"
                f" MiB ({figures['rss_above_baseline_kib'] / 1024:.1f} MiB above the modules alone)",
                flush=True,
            )
            shutil.rmtree(source)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    large, small = sizes[str(args.images)], sizes[str(args.small)]
    growth = large["rss_above_baseline_kib"] - small["rss_above_baseline_kib"]
    document = {
        "benchmark": "bench_datasets",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "source": "28x28 grey PNGs from mnist5k, 10 class folders; the import copies them after checking",
        "floor_command": FLOOR_COMMAND,
        "goal": {"ratio_max": GOAL_RATIO, "met": large["ratio_import_to_floor"] <= GOAL_RATIO},
        "baseline_rss_kib": baseline_rss,
        "memory": {
            "images": [args.small, args.images],
            "rss_above_baseline_kib": [small["rss_above_baseline_kib"], large["rss_above_baseline_kib"]],
            "growth_kib": growth,
            "growth_bytes_per_extra_image": round(growth * 1024 / (args.images - args.small), 1),
        },
        "sizes": sizes,
    }
    print(
        f"[bench] goal: import within {GOAL_RATIO}x of the floor at {args.images} images: "
        f"x{large['ratio_import_to_floor']:.2f} ({'met' if document['goal']['met'] else 'NOT met'}); memory "
        f"grew {growth / 1024:.1f} MiB from {args.small} to {args.images} images "
        f"({document['memory']['growth_bytes_per_extra_image']} bytes per image)",
        flush=True,
    )
    write_results(__file__, document)
    print(f"[bench] results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
