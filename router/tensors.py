"""Open Inference Protocol tensors as raw bytes: datatypes, sizes, numpy views, conversions.

Tensors travel as raw little-endian bytes (Triton's raw_input_contents layout); numpy is used to
view them (`np.frombuffer`), never to turn them into Python lists.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

from router.errors import InvalidInput

# Open Inference Protocol datatype -> numpy dtype (little-endian). BYTES is variable-length.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# BF16 has no numpy dtype; it travels as 2-byte elements.
ITEM_SIZES: dict[str, int] = {name: dt.itemsize for name, dt in NUMPY_DTYPES.items()}
ITEM_SIZES["BF16"] = 2
DATATYPES = frozenset([*ITEM_SIZES, "BYTES"])

# InferTensorContents field holding each datatype in the typed (non-raw) form.
TYPED_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of this shape."""
    n = 1
    for d in shape:
        n *= d
    return n


def check_datatype(where: str, datatype: str) -> None:
    """Raises InvalidInput unless datatype is an Open Inference Protocol datatype."""
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(sorted(DATATYPES))}"
        )


def check_shape(where: str, shape: Sequence[int]) -> None:
    """Raises InvalidInput for negative dimensions."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{where}: shape {list(shape)} has a negative dimension")


def count_bytes_elements(where: str, raw: bytes | memoryview, limit: int) -> int:
    """Counts the length-prefixed elements of a raw BYTES tensor, checking its framing."""
    view = memoryview(raw)
    offset, count, end = 0, 0, len(view)
    while offset < end:
        if offset + 4 > end or count >= limit:
            break
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
        count += 1
    if offset != end:
        raise InvalidInput(
            f"{where}: BYTES data is not a sequence of {limit} 4-byte-length-prefixed elements"
        )
    return count


def check_raw_size(where: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> None:
    """Raises InvalidInput unless raw holds exactly the elements the shape says."""
    n = element_count(shape)
    if datatype == "BYTES":
        got = count_bytes_elements(where, raw, n)
        if got != n:
            raise InvalidInput(f"{where}: shape {list(shape)} needs {n} BYTES elements, got {got}")
        return
    want = n * ITEM_SIZES[datatype]
    if len(raw) != want:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype} needs {want} bytes of data, got {len(raw)}"
        )


def encode_bytes_elements(items: Iterable[bytes]) -> bytes:
    """Serializes BYTES elements as 4-byte little-endian lengths followed by the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    """Splits a raw BYTES tensor into its elements."""
    view, out, offset = memoryview(raw), [], 0
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        out.append(bytes(view[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return out


def typed_to_raw(where: str, datatype: str, shape: Sequence[int], contents: object) -> bytes:
    """Converts an InferTensorContents (typed form) to raw bytes for the datatype."""
    field_name = TYPED_FIELDS.get(datatype)
    if field_name is None:
        raise InvalidInput(f"{where}: {datatype} data must be sent as raw contents")
    values = getattr(contents, field_name)
    n = element_count(shape)
    if len(values) != n:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {n} elements in {field_name}, got {len(values)}"
        )
    if datatype == "BYTES":
        return encode_bytes_elements(values)
    try:
        return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
    except OverflowError:
        raise InvalidInput(f"{where}: a value in {field_name} does not fit {datatype}") from None


def to_numpy(datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """A numpy view of a raw tensor (BYTES becomes an object array of bytes)."""
    if datatype == "BYTES":
        return np.array(decode_bytes_elements(raw), dtype=object).reshape(shape)
    if datatype == "BF16":
        return np.frombuffer(raw, dtype="<u2").reshape(shape)
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def from_numpy(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of a numpy array; strings and bytes become BYTES."""
    if array.dtype.kind in ("O", "S", "U"):
        if not all(isinstance(x, str | bytes | bytearray) for x in array.reshape(-1)):
            raise InvalidInput(f"numpy {array.dtype} array holds values that are not str or bytes (BYTES)")
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
        return "BYTES", list(array.shape), encode_bytes_elements(items)
    for name, dt in NUMPY_DTYPES.items():
        if array.dtype.newbyteorder("<") == dt:  # any byte order; sent little-endian
            return name, list(array.shape), np.ascontiguousarray(array, dtype=dt).tobytes()
    raise InvalidInput(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


def split_rows(datatype: str, shape: Sequence[int], raw: bytes, rows: Sequence[int]) -> list[bytes]:
    """Splits a raw tensor along its first axis into consecutive chunks of `rows` rows."""
    if datatype == "BYTES":
        per_row = element_count(shape[1:])
        elements = decode_bytes_elements(raw)
        out, start = [], 0
        for r in rows:
            out.append(encode_bytes_elements(elements[start : start + r * per_row]))
            start += r * per_row
        return out
    row_bytes = element_count(shape[1:]) * ITEM_SIZES[datatype]
    out, offset = [], 0
    for r in rows:
        out.append(raw[offset : offset + r * row_bytes])
        offset += r * row_bytes
    return out


# JSON element kinds each datatype accepts (numpy dtype kinds of the parsed JSON values).
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def json_to_raw(where: str, datatype: str, shape: Sequence[int], data: object) -> bytes:
    """Raw bytes of a tensor given as JSON data (the REST binding's `data`: flat or nested
    row-major numbers, booleans, or strings for BYTES); InvalidInput naming what is wrong."""
    n = element_count(shape)
    if datatype == "BYTES":
        items = _flatten(where, data)
        strings = [x.encode() for x in items if isinstance(x, str)]
        if len(strings) != len(items):
            raise InvalidInput(f"{where}: BYTES data must be strings")
        if len(items) != n:
            raise InvalidInput(f"{where}: shape {list(shape)} needs {n} elements, got {len(items)}")
        return encode_bytes_elements(strings)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"{where}: {datatype} data cannot be JSON; send it as binary data")
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a JSON array, got {type(data).__name__}")
    try:
        parsed = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: data is a ragged nested array") from None
    if parsed.size != n:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {n} elements, got {parsed.size}")
    if n and parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
        expected = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise InvalidInput(f"{where}: {datatype} data must be {expected}")
    if dtype.kind in "iu" and n:
        info = np.iinfo(dtype)
        if parsed.dtype.kind == "O" or parsed.min() < info.min or parsed.max() > info.max:
            raise InvalidInput(f"{where}: a value does not fit {datatype} ({info.min}..{info.max})")
    try:
        return np.ascontiguousarray(parsed, dtype=dtype).tobytes()
    except (OverflowError, TypeError, ValueError):
        raise InvalidInput(f"{where}: data does not fit {datatype}") from None


def _flatten(where: str, data: object) -> list[object]:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a JSON array, got {type(data).__name__}")
    out: list[object] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def raw_to_json(where: str, datatype: str, shape: Sequence[int], raw: bytes) -> list[object]:
    """A raw tensor as a flat JSON-ready list (BF16 as floats, BYTES as UTF-8 strings)."""
    if datatype == "BYTES":
        try:
            return [x.decode() for x in decode_bytes_elements(raw)]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{where}: BYTES output is not UTF-8 text; ask for it as binary data"
            ) from None
    if datatype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
        return bits.view("<f4").tolist()  # type: ignore[no-any-return]
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).tolist()  # type: ignore[no-any-return]
