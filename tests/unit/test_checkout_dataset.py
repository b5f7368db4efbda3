"""``checkout_commit`` pins the data set a pipeline trains on, and every later step reads that pin.

Real git repositories in a tmp dir (a bare remote and a clone that pushes to it), real image folders and CSV
files committed into them, the data set store under a tmp ``PUSHTRAIN_DATA_DIR``. No Airflow, no containers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pushtrain import datasets, pipeline, settings, steps
from pushtrain.runner import contract

BRANCH = "main"
RUN_1, RUN_2, RUN_3 = "manual__one", "manual__two", "manual__three"
MODEL = 'HPARAMS = {"epochs": 1}\n'
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Ada Lovelace",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "CI Robot",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def png(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    """A small RGB PNG of ``size`` (width, height): the colour plus seeded noise, so files differ."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def colour_images(
    folder: str, per_class: int = 5, classes: tuple[str, ...] = ("red", "green", "blue")
) -> dict:
    return {
        f"{folder}/{label}/{i}.png": png(COLOURS[label], seed=10 * n + i)
        for n, label in enumerate(classes)
        for i in range(per_class)
    }


class Origin:
    """A bare repository (the watched remote) and a working clone that commits and pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "models.git", root / "work"
        git(root, "init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(self.bare))
        git(root, "init", "--quiet", f"--initial-branch={BRANCH}", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def remote(self):
        from pushtrain import gitops

        return gitops.GitRemote(url=str(self.bare))

    def commit(
        self, files: dict[str, str | bytes], message: str = "change", remove: tuple[str, ...] = ()
    ) -> str:
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        for name in remove:
            (self.work / name).unlink()
        git(self.work, "add", "--all")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.work, "push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}")
        return git(self.work, "rev-parse", "HEAD")

    def checkout(self, sha: str, run_id: str = RUN_1) -> pipeline.Pipeline:
        found = {"repo_url": str(self.bare), "branch": BRANCH, "commit": sha, "superseded": []}
        result = steps.checkout_commit(found, {}, run_id, self.remote)
        return pipeline.Pipeline.load(result["pipeline_id"])


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path)


def stored_versions() -> dict[str, list[int]]:
    root = settings.datasets_dir()
    if not root.is_dir():
        return {}
    return {p.name: datasets.versions(p.name) for p in sorted(root.iterdir()) if not p.name.startswith(".")}


# ------------------------------------------------------------------------------------------- repo: images


def test_a_repo_image_folder_is_imported_and_pinned_in_pipeline_json(origin: Origin) -> None:
    toml = 'dataset = "repo:data/colours"\nimage_size = [8, 8]\nchannels = 3\n'
    sha = origin.commit({"model.py": MODEL, "pushtrain.toml": toml, **colour_images("data/colours")})

    run = origin.checkout(sha)

    name, version = run.pinned_dataset
    assert name == datasets.repo_dataset_name(str(origin.bare), "data/colours") and version == 1
    document = json.loads((pipeline.pipeline_dir(run.pipeline_id) / pipeline.PIPELINE_FILE).read_text())
    assert (document["dataset_name"], document["dataset_version"]) == (name, 1)
    assert document["config"]["image_size"] == [8, 8] and document["config"]["channels"] == 3
    manifest = datasets.ensure_dataset(name, version)
    assert {key: manifest.source[key] for key in ("type", "folder", "commit")} == {
        "type": "repo",
        "folder": "data/colours",
        "commit": sha,
    }
    assert manifest.image_shape == [8, 8, 3] and manifest.class_names == ["blue", "green", "red"]
    assert manifest.counts == {"train": 12, "test": 3}
    assert run.dataset_label == f"repo:data/colours v1 ({name})"


def test_unchanged_data_keeps_its_version_and_a_changed_image_pins_the_next(origin: Origin) -> None:
    images = colour_images("data/colours")
    toml = 'dataset = "repo:data/colours"\n'
    first = origin.checkout(origin.commit({"model.py": MODEL, "pushtrain.toml": toml, **images}), RUN_1)
    code_only = origin.checkout(origin.commit({"model.py": MODEL.replace("1", "2")}), RUN_2)
    assert code_only.pinned_dataset == first.pinned_dataset  # same content: the same split, nothing new

    changed = origin.checkout(origin.commit({"data/colours/red/0.png": png((250, 0, 0), seed=99)}), RUN_3)

    name = first.pinned_dataset[0]
    assert changed.pinned_dataset == (name, 2)
    assert stored_versions() == {name: [1, 2]}
    # the first pipeline still reads what it was pinned to, not the latest version
    assert pipeline.Pipeline.load(first.pipeline_id).pinned_dataset == (name, 1)
    assert datasets.ensure_dataset(*first.pinned_dataset).version == 1
    assert datasets.ensure_dataset(*changed.pinned_dataset).source["commit"] == changed.commit


def test_a_repo_csv_table_is_imported_with_its_label_column(origin: Origin) -> None:
    rows = ["alcohol,acidity,colour,quality"] + [
        f"{9 + (i % 5) * 0.5},{0.3 + (i % 3) * 0.1},{'red' if i % 2 else 'white'},{'good' if i % 2 else 'bad'}"
        for i in range(20)
    ]
    toml = 'dataset = "repo:tables/wine.csv"\nlabel_column = "quality"\ncategorical = ["colour"]\n'
    sha = origin.commit(
        {"model.py": MODEL, "pushtrain.toml": toml, "tables/wine.csv": "\n".join(rows) + "\n"}
    )

    run = origin.checkout(sha)

    manifest = datasets.ensure_dataset(*run.pinned_dataset)
    assert manifest.kind == datasets.TABLE and manifest.class_names == ["bad", "good"]
    assert manifest.table["label_column"] == "quality"
    assert manifest.counts["train"] + manifest.counts["test"] == 20


# ------------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    ("files", "toml", "expected"),
    [
        (colour_images("data/colours", classes=("red",)), 'dataset = "repo:data/colours"\n', "class"),
        (colour_images("data/colours", per_class=1), 'dataset = "repo:data/colours"\n', "add more"),
        ({"data/colours/red/0.png": b"not a png"}, 'dataset = "repo:data/elsewhere"\n', "commit the data"),
        (
            {**colour_images("data/colours"), "data/colours/red/9.png": png(COLOURS["red"], 7)[:60]},
            'dataset = "repo:data/colours"\n',
            "9.png",
        ),
        ({}, 'dataset = "pets"\n', "datasets add pets"),
    ],
    ids=["one class", "one image per class", "missing folder", "truncated image", "unknown name"],
)
def test_bad_data_fails_the_checkout_naming_the_problem_and_leaves_nothing(
    origin: Origin, files: dict, toml: str, expected: str
) -> None:
    sha = origin.commit({"model.py": MODEL, "pushtrain.toml": toml, **files})

    with pytest.raises(steps.UserFacingError) as caught:
        origin.checkout(sha)

    message = str(caught.value)
    assert message.startswith(pipeline.CONFIG_FILE) and expected in message, message
    assert stored_versions() == {}  # nothing half-imported, no name left behind
    assert not (pipeline.pipeline_dir(pipeline.pipeline_id_for(sha, RUN_1)) / pipeline.PIPELINE_FILE).exists()


def test_bad_new_data_leaves_the_earlier_version_as_it_was(origin: Origin) -> None:
    toml = 'dataset = "repo:data/colours"\n'
    good = origin.checkout(
        origin.commit({"model.py": MODEL, "pushtrain.toml": toml, **colour_images("data/colours")})
    )
    name = good.pinned_dataset[0]
    before = datasets.load_manifest(name, 1)

    broken = origin.commit({"data/colours/blue/0.png": b"\x89PNG\r\n\x1a\n truncated"})
    with pytest.raises(steps.UserFacingError, match="0.png"):
        origin.checkout(broken, RUN_2)

    assert stored_versions() == {name: [1]}
    assert datasets.load_manifest(name, 1) == before


def test_import_keys_with_a_named_data_set_are_a_config_error(origin: Origin) -> None:
    sha = origin.commit({"model.py": MODEL, "pushtrain.toml": 'dataset = "digits"\nimage_size = [28, 28]\n'})

    with pytest.raises(steps.UserFacingError, match="image_size apply to repo: data sets only"):
        origin.checkout(sha)


# ------------------------------------------------------------------------------------------- the readers


def test_a_registered_data_set_is_pinned_at_its_latest_version_and_judged_on_that_version(
    origin: Origin, tmp_path: Path
) -> None:
    source = tmp_path / "colours"
    for name, content in colour_images("colours").items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    datasets.add_path("colours", source)
    (source / "red" / "0.png").write_bytes(png((255, 0, 0), seed=5))
    assert datasets.add_path("colours", source).manifest.version == 2
    sha = origin.commit({"model.py": MODEL, "pushtrain.toml": 'dataset = "colours"\nkind = "cnn"\n'})
    run = origin.checkout(sha)
    assert run.pinned_dataset == ("colours", 2) and run.dataset_label == "colours v2"

    (source / "red" / "1.png").write_bytes(png((255, 0, 0), seed=6))
    assert datasets.add_path("colours", source).manifest.version == 3  # added while the pipeline runs

    run.changed(kind="cnn").save()
    prepared = steps.prepare_first_attempt(run.pipeline_id)
    trained, evaluation = trained_and_evaluated(run, datasets.ensure_dataset("colours", 2))
    steps.judge_attempt(prepared, trained, evaluation, {"dag_id": "train_on_push", "run_id": RUN_1})

    record = pipeline.Attempt.load(run.pipeline_id, 1)
    pinned, latest = datasets.ensure_dataset("colours", 2), datasets.ensure_dataset("colours", 3)
    assert record.dataset.name == "colours" and record.dataset.split_version == "v2"
    assert (
        (record.dataset.train_sha256, record.dataset.test_sha256)
        == (pinned.train_sha256, pinned.test_sha256)
        != (latest.train_sha256, latest.test_sha256)
    )
    assert record.lineage(run)["pipeline"]["config"]["dataset"] == "colours"


def test_a_record_from_before_the_pin_reads_the_configured_data_set_at_its_latest_version(
    origin: Origin,
) -> None:
    sha = origin.commit({"model.py": MODEL, "pushtrain.toml": 'dataset = "digits"\n'})
    run = origin.checkout(sha)
    assert run.pinned_dataset == ("digits", 1)
    path = pipeline.pipeline_dir(run.pipeline_id) / pipeline.PIPELINE_FILE
    document = json.loads(path.read_text())
    for key in ("dataset_name", "dataset_version", *pipeline.IMPORT_KEYS):
        document.pop(key, None)
        document["config"].pop(key, None)
    path.write_text(json.dumps(document))

    old = pipeline.Pipeline.load(run.pipeline_id)

    assert old.pinned_dataset == ("digits", None) and old.dataset_label == "digits"
    assert datasets.ensure_dataset(*old.pinned_dataset).version == 1


def trained_and_evaluated(run: pipeline.Pipeline, manifest: datasets.Manifest) -> tuple[dict, dict]:
    """What the training and evaluation tasks leave for ``judge_attempt`` (as the runner writes them)."""
    model_file = pipeline.attempt_dir(run.pipeline_id, 1) / "code" / run.config.entry
    metrics = {
        "schema_version": contract.SCHEMA_VERSION,
        "kind": "cnn",
        "evaluated_on": "validation",
        "accuracy": 0.9,
        "precision": 0.9,
        "recall": 0.9,
        "f1": 0.9,
        "loss": 0.4,
        "per_class": {},
        "n_train": manifest.counts["train"],
        "n_evaluated": 3,
        "epochs_run": 1,
        "resumed_from_epoch": 0,
        "train_seconds": 1.0,
        "history": [],
        "hparams": {"epochs": 1},
        "code_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "dataset_sha256": manifest.train_sha256,
        "versions": {},
        "finished_at": "2026-03-01T12:00:00Z",
    }
    assert contract.validate_metrics(metrics) == []
    out = pipeline.output_dir(run.pipeline_id, 1)
    contract.write_json_atomic(out / contract.METRICS_FILE, metrics)
    trained = {"status": "trained", "image": "pushtrain/cnn:unit", "container_wall_seconds": 2.0}
    evaluation = pipeline.Evaluation(
        accuracy=0.9,
        precision=0.9,
        recall=0.9,
        f1=0.9,
        loss=0.4,
        n_evaluated=manifest.counts["test"],
        dataset_sha256=manifest.test_sha256,
        container_wall_seconds=1.0,
    ).model_dump()
    return trained, evaluation
