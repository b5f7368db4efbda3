"""Training image builds: warm (the tag exists) against cold (a full rebuild with no layer cache).

For each image (``--images tensorflow,sklearn``, default both):

* **warm**: ``images.ensure_image(name)`` when the tag of the current source already exists, repeated
  ``--warm-repeats`` times, in process; and ``python -m pushtrain images NAME`` as a fresh process (``cli
  warm``: interpreter start and imports included), which is what every ``make images`` / ``make test`` pays.
  If the tag is missing (the runner source changed), the first call builds it with Docker's layer cache;
  that call is reported apart as ``first call`` and is not part of the warm figures.
* **runner-change rebuild**: ``docker build`` with the layer cache of a freshly staged context whose runner
  source has one extra comment line (only the staged copy is changed), into a throwaway tag: what every
  edit of ``plugins/pushtrain/runner`` costs (context upload with the wheelhouse, the cached venv layer
  reused, the steps from ``COPY pushtrain/`` on rebuilt).
* **cold**: ``docker build --no-cache`` of a freshly staged context into a throwaway tag, reusing
  ``images.ensure_base_image``, ``images.ensure_wheelhouse`` and ``images._stage_context`` (the base image
  and the wheelhouse are cached downloads, so "cold" is the build itself: venv creation and the offline
  ``pip install`` from the wheelhouse, the copy into the runtime stage). Per-step times come from the
  timestamps of the builder's ``Step i/n`` lines. Skipped with ``--skip-cold`` (tensorflow takes ~5 min).

Image sizes (``docker image inspect``) of the real tags and of the base image are printed as well.

Goals: warm (cli warm included) <= 5 s per image (so a second ``make images`` "takes seconds"); a
runner-change rebuild "in seconds" (the Dockerfile's claim), well under a minute; cold in minutes (tensorflow ~5 min on 2 cores), so that it is paid once per requirements change.

Run: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_images.py [--images sklearn] [--skip-cold]``.
Throwaway tags are ``pushtrain-bench/<name>:{rebuild,cold}-<pid>``; they, and the untagged first-stage image a
no-cache build leaves behind, are removed afterwards. The build context is staged under a private cache
sub-directory so that a concurrent ``make images`` is not disturbed.
Results: ``benchmarks/results/bench_images.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from results_file import results_path, write_results

from pushtrain import __version__, images, settings

RESULTS = results_path(__file__)
STEP_LINE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
LAYER_LINE = re.compile(r"^ ---> ([0-9a-f]{12,})$")
GOAL_WARM_S = 5.0


class BenchError(RuntimeError):
    pass


def image_size(reference: str) -> int | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", reference], capture_output=True, text=True
    )
    return int(result.stdout.strip()) if result.returncode == 0 else None


@contextlib.contextmanager
def private_cache_dir() -> Iterator[Path]:
    """Point ``settings.cache_dir()`` at a private sub-directory while staging a context.

    Everything the benchmark stages lands there and goes with it afterwards, whatever a build left. The
    folder is on the same file system as the wheelhouse, so the wheels are still hard-linked, not copied.
    """
    real = settings.cache_dir()
    private = real / f"bench-{os.getpid()}"
    previous = os.environ.get("PUSHTRAIN_CACHE_DIR")
    os.environ["PUSHTRAIN_CACHE_DIR"] = str(private)
    try:
        yield private
    finally:
        if previous is None:
            os.environ.pop("PUSHTRAIN_CACHE_DIR", None)
        else:
            os.environ["PUSHTRAIN_CACHE_DIR"] = previous
        shutil.rmtree(private, ignore_errors=True)


def timed_build(name: str, tag: str, no_cache: bool, verbose: bool, change_runner: bool = False) -> dict:
    """Stage a context the way ``ensure_image`` does and ``docker build`` it into ``tag``.

    ``change_runner`` appends a comment to the *staged copy* of the runner (copied, not linked, by
    ``_stage_context``) and gives the build another content key, as an edit of the runner source would.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    base_image = images.ensure_base_image()
    timings["base_image_s"] = time.perf_counter() - started
    started = time.perf_counter()
    wheelhouse = images.ensure_wheelhouse(name)
    timings["wheelhouse_s"] = time.perf_counter() - started
    with private_cache_dir():
        started = time.perf_counter()
        context = images._stage_context(name, wheelhouse)
        timings["stage_context_s"] = time.perf_counter() - started
        content_key = images.source_key(name)
        if change_runner:
            staged = context / "pushtrain" / "runner" / "__init__.py"
            staged.unlink()  # a fresh file, in case a future _stage_context links instead of copying
            staged.write_text(
                (images.RUNNER_SOURCE / "__init__.py").read_text()
                + f"\n# bench_images: a runner change ({os.getpid()})\n"
            )
            content_key = f"{content_key[:52]}bench{os.getpid():07d}"
        context_bytes = sum(p.stat().st_size for p in context.rglob("*") if p.is_file())
        command = [
            "docker",
            "build",
            *(["--no-cache"] if no_cache else []),
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--build-arg",
            f"CONTENT_KEY={content_key}",
            "--build-arg",
            f"PUSHTRAIN_VERSION={__version__}",
            "-t",
            tag,
            str(context),
        ]
        steps: list[dict] = []
        layers: list[tuple[int, str]] = []  # (step number, image id printed after it)
        output: list[str] = []
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            now = time.perf_counter()
            line = line.rstrip("\n")
            output.append(line)
            if verbose:
                print(f"    {line}", flush=True)
            if match := STEP_LINE.match(line):
                if steps:
                    steps[-1]["seconds"] = now - steps[-1]["started"]
                steps.append(
                    {"step": int(match.group(1)), "instruction": match.group(3)[:90], "started": now}
                )
            elif (match := LAYER_LINE.match(line)) and steps:
                layers.append((steps[-1]["step"], match.group(1)))
        returncode = process.wait()
        build_s = time.perf_counter() - started
    if steps:
        steps[-1]["seconds"] = started + build_s - steps[-1]["started"]
    for step in steps:
        step["started"] = round(step["started"] - started, 3)
    if returncode != 0:
        raise BenchError(f"docker build of {name} failed ({returncode}):\n" + "\n".join(output[-30:]))
    timings["docker_build_s"] = build_s
    timings["total_s"] = sum(timings.values())
    return {
        "tag": tag,
        "no_cache": no_cache,
        "runner_changed": change_runner,
        "base_image": base_image,
        "context_bytes": context_bytes,
        "timings": timings,
        "steps": steps,
        # Only a no-cache build made its earlier stages itself; a cached one reuses stage images that
        # are the layer cache of everyone's builds and must stay.
        "stage_ids": _first_stage_ids(steps, layers) if no_cache else [],
    }


def _first_stage_ids(steps: list[dict], layers: list[tuple[int, str]]) -> list[str]:
    """Image ids a multi-stage build leaves untagged: the result of every stage but the last.

    The classic builder prints `` ---> <id>`` after each step; the id printed last before a ``FROM`` step
    (other than the first) is the finished earlier stage.
    """
    from_steps = [s["step"] for s in steps if s["instruction"].upper().startswith("FROM ")]
    ids = []
    for from_step in from_steps[1:]:
        before = [image for step, image in layers if step < from_step]
        if before:
            ids.append(before[-1])
    return ids


def remove_throwaway(tag: str, stage_ids: list[str], protected: set[str]) -> list[str]:
    """Remove our throwaway tag and the untagged stage images our build made; never anything tagged."""
    notes = []
    if images.image_id(tag):
        result = subprocess.run(["docker", "rmi", tag], capture_output=True, text=True)
        notes.append(f"rmi {tag}: {'ok' if result.returncode == 0 else result.stderr.strip()}")
    for short_id in stage_ids:
        full = images.image_id(short_id)
        if not full or full in protected:
            continue
        tags = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{len .RepoTags}}", full],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if tags != "0":  # tagged by someone: not ours to remove
            continue
        result = subprocess.run(["docker", "rmi", full], capture_output=True, text=True)
        notes.append(f"rmi stage {short_id}: {'ok' if result.returncode == 0 else result.stderr.strip()}")
    return notes


def bench_image(name: str, args: argparse.Namespace) -> dict:
    result: dict = {}
    tag = f"pushtrain/{name}:{images.source_key(name)[:12]}"
    existed = bool(images.image_id(tag))
    started = time.perf_counter()
    tag = images.ensure_image(name)
    result["first_call"] = {"seconds": time.perf_counter() - started, "built": not existed}
    warm = []
    for _ in range(args.warm_repeats):
        started = time.perf_counter()
        images.ensure_image(name)
        warm.append(time.perf_counter() - started)
    result["tag"] = tag
    result["warm_s"] = warm
    result["warm_median_s"] = statistics.median(warm)
    env = {**os.environ, "PYTHONPATH": str(settings.PROJECT_ROOT / "plugins")}
    cli = []
    for _ in range(args.warm_repeats):  # what `make images` pays: a fresh interpreter, imports, the check
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pushtrain", "images", name], env=env, capture_output=True, text=True
        )
        cli.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise BenchError(f"python -m pushtrain images {name} failed: {done.stderr.strip()[-2000:]}")
    result["cli_warm_s"] = cli
    result["cli_warm_median_s"] = statistics.median(cli)
    result["size_bytes"] = image_size(tag)

    protected = {i for i in (images.image_id(tag), images.image_id(images.ensure_base_image())) if i}
    for kind, no_cache in (("rebuild", False), ("cold", True)):
        if (kind == "cold" and args.skip_cold) or (kind == "rebuild" and args.skip_rebuild):
            continue
        throwaway = f"pushtrain-bench/{name}:{kind}-{os.getpid()}"
        print(f"[bench] {name}: {kind} build into {throwaway} ...", flush=True)
        build: dict = {}
        try:
            build = timed_build(name, throwaway, no_cache, args.verbose, change_runner=kind == "rebuild")
            build["size_bytes"] = image_size(throwaway)
            build["same_image_as_tag"] = images.image_id(throwaway) == images.image_id(tag)
        finally:
            build["cleanup"] = remove_throwaway(throwaway, build.get("stage_ids", []), protected)
        result[kind] = build
    return result


def _mb(size: int | None) -> str:
    return f"{size / 1e6:.0f} MB" if size else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images",
        default=",".join(images.IMAGE_NAMES),
        help="comma-separated image names (default: tensorflow,sklearn)",
    )
    parser.add_argument(
        "--skip-cold", action="store_true", help="skip the no-cache rebuild (~5 min for tensorflow)"
    )
    parser.add_argument("--skip-rebuild", action="store_true", help="skip the runner-change rebuild")
    parser.add_argument("--warm-repeats", type=int, default=3, help="warm ensure_image calls (default 3)")
    parser.add_argument("--verbose", action="store_true", help="echo docker build's output")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.images.split(",") if n.strip()]
    unknown = [n for n in names if n not in images.IMAGE_NAMES]
    if unknown or args.warm_repeats < 1:
        parser.error(
            f"unknown image(s) {unknown}; choose from {images.IMAGE_NAMES}"
            if unknown
            else "--warm-repeats must be at least 1"
        )

    results: dict[str, dict] = {}
    try:
        for name in names:
            results[name] = bench_image(name, args)
    except (BenchError, images.ImageBuildError) as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    base_image = images.ensure_base_image()

    print()
    print(
        f"{'image':<11} {'first call':>11} {'warm':>7} {'cli warm':>9} {'rebuild':>9} {'cold build':>11} "
        f"{'cold total':>11} {'size':>9} {'context':>9}"
    )
    for name, r in results.items():
        first = f"{r['first_call']['seconds']:.2f}s" + ("*" if r["first_call"]["built"] else "")
        rebuild = f"{r['rebuild']['timings']['docker_build_s']:.1f}s" if "rebuild" in r else "skipped"
        cold = f"{r['cold']['timings']['docker_build_s']:.1f}s" if "cold" in r else "skipped"
        cold_total = f"{r['cold']['timings']['total_s']:.1f}s" if "cold" in r else "-"
        context = _mb(r.get("cold", r.get("rebuild", {})).get("context_bytes"))
        print(
            f"{name:<11} {first:>11} {r['warm_median_s']:>6.2f}s {r['cli_warm_median_s']:>8.2f}s {rebuild:>9} "
            f"{cold:>11} {cold_total:>11} "
            f"{_mb(r['size_bytes']):>9} {context:>9}"
        )
    if any(r["first_call"]["built"] for r in results.values()):
        print("* the tag for the current source was missing: the first call built it (layer cache on)")
    print(f"base image {base_image}: {_mb(image_size(base_image))}")
    for name, r in results.items():
        for kind in ("rebuild", "cold"):
            if kind in r:
                slow = sorted(r[kind]["steps"], key=lambda s: -s.get("seconds", 0))[:3]
                print(
                    f"{name} {kind}, slowest steps: "
                    + "; ".join(f"{s['seconds']:.1f}s {s['instruction'][:50]}" for s in slow)
                )
    print()

    ratio_parts = []
    for name, r in results.items():
        worst = max(r["warm_median_s"], r["cli_warm_median_s"])
        parts = [
            f"warm={r['warm_median_s']:.2f}s cli-warm={r['cli_warm_median_s']:.2f}s "
            f"({'meets' if worst <= GOAL_WARM_S else 'MISSES'} <= {GOAL_WARM_S:.0f}s)"
        ]
        if "rebuild" in r:
            parts.append(
                f"rebuild/cli-warm={r['rebuild']['timings']['docker_build_s'] / r['cli_warm_median_s']:.0f}x"
            )
        if "cold" in r:
            parts.append(f"cold/cli-warm={r['cold']['timings']['total_s'] / r['cli_warm_median_s']:.0f}x")
        ratio_parts.append(f"{name}: " + " ".join(parts))
    write_results(
        __file__,
        {
            "benchmark": "bench_images",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "base_image": base_image,
            "base_image_size_bytes": image_size(base_image),
            "goal": {"warm_max_s": GOAL_WARM_S},
            "images": results,
        },
    )
    print(f"[bench] results written to {RESULTS}")
    print("ratios: " + "; ".join(ratio_parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
