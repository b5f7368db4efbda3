"""The success mail counts the held-out split in what the pinned data set holds: images, or a table's rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pushtrain import datasets, mail, pipeline
from pushtrain.pipeline import PipelineConfig


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def a_run(dataset: str, version: int = 0) -> pipeline.Pipeline:
    return pipeline.Pipeline(
        pipeline_id="01234567-89abcdef",
        repo_url="/srv/git/models.git",
        branch="main",
        commit="0123456789abcdef0123456789abcdef01234567",
        author_name="Ada",
        author_email="ada@example.com",
        commit_message="first",
        kind="linear",
        config=PipelineConfig(dataset=dataset),
        origin_dag_run_id="manual__1",
        model_name="models",
        dataset_name=dataset,
        dataset_version=version,
    )


def test_images_for_an_image_set_rows_for_a_table_examples_when_the_manifest_is_gone(tmp_path: Path) -> None:
    datasets.export_dataset(
        "digits", [([(17 * n + 3 * p) % 256 for p in range(64)], str(n % 10)) for n in range(60)]
    )
    source = tmp_path / "iris.csv"
    with source.open("w", newline="") as handle:
        rows = [["a", "b", "label"]] + [
            [f"{i % 7}.5", f"{i % 3}.25", ("x", "y", "z")[i % 3]] for i in range(45)
        ]
        csv.writer(handle).writerows(rows)
    table = datasets.add_path("iris", source).manifest

    assert mail.examples_word(a_run("digits", 1)) == "images"
    assert mail.examples_word(a_run("iris", table.version)) == "rows"
    assert mail.examples_word(a_run("iris", table.version + 1)) == "examples"  # no such version
    assert mail.examples_word(a_run("gone")) == "examples"
