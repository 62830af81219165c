"""router.tensors: typed -> raw conversion, BYTES framing, size checks, row splits, numpy views."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc.service_pb2 import InferTensorContents

from router import tensors
from router.errors import InvalidInput
from router.tensors import (
    DATATYPES,
    ITEM_SIZES,
    NUMPY_DTYPES,
    TYPED_FIELDS,
    check_raw_size,
    decode_bytes_elements,
    encode_bytes_elements,
    from_numpy,
    split_rows,
    to_numpy,
    typed_to_raw,
)

# Values that exercise each datatype's range (extremes included) and the numpy reference dtype.
TYPED_VALUES: dict[str, list] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 200, 255],
    "UINT16": [0, 1, 40000, 65535],
    "UINT32": [0, 1, 3_000_000_000, 2**32 - 1],
    "UINT64": [0, 1, 2**40, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-32768, -1, 0, 32767],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP32": [-1.5, 0.0, 3.25, 1e30],
    "FP64": [-1.5, 0.0, 3.141592653589793, 1e300],
}


def test_typed_values_cover_every_fixed_typed_datatype() -> None:
    assert set(TYPED_VALUES) | {"BYTES"} == set(TYPED_FIELDS)


@pytest.mark.parametrize("datatype", sorted(TYPED_VALUES))
def test_typed_to_raw_matches_numpy(datatype: str) -> None:
    values = TYPED_VALUES[datatype]
    contents = InferTensorContents()
    getattr(contents, TYPED_FIELDS[datatype]).extend(values)
    raw = typed_to_raw("input x", datatype, [2, 2], contents)
    want = np.array(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
    assert raw == want
    assert len(raw) == 4 * ITEM_SIZES[datatype]
    # and it reads back to the same values
    assert to_numpy(datatype, [2, 2], raw).reshape(-1).tolist() == pytest.approx(values, rel=1e-6)


def test_typed_to_raw_little_endian_reference() -> None:
    contents = InferTensorContents(int_contents=[1, -2])
    assert typed_to_raw("x", "INT32", [2], contents) == struct.pack("<ii", 1, -2)
    contents = InferTensorContents(fp32_contents=[1.0])
    assert typed_to_raw("x", "FP32", [1], contents) == struct.pack("<f", 1.0)


def test_typed_to_raw_bytes() -> None:
    items = [b"", b"abc", "héllo".encode()]
    contents = InferTensorContents(bytes_contents=items)
    raw = typed_to_raw("x", "BYTES", [3], contents)
    assert raw == b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00abc" + b"\x06\x00\x00\x00" + "héllo".encode()
    assert decode_bytes_elements(raw) == items


def test_typed_to_raw_empty_tensor() -> None:
    assert typed_to_raw("x", "FP32", [0, 3], InferTensorContents()) == b""


def test_typed_to_raw_element_count_mismatch() -> None:
    contents = InferTensorContents(int_contents=[1, 2, 3])
    message = r"^input a: shape \[2, 2\] needs 4 elements in int_contents, got 3$"
    with pytest.raises(InvalidInput, match=message):
        typed_to_raw("input a", "INT32", [2, 2], contents)


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_typed_to_raw_rejects_raw_only_datatypes(datatype: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^input a: {datatype} data must be sent as raw contents$"):
        typed_to_raw("input a", datatype, [1], InferTensorContents(fp32_contents=[1.0]))


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [
        ("UINT8", "uint_contents", 256),
        ("UINT16", "uint_contents", 70000),
        ("INT8", "int_contents", 128),
        ("INT8", "int_contents", -129),
        ("INT16", "int_contents", -40000),
    ],
)
def test_typed_to_raw_overflow(datatype: str, field: str, value: int) -> None:
    contents = InferTensorContents(**{field: [1, value]})
    with pytest.raises(InvalidInput, match=rf"^input a: a value in {field} does not fit {datatype}$"):
        typed_to_raw("input a", datatype, [2], contents)


@pytest.mark.parametrize(
    "items",
    [
        [],
        [b""],
        [b"", b"", b""],
        [b"a", b"", b"bc"],
        ["ünïcødé ✓".encode(), "日本語".encode()],
        [bytes(range(256)), b"\x00" * 5],
    ],
)
def test_bytes_framing_round_trip(items: list[bytes]) -> None:
    raw = encode_bytes_elements(items)
    assert len(raw) == sum(4 + len(b) for b in items)
    assert decode_bytes_elements(raw) == items
    assert decode_bytes_elements(memoryview(raw)) == items
    check_raw_size("t", "BYTES", [len(items)], raw)


def test_bytes_framing_layout() -> None:
    assert encode_bytes_elements([b"hi", b""]) == b"\x02\x00\x00\x00hi\x00\x00\x00\x00"


@pytest.mark.parametrize("datatype", sorted(ITEM_SIZES))
def test_check_raw_size_exact(datatype: str) -> None:
    size = ITEM_SIZES[datatype]
    check_raw_size("t", datatype, [2, 3], b"\x00" * (6 * size))
    check_raw_size("t", datatype, [2, 3], memoryview(b"\x00" * (6 * size)))
    check_raw_size("t", datatype, [0, 3], b"")
    check_raw_size("t", datatype, [], b"\x00" * size)  # a scalar has one element


@pytest.mark.parametrize("datatype", sorted(ITEM_SIZES))
@pytest.mark.parametrize("delta", [-1, 1])
def test_check_raw_size_wrong_length(datatype: str, delta: int) -> None:
    want = 6 * ITEM_SIZES[datatype]
    got = want + delta
    with pytest.raises(
        InvalidInput,
        match=rf"^input x: shape \[2, 3\] of {datatype} needs {want} bytes of data, got {got}$",
    ):
        check_raw_size("input x", datatype, [2, 3], b"\x00" * got)


def test_check_raw_size_bytes_counts() -> None:
    raw = encode_bytes_elements([b"a", b"b"])
    with pytest.raises(InvalidInput, match=r"^input s: shape \[3\] needs 3 BYTES elements, got 2$"):
        check_raw_size("input s", "BYTES", [3], raw)
    with pytest.raises(InvalidInput, match=r"^input s: BYTES data is not a sequence of 1 "):
        check_raw_size("input s", "BYTES", [1], raw)  # one element too many
    check_raw_size("input s", "BYTES", [0], b"")
    with pytest.raises(InvalidInput, match=r"^input s: BYTES data"):
        check_raw_size("input s", "BYTES", [0], b"\x00\x00\x00\x00")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01\x00",  # truncated length prefix
        b"\x05\x00\x00\x00abc",  # element shorter than its length says
        encode_bytes_elements([b"ok"]) + b"\x01",  # trailing garbage
        b"\xff\xff\xff\xff",  # huge length
    ],
)
def test_check_raw_size_malformed_bytes(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"^output y: BYTES data is not a sequence of"):
        check_raw_size("output y", "BYTES", [1], raw)


def test_split_rows_fixed() -> None:
    array = np.arange(12, dtype="<i4").reshape(6, 2)
    raw = array.tobytes()
    chunks = split_rows("INT32", [6, 2], raw, [1, 3, 2])
    assert chunks == [array[0:1].tobytes(), array[1:4].tobytes(), array[4:6].tobytes()]
    assert [to_numpy("INT32", [r, 2], c).tolist() for r, c in zip([1, 3, 2], chunks, strict=True)] == [
        [[0, 1]],
        [[2, 3], [4, 5], [6, 7]],
        [[8, 9], [10, 11]],
    ]


def test_split_rows_fixed_with_zero_rows_and_bf16() -> None:
    raw = bytes(range(8))  # 4 BF16 rows of one element
    assert split_rows("BF16", [4], raw, [0, 1, 3]) == [b"", bytes([0, 1]), bytes(range(2, 8))]


def test_split_rows_bytes() -> None:
    rows = [[b"a", b""], ["é".encode(), b"dd"], [b"", b"fff"]]
    flat = [x for row in rows for x in row]
    raw = encode_bytes_elements(flat)
    chunks = split_rows("BYTES", [3, 2], raw, [2, 1])
    assert chunks == [encode_bytes_elements(flat[:4]), encode_bytes_elements(flat[4:])]
    assert decode_bytes_elements(chunks[0]) == rows[0] + rows[1]
    assert decode_bytes_elements(chunks[1]) == rows[2]
    for r, chunk in zip([2, 1], chunks, strict=True):
        check_raw_size("chunk", "BYTES", [r, 2], chunk)


def test_split_rows_bytes_one_per_row() -> None:
    raw = encode_bytes_elements([b"x", b"yy", b"zzz"])
    assert split_rows("BYTES", [3], raw, [1, 1, 1]) == [
        encode_bytes_elements([b"x"]),
        encode_bytes_elements([b"yy"]),
        encode_bytes_elements([b"zzz"]),
    ]


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
def test_numpy_round_trip(datatype: str) -> None:
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        array = np.array([[True, False, True], [False, False, True]])
    elif dtype.kind == "f":
        array = np.array([[0.5, -1.25, 3.0], [np.inf, -0.0, 65504.0]], dtype=dtype)
    else:
        info = np.iinfo(dtype)
        array = np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=dtype)
    name, shape, raw = from_numpy(array)
    assert (name, shape) == (datatype, [2, 3])
    assert raw == array.astype(dtype.newbyteorder("<")).tobytes()
    check_raw_size("t", name, shape, raw)
    back = to_numpy(name, shape, raw)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)


def test_numpy_round_trip_fp16_values() -> None:
    array = np.array([1.0, 0.099975586, -65504.0, np.float16(6e-8)], dtype=np.float16)
    name, shape, raw = from_numpy(array)
    assert (name, shape, len(raw)) == ("FP16", [4], 8)
    assert raw == struct.pack("<4e", *array.tolist())
    np.testing.assert_array_equal(to_numpy("FP16", [4], raw), array)


def test_from_numpy_non_contiguous() -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2]
    name, shape, raw = from_numpy(array)
    assert (name, shape) == ("INT64", [3, 2])
    np.testing.assert_array_equal(to_numpy(name, shape, raw), array)


@pytest.mark.parametrize("dtype", [">i4", ">f8", ">u2", ">f2"])
def test_from_numpy_big_endian_becomes_little_endian(dtype: str) -> None:
    array = np.array([1, 2, 300], dtype=dtype)
    name, shape, raw = from_numpy(array)
    little = np.dtype(dtype).newbyteorder("<")
    assert raw == array.astype(little).tobytes()
    np.testing.assert_array_equal(to_numpy(name, shape, raw), array)


def test_numpy_round_trip_object_bytes() -> None:
    items = [b"", b"abc", "ü✓".encode(), b"\x00\x01"]
    array = np.array(items, dtype=object).reshape(2, 2)
    name, shape, raw = from_numpy(array)
    assert (name, shape) == ("BYTES", [2, 2])
    assert raw == encode_bytes_elements(items)
    back = to_numpy(name, shape, raw)
    assert back.dtype == object and back.shape == (2, 2)
    assert back.reshape(-1).tolist() == items


def test_from_numpy_strings() -> None:
    assert from_numpy(np.array(["ab", "ü"])) == ("BYTES", [2], encode_bytes_elements([b"ab", "ü".encode()]))
    assert from_numpy(np.array([b"ab", b"c"])) == ("BYTES", [2], encode_bytes_elements([b"ab", b"c"]))
    assert from_numpy(np.array(["x", b"y"], dtype=object))[2] == encode_bytes_elements([b"x", b"y"])


def test_from_numpy_rejects_non_bytes_objects() -> None:
    # bytes(3) would silently be b"\x00\x00\x00"
    with pytest.raises(InvalidInput, match="BYTES"):
        from_numpy(np.array([b"a", 3], dtype=object))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, "datetime64[s]", "V4"])
def test_from_numpy_unknown_dtype(dtype: object) -> None:
    with pytest.raises(InvalidInput, match=r"^numpy dtype .* has no Open Inference Protocol datatype$"):
        from_numpy(np.zeros(2, dtype=dtype))


def test_to_numpy_bf16_is_uint16_view() -> None:
    view = to_numpy("BF16", [2], struct.pack("<2H", 0x3F80, 0xC000))
    assert view.dtype == np.dtype("<u2")
    assert view.tolist() == [0x3F80, 0xC000]


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", "STRING", ""])
def test_unknown_datatype_rejected(datatype: str) -> None:
    message = rf"^input q: unknown datatype '{datatype}'; expected one of BF16, BOOL, BYTES, FP16,"
    with pytest.raises(InvalidInput, match=message):
        tensors.check_datatype("input q", datatype)
    with pytest.raises(InvalidInput, match="must be sent as raw contents"):
        typed_to_raw("input q", datatype, [1], InferTensorContents())


def test_known_datatypes() -> None:
    for datatype in DATATYPES:
        tensors.check_datatype("x", datatype)
    assert DATATYPES == set(NUMPY_DTYPES) | {"BF16", "BYTES"}
    assert ITEM_SIZES["BF16"] == 2 and ITEM_SIZES["FP16"] == 2


def test_check_shape_and_element_count() -> None:
    assert tensors.element_count([]) == 1
    assert tensors.element_count([2, 3, 4]) == 24
    assert tensors.element_count([5, 0]) == 0
    tensors.check_shape("x", [0, 1])
    with pytest.raises(InvalidInput, match=r"^input x: shape \[2, -1\] has a negative dimension$"):
        tensors.check_shape("input x", [2, -1])
