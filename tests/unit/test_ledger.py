"""Unit tests of pushtrain.ledger on real files: one claim per commit, retries of the claiming run, races
between processes, and superseded notes that never block a later claim."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import os
from pathlib import Path

import pytest

from pushtrain import ledger

REPO = "/srv/git/models.git"
SHA = "0123456789abcdef0123456789abcdef01234567"
OLDER = ["1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"]
RUN_A = "scheduled__2026-11-23T01:46:43.967200+00:00"
RUN_B = "scheduled__2026-11-23T01:51:43.967200+00:00"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(path))
    return path


def test_first_claim_wins_and_is_recorded() -> None:
    assert not ledger.is_taken(REPO, SHA)
    assert ledger.read(REPO, SHA) is None

    assert ledger.claim(REPO, SHA, RUN_A) is True

    assert ledger.is_taken(REPO, SHA)
    record = ledger.read(REPO, SHA)
    assert record is not None
    assert (record["sha"], record["run_id"]) == (SHA, RUN_A)
    assert record["at"]


def test_the_claiming_run_may_claim_again_on_a_retry() -> None:
    assert ledger.claim(REPO, SHA, RUN_A) is True
    assert ledger.claim(REPO, SHA, RUN_A) is True
    assert ledger.read(REPO, SHA)["run_id"] == RUN_A


def test_another_run_cannot_take_a_claimed_commit() -> None:
    assert ledger.claim(REPO, SHA, RUN_A) is True

    assert ledger.claim(REPO, SHA, RUN_B) is False
    assert ledger.read(REPO, SHA)["run_id"] == RUN_A  # the loser did not overwrite the claim


def test_claims_are_per_repository() -> None:
    assert ledger.claim(REPO, SHA, RUN_A) is True
    assert ledger.claim("/srv/git/other.git", SHA, RUN_B) is True
    assert not ledger.is_taken("/srv/git/third.git", SHA)


def test_a_claim_file_is_never_empty_or_half_written(data_dir: Path) -> None:
    ledger.claim(REPO, SHA, RUN_A)

    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{SHA}.json"]
    assert json.loads(files[0].read_text())["run_id"] == RUN_A


def _claim_when_told(
    data: str, run_id: str, go: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue
) -> None:
    os.environ["PUSHTRAIN_DATA_DIR"] = data
    go.wait(timeout=30)
    results.put((run_id, ledger.claim(REPO, SHA, run_id)))


def test_concurrent_claims_from_many_processes_have_exactly_one_winner(data_dir: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = 8
    go = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_when_told, args=(str(data_dir), f"run-{i}", go, results))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=30) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    winners = [run_id for run_id, won in outcomes.items() if won]
    assert len(outcomes) == workers
    assert len(winners) == 1
    assert ledger.read(REPO, SHA)["run_id"] == winners[0]


def test_concurrent_claims_by_the_same_run_all_see_their_claim(data_dir: Path) -> None:
    """A task retry racing a still-running try of the same run never reads a claim without its content."""
    context = multiprocessing.get_context("spawn")
    workers = 8
    go = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=_claim_when_told, args=(str(data_dir), RUN_A, go, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=30)[1] for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert outcomes == [True] * workers


def test_superseded_notes_are_listed_and_do_not_block_a_later_claim() -> None:
    assert ledger.claim(REPO, SHA, RUN_A)
    ledger.mark_superseded(REPO, OLDER, SHA, RUN_A)

    assert ledger.superseded(REPO) == sorted(OLDER)
    assert not any(ledger.is_taken(REPO, sha) for sha in OLDER)
    # A backfill over those dates may still train a superseded commit.
    assert ledger.claim(REPO, OLDER[0], "backfill__2026-01-01T00:05:00+00:00") is True
    assert ledger.is_taken(REPO, OLDER[0])
    assert ledger.superseded(REPO) == sorted(OLDER)  # the note stays as history


def test_superseded_of_an_unknown_repository_is_empty() -> None:
    assert ledger.superseded("/srv/git/never-seen.git") == []


def test_claimed_by_finds_the_runs_own_claim_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path))
    assert ledger.claimed_by("repo", "run-1") is None
    assert ledger.claim("repo", "a" * 40, "run-1")
    ledger.mark_superseded("repo", ["b" * 40], "a" * 40, "run-1")
    assert ledger.claimed_by("repo", "run-1") == "a" * 40
    assert ledger.claimed_by("repo", "run-2") is None
