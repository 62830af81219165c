"""transforms.table: CSV and records -> a (rows, features) tensor; spec checks; item errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.errors import InvalidInput
from transforms.base import KINDS, TensorInfo, TransformLimits, build
from transforms.table import TableTransform

WINE: dict[str, Any] = {
    "input": "features",
    "columns": [
        {"name": "alcohol", "mean": 10.0, "std": 2.0},
        {"name": "year", "type": "integer", "default": 2000},
        {"name": "colour", "type": "category", "vocabulary": ["red", "white", "rose"]},
        {"name": "region", "type": "category", "vocabulary": ["north", "south"], "encoding": "onehot"},
    ],
}
WINE_CSV = b"region,colour,year,alcohol\nnorth,white,2010,12\nsouth,red,,9\n"
WINE_RECORDS: list[dict[str, Any]] = [
    {"alcohol": "12", "year": 2010, "colour": "white", "region": "north"},
    {"alcohol": 9.0, "colour": "red", "region": "south"},
]
# alcohol (x-10)/2 | year | colour index | region one-hot (north, south)
WINE_EXPECTED = np.array(
    [
        [1.0, 2010.0, 1.0, 1.0, 0.0],
        [-0.5, 2000.0, 0.0, 0.0, 1.0],
    ],
    dtype=np.float32,
)


def table(**changes: Any) -> TableTransform:
    """The wine transform with top-level spec keys changed."""
    return TableTransform({**WINE, **changes})


def one(columns: list[dict[str, Any]], limits: TransformLimits | None = None, **spec: Any) -> TableTransform:
    """A transform over the given columns, input `x`."""
    return TableTransform({"input": "x", "columns": columns, **spec}, limits)


def error(transform: TableTransform, items: list[Any]) -> str:
    """The InvalidInput message transform(items) raises."""
    with pytest.raises(InvalidInput) as caught:
        transform.transform(items)
    return caught.value.message


def spec_message(spec: dict[str, Any]) -> str:
    """The InvalidInput message building a table transform from spec raises."""
    with pytest.raises(InvalidInput) as caught:
        TableTransform(spec)
    return caught.value.message


# -- results ---------------------------------------------------------------------------------------


def test_registered_as_table() -> None:
    assert KINDS["table"] is TableTransform
    assert isinstance(build({"kind": "table", **WINE}), TableTransform)


def test_csv_and_records_give_the_same_tensor_in_spec_column_order() -> None:
    transform = table()
    from_csv = transform.transform([WINE_CSV])["features"]
    from_records = transform.transform(WINE_RECORDS)["features"]
    np.testing.assert_array_equal(from_csv, WINE_EXPECTED)
    np.testing.assert_array_equal(from_records, WINE_EXPECTED)
    assert from_csv.dtype == from_records.dtype == np.float32


def test_outputs_agree_with_the_array() -> None:
    for dtype, datatype, numpy_dtype in (("float32", "FP32", np.float32), ("float64", "FP64", np.float64)):
        transform = table(dtype=dtype)
        assert transform.outputs() == {"features": TensorInfo(datatype, (-1, 5))}
        array = transform.transform([WINE_CSV])["features"]
        assert array.dtype == numpy_dtype and array.shape == (2, 5)


def test_float64_keeps_precision() -> None:
    transform = one([{"name": "a"}], dtype="float64")
    array = transform.transform([{"a": "0.1"}, b"a\n1e-300\n"])["x"]
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, np.array([[0.1], [1e-300]]))


def test_defaults_fill_missing_and_empty_values() -> None:
    transform = one(
        [
            {"name": "n", "default": 1.5},
            {"name": "i", "type": "integer", "default": "-3"},
            {"name": "c", "type": "category", "vocabulary": ["a", "b"], "default": "b"},
        ]
    )
    items = [
        {},  # all missing
        {"n": None, "i": "", "c": "  "},  # all empty
        b"n,c\n,\n2.5,a\n",  # i missing from the header, the first row empty
        b"i\n7\n",
    ]
    expected = [[1.5, -3, 1], [1.5, -3, 1], [1.5, -3, 1], [2.5, -3, 0], [1.5, 7, 1]]
    np.testing.assert_array_equal(transform.transform(items)["x"], np.array(expected, dtype=np.float32))


def test_standardisation_applies_to_values_and_defaults() -> None:
    transform = one(
        [
            {"name": "a", "mean": 4, "std": 0.5, "default": 5},
            {"name": "b", "type": "integer", "mean": "1e1", "std": 10},  # YAML reads 1e1 as a string
            {"name": "c", "std": 4},
            {"name": "d", "mean": -1},
        ]
    )
    array = transform.transform([b"a,b,c,d\n3,30,2,1\n,-10,-8,0\n"])["x"]
    expected = [[-2.0, 2.0, 0.5, 2.0], [2.0, -2.0, -2.0, 1.0]]
    np.testing.assert_array_equal(array, np.array(expected, dtype=np.float32))


def test_integer_column_accepts_integral_text_and_numbers() -> None:
    transform = one([{"name": "i", "type": "integer"}])
    array = transform.transform([b"i\n3\n-4.0\n1e3\n", {"i": 5}, {"i": 6.0}])["x"]
    np.testing.assert_array_equal(array, np.array([[3], [-4], [1000], [5], [6]], dtype=np.float32))


def test_category_index_and_onehot() -> None:
    colours = ["red", "white", "rose"]
    transform = one(
        [
            {"name": "c", "type": "category", "vocabulary": colours},
            {"name": "c1", "type": "category", "vocabulary": colours, "encoding": "onehot"},
            {"name": "n", "type": "category", "vocabulary": [1, 2]},  # ints become their text
        ]
    )
    array = transform.transform([b"c,c1,n\nrose,red,2\nred,rose,1\n", {"c": "white", "c1": "white", "n": 2}])
    expected = [[2, 1, 0, 0, 1], [0, 0, 0, 1, 0], [1, 0, 1, 0, 1]]
    np.testing.assert_array_equal(array["x"], np.array(expected, dtype=np.float32))
    assert transform.outputs()["x"].shape == (-1, 5)


def test_unknown_category_as_value() -> None:
    transform = one(
        [
            {"name": "c", "type": "category", "vocabulary": ["a", "b"], "unknown": "value"},
            {
                "name": "d",
                "type": "category",
                "vocabulary": ["a", "b"],
                "unknown": "value",
                "encoding": "onehot",
            },
            # with unknown: value a default outside the vocabulary is allowed: missing = unknown
            {"name": "e", "type": "category", "vocabulary": ["a"], "unknown": "value", "default": "zz"},
        ]
    )
    array = transform.transform([b"c,d\nq,b\nb,q\n", {"c": "A", "d": "a", "e": "a"}])["x"]
    expected = [[-1, 0, 1, -1], [1, 0, 0, -1], [-1, 1, 0, 0]]
    np.testing.assert_array_equal(array, np.array(expected, dtype=np.float32))


def test_unknown_category_as_error_lists_the_vocabulary() -> None:
    transform = one([{"name": "colour", "type": "category", "vocabulary": ["red", "white"]}])
    message = error(transform, [{"colour": "red"}, b"colour\nwhite\npurple\n"])
    assert message == "items[1]: row 1: column 'colour': 'purple' is not in the vocabulary ('red', 'white')"


def test_long_vocabulary_is_cut_in_messages() -> None:
    words = [f"w{k}" for k in range(25)]
    transform = one([{"name": "c", "type": "category", "vocabulary": words}])
    message = error(transform, [{"c": "nope"}])
    assert message.startswith("items[0]: row 0: column 'c': 'nope' is not in the vocabulary ('w0', 'w1'")
    assert "'w9', ... and 15 more)" in message and "'w10'" not in message


def test_unknown_columns_ignore() -> None:
    transform = one([{"name": "a"}, {"name": "b"}], unknown_columns="ignore")
    array = transform.transform([b"z,b,a,y\nq,2,1,r\n", {"b": 4, "a": 3, "extra": "x"}])["x"]
    np.testing.assert_array_equal(array, np.array([[1, 2], [3, 4]], dtype=np.float32))


def test_unknown_columns_error_names_the_column_and_the_known_ones() -> None:
    transform = one([{"name": "a"}, {"name": "b"}])
    assert error(transform, [b"a,b,zz\n1,2,3\n"]) == (
        "items[0]: header: column 'zz': not in the schema; known columns: 'a', 'b'"
    )
    assert error(transform, [{"a": 1, "b": 2}, {"a": 1, "b": 2, "zz": 3}]) == (
        "items[1]: row 0: column 'zz': not in the schema; known columns: 'a', 'b'"
    )


def test_several_items_with_different_row_counts() -> None:
    transform = one([{"name": "a"}, {"name": "b", "default": 0}])
    items: list[Any] = [b"a,b\n1,2\n3,4\n5,6\n", {"a": 7}, b"b,a\n\n8,9\n\n", {"a": "10", "b": "11"}]
    assert transform.row_counts(items) == [3, 1, 1, 1]
    tensors, counts = transform.transform_rows(items)
    assert counts == [3, 1, 1, 1]
    expected = [[1, 2], [3, 4], [5, 6], [7, 0], [9, 8], [10, 11]]
    np.testing.assert_array_equal(tensors["x"], np.array(expected, dtype=np.float32))
    assert transform.transform([])["x"].shape == (0, 2)


def test_csv_details_quotes_crlf_bom_and_memoryview() -> None:
    transform = one([{"name": "a"}, {"name": "c", "type": "category", "vocabulary": ["x,y", 'say "hi"']}])
    data = '\ufeffa,c\r\n1,"x,y"\r\n2,"say ""hi"""\r\n'.encode()
    array = transform.transform([memoryview(data), bytearray(b'c,a\n"x,y",3\n')])
    np.testing.assert_array_equal(array["x"], np.array([[1, 0], [2, 1], [3, 0]], dtype=np.float32))


# -- item errors -----------------------------------------------------------------------------------


def test_non_number_names_item_row_column_and_value() -> None:
    transform = table()
    csv_error = error(
        transform, [WINE_CSV, b"alcohol,year,colour,region\n11,2001,red,north\nabc,2,red,north\n"]
    )
    assert csv_error == "items[1]: row 1: column 'alcohol': 'abc' is not a number"
    record = {**WINE_RECORDS[0], "alcohol": True}
    assert error(transform, [record]) == "items[0]: row 0: column 'alcohol': True is not a number"
    for bad in ("1_000", "[1]", [1], {"a": 1}, 10**400):
        assert "is not a number" in error(transform, [{**WINE_RECORDS[0], "alcohol": bad}])


def test_non_finite_number_is_an_error() -> None:
    transform = one([{"name": "a"}])
    assert error(transform, [b"a\n1\nnan\n"]) == "items[0]: row 1: column 'a': 'nan' is not a finite number"
    assert (
        error(transform, [{"a": float("inf")}]) == "items[0]: row 0: column 'a': inf is not a finite number"
    )


def test_non_integral_integer_is_an_error() -> None:
    transform = one([{"name": "n"}, {"name": "i", "type": "integer"}])
    assert (
        error(transform, [b"n,i\n1.5,2\n2.5,3.25\n"])
        == "items[0]: row 1: column 'i': '3.25' is not an integer"
    )
    assert error(transform, [{"n": 1, "i": 0.5}]) == "items[0]: row 0: column 'i': 0.5 is not an integer"


def test_missing_column_without_default() -> None:
    transform = table()
    assert error(transform, [b"year,colour,region\n2001,red,north\n"]) == (
        "items[0]: header: column 'alcohol': missing and has no default"
    )
    record = {k: v for k, v in WINE_RECORDS[0].items() if k != "colour"}
    assert error(transform, [WINE_RECORDS[0], record]) == (
        "items[1]: row 0: column 'colour': missing and has no default"
    )


def test_empty_value_without_default() -> None:
    transform = table()
    assert error(transform, [b"alcohol,colour,region\n1,red,north\n2,,north\n"]) == (
        "items[0]: row 1: column 'colour': empty and has no default"
    )
    assert error(transform, [{**WINE_RECORDS[0], "alcohol": None}]) == (
        "items[0]: row 0: column 'alcohol': empty and has no default"
    )


def test_the_earliest_bad_row_is_reported() -> None:
    transform = one([{"name": "a"}, {"name": "b"}])
    # column a's first problem is in the third row, column b's in the second: b is reported
    assert error(transform, [{"a": 1, "b": 2}, {"a": 1, "b": "x"}, {"a": "y", "b": 2}]) == (
        "items[1]: row 0: column 'b': 'x' is not a number"
    )


def test_csv_structure_errors() -> None:
    transform = one([{"name": "a"}, {"name": "b"}])
    cases = {
        b"": "items[0]: empty CSV: no header line",
        b"\n\n": "items[0]: empty CSV: no header line",
        b"a,b\n": "items[0]: CSV has a header line but no rows",
        b"a,b\n1,2\n3\n": "items[0]: row 1: 1 values but the header has 2 columns",
        b"a,b\n1,2,3\n": "items[0]: row 0: 3 values but the header has 2 columns",
        b"a,a,b\n1,2,3\n": "items[0]: header: column 'a': appears more than once",
        b'a,b\n"1"x,2\n': "items[0]: not valid CSV (line 2): ',' expected after '\"'",
    }
    for data, message in cases.items():
        assert error(transform, [data]) == message, data
    assert error(transform, [b"a,b\n1,\xff\n"]) == "items[0]: not valid UTF-8 (byte 6: invalid start byte)"
    assert error(transform, [{"a": 1, "b": 2}, "a,b\n1,2\n"]) == (
        "items[1]: must be CSV bytes or a mapping of column name to value, not str"
    )
    assert error(transform, [{"a": 1, "b": 2, 3: 4}]) == "items[0]: row 0: column name 3 is not a string"


def test_row_limit_counts_the_whole_request() -> None:
    transform = one([{"name": "a"}], limits=TransformLimits(max_table_rows=3))
    assert transform.row_counts([b"a\n1\n2\n", {"a": 3}]) == [2, 1]
    assert error(transform, [b"a\n1\n2\n", {"a": 3}, {"a": 4}]) == (
        "items[2]: row 0: the request has more than limits.max_table_rows=3 rows"
    )
    assert error(transform, [{"a": 0}, b"a\n1\n2\n3\n"]) == (
        "items[1]: row 2: the request has more than limits.max_table_rows=3 rows"
    )
    with pytest.raises(InvalidInput, match="limits.max_table_rows=3"):
        transform.row_counts([b"a\n1\n2\n3\n4\n"])


def test_column_limit() -> None:
    transform = one([{"name": "a"}], unknown_columns="ignore", limits=TransformLimits(max_table_columns=2))
    assert (
        error(transform, [b"a,b,c\n1,2,3\n"])
        == "items[0]: header: 3 columns, more than limits.max_table_columns=2"
    )
    assert (
        error(transform, [{"a": 1, "b": 2, "c": 3}])
        == "items[0]: row 0: 3 columns, more than limits.max_table_columns=2"
    )
    np.testing.assert_array_equal(transform.transform([{"a": 1, "b": 2}])["x"], [[1.0]])


def test_long_values_are_cut_in_messages() -> None:
    transform = one([{"name": "a"}])
    message = error(transform, [{"a": "x" * 500}])
    assert message == "items[0]: row 0: column 'a': '" + "x" * 36 + "... is not a number"


# -- spec errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"columns": [{"name": "a"}]}, "spec.input: must be the name of a model input"),
        ({"input": "x"}, "spec.columns: must be a non-empty list of columns"),
        ({"input": "x", "columns": []}, "spec.columns: must be a non-empty list of columns"),
        ({"input": "x", "columns": [{"name": "a"}], "dtype": "int8"}, "spec.dtype: 'int8' is not one of"),
        (
            {"input": "x", "columns": [{"name": "a"}], "unknown_columns": "drop"},
            "spec.unknown_columns: 'drop'",
        ),
        ({"input": "x", "columns": [{"name": "a"}], "colums": []}, "spec.colums: unknown key"),
        ({"input": "x", "columns": ["a"]}, "spec.columns[0]: must be a mapping"),
        ({"input": "x", "columns": [{"type": "number"}]}, "spec.columns[0].name: must be a non-empty string"),
        (
            {"input": "x", "columns": [{"name": "a"}, {"name": "a"}]},
            "spec.columns[1].name: 'a' repeats columns[0]",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "text"}]},
            "spec.columns[0].type: 'text' is not one of",
        ),
        ({"input": "x", "columns": [{"name": "a", "stdev": 1}]}, "spec.columns[0].stdev: unknown key"),
        ({"input": "x", "columns": [{"name": "a", "std": 0}]}, "spec.columns[0].std: must be > 0, not 0"),
        (
            {"input": "x", "columns": [{"name": "a", "mean": "x"}]},
            "spec.columns[0].mean: 'x' is not a number",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "mean": "nan"}]},
            "spec.columns[0].mean: 'nan' is not a finite",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "default": "?"}]},
            "spec.columns[0].default: '?' is not a number",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "integer", "default": 1.5}]},
            "spec.columns[0].default: 1.5 is not an integer",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "vocabulary": ["p"]}]},
            "spec.columns[0].vocabulary: only for category columns",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "category", "vocabulary": ["p"], "mean": 1}]},
            "spec.columns[0].mean: only for number and integer columns",
        ),
        (
            {"input": "x", "columns": [{"name": "a"}, {"name": "b", "type": "category"}]},
            "spec.columns[1].vocabulary: required for a category column",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "category", "vocabulary": "pq"}]},
            "spec.columns[0].vocabulary: must be a list of strings",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "category", "vocabulary": []}]},
            "spec.columns[0].vocabulary: must not be empty",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "category", "vocabulary": ["p", "p"]}]},
            "spec.columns[0].vocabulary[1]: 'p' repeats an earlier entry",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "category", "vocabulary": ["p", 1.5]}]},
            "spec.columns[0].vocabulary[1]: 1.5 is not a string",
        ),
        (
            {"input": "x", "columns": [{"name": "a", "type": "category", "vocabulary": ["p", " "]}]},
            "spec.columns[0].vocabulary[1]: must not be empty",
        ),
        (
            {
                "input": "x",
                "columns": [{"name": "a", "type": "category", "vocabulary": ["p"], "encoding": "bits"}],
            },
            "spec.columns[0].encoding: 'bits' is not one of index, onehot",
        ),
        (
            {
                "input": "x",
                "columns": [{"name": "a", "type": "category", "vocabulary": ["p"], "unknown": "skip"}],
            },
            "spec.columns[0].unknown: 'skip' is not one of error, value",
        ),
        (
            {
                "input": "x",
                "columns": [{"name": "a", "type": "category", "vocabulary": ["p"], "default": "q"}],
            },
            "spec.columns[0].default: 'q' is not in the vocabulary ('p')",
        ),
    ],
)
def test_spec_errors_name_the_key(spec: dict[str, Any], message: str) -> None:
    assert spec_message(spec).startswith(message)
