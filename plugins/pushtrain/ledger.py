"""Which commits have been taken for training: each commit is trained once, across restarts.

A claim is a file under ``<data_dir>/ledger/<repo key>/<sha>.json``, created with its content in one step
(a hard link, which fails where the file exists): the file system, not the scheduler's memory, decides who
got a commit, so a restarted scheduler, a retried task or two DAG runs racing for the same push still train
it once. A retry of the run that claimed a commit sees its own claim and carries on.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pushtrain import settings
from pushtrain.runner.contract import write_json_atomic


def _folder(repo_url: str) -> Path:
    return settings.data_dir() / "ledger" / hashlib.sha256(repo_url.encode()).hexdigest()[:16]


def claim(repo_url: str, sha: str, run_id: str) -> bool:
    """Claim ``sha`` for ``run_id``. True if it is ours now (new, or already claimed by this same run)."""
    folder = _folder(repo_url)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha}.json"
    record = {"sha": sha, "run_id": run_id, "at": datetime.now(UTC).isoformat()}
    # Write the record to a private file, then link it in place: the claim appears with its content in one
    # step, so a racing reader or a kill between create and write never leaves an empty claim that even
    # the claiming run's retry could not recognise as its own.
    staged = folder / f".{sha}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    staged.write_text(json.dumps(record))
    try:
        os.link(staged, path)
    except FileExistsError:
        existing = read(repo_url, sha)
        return existing is not None and existing.get("run_id") == run_id
    finally:
        staged.unlink(missing_ok=True)
    return True


def release(repo_url: str, sha: str, run_id: str) -> bool:
    """Give up ``run_id``'s claim on ``sha`` (its run could not be created); another run's claim stays."""
    existing = read(repo_url, sha)
    if existing is None or existing.get("run_id") != run_id:
        return False
    (_folder(repo_url) / f"{sha}.json").unlink(missing_ok=True)
    return True


def read(repo_url: str, sha: str) -> dict | None:
    try:
        return json.loads((_folder(repo_url) / f"{sha}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def claimed_by(repo_url: str, run_id: str) -> str | None:
    """The commit ``run_id`` claimed, if any: a retried sensor keeps its commit even if the head moved on."""
    for path in _folder(repo_url).glob("*.json"):
        if path.name.endswith(".superseded.json"):
            continue
        try:
            if json.loads(path.read_text()).get("run_id") == run_id:
                return path.name.removesuffix(".json")
        except ValueError:
            continue
    return None


def is_taken(repo_url: str, sha: str) -> bool:
    return (_folder(repo_url) / f"{sha}.json").exists()


def mark_superseded(repo_url: str, shas: list[str], by_sha: str, run_id: str) -> None:
    """Note commits a live run skipped because a newer one arrived first (newest wins).

    A note, not a claim: a backfill over those dates may still train them.
    """
    folder = _folder(repo_url)
    for sha in shas:
        write_json_atomic(
            folder / f"{sha}.superseded.json",
            {"sha": sha, "superseded_by": by_sha, "run_id": run_id, "at": datetime.now(UTC).isoformat()},
        )


def superseded(repo_url: str) -> list[str]:
    return sorted(p.name.split(".")[0] for p in _folder(repo_url).glob("*.superseded.json"))
