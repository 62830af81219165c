"""The Open Inference Protocol through the router against a real Triton.

Outputs through the router must equal direct Triton outputs bit for bit, with Triton's own
clients (sync, aio, streaming); errors get the right status codes and name what was wrong.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from tests.conftest import RouterThread, free_port, oip_stub, router_settings

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(7)
DTYPES_INPUTS = {
    "IN_FP32": ("FP32", RNG.standard_normal((2, 5)).astype(np.float32)),
    "IN_FP16": ("FP16", RNG.standard_normal((2, 5)).astype(np.float16)),
    "IN_INT32": ("INT32", RNG.integers(-(2**31), 2**31 - 1, (2, 5), dtype=np.int32)),
    "IN_INT64": ("INT64", RNG.integers(-(2**62), 2**62, (2, 5), dtype=np.int64)),
    "IN_BYTES": ("BYTES", np.array([[b"abc", b"", "h\u00e9llo".encode(), b"\x00\xff", b"z" * 300]] * 2,
                                   dtype=object)),
}
DTYPES_OUTPUTS = ["OUT_FP32", "OUT_FP16", "OUT_INT32", "OUT_INT64", "OUT_BYTES"]


def dtypes_inputs(module: Any) -> list[Any]:
    inputs = []
    for name, (datatype, array) in DTYPES_INPUTS.items():
        t = module.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        inputs.append(t)
    return inputs


def simple_inputs(module: Any, a: np.ndarray, b: np.ndarray) -> list[Any]:
    inputs = [module.InferInput("INPUT0", list(a.shape), "INT32"),
              module.InferInput("INPUT1", list(b.shape), "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def assert_same_outputs(via_router: Any, direct: Any, names: list[str]) -> None:
    """Same datatypes, shapes and raw bytes for every output."""
    r, d = via_router.get_response(), direct.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in r.outputs] == [
        (o.name, o.datatype, list(o.shape)) for o in d.outputs
    ]
    assert list(r.raw_output_contents) == list(d.raw_output_contents)
    for name in names:
        a, b = via_router.as_numpy(name), direct.as_numpy(name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


def test_dtypes_bit_exact_sync(router: RouterThread, triton: Any) -> None:
    via = tgrpc.InferenceServerClient(router.address)
    direct = tgrpc.InferenceServerClient(triton.grpc_address)
    r = via.infer("dtypes", dtypes_inputs(tgrpc))
    d = direct.infer("dtypes", dtypes_inputs(tgrpc))
    assert_same_outputs(r, d, DTYPES_OUTPUTS)
    # and the model really computed something: the values are what the model defines
    assert np.array_equal(r.as_numpy("OUT_FP32"), DTYPES_INPUTS["IN_FP32"][1] * 2)
    assert np.array_equal(r.as_numpy("OUT_FP16"), DTYPES_INPUTS["IN_FP16"][1] + np.float16(1))
    assert np.array_equal(r.as_numpy("OUT_INT64"), DTYPES_INPUTS["IN_INT64"][1] - 7)
    assert r.as_numpy("OUT_BYTES")[0, 2] == "h\u00e9llo".encode()[::-1]
    assert r.get_response().model_name == "dtypes" and r.get_response().model_version == "1"


async def test_dtypes_bit_exact_aio(router: RouterThread, triton: Any) -> None:
    via = tgrpc_aio.InferenceServerClient(router.address)
    direct = tgrpc_aio.InferenceServerClient(triton.grpc_address)
    try:
        r = await via.infer("dtypes", dtypes_inputs(tgrpc_aio))
        d = await direct.infer("dtypes", dtypes_inputs(tgrpc_aio))
        assert_same_outputs(r, d, DTYPES_OUTPUTS)
        # concurrent calls each get their own answer
        arrays = [np.full((1, 16), i, np.int32) for i in range(20)]
        results = await __import__("asyncio").gather(
            *(via.infer("simple", simple_inputs(tgrpc_aio, a, a)) for a in arrays)
        )
        for a, res in zip(arrays, results, strict=True):
            assert np.array_equal(res.as_numpy("OUTPUT0"), a * 2)
    finally:
        await via.close()
        await direct.close()


def _stream(address: str, requests: list[tuple[str, list[Any], str]]) -> dict[str, Any]:
    """Sends requests on one ModelStreamInfer stream; returns {request id: result or error}."""
    client = tgrpc.InferenceServerClient(address)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for model, inputs, rid in requests:
            client.async_stream_infer(model, inputs, request_id=rid)
        out = {}
        for _ in requests:
            result, error = answers.get(timeout=30)
            if error is not None:
                out[f"error{len(out)}"] = error
            else:
                out[result.get_response().id] = result
        return out
    finally:
        client.stop_stream()
        client.close()


def test_dtypes_bit_exact_streaming(router: RouterThread, triton: Any) -> None:
    requests = [("dtypes", dtypes_inputs(tgrpc), f"r{i}") for i in range(4)]
    via = _stream(router.address, requests)
    direct = _stream(triton.grpc_address, requests)
    assert sorted(via) == sorted(direct) == ["r0", "r1", "r2", "r3"]
    for rid in via:
        assert_same_outputs(via[rid], direct[rid], DTYPES_OUTPUTS)


def test_stream_error_does_not_end_stream(router: RouterThread) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    out = _stream(router.address, [
        ("simple", simple_inputs(tgrpc, a, a), "ok1"),
        ("no-such-model", simple_inputs(tgrpc, a, a), "bad"),
        ("simple", simple_inputs(tgrpc, a, a), "ok2"),
    ])
    assert np.array_equal(out["ok1"].as_numpy("OUTPUT0"), a * 2)
    assert np.array_equal(out["ok2"].as_numpy("OUTPUT0"), a * 2)
    errors = [v for k, v in out.items() if k.startswith("error")]
    assert len(errors) == 1 and "no-such-model" in str(errors[0])


def test_simple_matches_direct_and_typed_contents(router: RouterThread, triton: Any) -> None:
    a = RNG.integers(-1000, 1000, (3, 16), dtype=np.int32)
    b = RNG.integers(-1000, 1000, (3, 16), dtype=np.int32)
    via = tgrpc.InferenceServerClient(router.address).infer("simple", simple_inputs(tgrpc, a, b))
    direct = tgrpc.InferenceServerClient(triton.grpc_address).infer(
        "simple", simple_inputs(tgrpc, a, b)
    )
    assert_same_outputs(via, direct, ["OUTPUT0", "OUTPUT1"])
    assert np.array_equal(via.as_numpy("OUTPUT0"), a + b)
    # the typed (non-raw) form of the same request gives the same bytes
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = request.inputs.add(name=name, datatype="INT32", shape=list(arr.shape))
        t.contents.int_contents.extend(arr.reshape(-1).tolist())
    channel, stub = oip_stub(router.address)
    with channel:
        typed = stub.ModelInfer(request, timeout=10)
    assert list(typed.raw_output_contents) == list(direct.get_response().raw_output_contents)


def _infer_error(address: str, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    channel, stub = oip_stub(address)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    return info.value


def _simple_request(**changes: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        spec = {"name": name, "datatype": "INT32", "shape": [1, 16], **changes.get(name, {})}
        data = changes.get(name, {}).pop("data", None) if name in changes else None
        request.inputs.add(**{k: v for k, v in spec.items() if k != "data"})
        request.raw_input_contents.append(data if data is not None else bytes(64))
    return request


def test_unknown_model_is_not_found(router: RouterThread) -> None:
    error = _infer_error(router.address, service_pb2.ModelInferRequest(model_name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in error.details()
    request = _simple_request()
    request.model_version = "42"
    error = _infer_error(router.address, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and "42" in error.details()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"INPUT1": {"name": "INPUTX"}}, "INPUTX"),
        ({"INPUT1": {"shape": [1, 15], "data": bytes(60)}}, "INPUT1"),
        ({"INPUT1": {"datatype": "FP32"}}, "INPUT1"),
        ({"INPUT1": {"data": bytes(60)}}, "INPUT1"),
        ({"INPUT0": {"shape": [9, 16], "data": bytes(9 * 64)}}, "INPUT0"),
    ],
    ids=["name", "shape", "datatype", "byte-size", "batch-too-big"],
)
def test_bad_input_is_invalid_argument_naming_it(
    router: RouterThread, changes: dict[str, Any], expected: str
) -> None:
    error = _infer_error(router.address, _simple_request(**changes))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details()


def test_validated_header_is_still_checked_for_tensor_sizes(router: RouterThread) -> None:
    """A request kind seen before takes the cached-header path; its tensor sizes still count."""
    channel, stub = oip_stub(router.address)
    good = _simple_request()
    good.raw_input_contents[0] = np.arange(16, dtype=np.int32).tobytes()
    with channel:
        for _ in range(2):  # the second call is served from the validated-header cache
            out = stub.ModelInfer(good, timeout=10)
            assert np.frombuffer(out.raw_output_contents[0], np.int32).tolist() == list(range(16))
    for size in (60, 68, 0):
        bad = _simple_request()
        bad.raw_input_contents[1] = bytes(size)
        error = _infer_error(router.address, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"got {size}" in error.details() and "INPUT1" in error.details()


def test_missing_input_and_malformed_message(router: RouterThread) -> None:
    request = _simple_request()
    del request.inputs[1]
    del request.raw_input_contents[1]
    error = _infer_error(router.address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "INPUT1" in error.details()
    channel = grpc.insecure_channel(router.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\x0a\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed inference.ModelInferRequest" in info.value.details()


def test_backend_down_is_unavailable(router: RouterThread) -> None:
    """A binding whose Triton is not running (nothing listens on its port)."""
    from router.registry import parse_registration

    down = f"127.0.0.1:{free_port()}"
    spec = [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]}]
    records = parse_registration({
        "name": "simple-down", "backend": {"kind": "triton", "endpoints": [down], "model": "simple"},
        "inputs": spec, "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]}],
        "max_batch_size": 8,
    }, "test")
    router.run(router.app.admin.register(records))
    request = _simple_request()
    request.model_name = "simple-down"
    started = time.monotonic()
    error = _infer_error(router.address, request)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert down in error.details()
    assert time.monotonic() - started < 5
    assert not tgrpc.InferenceServerClient(router.address).is_model_ready("simple-down")


def _cancel_count(path: Path) -> int:
    return path.read_text().count("cancelled") if path.exists() else 0


def test_deadline_shorter_than_backend_is_deadline_exceeded_and_cancels(
    router: RouterThread, cancel_log: Path
) -> None:
    before = _cancel_count(cancel_log)
    client = tgrpc.InferenceServerClient(router.address)
    t = tgrpc.InferInput("SECONDS", [1], "FP32")
    t.set_data_from_numpy(np.array([5.0], np.float32))
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [t], client_timeout=0.5)
    assert "Deadline" in str(info.value) or "DEADLINE" in str(info.value)
    assert time.monotonic() - started < 3  # the deadline, not the model's 5 s
    # the router cancelled its backend call: the model saw the cancellation long before 5 s
    deadline = time.monotonic() + 3
    while _cancel_count(cancel_log) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancel_count(cancel_log) == before + 1


def test_request_id_in_trailing_metadata(router: RouterThread) -> None:
    channel, stub = oip_stub(router.address)
    with channel:
        _, call = stub.ModelInfer.with_call(_simple_request(), timeout=10)
        generated = dict(call.trailing_metadata())["x-request-id"]
        assert len(generated) == 32
        _, call = stub.ModelInfer.with_call(
            _simple_request(), timeout=10, metadata=(("x-request-id", "client-abc-1"),)
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "client-abc-1"
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nope"), timeout=10,
                            metadata=(("x-request-id", "client-abc-2"),))
        assert dict(info.value.trailing_metadata())["x-request-id"] == "client-abc-2"


def test_health_metadata_index_and_reflection(router: RouterThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    client = tgrpc.InferenceServerClient(router.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("simple")
    assert meta.name == "simple" and [i.name for i in meta.inputs] == ["INPUT0", "INPUT1"]
    assert list(meta.inputs[0].shape) == [-1, 16]
    assert client.get_server_metadata().name == "tensorgate"
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("simple", "1")] == "READY" and index[("dtypes", "1")] == "READY"
    channel = grpc.insecure_channel(router.address)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        ))
        names = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "tensorgate.v1.InferenceService",
                "tensorgate.v1.ModelRegistry", "grpc.health.v1.Health"} <= names
        with pytest.raises(grpc.RpcError) as info:
            service_stub = oip_stub(router.address)[1]
            service_stub.ModelStatistics(service_pb2.ModelStatisticsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_count_calls_by_model_and_code(router: RouterThread) -> None:
    import urllib.request

    def scrape() -> str:
        url = f"http://127.0.0.1:{router.app.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def value(text: str, line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    ok = 'tensorgate_requests_total{code="OK",method="ModelInfer",model="simple",version="1"}'
    bad = 'tensorgate_requests_total{code="NOT_FOUND",method="ModelInfer",model="",version=""}'
    before = scrape()
    channel, stub = oip_stub(router.address)
    with channel:
        for _ in range(3):
            stub.ModelInfer(_simple_request(), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nope"), timeout=10)
    after = scrape()
    assert value(after, ok) - value(before, ok) == 3
    assert value(after, bad) - value(before, bad) == 1
    backend_count = (
        'tensorgate_backend_request_duration_seconds_count{backend="triton",model="simple",version="1"}'
    )
    assert value(after, backend_count) - value(before, backend_count) == 3
    assert "tensorgate_inflight_requests 0.0" in after


def test_message_size_limit_is_resource_exhausted(triton: Any, tmp_path: Path) -> None:
    rt = RouterThread(router_settings(tmp_path / "r.db", **{"server.max_message_bytes": 4096}))
    rt.start()
    try:
        request = _simple_request()
        request.raw_input_contents[0] = bytes(8192)
        error = _infer_error(rt.address, request)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        rt.stop()


async def test_bad_requests_do_not_harm_good_ones_in_flight(router: RouterThread) -> None:
    """Malformed, unknown-model and wrong-shape calls interleaved with good ones: every good
    call gets its own correct answer, every bad one its own error."""
    import asyncio

    channel = grpc.aio.insecure_channel(router.address)
    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        async def good(i: int) -> None:
            request = _simple_request()
            request.raw_input_contents[0] = np.full(16, i, np.int32).tobytes()
            answer = service_pb2.ModelInferResponse.FromString(
                await raw_call(request.SerializeToString(), timeout=20)
            )
            assert np.frombuffer(answer.raw_output_contents[0], np.int32).tolist() == [i] * 16

        async def bad(i: int) -> grpc.StatusCode:
            if i % 3 == 0:
                data = b"\x0a\xff\xff\xff"
            elif i % 3 == 1:
                data = service_pb2.ModelInferRequest(model_name=f"ghost-{i}").SerializeToString()
            else:
                data = _simple_request(INPUT1={"shape": [1, 15], "data": bytes(60)}).SerializeToString()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw_call(data, timeout=20)
            return info.value.code()

        results = await asyncio.gather(*(good(i) if i % 2 else bad(i) for i in range(120)))
        codes = [c for c in results if c is not None]
        assert len(codes) == 60
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    finally:
        await channel.close()
