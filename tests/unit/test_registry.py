"""Unit tests of pushtrain.registry on real files under tmp_path: numbering, never-overwrite, idempotency,
the promotion gate, the atomic pointer, concurrency across processes and clean-up after failures."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import time
from pathlib import Path

import pytest

from pushtrain.registry import (
    InvalidRegistrationError,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    VersionNotFoundError,
)

MODEL = "mnist-cnn"
RUN_ID = "manual__2025-01-01T00:00:00+00:00"
LINEAGE = {
    "repo": "/srv/git/models.git",
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "hyperparameters": {"epochs": 3, "batch_size": 32},
    "airflow_run_ids": [RUN_ID],
}


def make_artifact(directory: Path, model_bytes: bytes = b"weights-v1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.keras").write_bytes(model_bytes)
    (directory / "signature.json").write_text(json.dumps({"inputs": [28, 28, 1]}))
    (directory / "extra").mkdir(exist_ok=True)
    (directory / "extra" / "labels.txt").write_text("0\n1\n")
    return directory


def tree_snapshot(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def staging_leftovers(registry: ModelRegistry, model: str = MODEL) -> list[Path]:
    staging = registry.root / model / ".staging"
    return sorted(staging.iterdir()) if staging.exists() else []


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifact")


def register(registry: ModelRegistry, artifact: Path, accuracy: float, run_id: str) -> ModelVersion:
    return registry.register(
        MODEL, artifact, {"accuracy": accuracy, "loss": 0.1}, LINEAGE, pipeline_run_id=run_id
    )


# ------------------------------------------------------------------------------------------ registration


def test_first_registration_is_v1_with_full_layout_and_promotable(
    registry: ModelRegistry, artifact: Path
) -> None:
    version = register(registry, artifact, 0.91, RUN_ID)

    assert version.number == 1
    assert version.path == registry.root / MODEL / "versions" / "0001"
    assert (version.metric, version.metric_value, version.pipeline_run_id) == ("accuracy", 0.91, RUN_ID)
    assert version.created_at.utcoffset().total_seconds() == 0
    assert tree_snapshot(version.artifact_dir) == tree_snapshot(artifact)
    assert version.metrics == {"accuracy": 0.91, "loss": 0.1}
    assert version.lineage == LINEAGE
    record = json.loads((version.path / "version.json").read_text())
    assert record["version"] == 1 and record["pipeline_run_id"] == RUN_ID
    assert record["metric"] == {"name": "accuracy", "value": 0.91}
    assert set(record["artifact_sha256"]) == {"model.keras", "signature.json", "extra/labels.txt"}
    assert registry.champion(MODEL) is None

    result = registry.promote_if_not_worse(MODEL, version)

    assert result.moved and result.candidate_is_champion and result.previous is None
    assert result.reason == "promoted v1: no champion yet (accuracy 0.91)"
    assert registry.champion(MODEL) == version
    assert staging_leftovers(registry) == []


def test_second_registration_is_v2_and_leaves_v1_untouched(registry: ModelRegistry, tmp_path: Path) -> None:
    first = register(registry, make_artifact(tmp_path / "a1", b"weights-v1"), 0.91, "run-1")
    v1_before = tree_snapshot(first.path)

    second = register(registry, make_artifact(tmp_path / "a2", b"weights-v2"), 0.80, "run-2")

    assert second.number == 2
    assert tree_snapshot(first.path) == v1_before
    assert (second.artifact_dir / "model.keras").read_bytes() == b"weights-v2"
    assert [v.number for v in registry.versions(MODEL)] == [1, 2]
    assert registry.get(MODEL, 1) == first and registry.get(MODEL, 2) == second


def test_same_artifact_from_another_run_is_a_new_version(registry: ModelRegistry, artifact: Path) -> None:
    first = register(registry, artifact, 0.9, "run-1")
    second = register(registry, artifact, 0.9, "run-2")

    assert (first.number, second.number) == (1, 2)


def test_reregistering_same_run_and_artifact_returns_existing_version(
    registry: ModelRegistry, artifact: Path
) -> None:
    first = register(registry, artifact, 0.9, RUN_ID)
    files_before = tree_snapshot(first.path)

    retried = register(registry, artifact, 0.9, RUN_ID)

    assert retried == first
    assert [v.number for v in registry.versions(MODEL)] == [1]
    assert tree_snapshot(first.path) == files_before
    assert staging_leftovers(registry) == []


def test_same_run_with_changed_artifact_is_a_new_version(registry: ModelRegistry, artifact: Path) -> None:
    register(registry, artifact, 0.9, RUN_ID)
    (artifact / "model.keras").write_bytes(b"retrained weights")

    assert register(registry, artifact, 0.9, RUN_ID).number == 2


def test_numbering_continues_after_the_highest_existing_version(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    for number in range(1, 4):
        register(
            registry, make_artifact(tmp_path / f"a{number}", f"w{number}".encode()), 0.5, f"run-{number}"
        )
    shutil.rmtree(registry.root / MODEL / "versions" / "0002")  # a gap must not be reused

    assert register(registry, make_artifact(tmp_path / "a4", b"w4"), 0.5, "run-4").number == 4


def test_models_are_independent(registry: ModelRegistry, artifact: Path) -> None:
    register(registry, artifact, 0.9, "run-1")
    other = registry.register("iris-tree", artifact, {"accuracy": 0.7}, {}, pipeline_run_id="run-1")

    assert other.number == 1 and other.model_name == "iris-tree"
    assert registry.champion("iris-tree") is None and registry.versions("unknown") == []


# --------------------------------------------------------------------------------------------- promotion


@pytest.mark.parametrize(
    ("candidate_accuracy", "moves", "reason"),
    [
        (0.93, True, "promoted v2: its accuracy 0.93 equals v1's 0.93"),
        (0.95, True, "promoted v2: its accuracy 0.95 beats v1's 0.93"),
        (0.92, False, "kept v1: its accuracy 0.93 beats candidate v2's 0.92"),
    ],
    ids=["equal-moves", "better-moves", "worse-stays"],
)
def test_promotion_only_when_not_worse(
    registry: ModelRegistry, tmp_path: Path, candidate_accuracy: float, moves: bool, reason: str
) -> None:
    production = register(registry, make_artifact(tmp_path / "a1", b"w1"), 0.93, "run-1")
    registry.promote_if_not_worse(MODEL, production)
    candidate = register(registry, make_artifact(tmp_path / "a2", b"w2"), candidate_accuracy, "run-2")

    result = registry.promote_if_not_worse(MODEL, candidate.number)

    assert result.moved is moves
    assert result.reason == reason
    assert result.previous == production
    expected = candidate if moves else production
    assert result.champion == expected
    assert registry.champion(MODEL) == expected
    assert (
        json.loads((registry.root / MODEL / "aliases.json").read_text())["aliases"]["champion"]
        == expected.number
    )


def test_promoting_the_champion_again_is_a_no_op(registry: ModelRegistry, artifact: Path) -> None:
    version = register(registry, artifact, 0.9, RUN_ID)
    registry.promote_if_not_worse(MODEL, version)
    pointer_before = (registry.root / MODEL / "aliases.json").read_bytes()

    result = registry.promote_if_not_worse(MODEL, version)

    assert not result.moved and result.candidate_is_champion
    assert result.reason == "v1 is already champion"
    assert (registry.root / MODEL / "aliases.json").read_bytes() == pointer_before


def test_promotion_refuses_to_compare_different_metrics(registry: ModelRegistry, tmp_path: Path) -> None:
    first = register(registry, make_artifact(tmp_path / "a1", b"w1"), 0.5, "run-1")
    registry.promote_if_not_worse(MODEL, first)
    f1_version = registry.register(
        MODEL, make_artifact(tmp_path / "a2", b"w2"), {"f1": 0.99}, {}, pipeline_run_id="run-2", metric="f1"
    )

    result = registry.promote_if_not_worse(MODEL, f1_version)

    assert not result.moved and "promoted on accuracy but candidate v2 reports f1" in result.reason
    assert registry.champion(MODEL) == first


def test_promoting_a_missing_version_names_the_existing_ones(registry: ModelRegistry, artifact: Path) -> None:
    register(registry, artifact, 0.9, RUN_ID)

    with pytest.raises(VersionNotFoundError, match=r"mnist-cnn has no v7 \(versions: v1\)"):
        registry.promote_if_not_worse(MODEL, 7)
    assert registry.champion(MODEL) is None


def test_pointer_is_valid_json_after_many_promotions(registry: ModelRegistry, tmp_path: Path) -> None:
    accuracies = [0.5, 0.6, 0.55, 0.6, 0.7, 0.65, 0.8, 0.8, 0.79, 0.9] * 3
    best_so_far = 0.0
    pointer_path = registry.root / MODEL / "aliases.json"
    for index, accuracy in enumerate(accuracies, start=1):
        version = register(
            registry, make_artifact(tmp_path / f"a{index}", str(index).encode()), accuracy, f"r{index}"
        )
        result = registry.promote_if_not_worse(MODEL, version)
        assert result.moved is (accuracy >= best_so_far)
        best_so_far = max(best_so_far, accuracy)

        pointer = json.loads(pointer_path.read_text())
        assert registry.get(MODEL, pointer["aliases"]["champion"]).metric_value == best_so_far
    assert registry.champion(MODEL).metric_value == 0.9
    # The temp files os.replace consumes must not pile up next to the pointer.
    assert sorted(p.name for p in (registry.root / MODEL).iterdir()) == [
        ".lock",
        ".staging",
        "aliases.json",
        "versions",
    ]


# ------------------------------------------------------------------------------------------- concurrency


def _register_several(root: str, artifact_root: str, worker: int, count: int) -> list[int]:
    registry = ModelRegistry(Path(root))
    numbers = []
    for index in range(count):
        artifact = make_artifact(Path(artifact_root) / f"w{worker}-{index}", f"w{worker}-{index}".encode())
        version = registry.register(
            MODEL, artifact, {"accuracy": 0.5}, {"worker": worker}, pipeline_run_id=f"run-{worker}-{index}"
        )
        numbers.append(version.number)
    return numbers


def _promote_all(root: str, numbers: list[int]) -> None:
    registry = ModelRegistry(Path(root))
    for number in numbers:
        registry.promote_if_not_worse(MODEL, number)


def test_concurrent_registrations_get_distinct_contiguous_numbers(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    workers, per_worker = 4, 5
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap_async(
            _register_several,
            [
                (str(registry.root), str(tmp_path / "artifacts"), worker, per_worker)
                for worker in range(workers)
            ],
        ).get(timeout=120)

    numbers = [number for worker_numbers in results for number in worker_numbers]
    assert sorted(numbers) == list(range(1, workers * per_worker + 1))
    stored = {(v.number, v.pipeline_run_id) for v in registry.versions(MODEL)}
    assert len(stored) == workers * per_worker
    for worker, worker_numbers in enumerate(results):
        for index, number in enumerate(worker_numbers):
            assert (number, f"run-{worker}-{index}") in stored
            content = (registry.get(MODEL, number).artifact_dir / "model.keras").read_bytes()
            assert content == f"w{worker}-{index}".encode()
    assert staging_leftovers(registry) == []


def test_concurrent_promotions_end_on_the_best_version(registry: ModelRegistry, tmp_path: Path) -> None:
    accuracies = [0.61, 0.72, 0.55, 0.93, 0.68, 0.81, 0.77, 0.59, 0.88, 0.64, 0.7, 0.9]
    for index, accuracy in enumerate(accuracies, start=1):
        register(
            registry, make_artifact(tmp_path / f"a{index}", str(index).encode()), accuracy, f"run-{index}"
        )
    numbers = list(range(1, len(accuracies) + 1))
    # Each process walks the versions in a different order, so unlocked compare-and-move would lose the best.
    orders = [numbers, numbers[::-1], numbers[1::2] + numbers[::2], numbers[::2] + numbers[1::2]]

    with multiprocessing.get_context("spawn").Pool(len(orders)) as pool:
        pool.starmap_async(_promote_all, [(str(registry.root), order) for order in orders]).get(timeout=120)

    assert registry.champion(MODEL).number == accuracies.index(max(accuracies)) + 1


def _promote_when_told(root: str, number: int, go: multiprocessing.synchronize.Event) -> None:
    go.wait(timeout=10)
    _promote_all(root, [number])


def test_promotion_waits_for_the_model_lock(registry: ModelRegistry, artifact: Path) -> None:
    version = register(registry, artifact, 0.9, RUN_ID)
    pointer_path = registry.root / MODEL / "aliases.json"
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    promoter = context.Process(target=_promote_when_told, args=(str(registry.root), version.number, go))
    promoter.start()
    lock_fd = os.open(registry.root / MODEL / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # as if another promotion were between its compare and its move
        go.set()
        promoter.join(timeout=0.5)
        assert promoter.is_alive() and not pointer_path.exists(), "promotion must wait while the lock is held"
    finally:
        os.close(lock_fd)
        promoter.join(timeout=10)
        if promoter.is_alive():
            promoter.kill()

    assert promoter.exitcode == 0
    assert registry.champion(MODEL) == version


# ----------------------------------------------------------------------------------- failures, clean-up


def test_failure_while_copying_leaves_nothing(
    registry: ModelRegistry, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(registry, make_artifact(artifact.parent / "first", b"first"), 0.9, "run-1")
    real_copy2 = shutil.copy2
    copied: list[str] = []

    def copy2_failing_on_second_file(src: str, dst: str, **kwargs: object) -> object:
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(src)
        return real_copy2(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copy2", copy2_failing_on_second_file)

    with pytest.raises(OSError, match="No space left"):
        register(registry, artifact, 0.95, "run-2")

    assert copied, "the copy must have been partway through when it failed"
    assert [v.number for v in registry.versions(MODEL)] == [1]
    assert sorted(p.name for p in (registry.root / MODEL / "versions").iterdir()) == ["0001"]
    assert staging_leftovers(registry) == []

    monkeypatch.setattr(shutil, "copy2", real_copy2)
    assert register(registry, artifact, 0.95, "run-2").number == 2


def test_failure_while_publishing_leaves_nothing(
    registry: ModelRegistry, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rename_crash(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", rename_crash)

    with pytest.raises(PermissionError):
        register(registry, artifact, 0.9, RUN_ID)

    assert registry.versions(MODEL) == []
    assert staging_leftovers(registry) == []


def test_artifact_with_a_non_regular_file_is_rejected_and_leaves_nothing(
    registry: ModelRegistry, artifact: Path
) -> None:
    os.mkfifo(artifact / "stuck.pipe")  # copying a pipe would block forever

    with pytest.raises(InvalidRegistrationError, match=r"stuck\.pipe .* is not a regular file"):
        register(registry, artifact, 0.9, RUN_ID)

    assert registry.versions(MODEL) == []
    assert staging_leftovers(registry) == []


def test_stale_staging_dirs_are_removed_but_fresh_ones_kept(registry: ModelRegistry, artifact: Path) -> None:
    staging = registry.root / MODEL / ".staging"
    stale = staging / "crashed-yesterday"
    fresh = staging / "copying-right-now"
    (stale / "artifact").mkdir(parents=True)
    (fresh / "artifact").mkdir(parents=True)
    two_hours_ago = time.time() - 2 * 3600
    os.utime(stale, (two_hours_ago, two_hours_ago))

    version = register(registry, artifact, 0.9, RUN_ID)

    assert version.number == 1
    assert staging_leftovers(registry) == [fresh]


# ---------------------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("make_dir", "message"),
    [
        (lambda base: base / "nowhere", r"artifact dir .*nowhere does not exist"),
        (lambda base: (base / "empty").mkdir() or base / "empty", r"artifact dir .*empty holds no files"),
        (
            lambda base: (base / "f").write_text("x") and base / "f",
            r"artifact dir .*f is a file, not a folder",
        ),
    ],
    ids=["missing", "empty", "a-file"],
)
def test_unusable_artifact_dir_is_named(
    registry: ModelRegistry, tmp_path: Path, make_dir, message: str
) -> None:
    with pytest.raises(InvalidRegistrationError, match=message):
        register(registry, make_dir(tmp_path), 0.9, RUN_ID)
    assert registry.versions(MODEL) == [] and staging_leftovers(registry) == []


def test_missing_metric_names_the_present_ones(registry: ModelRegistry, artifact: Path) -> None:
    with pytest.raises(
        InvalidRegistrationError, match=r"metric 'accuracy' is missing from metrics \(present: f1, loss\)"
    ):
        registry.register(MODEL, artifact, {"loss": 0.2, "f1": 0.8}, LINEAGE, pipeline_run_id=RUN_ID)
    assert registry.versions(MODEL) == []


@pytest.mark.parametrize("value", [float("nan"), "0.9", None, True])
def test_metric_must_be_a_finite_number(registry: ModelRegistry, artifact: Path, value: object) -> None:
    with pytest.raises(InvalidRegistrationError, match="must be a finite number"):
        registry.register(MODEL, artifact, {"accuracy": value}, LINEAGE, pipeline_run_id=RUN_ID)


@pytest.mark.parametrize(
    "lineage",
    [{"started": object()}, {"loss": float("inf")}, ["not", "a", "dict"]],
    ids=["object", "infinity", "list"],
)
def test_lineage_must_be_a_json_dict(registry: ModelRegistry, artifact: Path, lineage: object) -> None:
    with pytest.raises(InvalidRegistrationError, match=r"lineage (is not JSON-serialisable|must be a dict)"):
        registry.register(MODEL, artifact, {"accuracy": 0.9}, lineage, pipeline_run_id=RUN_ID)
    assert registry.versions(MODEL) == [] and staging_leftovers(registry) == []


@pytest.mark.parametrize("model_name", ["", "../escape", "a/b", ".hidden"])
def test_model_name_must_be_a_safe_folder_name(
    registry: ModelRegistry, artifact: Path, model_name: str
) -> None:
    with pytest.raises(InvalidRegistrationError, match="cannot be a folder name"):
        registry.register(model_name, artifact, {"accuracy": 0.9}, {}, pipeline_run_id=RUN_ID)
    assert not registry.root.exists()


def test_empty_pipeline_run_id_is_rejected(registry: ModelRegistry, artifact: Path) -> None:
    with pytest.raises(InvalidRegistrationError, match="pipeline_run_id must be a non-empty string"):
        registry.register(MODEL, artifact, {"accuracy": 0.9}, {}, pipeline_run_id=" ")


def test_damaged_pointer_is_reported_not_ignored(registry: ModelRegistry, artifact: Path) -> None:
    register(registry, artifact, 0.9, RUN_ID)
    (registry.root / MODEL / "aliases.json").write_text('{"aliases": {"champion": 9}, "history": []}')

    with pytest.raises(RegistryError, match="champion points at v9, which does not exist"):
        registry.champion(MODEL)
