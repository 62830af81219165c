"""The TorchServe backend: the .npy/.npz encoding, the handler base class, error translation
(pure), and, against a real TorchServe, the router's answers equal TorchServe's own and Triton's."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import empty_pb2
from tensorgate.torchserve import inference_pb2, inference_pb2_grpc
from tensorgate.v1 import inference_pb2 as tg_inference_pb2
from tritonclient.grpc import service_pb2

from adapters.base import BackendOptions
from adapters.torchserve import (
    TorchServeBackend,
    decode_response,
    encode_request,
    error_status,
    split_endpoint,
)
from adapters.torchserve_handler import TensorHandler, decode_npz, encode_npz
from devstack.examples import offline_predict, wine_split
from router import errors
from router.config import load_yaml
from router.registry import parse_record, parse_registration
from router.tensors import to_numpy
from tests.conftest import REPO, RouterThread, oip_stub, predict

# -- the encoding (pure) ------------------------------------------------------------------------


def _infer_request(arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="call-1")
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=datatypes[name], shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def test_each_input_travels_as_npy_under_its_name() -> None:
    arrays = {
        "A": np.arange(6, dtype=np.float32).reshape(2, 3),
        "B": np.array([[1], [-2]], dtype=np.int64),
        "C": np.array([[True, False]]),
        "D": np.arange(4, dtype=np.uint8).reshape(1, 2, 2),
    }
    request = _infer_request(arrays, {"A": "FP32", "B": "INT64", "C": "BOOL", "D": "UINT8"})
    encoded = encode_request(request)
    assert (encoded.model_name, encoded.model_version) == ("m", "2")
    assert sorted(encoded.input) == ["A", "B", "C", "D"]
    for name, array in arrays.items():
        data = encoded.input[name]
        assert data.startswith(b"\x93NUMPY")  # the .npy magic
        decoded = np.load(io.BytesIO(data), allow_pickle=False)
        assert decoded.dtype == array.dtype and decoded.shape == array.shape
        np.testing.assert_array_equal(decoded, array)


def test_typed_contents_are_encoded_too() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    t = request.inputs.add(name="X", datatype="INT32", shape=[2, 2])
    t.contents.int_contents.extend([1, 2, 3, 4])
    decoded = np.load(io.BytesIO(encode_request(request).input["X"]), allow_pickle=False)
    np.testing.assert_array_equal(decoded, np.array([[1, 2], [3, 4]], dtype=np.int32))


@pytest.mark.parametrize("datatype", ["BYTES", "BF16"])
def test_datatypes_without_npy_form_are_refused(datatype: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="TEXT", datatype=datatype, shape=[1])
    request.raw_input_contents.append(b"\x02\x00\x00\x00hi" if datatype == "BYTES" else b"\x00\x00")
    with pytest.raises(errors.InvalidInput, match=f"input 'TEXT': datatype {datatype} cannot be sent"):
        encode_request(request)


def test_raw_size_is_checked() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="X", datatype="FP32", shape=[2, 2])
    request.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(errors.InvalidInput, match="'X'"):
        encode_request(request)


def test_response_has_the_requested_outputs_in_order() -> None:
    outputs = {"P": np.ones((2, 3), np.float32), "Q": np.array([[7], [8]], np.int64)}
    archive = encode_npz(outputs)
    assert archive.startswith(b"PK")
    request = service_pb2.ModelInferRequest(model_name="m", model_version="1", id="x")
    every = decode_response(request, decode_npz(archive, "answer"))
    assert [o.name for o in every.outputs] == ["P", "Q"] and every.id == "x"
    assert [list(o.shape) for o in every.outputs] == [[2, 3], [2, 1]]
    assert every.raw_output_contents[1] == outputs["Q"].tobytes()
    request.outputs.add(name="Q")
    only_q = decode_response(request, decode_npz(archive, "answer"))
    assert [(o.name, o.datatype) for o in only_q.outputs] == [("Q", "INT64")]
    request.outputs.add(name="R")
    with pytest.raises(errors.BackendError, match="no output 'R'"):
        decode_response(request, decode_npz(archive, "answer"))


def test_big_endian_outputs_come_back_little_endian() -> None:
    big = np.array([[1.5, -2.0]], dtype=">f4")
    response = decode_response(service_pb2.ModelInferRequest(model_name="m"), {"Y": big})
    assert response.outputs[0].datatype == "FP32"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), [1.5, -2.0])


def test_error_bodies() -> None:
    assert error_status(encode_npz({"Y": np.zeros(1)})) is None
    bad = error_status(b'{"error": "bad shape", "code": 400}')
    assert bad == (grpc.StatusCode.INVALID_ARGUMENT, "bad shape")
    assert error_status(b'{"error": "boom", "code": 500}') == (grpc.StatusCode.INTERNAL, "boom")
    code, message = error_status(b"plain text")  # type: ignore[misc]
    assert code == grpc.StatusCode.INTERNAL and "neither .npz nor an error" in message


# -- error translation (pure) ---------------------------------------------------------------


@pytest.fixture
async def backend() -> AsyncIterator[TorchServeBackend]:
    # made in the running loop (grpc.aio); channels connect lazily: these tests dial nothing
    backend = TorchServeBackend("127.0.0.1:7070", BackendOptions())
    yield backend
    await backend.close()


@pytest.mark.parametrize(
    ("code", "detail", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", errors.BackendUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", errors.DeadlineExceeded),
        (grpc.StatusCode.INVALID_ARGUMENT, "input 'X': shape [1], takes [-1, 4]", errors.InvalidInput),
        (grpc.StatusCode.INTERNAL, "Model not found: nope\norg.pytorch.serve...", errors.BackendUnavailable),
        (grpc.StatusCode.NOT_FOUND, "Model version: 9 does not exist for model: m",
         errors.BackendUnavailable),
        (grpc.StatusCode.UNAVAILABLE, 'Model "m" has no worker to serve inference request.',
         errors.Overloaded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Out of resources", errors.Overloaded),
        (grpc.StatusCode.UNAVAILABLE, "Prediction failed", errors.BackendError),
        (grpc.StatusCode.INTERNAL, "the model failed: ValueError: no", errors.BackendError),
        (grpc.StatusCode.UNKNOWN, "?", errors.BackendError),
    ],
)
def test_translation(backend: TorchServeBackend, code: grpc.StatusCode, detail: str,
                     error: type[errors.TensorgateError]) -> None:
    translated = backend.translate(code, detail, "infer m")
    assert type(translated) is error
    if error is not errors.DeadlineExceeded:
        assert detail.splitlines()[0] in translated.message
    assert "torchserve 127.0.0.1:7070 (infer m)" in translated.message
    assert "org.pytorch" not in translated.message  # no Java exception lines


def test_management_port_is_the_inference_port_plus_one_unless_given() -> None:
    assert split_endpoint("ts.local:7070") == ("ts.local:7070", "ts.local:7071")
    assert split_endpoint("127.0.0.1:7070/9071") == ("127.0.0.1:7070", "127.0.0.1:9071")
    ok = {"name": "m", "backend": {"kind": "torchserve", "endpoints": ["h:7070/9071"]}}
    assert parse_record(ok, "test").backend.endpoints == ["h:7070/9071"]
    for kind, endpoint in (("triton", "h:8001/8002"), ("torchserve", "h:7070/x"), ("torchserve", "h:7070/0")):
        with pytest.raises(errors.InvalidInput, match="is not host:port"):
            parse_record({"name": "m", "backend": {"kind": kind, "endpoints": [endpoint]}}, "test")


# -- the handler base class, with TorchServe's own per-call Context ---------------------------


class Affine(TensorHandler):
    inputs = {"X": ("FP32", (2,)), "K": ("INT64", (1,))}
    outputs = {"Y": ("FP32", (2,)), "ROWS": ("INT64", (1,))}
    max_batch_size = 16

    def load(self, model_dir: str) -> None:
        self.loaded_from = model_dir

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        x, k = inputs["X"], inputs["K"]
        if (k < 0).any():
            raise RuntimeError("negative K")
        return {"Y": torch.from_numpy(x * k), "ROWS": np.full((len(x), 1), len(x), dtype=np.int64)}


def _context(n: int, headers: dict[str, str] | None = None) -> Any:
    context_module = pytest.importorskip("ts.context")
    context = context_module.Context("m", "/models/m", {}, n, None, "0.12.0")
    context.request_processor = [context_module.RequestProcessor(dict(headers or {})) for _ in range(n)]
    return context


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def test_handler_batches_requests_and_splits_the_answers() -> None:
    handler = Affine()
    handler.initialize(type("Ctx", (), {"system_properties": {"model_dir": "/models/m"}})())
    assert handler.loaded_from == "/models/m"
    xs = [np.arange(2 * n, dtype=np.float32).reshape(n, 2) + 10 * n for n in (1, 3, 2)]
    data = [{"X": _npy(x), "K": _npy(np.full((len(x), 1), i + 2, np.int64))} for i, x in enumerate(xs)]
    bad_shape = {"X": _npy(np.zeros((1, 5), np.float32)), "K": _npy(np.ones((1, 1), np.int64))}
    pickled = {"X": _npy(np.zeros((1, 2), np.float32)), "K": np.array([object()], dtype=object).dumps()}
    context = _context(5)
    answers = handler.handle([*data, bad_shape, pickled], context)
    for i, x in enumerate(xs):
        out = decode_npz(answers[i], "answer")
        np.testing.assert_array_equal(out["Y"], x * (i + 2))
        assert out["ROWS"].ravel().tolist() == [6] * len(x)  # one predict() over the three requests
        assert context.get_response_status(i)[0] == 200
    assert context.get_response_status(3) == (400, "input 'X': shape [1, 5], the model takes [-1, 2] "
                                                    "(-1 = any size)")
    assert json.loads(answers[3])["code"] == 400
    code, phrase = context.get_response_status(4)
    assert code == 400 and "input 'K': not a .npy array" in phrase


def test_handler_reports_a_model_error_per_request() -> None:
    handler = Affine()
    context = _context(2)
    good = {"X": _npy(np.ones((1, 2), np.float32)), "K": _npy(np.ones((1, 1), np.int64))}
    answers = handler.handle([good, {"X": good["X"], "K": _npy(-np.ones((1, 1), np.int64))}], context)
    for i in range(2):  # batched together, so the model error fails both
        assert context.get_response_status(i) == (500, "the model failed: RuntimeError: negative K")
        assert json.loads(answers[i]) == {"error": "the model failed: RuntimeError: negative K", "code": 500}


def test_handler_refuses_missing_and_unknown_inputs_and_describes_itself() -> None:
    handler = Affine()
    context = _context(2)
    x = _npy(np.ones((1, 2), np.float32))
    answers = handler.handle([{"X": x}, {"Z": x, "X": x}], context)
    assert json.loads(answers[0])["error"] == "missing input(s) K"
    assert "unknown input 'Z'" in json.loads(answers[1])["error"]
    described = handler.handle([{}], _context(1, {"describe": "True"}))
    assert json.loads(described[0]) == {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 2]},
                   {"name": "K", "datatype": "INT64", "shape": [-1, 1]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "ROWS", "datatype": "INT64", "shape": [-1, 1]}],
        "max_batch_size": 16,
    }


# -- against a real TorchServe ----------------------------------------------------------------

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def ts_router(router: RouterThread, triton: Any, torchserve: Any) -> RouterThread:
    """The router with wine (Triton), wine_torch (TorchServe, as examples/models.yaml has them),
    probe, and wine_torch behind router-side batching."""
    os.environ["TENSORGATE_EXAMPLE_TRITON"] = triton.grpc_address
    os.environ["TENSORGATE_EXAMPLE_TORCHSERVE"] = torchserve.grpc_address
    os.environ["TENSORGATE_MINILM_TOKENIZER"] = "unused"
    try:
        examples = parse_registration(load_yaml(REPO / "examples" / "models.yaml"), "examples")
    finally:
        for var in ("TENSORGATE_EXAMPLE_TRITON", "TENSORGATE_EXAMPLE_TORCHSERVE",
                    "TENSORGATE_MINILM_TOKENIZER"):
            del os.environ[var]
    backend = {"kind": "torchserve", "endpoints": [torchserve.grpc_address]}
    records = [r for r in examples if r.name in ("wine", "wine_torch")] + parse_registration([
        {"name": "probe", "backend": backend},
        {"name": "wine_torch_batched", "backend": {**backend, "model": "wine_torch"},
         "batching": {"max_batch_size": 16, "max_queue_delay_us": 20000}},
    ], "torchserve tests")
    router.run(router.app.admin.register(records))
    return router


def _direct(address: str, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TorchServe's Predictions called directly, with the .npy encoding written out here."""
    request = inference_pb2.PredictionsRequest(model_name=model)
    for name, array in arrays.items():
        request.input[name] = _npy(array)
    with grpc.insecure_channel(address) as channel:
        answer = inference_pb2_grpc.InferenceAPIsServiceStub(channel).Predictions(request, timeout=30)
    with np.load(io.BytesIO(answer.prediction), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _oip(address: str, model: str, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """ModelInfer through the router with tritonclient.grpc."""
    client = grpcclient.InferenceServerClient(address)
    try:
        name = "X" if model == "probe" or model.startswith("probe_") else "FEATURES"
        inp = grpcclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
        result = client.infer(model, [inp], outputs=requested, client_timeout=30)
        names = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
        return {n: result.as_numpy(n) for n in names}
    finally:
        client.close()


@integration
def test_wine_torch_equals_torchserve_direct_and_triton(ts_router: RouterThread, torchserve: Any) -> None:
    _, x_test, _, y_test, _ = wine_split()
    x = x_test.astype(np.float32)
    via_router = _oip(ts_router.address, "wine_torch", x)["PROBS"]
    direct = _direct(torchserve.grpc_address, "wine_torch", {"FEATURES": x})["PROBS"]
    triton = _oip(ts_router.address, "wine", x)["PROBS"]
    assert via_router.shape == (len(x), 3) and via_router.dtype == np.float32
    np.testing.assert_array_equal(via_router, direct)  # the router adds nothing to TorchServe's answer
    np.testing.assert_allclose(via_router, triton, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(via_router, offline_predict("wine", x), rtol=1e-5, atol=1e-6)
    assert float(np.mean(via_router.argmax(axis=1) == y_test)) > 0.9
    channel, stub = oip_stub(ts_router.address)
    with channel:
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="wine_torch"), timeout=10).ready
        meta = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="wine_torch"), timeout=10)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("FEATURES", "FP32", [-1, 13])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("PROBS", "FP32", [-1, 3])]


@integration
def test_wine_torch_predict_from_csv_and_records_equals_triton(ts_router: RouterThread) -> None:
    _, x_test, _, _, names = wine_split()
    rows = x_test[:12]
    csv_text = ",".join(names) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
    answers = {}
    for model in ("wine", "wine_torch"):
        request = tg_inference_pb2.PredictRequest(model=model)
        request.items.add().table.csv = csv_text.encode()
        for row in rows[:3]:
            request.items.add().table.records.add().values.update(
                {n: repr(float(v)) for n, v in zip(names, row, strict=True)}
            )
        answers[model] = predict(ts_router.address, request)
    torch_results, triton_results = answers["wine_torch"].results, answers["wine"].results
    assert len(torch_results) == 4
    for mine, theirs in zip(torch_results, triton_results, strict=True):
        (probs,) = [to_numpy(t.datatype, t.shape, t.data) for t in mine.outputs if t.name == "PROBS"]
        (expected,) = [to_numpy(t.datatype, t.shape, t.data) for t in theirs.outputs if t.name == "PROBS"]
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
        assert [c.label for c in mine.classifications] == [c.label for c in theirs.classifications]
    assert sorted(c.row for c in torch_results[0].classifications) == list(range(12))  # top class per row


@integration
def test_stream_infer_and_router_side_batching_reach_torchserve(ts_router: RouterThread) -> None:
    _, x_test, _, _, _ = wine_split()
    x = x_test[:6].astype(np.float32)
    expected = offline_predict("wine", x)

    def request(model: str, rows: np.ndarray, call_id: str) -> service_pb2.ModelInferRequest:
        r = service_pb2.ModelInferRequest(model_name=model, id=call_id)
        r.inputs.add(name="FEATURES", datatype="FP32", shape=rows.shape)
        r.raw_input_contents.append(rows.tobytes())
        return r

    channel, stub = oip_stub(ts_router.address)
    with channel:
        stream = stub.ModelStreamInfer(iter([request("wine_torch", x[i:i + 1], str(i)) for i in range(3)]),
                                       timeout=30)
        streamed = {}
        for answer in stream:  # answers may come in any order: matched by id
            assert not answer.error_message
            streamed[answer.infer_response.id] = answer.infer_response
        assert sorted(streamed) == ["0", "1", "2"]
        for i in range(3):
            probs = np.frombuffer(streamed[str(i)].raw_output_contents[0], np.float32)
            np.testing.assert_allclose(probs, expected[i], rtol=1e-5, atol=1e-6)
        # concurrent callers of a version the router batches each get their own rows back
        results: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            answer = stub.ModelInfer(request("wine_torch_batched", x[i:i + 1], str(i)), timeout=30)
            results[i] = np.frombuffer(answer.raw_output_contents[0], np.float32)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == list(range(6))
    for i, probs in results.items():
        np.testing.assert_allclose(probs, expected[i], rtol=1e-5, atol=1e-6)


@integration
def test_torchserve_batching_gives_each_caller_its_own_rows(ts_router: RouterThread) -> None:
    """probe runs with TorchServe batch_size 8 (300 ms delay): concurrent calls share one
    handler call (CALL_ROWS > own rows), and each still gets Y = 2 X + 1 of its own X."""
    sizes = [1, 2, 3, 1, 2, 4]
    inputs = [np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 100 * i for i, n in enumerate(sizes)]
    channel, stub = oip_stub(ts_router.address)

    def call(i: int, barrier: threading.Barrier, results: dict[int, service_pb2.ModelInferResponse]) -> None:
        request = service_pb2.ModelInferRequest(model_name="probe", id=str(i))
        request.inputs.add(name="X", datatype="FP32", shape=inputs[i].shape)
        request.raw_input_contents.append(inputs[i].tobytes())
        barrier.wait(10)
        results[i] = stub.ModelInfer(request, timeout=30)

    batched_rounds = 0
    with channel:
        for _ in range(3):  # a round whose calls all miss each other's 300 ms window is retried
            results: dict[int, service_pb2.ModelInferResponse] = {}
            barrier = threading.Barrier(len(sizes))
            threads = [threading.Thread(target=call, args=(i, barrier, results)) for i in range(len(sizes))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sorted(results) == list(range(len(sizes)))
            call_rows = []
            for i, x in enumerate(inputs):
                answer = results[i]
                assert answer.id == str(i)
                outputs = {o.name: k for k, o in enumerate(answer.outputs)}
                y = np.frombuffer(answer.raw_output_contents[outputs["Y"]], np.float32).reshape(x.shape)
                np.testing.assert_array_equal(y, x * 2 + 1)  # its own rows, whatever it was batched with
                call_rows.append(int(np.frombuffer(answer.raw_output_contents[outputs["CALL_ROWS"]],
                                                   np.int64)[0]))
            if max(r - n for r, n in zip(call_rows, sizes, strict=True)) > 0:
                batched_rounds += 1
                break
    assert batched_rounds == 1, "TorchServe never put two concurrent calls into one handler call"
    only = _oip(ts_router.address, "probe", inputs[0], outputs=["CALL_ROWS"])
    assert list(only) == ["CALL_ROWS"]


@integration
def test_a_model_error_is_a_clear_status_not_a_hang(ts_router: RouterThread) -> None:
    channel, stub = oip_stub(ts_router.address)
    request = service_pb2.ModelInferRequest(model_name="probe")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.array([[1, 13]], np.float32).tobytes())
    started = time.monotonic()
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=20)
    assert time.monotonic() - started < 10
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "the model failed: ValueError: unlucky input 13" in caught.value.details()
    assert "torchserve" in caught.value.details()


@integration
def test_torchserve_down_is_unavailable_naming_the_backend(
    ts_router: RouterThread, tmp_path: Path
) -> None:
    """A second, short-lived TorchServe serves `probe_down`; stopped, the router says UNAVAILABLE."""
    from devstack.torchserve import TorchServeServer
    from tests.conftest import torchserve_models

    probe = [m for m in torchserve_models() if m.name == "probe"]
    server = TorchServeServer(probe, workdir=tmp_path / "torchserve")
    server.start()
    try:
        record = {"name": "probe_down", "backend": {"kind": "torchserve", "endpoints": [server.grpc_address],
                                                    "model": "probe"}}
        ts_router.run(ts_router.app.admin.register(parse_registration([record], "test")))
        x = np.ones((1, 2), np.float32)
        np.testing.assert_array_equal(_oip(ts_router.address, "probe_down", x)["Y"], x * 2 + 1)
    finally:
        server.stop()
    assert not server.running
    channel, stub = oip_stub(ts_router.address)
    request = service_pb2.ModelInferRequest(model_name="probe_down")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(x.tobytes())
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"torchserve {server.grpc_address}" in caught.value.details()
        assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="probe_down"), timeout=10).ready
    # the session's TorchServe is unaffected
    with grpc.insecure_channel(ts_router.app.registry.resolve("probe", "").endpoints[0]) as direct:
        health = inference_pb2_grpc.InferenceAPIsServiceStub(direct).Ping(empty_pb2.Empty(), timeout=10)
    assert json.loads(health.health)["status"] == "Healthy"
