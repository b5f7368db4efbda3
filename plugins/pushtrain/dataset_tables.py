"""Table data sets: a CSV with a label column, checked row by row and written in one fixed column order.

Input: one ``.csv`` file (the path itself, or the only CSV in a folder or archive), or ``train.csv`` and
``test.csv`` side by side for a split of the user's own. UTF-8 text with a header row; the delimiter is
the one of ``,`` ``;`` tab ``|`` that the header uses most. Parquet is not read: its reader (pyarrow) would
add far more to every worker than the feature is worth; export Parquet to CSV first.

The label column is ``label_column`` (default: a column named ``label``). Every other column is a feature
and must be a finite number in every row. A missing value (empty, ``NA``, ``NaN``, ``null``, ``?``) or a
column that is not numeric is **refused with the file, line and column named**: the platform does not
impute, because a silent guess would change what the model learns. A column listed in ``categorical``
is **one-hot encoded** instead: one 0/1 column per category (``color=red``, ``color=blue``, categories in
natural order, taken from the whole file so train and test get the same columns), recorded in the manifest.

Output in each split folder (``pushtrain.runner.data`` reads it): ``table.csv`` with the feature columns
(categorical ones expanded in place) then the label column last, numbers written as Python floats, and
``schema.json`` with the column names, the label column, the class names and the row count.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pushtrain.dataset_files import DatasetError, Limits, SourceFile, file_sha256, human_bytes, tree_sha256
from pushtrain.runner.data import TABLE_FILE, TABLE_SCHEMA_FILE, natural_key

CSV_SUFFIX = ".csv"
PREMADE_FILES = {"train": "train.csv", "test": "test.csv"}
DELIMITERS = (",", ";", "\t", "|")
MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}
DEFAULT_LABEL_COLUMN = "label"
SCHEMA_FORMAT = "pushtrain-table/1"


@dataclass(frozen=True)
class TableSource:
    files: dict[str | None, SourceFile]  # {None: one file} (the platform splits) or {"train": .., "test": ..}

    @property
    def premade(self) -> bool:
        return None not in self.files


@dataclass
class TableScan:
    source_sha256: str
    delimiter: str
    columns: list[str]  # as in the file
    label_column: str
    categories: dict[str, list[str]]  # categorical column -> its categories, natural order
    labels: dict[str | None, list[str]] = field(default_factory=dict)  # per file: each data row's label

    @property
    def feature_columns(self) -> list[str]:
        """The written feature columns: the file's order, a categorical column expanded in place."""
        expanded = []
        for column in self.columns:
            if column == self.label_column:
                continue
            if column in self.categories:
                expanded += [f"{column}={category}" for category in self.categories[column]]
            else:
                expanded.append(column)
        return expanded

    @property
    def class_names(self) -> list[str]:
        return sorted({label for labels in self.labels.values() for label in labels}, key=natural_key)

    def record(self) -> dict:
        """The manifest's ``table`` entry."""
        return {
            "format": "csv",
            "delimiter": self.delimiter,
            "label_column": self.label_column,
            "source_columns": self.columns,
            "feature_columns": self.feature_columns,
            "categorical": {"encoding": "one-hot", "categories": self.categories},
            "rows": sum(len(labels) for labels in self.labels.values()),
        }


def find_table(files: list[SourceFile]) -> TableSource | None:
    """The CSV file(s) at the top of the data root, or None when there are none."""
    tables = [f for f in files if len(f.parts) == 1 and f.relative.lower().endswith(CSV_SUFFIX)]
    if not tables:
        return None
    by_name = {f.relative: f for f in tables}
    if set(PREMADE_FILES.values()) <= set(by_name):
        return TableSource({split: by_name[name] for split, name in PREMADE_FILES.items()})
    if len(tables) > 1:
        raise DatasetError(
            f"found {len(tables)} CSV files ({', '.join(sorted(by_name))}): keep one, or name "
            "them train.csv and test.csv for a split of your own"
        )
    return TableSource({None: tables[0]})


def scan(
    source: TableSource, label_column: str | None, categorical: tuple[str, ...], limits: Limits
) -> TableScan:
    """Pass 1: the source hash, the header, and every row checked; keeps only the labels."""
    total = sum(f.size for f in source.files.values())
    if total > limits.max_bytes:
        raise DatasetError(
            f"the table is {human_bytes(total)}, more than the "
            f"{human_bytes(limits.max_bytes)} a data set may have "
            "(PUSHTRAIN_DATASET_MAX_BYTES): raise the cap or import less"
        )
    digest = tree_sha256({f.relative: file_sha256(f) for f in source.files.values()})
    first = next(iter(source.files.values()))
    delimiter, columns = _header(first)
    label = _label_column(first, columns, label_column)
    for column in categorical:
        if column not in columns:
            raise DatasetError(
                f"categorical column {column!r} is not in {first.relative} (columns: {', '.join(columns)})"
            )
        if column == label:
            raise DatasetError(f"{column!r} is the label column; list only feature columns as categorical")
    if len(columns) < 2:
        raise DatasetError(
            f"{first.relative} has no feature columns besides the label {label!r}: a table "
            "needs a header row and at least one feature column"
        )
    found = TableScan(digest, delimiter, columns, label, {c: [] for c in categorical})
    seen: dict[str, set[str]] = {column: set() for column in categorical}
    for key, table in source.files.items():
        if table is not first and _header(table) != (delimiter, columns):
            raise DatasetError(
                f"{table.relative} has other columns than {first.relative}: a split of your "
                "own needs the same header in train.csv and test.csv"
            )
        labels = found.labels.setdefault(key, [])
        for line, record in _rows(table, delimiter, len(columns)):
            row = dict(zip(columns, record, strict=True))
            for column, value in row.items():
                if column == label:
                    if not value:
                        raise DatasetError(
                            f"{table.relative} line {line}: the label ({label!r}) is empty: "
                            "fill it in or drop the row"
                        )
                elif column in seen:
                    if value.lower() in MISSING:
                        raise _missing(table, line, column, value)
                    seen[column].add(value)
                else:
                    _number(table, line, column, value)
            labels.append(row[label])
        if not labels:
            raise DatasetError(f"{table.relative} has a header but no rows: add the data")
    found.categories = {column: sorted(values, key=natural_key) for column, values in seen.items()}
    taken = set(columns)
    for name in found.feature_columns:
        if name in taken and name not in columns:
            raise DatasetError(f"one-hot column {name!r} would repeat an existing column: rename one of them")
    if len(found.class_names) < 2:
        raise DatasetError(
            f"the label column {label!r} has a single value ({found.class_names[0]!r}) in "
            f"{first.relative}: a classifier needs at least two classes"
        )
    return found


def write(
    found: TableScan,
    source: TableSource,
    held_out: dict[str | None, list[bool]],
    out: Path,
    log: Callable[[str], None],
) -> dict[str, dict[str, int]]:
    """Pass 2: ``out/train`` and ``out/test``, each with table.csv and schema.json; returns class counts."""
    features = found.feature_columns
    class_counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    handles, writers = {}, {}
    try:
        for split in ("train", "test"):
            (out / split).mkdir(parents=True)
            handles[split] = (out / split / TABLE_FILE).open("x", newline="", encoding="utf-8")
            writers[split] = csv.writer(handles[split], lineterminator="\n")
            writers[split].writerow([*features, found.label_column])
        for key, table in source.files.items():
            flags = held_out[key]
            for (line, record), is_test in zip(
                _rows(table, found.delimiter, len(found.columns)), flags, strict=True
            ):
                split = "test" if is_test else "train"
                row = dict(zip(found.columns, record, strict=True))
                values = []
                for column in found.columns:
                    if column == found.label_column:
                        continue
                    if column in found.categories:
                        values += ["1" if row[column] == c else "0" for c in found.categories[column]]
                    else:
                        values.append(repr(_number(table, line, column, row[column])))
                writers[split].writerow([*values, row[found.label_column]])
                counts = class_counts[split]
                counts[row[found.label_column]] = counts.get(row[found.label_column], 0) + 1
    finally:
        for handle in handles.values():
            handle.close()
    for split in ("train", "test"):
        schema = {
            "format": SCHEMA_FORMAT,
            "feature_columns": features,
            "label_column": found.label_column,
            "class_names": found.class_names,
            "rows": sum(class_counts[split].values()),
        }
        (out / split / TABLE_SCHEMA_FILE).write_text(json.dumps(schema, indent=2) + "\n")
    log(
        f"[datasets] table written: {len(features)} feature columns, "
        f"{sum(class_counts['train'].values())} train / {sum(class_counts['test'].values())} test rows"
    )
    return class_counts


def _header(table: SourceFile) -> tuple[str, list[str]]:
    with _open(table) as handle:
        try:
            first_line = handle.readline()
        except UnicodeDecodeError as exc:
            raise _not_utf8(table, exc) from None
    if not first_line.strip():
        raise DatasetError(
            f"{table.relative} is empty or starts with a blank line: the first line must be "
            "the header (column names)"
        )
    delimiter = max(DELIMITERS, key=lambda d: (first_line.count(d), -DELIMITERS.index(d)))
    columns = [name.strip() for name in next(csv.reader([first_line], delimiter=delimiter))]
    for position, name in enumerate(columns, start=1):
        if not name:
            raise DatasetError(f"{table.relative}: column {position} of the header has no name: name it")
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise DatasetError(
            f"{table.relative}: the header repeats {', '.join(map(repr, duplicates))}: "
            "give every column its own name"
        )
    return delimiter, columns


def _label_column(table: SourceFile, columns: list[str], label_column: str | None) -> str:
    wanted = label_column or DEFAULT_LABEL_COLUMN
    if wanted not in columns:
        how = "" if label_column else " (none was named, and there is no column called 'label')"
        raise DatasetError(
            f"{table.relative} has no label column {wanted!r}{how}: its columns are "
            f"{', '.join(columns)}; name the one that holds the classes with label_column "
            "(--label-column)"
        )
    return wanted


def _rows(table: SourceFile, delimiter: str, width: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped values) of every data row; blank lines are skipped."""
    with _open(table) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            next(reader, None)
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if len(record) != width:
                    raise DatasetError(
                        f"{table.relative} line {reader.line_num}: {len(record)} values, "
                        f"the header has {width} columns: fix the row (a stray delimiter "
                        "or quote?)"
                    )
                yield reader.line_num, [value.strip() for value in record]
        except UnicodeDecodeError as exc:
            raise _not_utf8(table, exc) from None
        except csv.Error as exc:
            raise DatasetError(f"{table.relative} line {reader.line_num}: {exc}: fix the row") from None


def _open(table: SourceFile):
    try:
        return open(table.path, newline="", encoding="utf-8-sig")  # the caller closes it (a with block)
    except OSError as exc:
        raise DatasetError(f"cannot read {table.relative}: {exc.strerror}") from None


def _number(table: SourceFile, line: int, column: str, value: str) -> float:
    if value.lower() in MISSING:
        raise _missing(table, line, column, value)
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(
            f"{table.relative} line {line}: column {column!r} is not numeric ({value!r}): "
            f"list it in categorical (--categorical {column}) to one-hot encode it, or drop "
            "the column"
        ) from None
    if not math.isfinite(number):
        raise _missing(table, line, column, value)
    return number


def _missing(table: SourceFile, line: int, column: str, value: str) -> DatasetError:
    return DatasetError(
        f"{table.relative} line {line}: column {column!r} has a missing or infinite value "
        f"({value!r}): the platform does not impute; fill it in or drop the row"
    )


def _not_utf8(table: SourceFile, exc: UnicodeDecodeError) -> DatasetError:
    return DatasetError(
        f"{table.relative} is not UTF-8 text (byte {exc.start} of a read block): save it as UTF-8 CSV"
    )
