"""Unit tests of the registry's MLflow-style conventions on real files: the champion and challenger aliases,
the alias history (when, from, to, why, by whom), rollback, tags, ``models:/`` references, and concurrent
alias moves from parallel processes that never lose a record."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from pushtrain import __main__ as cli
from pushtrain.registry import (
    CHALLENGER,
    CHAMPION,
    InvalidRegistrationError,
    ModelRegistry,
    RegistryError,
    VersionNotFoundError,
)

MODEL = "digits-knn"


def add_version(registry: ModelRegistry, tmp_path: Path, accuracy: float, tag: str) -> int:
    artifact = tmp_path / "artifacts" / tag
    artifact.mkdir(parents=True)
    (artifact / "model.joblib").write_bytes(tag.encode())
    return registry.register(
        MODEL, artifact, {"accuracy": accuracy}, {"tag": tag}, pipeline_run_id=tag
    ).number


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_better_becomes_champion_worse_becomes_challenger_and_ties_promote(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    first = add_version(registry, tmp_path, 0.90, "r1")
    assert registry.promote_if_not_worse(MODEL, first, by="dag_run:train/r1").moved
    worse = add_version(registry, tmp_path, 0.85, "r2")

    kept = registry.promote_if_not_worse(MODEL, worse, by="dag_run:train/r2")

    assert not kept.moved and kept.champion.number == first
    assert registry.aliases(MODEL) == {CHAMPION: first, CHALLENGER: worse}
    tie = add_version(registry, tmp_path, 0.90, "r3")
    assert registry.promote_if_not_worse(MODEL, tie).moved
    assert registry.champion(MODEL).number == tie and registry.challenger(MODEL).number == worse

    history = registry.history(MODEL)
    assert [(m.alias, m.from_version, m.to_version, m.by) for m in history[:2]] == [
        (CHAMPION, None, first, "dag_run:train/r1"),
        (CHALLENGER, None, worse, "dag_run:train/r2"),
    ]
    assert "beats candidate v2" in history[1].reason and history[2].by.startswith("user:")


def test_promoting_the_challenger_clears_it(registry: ModelRegistry, tmp_path: Path) -> None:
    first = add_version(registry, tmp_path, 0.9, "r1")
    registry.promote_if_not_worse(MODEL, first)
    second = add_version(registry, tmp_path, 0.8, "r2")
    registry.promote_if_not_worse(MODEL, second)

    move = registry.set_alias(MODEL, CHAMPION, second, reason="approved by alice", by="user:alice")

    assert move.from_version == first and move.to_version == second
    assert registry.aliases(MODEL) == {CHAMPION: second}
    last = registry.history(MODEL)[-1]
    assert (last.alias, last.from_version, last.to_version, last.reason) == (
        CHALLENGER,
        second,
        None,
        "approved by alice",
    )


def test_rollback_goes_back_to_the_previous_champion_and_keeps_it_in_history(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    numbers = [
        add_version(registry, tmp_path, accuracy, f"r{i}") for i, accuracy in enumerate((0.8, 0.85, 0.9))
    ]
    for number in numbers:
        registry.promote_if_not_worse(MODEL, number)

    move = registry.rollback(MODEL, reason="v3 mislabels 7s", by="user:bob")

    assert (move.from_version, move.to_version, move.by) == (3, 2, "user:bob")
    assert move.reason == "rollback from v3 to v2: v3 mislabels 7s"
    assert registry.champion(MODEL).number == 2
    # A second rollback goes on back, not forth to the version just left.
    assert registry.rollback(MODEL).to_version == 1
    assert registry.rollback(MODEL, to=3).to_version == 3
    with pytest.raises(RegistryError, match="already champion"):
        registry.rollback(MODEL, to=3)


def test_rollback_without_an_earlier_champion_says_so(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.promote_if_not_worse(MODEL, add_version(registry, tmp_path, 0.8, "r1"))
    with pytest.raises(RegistryError, match="no champion before v1; name the version with --to"):
        registry.rollback(MODEL)


def test_references_and_tags(registry: ModelRegistry, tmp_path: Path) -> None:
    first = add_version(registry, tmp_path, 0.8, "r1")
    registry.promote_if_not_worse(MODEL, first)
    registry.set_tag(MODEL, first, "validation_status", "passed")

    assert registry.resolve(f"models:/{MODEL}/1").number == 1
    assert registry.resolve(f"models:/{MODEL}@champion").number == 1
    assert registry.resolve(f"{MODEL}@champion").uri == f"models:/{MODEL}/1"
    assert registry.tags(MODEL, first) == {"validation_status": "passed"}
    with pytest.raises(VersionNotFoundError, match="has no alias 'challenger'"):
        registry.resolve(f"models:/{MODEL}@challenger")
    with pytest.raises(VersionNotFoundError, match="has no v7"):
        registry.resolve(f"models:/{MODEL}/7")
    with pytest.raises(VersionNotFoundError, match="not a model reference"):
        registry.resolve("runs:/abc/model")
    with pytest.raises(InvalidRegistrationError, match="not a valid alias"):
        registry.set_alias(MODEL, "Prod!", first, reason="x")


def test_damaged_aliases_file_is_reported(registry: ModelRegistry, tmp_path: Path) -> None:
    add_version(registry, tmp_path, 0.8, "r1")
    (registry.root / MODEL / "aliases.json").write_text(json.dumps({"aliases": {CHAMPION: 9}, "history": []}))
    with pytest.raises(RegistryError, match="champion points at v9, which does not exist"):
        registry.champion(MODEL)


def _move_alias_many_times(root: str, worker: int, count: int) -> None:
    registry = ModelRegistry(Path(root))
    for index in range(count):
        registry.set_alias(
            MODEL, f"w{worker}", index % 2 + 1, reason=f"{worker}-{index}", by=f"user:w{worker}"
        )
        registry.promote_if_not_worse(MODEL, (worker + index) % 3 + 1, by=f"user:w{worker}")


def test_concurrent_alias_moves_in_parallel_processes_lose_none(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    for index, accuracy in enumerate((0.7, 0.8, 0.9)):
        add_version(registry, tmp_path, accuracy, f"r{index}")
    workers, count = 4, 10
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_move_alias_many_times, args=(str(registry.root), w, count))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    history = registry.history(MODEL)
    for worker in range(workers):
        own = [m for m in history if m.alias == f"w{worker}"]
        # Every set_alias alternates between v1 and v2, so each call is a move and must be recorded.
        assert [m.reason for m in own] == [f"{worker}-{index}" for index in range(count)]
        assert all(m.from_version == (None if i == 0 else own[i - 1].to_version) for i, m in enumerate(own))
    champion_moves = [m for m in history if m.alias == CHAMPION]
    assert registry.champion(MODEL).number == 3 and champion_moves[-1].to_version == 3
    # The history chains: each champion move starts where the one before ended.
    assert all(m.from_version == champion_moves[i - 1].to_version for i, m in enumerate(champion_moves) if i)


def test_cli_lists_shows_promotes_rolls_back_and_prints_history(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(registry.root.parent))
    registry.promote_if_not_worse(MODEL, add_version(registry, tmp_path, 0.9, "r1"))
    registry.promote_if_not_worse(MODEL, add_version(registry, tmp_path, 0.8, "r2"))

    assert cli.main(["registry", "list"]) == 0
    assert "digits-knn  v1 champion, v2 challenger" in capsys.readouterr().out
    assert cli.main(["registry", "show", f"models:/{MODEL}@challenger", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown["version"] == 2 and shown["aliases"] == [CHALLENGER] and shown["metrics"] == {"accuracy": 0.8}
    )
    assert cli.main(["registry", "promote", MODEL, "2", "--reason", "better on 7s", "--by", "carol"]) == 0
    assert registry.champion(MODEL).number == 2
    assert cli.main(["registry", "rollback", MODEL]) == 0
    assert registry.champion(MODEL).number == 1
    capsys.readouterr()
    assert cli.main(["registry", "history", MODEL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(
        "champion  v1 -> v2" in line and "user:carol" in line and "better on 7s" in line for line in lines
    )
    assert "rollback from v2 to v1" in lines[-1]
    assert cli.main(["registry", "show", f"{MODEL}/9"]) == 1
