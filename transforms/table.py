"""Table rows (CSV text or records) -> one 2-D float tensor, following a column schema.

The spec names the model input, the float dtype and the columns in the tensor's order:

    input: features
    dtype: float32            # or float64
    unknown_columns: error    # or ignore: input columns not in the schema
    columns:
      - {name: alcohol, mean: 10.4, std: 1.07}          # number (the default type)
      - {name: year, type: integer, default: 2000}      # default: used when missing or empty
      - {name: colour, type: category, vocabulary: [red, white], encoding: onehot, unknown: value}

Each item is either `bytes` (UTF-8 CSV with a header line and one or more rows) or a mapping of
column name to value (one record). A request's items together give the batch rows in order.
Rows in messages count from 0 within their item, blank CSV lines not counted; errors found in
the items' structure (header, limits, ragged rows) come before errors in the values, and among
value errors the earliest row is reported.

Values are gathered per column and the tensor is built column-wise with numpy (standardisation,
one-hot by scattering ones into a zeroed block); only parsing a cell's text is done cell by cell.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from router.errors import InvalidInput
from transforms.base import TensorInfo, Transform, TransformLimits, item_error, register, spec_error

# Spec values -> (numpy dtype, Open Inference Protocol datatype).
DTYPES: Final[dict[str, tuple[type[np.floating[Any]], str]]] = {
    "float32": (np.float32, "FP32"),
    "float64": (np.float64, "FP64"),
}
TYPES: Final = ("number", "integer", "category")
ENCODINGS: Final = ("index", "onehot")
UNKNOWN_VALUES: Final = ("error", "value")
UNKNOWN_COLUMNS: Final = ("error", "ignore")
SPEC_KEYS: Final = ("input", "dtype", "columns", "unknown_columns")
COLUMN_KEYS: Final = ("name", "type", "default", "mean", "std", "vocabulary", "encoding", "unknown")
NUMERIC_ONLY: Final = ("mean", "std")
CATEGORY_ONLY: Final = ("vocabulary", "encoding", "unknown")

LIST_MAX = 10  # names listed in a message before "... and N more"
VALUE_MAX = 40  # characters of a value's repr shown in a message

Cell = Any  # one value as it arrives: str from CSV; str | int | float | None from a record


@dataclass(frozen=True)
class Column:
    """One validated schema column."""

    name: str
    type: str  # number | integer | category
    default: float | str | None  # float for number/integer, str for category; None: required
    mean: float = 0.0
    std: float = 1.0
    vocabulary: tuple[str, ...] = ()
    encoding: str = "index"
    unknown: str = "error"

    @property
    def width(self) -> int:
        """How many output features this column gives (one-hot gives one per vocabulary entry)."""
        return len(self.vocabulary) if self.type == "category" and self.encoding == "onehot" else 1


@dataclass(frozen=True)
class ItemTable:
    """One item's rows: the row count and, per schema column present in the item, its cells."""

    rows: int
    cells: Mapping[str, Sequence[Cell]]


class CellError(Exception):
    """A bad value at batch row `row` (a position in the gathered column)."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row
        self.message = message


def show(value: object) -> str:
    """A value's repr for a message, cut to VALUE_MAX characters."""
    text = repr(value)
    return text if len(text) <= VALUE_MAX else text[: VALUE_MAX - 3] + "..."


def show_list(names: Iterable[str]) -> str:
    """Names quoted and comma-separated, the list cut after LIST_MAX entries."""
    names = list(names)
    shown = ", ".join(show(n) for n in names[:LIST_MAX])
    return shown if len(names) <= LIST_MAX else f"{shown}, ... and {len(names) - LIST_MAX} more"


def is_empty(value: Cell) -> bool:
    """Whether a cell counts as empty (null, or a string of only whitespace)."""
    return value is None or (isinstance(value, str) and not value.strip())


def to_float(value: Cell) -> float:
    """A non-empty cell as a float; ValueError when it is not a number (bools are not)."""
    if isinstance(value, str):
        if "_" in value:  # float() accepts "1_000"; CSV numbers never mean that
            raise ValueError(value)
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(value)
    try:
        return float(value)
    except OverflowError as e:  # an int beyond float range
        raise ValueError(value) from e


def to_category(value: Cell) -> str:
    """A non-empty cell as a category string (ints as their decimal text); TypeError otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(value)


def spec_number(key: str, value: Any) -> float:
    """A finite number from the spec (numeric strings too: YAML reads `1e-3` as a string)."""
    try:
        number = to_float(value)
    except ValueError:
        raise spec_error(key, f"{show(value)} is not a number") from None
    if not math.isfinite(number):
        raise spec_error(key, f"{show(value)} is not a finite number")
    return number


def parse_column(index: int, raw: Any) -> Column:
    """Validates one entry of `spec.columns`; errors name `spec.columns[i].key`."""
    key = f"columns[{index}]"
    if not isinstance(raw, Mapping):
        raise spec_error(key, "must be a mapping with at least a name")
    for k in raw:
        if k not in COLUMN_KEYS:
            raise spec_error(f"{key}.{k}", f"unknown key; expected one of {', '.join(COLUMN_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise spec_error(f"{key}.name", "must be a non-empty string")
    ctype = raw.get("type", "number")
    if ctype not in TYPES:
        raise spec_error(f"{key}.type", f"{show(ctype)} is not one of {', '.join(TYPES)}")
    raw_default = raw.get("default")

    if ctype != "category":
        for k in CATEGORY_ONLY:
            if k in raw:
                raise spec_error(f"{key}.{k}", "only for category columns")
        mean = spec_number(f"{key}.mean", raw.get("mean", 0.0))
        std = spec_number(f"{key}.std", raw.get("std", 1.0))
        if std <= 0:
            raise spec_error(f"{key}.std", f"must be > 0, not {show(raw.get('std'))}")
        default: float | None = None
        if raw_default is not None:
            default = spec_number(f"{key}.default", raw_default)
            if ctype == "integer" and not default.is_integer():
                raise spec_error(f"{key}.default", f"{show(raw_default)} is not an integer")
        return Column(name, ctype, default, mean, std)

    for k in NUMERIC_ONLY:
        if k in raw:
            raise spec_error(f"{key}.{k}", "only for number and integer columns")
    raw_vocabulary = raw.get("vocabulary")
    if raw_vocabulary is None:
        raise spec_error(f"{key}.vocabulary", "required for a category column")
    if isinstance(raw_vocabulary, str | bytes) or not isinstance(raw_vocabulary, Sequence):
        raise spec_error(f"{key}.vocabulary", "must be a list of strings")
    if not raw_vocabulary:
        raise spec_error(f"{key}.vocabulary", "must not be empty")
    vocabulary: list[str] = []
    for i, entry in enumerate(raw_vocabulary):
        try:
            word = to_category(entry)
        except TypeError:
            raise spec_error(f"{key}.vocabulary[{i}]", f"{show(entry)} is not a string") from None
        if not word.strip():
            raise spec_error(f"{key}.vocabulary[{i}]", "must not be empty (empty values are missing)")
        if word in vocabulary:
            raise spec_error(f"{key}.vocabulary[{i}]", f"{show(word)} repeats an earlier entry")
        vocabulary.append(word)
    encoding = raw.get("encoding", "index")
    if encoding not in ENCODINGS:
        raise spec_error(f"{key}.encoding", f"{show(encoding)} is not one of {', '.join(ENCODINGS)}")
    unknown = raw.get("unknown", "error")
    if unknown not in UNKNOWN_VALUES:
        raise spec_error(f"{key}.unknown", f"{show(unknown)} is not one of {', '.join(UNKNOWN_VALUES)}")
    category_default: str | None = None
    if raw_default is not None:
        try:
            category_default = to_category(raw_default)
        except TypeError:
            raise spec_error(f"{key}.default", f"{show(raw_default)} is not a string") from None
        if unknown == "error" and category_default not in vocabulary:
            raise spec_error(
                f"{key}.default",
                f"{show(category_default)} is not in the vocabulary ({show_list(vocabulary)})",
            )
    return Column(
        name, "category", category_default, vocabulary=tuple(vocabulary), encoding=encoding, unknown=unknown
    )


@register
class TableTransform(Transform):
    """Table rows (CSV bytes or records) -> a (rows, features) float tensor for one model input."""

    kind = "table"

    def __init__(self, spec: Mapping[str, Any], limits: TransformLimits | None = None) -> None:
        """Validates the spec; InvalidInput names the offending key (`spec.columns[2].vocabulary`)."""
        super().__init__(spec, limits)
        for k in self.spec:
            if k not in SPEC_KEYS:
                raise spec_error(str(k), f"unknown key; expected one of {', '.join(SPEC_KEYS)}")
        name = self.spec.get("input")
        if not isinstance(name, str) or not name:
            raise spec_error("input", "must be the name of a model input")
        self.input: str = name
        dtype = self.spec.get("dtype", "float32")
        if dtype not in DTYPES:
            raise spec_error("dtype", f"{show(dtype)} is not one of {', '.join(DTYPES)}")
        self.dtype, self.datatype = DTYPES[dtype]
        unknown_columns = self.spec.get("unknown_columns", "error")
        if unknown_columns not in UNKNOWN_COLUMNS:
            raise spec_error(
                "unknown_columns", f"{show(unknown_columns)} is not one of {', '.join(UNKNOWN_COLUMNS)}"
            )
        self.ignore_unknown: bool = unknown_columns == "ignore"
        raw_columns = self.spec.get("columns")
        if isinstance(raw_columns, str | bytes) or not isinstance(raw_columns, Sequence) or not raw_columns:
            raise spec_error("columns", "must be a non-empty list of columns")
        self.columns: tuple[Column, ...] = tuple(parse_column(i, c) for i, c in enumerate(raw_columns))
        seen: dict[str, int] = {}
        for i, column in enumerate(self.columns):
            if column.name in seen:
                raise spec_error(
                    f"columns[{i}].name", f"{show(column.name)} repeats columns[{seen[column.name]}]"
                )
            seen[column.name] = i
        self.names: frozenset[str] = frozenset(seen)
        self.features: int = sum(c.width for c in self.columns)

    def outputs(self) -> dict[str, TensorInfo]:
        """One tensor: (batch rows, features), FP32 or FP64."""
        return {self.input: TensorInfo(self.datatype, (-1, self.features))}

    def transform(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """The (rows, features) tensor for all the items' rows, in item order."""
        return self.transform_rows(items)[0]

    def row_counts(self, items: Sequence[Any]) -> list[int]:
        """How many batch rows each item gives (a record 1, a CSV item its data rows).

        Checks the items' structure and limits like `transform` does, not their values.
        """
        return [table.rows for table in self.read(items)]

    def transform_rows(self, items: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[int]]:
        """The tensors of `transform` and the `row_counts` of the items, from one parse
        (a CSV item holds as many batch rows as it has data rows)."""
        tables = self.read(items)
        counts = [t.rows for t in tables]
        total = sum(counts)
        out = np.empty((total, self.features), dtype=self.dtype)
        first: tuple[int, int, str] | None = None  # (batch row, column index, message)
        offset = 0
        for index, column in enumerate(self.columns):
            cells = self.gather(column, tables)
            try:
                if column.type == "category":
                    codes = self.category_codes(column, cells)
                    if column.encoding == "onehot":
                        # Scatter the ones rather than index np.eye(len(vocabulary)): a large
                        # vocabulary would need a large identity matrix. Unknown (-1) rows stay 0.
                        block = out[:, offset : offset + column.width]
                        block[...] = 0
                        known = np.flatnonzero(codes >= 0)
                        block[known, codes[known]] = 1
                    else:
                        out[:, offset] = codes
                else:
                    values = self.numbers(column, cells)
                    if column.mean != 0.0 or column.std != 1.0:
                        values = (values - column.mean) / column.std
                    out[:, offset] = values
            except CellError as e:
                if first is None or e.row < first[0]:
                    first = (e.row, index, e.message)
            offset += column.width
        if first is not None:
            row, index, message = first
            item, item_row = locate(counts, row)
            raise InvalidInput(
                f"items[{item}]: row {item_row}: column {show(self.columns[index].name)}: {message}"
            )
        return {self.input: out}, counts

    # -- reading items ----------------------------------------------------------------------------

    def read(self, items: Sequence[Any]) -> list[ItemTable]:
        """Each item's rows by column, checking structure and the request's row budget."""
        tables: list[ItemTable] = []
        total = 0
        for i, item in enumerate(items):
            budget = self.limits.max_table_rows - total
            try:
                if isinstance(item, bytes | bytearray | memoryview):
                    table = self.read_csv(bytes(item), budget)
                elif isinstance(item, Mapping):
                    table = self.read_record(item, budget)
                else:
                    raise InvalidInput(
                        f"must be CSV bytes or a mapping of column name to value, not {type(item).__name__}"
                    )
            except InvalidInput as e:
                raise item_error(i, e) from None
            tables.append(table)
            total += table.rows
        return tables

    def too_many_rows(self, row: int) -> InvalidInput:
        """The error for a row past the request's max_table_rows."""
        return InvalidInput(
            f"row {row}: the request has more than limits.max_table_rows={self.limits.max_table_rows} rows"
        )

    def unknown_column(self, where: str, name: str) -> InvalidInput:
        """The error for an input column not in the schema, listing the known ones."""
        known = show_list(c.name for c in self.columns)
        return InvalidInput(f"{where}: column {show(name)}: not in the schema; known columns: {known}")

    def read_csv(self, data: bytes, budget: int) -> ItemTable:
        """One CSV item: a header line, then one or more rows of as many values."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InvalidInput(f"not valid UTF-8 (byte {e.start}: {e.reason})") from None
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows: list[list[str]] = []
        try:
            header = next((row for row in reader if row), None)
            if header is None:
                raise InvalidInput("empty CSV: no header line")
            if len(header) > self.limits.max_table_columns:
                raise InvalidInput(
                    f"header: {len(header)} columns, more than "
                    f"limits.max_table_columns={self.limits.max_table_columns}"
                )
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise InvalidInput(f"header: column {show(name)}: appears more than once")
                seen.add(name)
                if name not in self.names and not self.ignore_unknown:
                    raise self.unknown_column("header", name)
            for column in self.columns:
                if column.name not in seen and column.default is None:
                    raise InvalidInput(f"header: column {show(column.name)}: missing and has no default")
            width = len(header)
            for row in reader:
                if not row:  # a blank line
                    continue
                if len(rows) >= budget:
                    raise self.too_many_rows(len(rows))
                if len(row) != width:
                    raise InvalidInput(
                        f"row {len(rows)}: {len(row)} values but the header has {width} columns"
                    )
                rows.append(row)
        except csv.Error as e:
            raise InvalidInput(f"not valid CSV (line {reader.line_num}): {e}") from None
        if not rows:
            raise InvalidInput("CSV has a header line but no rows")
        by_position = list(zip(*rows, strict=True))
        cells = {name: by_position[k] for k, name in enumerate(header) if name in self.names}
        return ItemTable(len(rows), cells)

    def read_record(self, record: Mapping[Any, Cell], budget: int) -> ItemTable:
        """One record: a mapping of column name to value, giving one row."""
        if budget < 1:
            raise self.too_many_rows(0)
        if len(record) > self.limits.max_table_columns:
            raise InvalidInput(
                f"row 0: {len(record)} columns, more than "
                f"limits.max_table_columns={self.limits.max_table_columns}"
            )
        for name in record:
            if not isinstance(name, str):
                raise InvalidInput(f"row 0: column name {show(name)} is not a string")
            if name not in self.names and not self.ignore_unknown:
                raise self.unknown_column("row 0", name)
        cells: dict[str, Sequence[Cell]] = {}
        for column in self.columns:
            if column.name in record:
                cells[column.name] = (record[column.name],)
            elif column.default is None:
                raise InvalidInput(f"row 0: column {show(column.name)}: missing and has no default")
        return ItemTable(1, cells)

    # -- building columns -------------------------------------------------------------------------

    @staticmethod
    def gather(column: Column, tables: Sequence[ItemTable]) -> list[Cell]:
        """One column's cells over all items' rows, None where the item lacks the column."""
        cells: list[Cell] = []
        for table in tables:
            present = table.cells.get(column.name)
            cells.extend(present if present is not None else [None] * table.rows)
        return cells

    @staticmethod
    def numbers(column: Column, cells: Sequence[Cell]) -> np.ndarray:
        """A number/integer column's values as float64 (defaults filled in, not standardised)."""
        default = column.default
        values: list[float] = []
        append = values.append
        for row, cell in enumerate(cells):
            if is_empty(cell):
                if default is None:
                    raise CellError(row, "empty and has no default")
                append(float(default))
                continue
            try:
                append(to_float(cell))
            except ValueError:
                raise CellError(row, f"{show(cell)} is not a number") from None
        array = np.array(values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise CellError(int(bad[0]), f"{show(cells[int(bad[0])])} is not a finite number")
        if column.type == "integer":
            bad = np.flatnonzero(array != np.floor(array))
            if bad.size:
                raise CellError(int(bad[0]), f"{show(cells[int(bad[0])])} is not an integer")
        return array

    @staticmethod
    def category_codes(column: Column, cells: Sequence[Cell]) -> np.ndarray:
        """A category column's vocabulary indexes, -1 for an unknown value (when allowed)."""
        lookup = {word: k for k, word in enumerate(column.vocabulary)}
        default = None if column.default is None else lookup.get(str(column.default), -1)
        codes: list[int] = []
        append = codes.append
        for row, cell in enumerate(cells):
            if is_empty(cell):
                if default is None:
                    raise CellError(row, "empty and has no default")
                append(default)
                continue
            try:
                append(lookup.get(to_category(cell), -1))
            except TypeError:
                raise CellError(row, f"{show(cell)} is not a string") from None
        array = np.array(codes, dtype=np.intp)
        if column.unknown == "error":
            bad = np.flatnonzero(array < 0)
            if bad.size:
                raise CellError(
                    int(bad[0]),
                    f"{show(cells[int(bad[0])])} is not in the vocabulary ({show_list(column.vocabulary)})",
                )
        return array


def locate(counts: Sequence[int], row: int) -> tuple[int, int]:
    """(item index, row within the item) of a batch row, given each item's row count."""
    ends = np.cumsum(counts)
    item = int(np.searchsorted(ends, row, side="right"))
    return item, row - (int(ends[item - 1]) if item else 0)
