"""JSON bodies in and out of the HTTP edge, with the nesting limit (http.max_json_depth)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from router.errors import InvalidInput

# JSON of this many bytes or more is converted in a worker thread, so that megabytes of JSON
# numbers or base64 do not stall the event loop, and every other call, while they are parsed.
OFFLOAD_BYTES = 1 << 20


def check_depth(data: bytes, limit: int) -> None:
    """InvalidInput when JSON text nests objects and arrays deeper than limit.

    Free when it cannot (no more brackets than the limit). Otherwise, in numpy: escaped
    backslashes and quotes are dropped, a bracket is inside a string when an odd number of quotes
    comes before it, and the depth is the running sum of the other brackets.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    text = np.frombuffer(data.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    quotes = np.flatnonzero(text == 34)
    at = np.flatnonzero((text == 91) | (text == 123) | (text == 93) | (text == 125))
    at = at[(np.searchsorted(quotes, at) & 1) == 0]
    if not at.size:
        return
    opens = (text[at] == 91) | (text[at] == 123)
    depth = int(np.cumsum(np.where(opens, 1, -1)).max())
    if depth > limit:
        raise InvalidInput(f"JSON body nests {depth} levels deep; http.max_json_depth={limit}")


def load(data: bytes | memoryview, limit: int, what: str = "body") -> Any:
    """Parses a JSON document; InvalidInput saying where it is malformed or too deep."""
    raw = bytes(data)
    check_depth(raw, limit)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the JSON {what} is not UTF-8: {e.reason} at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise InvalidInput(f"malformed JSON {what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InvalidInput(f"JSON {what} nests too deep; http.max_json_depth={limit}") from None


def dump(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()
