"""Container start overhead: pushtrain's sandboxed container against a plain ``docker run``.

Measures, for each training image, the wall time from "start a container" to "it has exited and is
removed" for five variants, each repeated ``--repeats`` times (interleaved, so drift hits all alike):

* ``plain true``: ``docker run --rm --entrypoint true IMAGE``: the floor (Docker CLI + engine, no Python).
* ``plain python``: ``docker run --rm --entrypoint /opt/venv/bin/python IMAGE -c pass``: adds the start-up of
  the image's Python interpreter.
* ``plain runner``: ``docker run --rm IMAGE --help``: adds importing ``pushtrain.runner`` (the entrypoint).
* ``api plain true``: ``true`` through the Docker API (docker-py, as pushtrain talks to Docker), no options.
* ``api sandbox true``: the same with exactly pushtrain's sandbox host config (``Sandbox.host_config_kwargs``)
  and user: against ``api plain true``, what the sandbox options themselves cost, without Python.
* ``pushtrain``: ``sandbox.run_container`` with ``command=["--help"]``, as the operator and
  ``python -m pushtrain train`` run every attempt (create, start, stream logs, wait, inspect, remove).

Goal: pushtrain's own overhead is small next to an attempt (which takes tens of seconds): ``pushtrain`` should
be within about 1 s of ``plain runner`` and the sandbox options should cost at most ~10% (``api sandbox true``
/ ``api plain true`` <= 1.1). The last line prints those ratios and ``pushtrain`` / ``plain true``.

Run: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_container_start.py [--repeats 10]
[--images tensorflow,sklearn]``. Containers are named ``pushtrain-bench-start-*`` and removed afterwards.
Results: ``benchmarks/results/bench_container_start.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from results_file import results_path, write_results

from pushtrain import images, sandbox

RESULTS = results_path(__file__)
PREFIX = f"pushtrain-bench-start-{os.getpid()}"
VARIANTS = ("plain true", "plain python", "plain runner", "api plain true", "api sandbox true", "pushtrain")


class BenchError(RuntimeError):
    pass


def _cli(name: str, image: str, entrypoint: str | None, args: list[str]) -> None:
    command = ["docker", "run", "--rm", "--name", name]
    if entrypoint:
        command += ["--entrypoint", entrypoint]
    result = subprocess.run([*command, image, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(command)} {image} failed ({result.returncode}): {result.stderr.strip()}")


def _api_true(client, name: str, image: str, sandboxed: bool) -> None:
    """``true`` created, started, waited for and removed via the API; with pushtrain's sandbox or without."""
    extra = {}
    if sandboxed:
        extra = {
            "user": sandbox.container_user(),
            "host_config": client.create_host_config(**sandbox.Sandbox().host_config_kwargs([])),
        }
    container = client.create_container(image=image, entrypoint=["true"], command=[], name=name, **extra)
    try:
        client.start(container["Id"])
        status = client.wait(container["Id"])
        if int(status["StatusCode"]) != 0:
            raise BenchError(f"`true` (sandboxed={sandboxed}) exited with {status['StatusCode']}")
    finally:
        sandbox.remove_container(client, container["Id"])


def _pushtrain(client, name: str, image: str) -> None:
    # No io.pushtrain.role label: the health check and the test suite's clean-up act on every container
    # that has one, and these are none of their business.
    spec = sandbox.ContainerSpec(
        name=name, image=image, command=["--help"], mounts=[], labels={"pushtrain-bench": "container-start"}
    )
    lines: list[str] = []
    outcome = sandbox.run_container(client, spec, sandbox.Sandbox(), lines.append)
    if not outcome.succeeded:
        raise BenchError(f"pushtrain container exited with {outcome.exit_code}: {' | '.join(lines[-5:])}")


def measure(client, image: str, repeats: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    calls = {
        "plain true": lambda name: _cli(name, image, "true", []),
        "plain python": lambda name: _cli(name, image, "/opt/venv/bin/python", ["-c", "pass"]),
        "plain runner": lambda name: _cli(name, image, None, ["--help"]),
        "api plain true": lambda name: _api_true(client, name, image, sandboxed=False),
        "api sandbox true": lambda name: _api_true(client, name, image, sandboxed=True),
        "pushtrain": lambda name: _pushtrain(client, name, image),
    }
    for variant, call in calls.items():  # one untimed warm-up each: page cache, first layer mount
        call(f"{PREFIX}-warmup-{variant.replace(' ', '-')}")
    for i in range(repeats):
        order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            started = time.perf_counter()
            calls[variant](f"{PREFIX}-{i}-{variant.replace(' ', '-')}")
            runs[variant].append(time.perf_counter() - started)
    return runs


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


def cleanup(client) -> None:
    """Remove any container this process left behind (a failed run), by its exact name prefix."""
    for container in client.containers(all=True, filters={"name": PREFIX}):
        if any(name.lstrip("/").startswith(PREFIX) for name in container["Names"]):
            sandbox.remove_container(client, container["Id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed runs per variant and image (default 10)"
    )
    parser.add_argument(
        "--images",
        default=",".join(images.IMAGE_NAMES),
        help="comma-separated image names (default: tensorflow,sklearn)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.images.split(",") if n.strip()]
    unknown = [n for n in names if n not in images.IMAGE_NAMES]
    if unknown or args.repeats < 1:
        parser.error(
            f"unknown image(s) {unknown}; choose from {images.IMAGE_NAMES}"
            if unknown
            else "--repeats must be at least 1"
        )

    client = sandbox.docker_client()
    default_box = sandbox.Sandbox()
    results: dict[str, dict] = {}
    try:
        for name in names:
            image = images.ensure_image(name)
            print(f"[bench] {name}: {image}, {args.repeats} runs per variant (+1 warm-up)", flush=True)
            runs = measure(client, image, args.repeats)
            results[name] = {
                "image": image,
                "samples_s": runs,
                "summary_s": {variant: summarize(runs[variant]) for variant in VARIANTS},
            }
    except BenchError as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        cleanup(client)

    print()
    print(f"{'image':<11} {'variant':<17} {'median s':>9} {'min s':>7} {'max s':>7} {'x plain true':>13}")
    ratio_parts = []
    for name, result in results.items():
        summary = result["summary_s"]
        floor = summary["plain true"]["median"]
        for variant in VARIANTS:
            s = summary[variant]
            print(
                f"{name:<11} {variant:<17} {s['median']:>9.3f} {s['min']:>7.3f} {s['max']:>7.3f} "
                f"{s['median'] / floor:>13.2f}"
            )
        ratios = {
            "api_sandbox_true/api_plain_true": summary["api sandbox true"]["median"]
            / summary["api plain true"]["median"],
            "pushtrain/plain_true": summary["pushtrain"]["median"] / floor,
            "pushtrain/plain_runner": summary["pushtrain"]["median"] / summary["plain runner"]["median"],
            "python_startup_s": summary["plain python"]["median"] - floor,
            "runner_import_s": summary["plain runner"]["median"] - summary["plain python"]["median"],
            "pushtrain_minus_plain_runner_s": summary["pushtrain"]["median"]
            - summary["plain runner"]["median"],
        }
        result["ratios"] = ratios
        ratio_parts.append(
            f"{name}: sandbox/api-true={ratios['api_sandbox_true/api_plain_true']:.2f} "
            f"pushtrain/plain-true={ratios['pushtrain/plain_true']:.2f} "
            f"pushtrain/plain-runner={ratios['pushtrain/plain_runner']:.2f}"
        )
    print()
    write_results(
        __file__,
        {
            "benchmark": "bench_container_start",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "repeats": args.repeats,
            "sandbox": {
                "memory": default_box.memory,
                "cpus": default_box.cpus,
                "pids_limit": default_box.pids_limit,
            },
            "variants": {
                "plain true": "docker run --rm --entrypoint true IMAGE",
                "plain python": "docker run --rm --entrypoint /opt/venv/bin/python IMAGE -c pass",
                "plain runner": "docker run --rm IMAGE --help",
                "api plain true": "Docker API create/start/wait/remove of `true`, default host config",
                "api sandbox true": "the same with Sandbox.host_config_kwargs and the sandbox user",
                "pushtrain": "sandbox.run_container(ContainerSpec(command=['--help']), Sandbox())",
            },
            "images": results,
        },
    )
    print(f"[bench] results written to {RESULTS}")
    print("ratios: " + "; ".join(ratio_parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
