"""Where every benchmark writes its figures: ``benchmarks/results/<script>.json``, replaced atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_path(script: str) -> Path:
    return RESULTS_DIR / f"{Path(script).stem}.json"


def write_results(script: str, document: object) -> Path:
    """Write ``document`` for the benchmark ``script`` (its ``__file__``); returns the path."""
    path = results_path(script)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
    return path
