"""Table data sets from CSV: checked row by row, one-hot for listed categorical columns, a fixed column
order, and the runner's loader reading exactly what the import wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pushtrain import datasets
from pushtrain.datasets import DatasetError, ImportOptions
from pushtrain.runner.data import DataError, Table, folder_sha256, load_data, load_table


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def write_csv(path: Path, rows: list[list], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def wine_like(rows: int = 60) -> list[list]:
    """Quality grades 3, 10 and 5 (natural order matters), two numeric features and a colour."""
    rng = np.random.default_rng(0)
    table = [["alcohol", "acidity", "colour", "quality"]]
    for i in range(rows):
        grade = ("3", "10", "5")[i % 3]
        table.append(
            [
                f"{9 + int(grade) * 0.3 + rng.normal(0, 0.2):.3f}",
                f"{rng.normal(3, 0.1):.3f}",
                ("red", "white")[i % 2],
                grade,
            ]
        )
    return table


def test_a_csv_becomes_a_table_with_one_hot_columns_and_natural_class_order(tmp_path):
    source = write_csv(tmp_path / "wine.csv", wine_like(), delimiter=";")
    result = datasets.add_path("wine", source, ImportOptions(label_column="quality", categorical=("colour",)))
    manifest = result.manifest
    assert manifest.kind == "table" and manifest.image_shape is None
    assert manifest.class_names == ["3", "5", "10"]
    assert manifest.counts == {"train": 48, "test": 12}
    assert manifest.table["delimiter"] == ";" and manifest.table["label_column"] == "quality"
    assert manifest.table["feature_columns"] == ["alcohol", "acidity", "colour=red", "colour=white"]
    assert manifest.table["categorical"] == {
        "encoding": "one-hot",
        "categories": {"colour": ["red", "white"]},
    }
    assert folder_sha256(manifest.train_dir) == manifest.train_sha256

    train = load_data(manifest.train_dir)
    assert isinstance(train, Table) and train.images.dtype == np.float32 and train.images.shape == (48, 4)
    assert train.input_shape == (4,) and train.feature_names == manifest.table["feature_columns"]
    assert train.class_names == ["3", "5", "10"]
    assert set(train.images[:, 2] + train.images[:, 3]) == {1.0}  # exactly one colour per row
    # A row keeps its label: grade 10 wines are the strongest in this data.
    assert train.images[train.labels == 2, 0].mean() > train.images[train.labels == 0, 0].mean() + 1
    test = load_table(manifest.test_dir, class_names=["10", "5", "3"])  # the order a model was trained with
    assert sorted(set(test.labels.tolist())) == [0, 1, 2] and test.class_names == ["10", "5", "3"]
    assert len(train.subset(np.arange(48) < 10).feature_names) == 4  # a subset is still a Table


def test_one_changed_byte_is_the_next_version_and_the_same_file_a_no_op(tmp_path):
    source = write_csv(tmp_path / "t.csv", [["x", "label"], *[[str(i), "ab"[i % 2]] for i in range(20)]])
    first = datasets.add_path("t", source)
    assert not datasets.add_path("t", source).created
    source.write_bytes(source.read_bytes().replace(b"\n7,", b"\n8,", 1))
    second = datasets.add_path("t", source)
    assert second.created and second.manifest.version == 2
    assert datasets.load_manifest("t", 1).dataset_sha256 == first.manifest.dataset_sha256


def test_train_csv_and_test_csv_are_a_split_of_the_users_own(tmp_path):
    write_csv(tmp_path / "own" / "train.csv", [["x", "label"], *[[str(i), "ab"[i % 2]] for i in range(10)]])
    write_csv(tmp_path / "own" / "test.csv", [["x", "label"], ["1", "a"], ["2", "b"]])
    manifest = datasets.add_path("own", tmp_path / "own").manifest
    assert manifest.split["premade"] is True and manifest.counts == {"train": 10, "test": 2}


@pytest.mark.parametrize(
    ("rows", "options", "expected"),
    [
        (
            [["x", "y"], ["1", "a"], ["2", "b"]],
            ImportOptions(),
            "has no label column 'label' (none was named, and there is no column called 'label'): its columns are x, y",
        ),
        (
            [["x", "kind"], *[[str(i), "a"] for i in range(9)]],
            ImportOptions(label_column="kind"),
            "the label column 'kind' has a single value ('a')",
        ),
        (
            [["x", "label"], ["1", "a"], ["", "b"], ["3", "a"]],
            ImportOptions(),
            "data.csv line 3: column 'x' has a missing or infinite value ('')",
        ),
        ([["x", "label"], ["1", "a"], ["NaN", "b"]], ImportOptions(), "line 3: column 'x' has a missing"),
        (
            [["x", "colour", "label"], ["1", "red", "a"]],
            ImportOptions(),
            "line 2: column 'colour' is not numeric ('red'): list it in categorical (--categorical colour)",
        ),
        (
            [["x", "colour", "label"], ["1", "", "a"]],
            ImportOptions(categorical=("colour",)),
            "line 2: column 'colour' has a missing",
        ),
        (
            [["x", "label"], ["1", "a"]],
            ImportOptions(categorical=("shade",)),
            "categorical column 'shade' is not in",
        ),
        ([["x", "label"], ["1", "a", "9"]], ImportOptions(), "line 2: 3 values, the header has 2 columns"),
        ([["x", "label"], ["1", ""]], ImportOptions(), "line 2: the label ('label') is empty"),
        ([["x", "x", "label"], ["1", "2", "a"]], ImportOptions(), "the header repeats 'x'"),
        ([["label"], ["a"], ["b"]], ImportOptions(), "has no feature columns"),
        (
            [["x", "label"], *[[str(i), "a"] for i in range(9)], ["1", "b"], ["2", "b"]],
            ImportOptions(),
            "class 'b' has 2 rows (e.g. data.csv data row 10); with test_fraction 0.2 a class needs at least 3",
        ),
        (
            [["x", "label"], ["1", "a"]],
            ImportOptions(image_size=(8, 8)),
            "image_size and channels apply to images",
        ),
    ],
)
def test_bad_tables_fail_with_file_line_and_column_and_lose_nothing(tmp_path, rows, options, expected):
    good = write_csv(
        tmp_path / "good" / "data.csv", [["x", "label"], *[[str(i), "ab"[i % 2]] for i in range(20)]]
    )
    datasets.add_path("table", good)
    before = (datasets.version_root("table", 1) / "manifest.json").read_bytes()
    with pytest.raises(DatasetError) as failure:
        datasets.add_path("table", write_csv(tmp_path / "bad" / "data.csv", rows), options)
    assert expected in str(failure.value)
    assert datasets.versions("table") == [1]
    assert (datasets.version_root("table", 1) / "manifest.json").read_bytes() == before


def test_a_csv_that_is_not_utf8_or_has_two_candidates_is_refused(tmp_path):
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "data.csv").write_bytes("x,label\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="data.csv is not UTF-8 text"):
        datasets.add_path("latin", tmp_path / "latin")
    write_csv(tmp_path / "two" / "a.csv", [["x", "label"]])
    write_csv(tmp_path / "two" / "b.csv", [["x", "label"]])
    with pytest.raises(
        DatasetError, match=r"found 2 CSV files \(a.csv, b.csv\): keep one, or name them train.csv"
    ):
        datasets.add_path("two", tmp_path / "two")


def test_the_runner_refuses_a_table_that_disagrees_with_its_schema(tmp_path):
    source = write_csv(tmp_path / "t.csv", [["x", "label"], *[[str(i), "ab"[i % 2]] for i in range(20)]])
    manifest = datasets.add_path("t", source).manifest
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "table.csv").write_text((manifest.train_dir / "table.csv").read_text())
    schema = json.loads((manifest.train_dir / "schema.json").read_text())
    (copy / "schema.json").write_text(json.dumps({**schema, "feature_columns": ["y"]}))
    with pytest.raises(DataError, match="has columns"):
        load_table(copy)
    (copy / "schema.json").write_text(json.dumps({**schema, "class_names": ["a"]}))
    with pytest.raises(DataError, match="label 'b' is not one of the classes"):
        load_table(copy)
