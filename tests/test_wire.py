"""Wire-level forwarding helpers (router.wire) and the lock-free metric collectors."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from tritonclient.grpc import service_pb2

from router import wire
from router.errors import InvalidInput
from router.metrics import FastCounter, FastHistogram


def request(**kw: object) -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name="simple", **kw)  # type: ignore[arg-type]
    for name in ("INPUT0", "INPUT1"):
        r.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        r.raw_input_contents.append(bytes(range(64)))
    return r


def test_scan_returns_header_without_id_and_tensor_sizes() -> None:
    r = request(id="req-1")
    r.raw_input_contents[0] = b"\x01" * 64
    r.raw_input_contents[1] = b"\x02" * 300  # a two-byte length
    scanned = wire.scan_infer_request(r.SerializeToString())
    assert scanned is not None
    header, sizes = scanned
    assert sizes == (64, 300)
    # the header is exactly the message without id and raw contents
    bare = service_pb2.ModelInferRequest()
    bare.CopyFrom(r)
    bare.ClearField("id")
    bare.ClearField("raw_input_contents")
    assert header == bare.SerializeToString()
    # a different id does not change the header; a different shape does
    other = request(id="req-2")
    other.raw_input_contents[1] = b"\x02" * 300
    assert wire.scan_infer_request(other.SerializeToString())[0] == header  # type: ignore[index]
    other.inputs[0].shape[:] = [2, 16]
    assert wire.scan_infer_request(other.SerializeToString())[0] != header  # type: ignore[index]


def test_scan_header_keeps_parameters_and_outputs() -> None:
    r = request()
    r.outputs.add(name="OUTPUT0")
    r.parameters["priority"].int64_param = 3
    header, _ = wire.scan_infer_request(r.SerializeToString())  # type: ignore[misc]
    parsed = service_pb2.ModelInferRequest.FromString(header)
    assert parsed.outputs[0].name == "OUTPUT0"
    assert parsed.parameters["priority"].int64_param == 3
    assert list(parsed.raw_input_contents) == []


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05abc", b"\x0a", b"\x08\x01", b"\xff\xff\xff", b"\x0a\x80"],
    ids=["truncated-value", "truncated-length", "varint-field", "multi-byte-tag", "bad-length"],
)
def test_scan_declines_what_it_does_not_know(data: bytes) -> None:
    assert wire.scan_infer_request(data) is None


def test_scan_of_empty_message() -> None:
    assert wire.scan_infer_request(b"") == (b"", ())


def test_rename_appended_fields_win_and_tensors_are_untouched() -> None:
    r = request()
    r.model_version = "7"
    data = r.SerializeToString() + wire.rename("backend-model", "")
    parsed = service_pb2.ModelInferRequest.FromString(data)
    assert parsed.model_name == "backend-model"
    assert parsed.model_version == ""
    assert list(parsed.raw_input_contents) == list(r.raw_input_contents)
    response = service_pb2.ModelInferResponse(model_name="backend-model", model_version="1")
    renamed = service_pb2.ModelInferResponse.FromString(
        response.SerializeToString() + wire.rename("simple", "2")
    )
    assert (renamed.model_name, renamed.model_version) == ("simple", "2")
    long_name = "m" * 200  # lengths above 127 need two varint bytes
    assert service_pb2.ModelInferRequest.FromString(
        wire.rename(long_name, "1")
    ).model_name == long_name


def test_parse_malformed_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="malformed inference.ModelInferRequest message"):
        wire.parse(service_pb2.ModelInferRequest, b"\x0a\xff\xff")


def test_fast_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    registry = CollectorRegistry()
    histogram = FastHistogram("t_seconds", "test", ["model"], (0.1, 1.0))
    registry.register(histogram)
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(("m",), value)
    text = generate_latest(registry).decode()
    assert 't_seconds_bucket{le="0.1",model="m"} 2.0' in text  # 0.1 is <= 0.1
    assert 't_seconds_bucket{le="1.0",model="m"} 4.0' in text
    assert 't_seconds_bucket{le="+Inf",model="m"} 5.0' in text
    assert 't_seconds_count{model="m"} 5.0' in text
    assert 't_seconds_sum{model="m"} 8.65' in text


def test_fast_counter_counts_per_label_set() -> None:
    registry = CollectorRegistry()
    counter = FastCounter("t_calls", "test", ["code"])
    registry.register(counter)
    counter.inc(("OK",))
    counter.inc(("OK",))
    counter.inc(("NOT_FOUND",))
    text = generate_latest(registry).decode()
    assert 't_calls_total{code="OK"} 2.0' in text
    assert 't_calls_total{code="NOT_FOUND"} 1.0' in text
