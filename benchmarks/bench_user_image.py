"""Derived images for a repository's requirements.txt: what the first push with new requirements pays, and a later one.

Per case (``kind:requirement[,requirement...]``), with a private, empty cache directory:

* **probe**: ``userreqs.probe_image``: one container of the kind's image lists its packages (once per image id);
* **resolve + download**: ``userreqs.ensure_wheelhouse``: ``pip install --dry-run --report`` for the image's
  platform, then ``pip download`` of the new wheels (network; the package index's speed dominates);
* **build**: ``userreqs.build_derived_image`` into a throwaway tag ``pushtrain-bench/user-<image>:<pid>``:
  the offline ``docker build`` with the install stage and the one-layer copy into the venv;
* **first call / warm**: ``userreqs.image_for_repository`` on a temp repository with that requirements.txt;
  the first call builds the real tag if it is missing (marked ``*``); warm is the median of ``--warm-repeats``
  later calls (cache and tag present: the cost every later push pays);
* **added**: the derived image's size minus the base image's, and the wheels' total.

Run: ``PYTHONPATH=plugins .venv/bin/python benchmarks/bench_user_image.py [--cases knn:tabulate==0.9.0 ...]``.
Results: ``benchmarks/results/bench_user_image.json``. The throwaway tags, and a real tag the first call
built, are removed afterwards; a real tag that was there before stays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from results_file import write_results

from pushtrain import images, kinds, userreqs

DEFAULT_CASES = ("knn:tabulate==0.9.0", "knn:scikit-image==0.26.0", "cnn:tabulate==0.9.0")
MODEL_FILE = "model.py"


def image_size(reference: str) -> int:
    result = subprocess.run(
        [*images.docker_cli(), "image", "inspect", "--format", "{{.Size}}", reference],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip())


def seconds(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def run_case(case: str, warm_repeats: int) -> dict | None:
    kind, requirements = case.split(":", 1)
    text = "".join(f"{line}\n" for line in requirements.split(","))
    base_tag = images.image_for_kind(kind)
    base_id = images.image_id(base_tag)
    if base_id is None:
        print(f"{case}: skipped, {base_tag} is not built (run `make images`)", flush=True)
        return None
    with tempfile.TemporaryDirectory(prefix="pushtrain-bench-userreqs-") as root:
        os.environ["PUSHTRAIN_CACHE_DIR"] = str(Path(root) / "cache")
        repository = Path(root) / "repo"
        repository.mkdir()
        (repository / MODEL_FILE).write_text("HPARAMS = {}\n")
        (repository / userreqs.REQUIREMENTS_FILE).write_text(text)

        facts, probe_s = seconds(userreqs.probe_image, kinds.kind(kind).image, base_tag, base_id)
        to_add = userreqs.requirements_to_add(userreqs.parse_requirements(text), facts)
        wheelhouse, download_s = seconds(userreqs.ensure_wheelhouse, to_add, facts, lambda _line: None)
        throwaway = f"pushtrain-bench/user-{facts.image}:{os.getpid()}"
        _, build_s = seconds(
            userreqs.build_derived_image, throwaway, base_tag, base_id, wheelhouse, lambda _line: None
        )
        added_bytes = image_size(throwaway) - image_size(base_tag)
        subprocess.run([*images.docker_cli(), "image", "rm", throwaway], capture_output=True, check=True)

        first, first_s = seconds(
            userreqs.image_for_repository, kind, repository / MODEL_FILE, log=lambda _l: None
        )
        warm = [
            seconds(userreqs.image_for_repository, kind, repository / MODEL_FILE, log=lambda _l: None)[1]
            for _ in range(warm_repeats)
        ]
        if first.built:  # made by this script: removed like the throwaway tag
            subprocess.run([*images.docker_cli(), "image", "rm", first.tag], capture_output=True, check=True)
    return {
        "case": case,
        "base_image": base_tag,
        "resolved": dict(wheelhouse.resolved),
        "wheels_bytes": wheelhouse.total_bytes,
        "added_image_bytes": added_bytes,
        "probe_s": probe_s,
        "resolve_download_s": download_s,
        "build_s": build_s,
        "first_call_s": first_s,
        "first_call_built": first.built,
        "derived_tag": first.tag,
        "warm_s": warm,
        "warm_median_s": statistics.median(warm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--warm-repeats", type=int, default=3)
    arguments = parser.parse_args()
    results = []
    print(
        f"{'case':34} {'probe':>6} {'resolve+dl':>10} {'build':>6} {'first':>7} {'warm':>6} "
        f"{'wheels MB':>9} {'added MB':>8}"
    )
    for case in arguments.cases:
        result = run_case(case, arguments.warm_repeats)
        if result is None:
            continue
        results.append(result)
        write_results(__file__, {"load_average": os.getloadavg(), "cases": results})
        mark = "*" if result["first_call_built"] else " "
        print(
            f"{case:34} {result['probe_s']:6.1f} {result['resolve_download_s']:10.1f} {result['build_s']:6.1f} "
            f"{result['first_call_s']:6.1f}{mark} {result['warm_median_s']:6.2f} "
            f"{result['wheels_bytes'] / 1e6:9.1f} {result['added_image_bytes'] / 1e6:8.1f}",
            flush=True,
        )
    path = write_results(__file__, {"load_average": os.getloadavg(), "cases": results})
    builds = ", ".join(f"{result['build_s']:.1f}s" for result in results)
    warm = ", ".join(f"{result['warm_median_s']:.2f}s" for result in results)
    print(f"builds {builds}; warm {warm}; results in {path}")


if __name__ == "__main__":
    main()
