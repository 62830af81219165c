"""Protobuf wire-level helpers for forwarding Open Inference Protocol messages without
re-serializing their tensors.

- `string_fields` renames a message: appended fields replace earlier values (for a singular
  field the last value on the wire wins), so the router renames models in requests and
  responses without parsing or copying the tensor bytes into new messages.
- `scan_infer_request` walks the top-level fields of a serialized ModelInferRequest: it returns
  the request's header (every field but the tensor data and the request id) and the byte
  length of each raw input. The dataplane caches headers it has validated, so a repeated kind
  of request skips parsing and validation and is checked only for its tensor sizes.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import message
from tritonclient.grpc import service_pb2

from router.errors import InvalidInput

_REQUEST = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name
_ID = _REQUEST["id"].number
_RAW = _REQUEST["raw_input_contents"].number
# model_name and model_version have the same numbers in requests and responses.
MODEL_NAME = _REQUEST["model_name"].number
MODEL_VERSION = _REQUEST["model_version"].number
_LENGTH_DELIMITED = 2

M = TypeVar("M", bound=message.Message)


def parse(cls: type[M], data: bytes) -> M:
    """Parses a message; malformed bytes raise InvalidInput naming the message type."""
    try:
        return cls.FromString(data)
    except message.DecodeError as e:
        raise InvalidInput(
            f"malformed {cls.DESCRIPTOR.full_name} message ({len(data)} bytes): {e}"
        ) from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_fields(fields: dict[int, str]) -> bytes:
    """Wire bytes of string fields {field number: value}, to append to a serialized message."""
    out = bytearray()
    for number, value in fields.items():
        data = value.encode()
        out += _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(data)) + data
    return bytes(out)


def rename(model: str, version: str) -> bytes:
    """Appended to a ModelInferRequest or ModelInferResponse, sets its model name and version."""
    return string_fields({MODEL_NAME: model, MODEL_VERSION: version})


def scan_infer_request(wire: bytes) -> tuple[bytes, tuple[int, ...]] | None:
    """(header, raw input sizes) of a serialized ModelInferRequest, or None when its layout is
    not the plain one this fast path knows (the caller then parses it)."""
    pos, end = 0, len(wire)
    header: list[bytes] = []
    sizes: list[int] = []
    try:
        while pos < end:
            start = pos
            tag = wire[pos]
            pos += 1
            # every top-level field is length-delimited, with a field number below 16
            if tag & 0x80 or tag & 7 != _LENGTH_DELIMITED:
                return None
            length = wire[pos]
            pos += 1
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    byte = wire[pos]
                    pos += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
            pos += length
            field = tag >> 3
            if field == _RAW:
                sizes.append(length)
            elif field != _ID:
                header.append(wire[start:pos])
    except IndexError:
        return None
    if pos != end:
        return None
    return b"".join(header), tuple(sizes)
