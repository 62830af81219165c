"""The Open Inference Protocol's REST binding through the router's HTTP edge, on a real Triton.

`tritonclient.http` against the router must give what `tritonclient.grpc` gives against the
router (and what tritonclient.http gives against Triton itself), with JSON tensors and with the
binary tensor data extension; errors get the right HTTP status and a JSON body naming them.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.conftest import RouterThread
from tests.test_oip_triton import DTYPES_INPUTS, DTYPES_OUTPUTS

pytestmark = pytest.mark.integration

# JSON carries BYTES as UTF-8 strings: the JSON variant uses ASCII (the model reverses bytes).
JSON_BYTES = np.array([[b"abc", b"", b"tensor", b"z" * 300, b"q"]] * 2, dtype=object)


def _inputs(module: Any, binary: bool, text: np.ndarray | None = None) -> list[Any]:
    inputs = []
    for name, (datatype, array) in DTYPES_INPUTS.items():
        if name == "IN_BYTES" and text is not None:
            array = text
        t = module.InferInput(name, list(array.shape), datatype)
        if module is thttp:
            t.set_data_from_numpy(array, binary_data=binary)
        else:
            t.set_data_from_numpy(array)
        inputs.append(t)
    return inputs


def _outputs(binary: bool) -> list[Any]:
    return [thttp.InferRequestedOutput(n, binary_data=binary) for n in DTYPES_OUTPUTS]


def _post(
    address: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(address, timeout=20)
    try:
        conn.request("POST", path, body, headers or {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _get(address: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, timeout=20)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (False, True), (True, False)]
)
def test_http_client_matches_grpc_client_for_every_datatype(
    router: RouterThread, triton: Any, binary_in: bool, binary_out: bool
) -> None:
    text = None if binary_in and binary_out else JSON_BYTES
    via_http = thttp.InferenceServerClient(router.http_address)
    via_grpc = tgrpc.InferenceServerClient(router.address)
    direct_http = thttp.InferenceServerClient(triton.http_address)
    r = via_http.infer(
        "dtypes", _inputs(thttp, binary_in, text), outputs=_outputs(binary_out), request_id="req-7"
    )
    g = via_grpc.infer("dtypes", _inputs(tgrpc, True, text))
    # Triton refuses FP16 as JSON both ways; the router takes and gives it (JSON numbers hold
    # FP16 values exactly), so Triton's own answer is asked for in binary
    d = direct_http.infer("dtypes", _inputs(thttp, True, text), outputs=_outputs(True))
    for name in DTYPES_OUTPUTS:
        a, b, c = r.as_numpy(name), g.as_numpy(name), d.as_numpy(name)
        if name == "OUT_BYTES" and not binary_out:  # tritonclient gives JSON strings as str
            a = np.vectorize(str.encode, otypes=[object])(a)
        assert a.dtype == b.dtype == c.dtype and a.shape == b.shape == c.shape, name
        assert np.array_equal(a, b) and np.array_equal(a, c), name
    # the numbers themselves, not only agreement
    assert np.array_equal(r.as_numpy("OUT_FP32"), DTYPES_INPUTS["IN_FP32"][1] * 2)
    assert np.array_equal(r.as_numpy("OUT_INT64"), DTYPES_INPUTS["IN_INT64"][1] - 7)
    sent = DTYPES_INPUTS["IN_BYTES"][1] if text is None else text
    got = [x if isinstance(x, bytes) else x.encode() for x in r.as_numpy("OUT_BYTES").reshape(-1)]
    assert [x[::-1] for x in sent.reshape(-1)] == got
    response = r.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("dtypes", "1", "req-7")
    for out in response["outputs"]:
        assert ("binary_data_size" in out.get("parameters", {})) == binary_out
        assert ("data" in out) == (not binary_out)


def test_http_health_metadata_ready_and_index(router: RouterThread) -> None:
    client = thttp.InferenceServerClient(router.http_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta["name"] == "tensorgate" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("simple")
    assert model["name"] == "simple" and model["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    assert index[("simple", "1")] == "READY" and index[("dtypes", "1")] == "READY"


def test_simple_as_curl_sends_it(router: RouterThread) -> None:
    """Plain JSON, as a shell user writes it: nested data, no parameters."""
    body = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [list(range(16))]},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
        ]
    }
    status, headers, data = _post(router.http_address, "/v2/models/simple/infer", json.dumps(body).encode())
    assert status == 200, data
    answer = json.loads(data)
    outs = {o["name"]: o for o in answer["outputs"]}
    assert outs["OUTPUT0"]["data"] == [i + 1 for i in range(16)]
    assert outs["OUTPUT1"]["data"] == [i - 1 for i in range(16)]
    assert outs["OUTPUT0"]["shape"] == [1, 16] and outs["OUTPUT0"]["datatype"] == "INT32"
    assert len(headers["x-request-id"]) >= 16


def _error(status: int, data: bytes) -> str:
    body = json.loads(data)
    assert set(body) == {"error", "request_id"} and body["request_id"]
    return str(body["error"])


SIMPLE_OK = {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"inputs": [', 400, "malformed JSON request: Expecting value at line 1"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (json.dumps({"inputs": [], "extra": 1}).encode(), 400, "unknown field(s) extra"),
        (
            json.dumps({"inputs": [{**SIMPLE_OK, "name": "INPUT0", "data": ["a"] * 16}, SIMPLE_OK]}).encode(),
            400,
            "INT32 data must be integers",
        ),
        (
            json.dumps({"inputs": [{**SIMPLE_OK, "name": "INPUT0", "data": [1.5] * 16}, SIMPLE_OK]}).encode(),
            400,
            "INT32 data must be integers",
        ),
        (
            json.dumps(
                {"inputs": [{**SIMPLE_OK, "name": "INPUT0", "data": [2**40] * 16}, SIMPLE_OK]}
            ).encode(),
            400,
            "does not fit INT32",
        ),
        (
            json.dumps({"inputs": [{**SIMPLE_OK, "name": "INPUT0", "data": [1] * 15}, SIMPLE_OK]}).encode(),
            400,
            "needs 16 elements, got 15",
        ),
        (
            json.dumps({"inputs": [{**SIMPLE_OK, "name": "INPUT0", "shape": "1,16"}, SIMPLE_OK]}).encode(),
            400,
            "shape must be a list of integers",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {**SIMPLE_OK, "name": "INPUT0", "datatype": "FP32", "data": [1.0] * 16},
                        SIMPLE_OK,
                    ]
                }
            ).encode(),
            400,
            "datatype FP32, the model expects INT32",
        ),
        (json.dumps({"inputs": [SIMPLE_OK]}).encode(), 400, "missing input(s) INPUT0"),
        (b"[" * 5000 + b"]" * 5000, 400, "nests 5000 levels deep; http.max_json_depth=32"),
        (json.dumps({"inputs": [], "parameters": 5}).encode(), 400,
         "parameters must be a JSON object, got int"),
        (json.dumps({"inputs": [{**SIMPLE_OK, "parameters": [1]}]}).encode(), 400,
         "input 'INPUT1': parameters must be a JSON object, got list"),
        (json.dumps({"inputs": [SIMPLE_OK], "outputs": [{"name": "OUTPUT0", "parameters": 5}]})
         .encode(), 400, "output 'OUTPUT0': parameters must be a JSON object, got int"),
    ],
)
def test_bad_json_requests_are_400_naming_the_problem(
    router: RouterThread, body: bytes, status: int, needle: str
) -> None:
    got, _, data = _post(router.http_address, "/v2/models/simple/infer", body)
    assert got == status, data
    assert needle in _error(got, data)


def test_binary_extension_errors_are_400(router: RouterThread) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                },
                {
                    "name": "INPUT1",
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                },
            ]
        }
    ).encode()
    data = np.arange(16, dtype=np.int32).tobytes()
    cases = [
        (str(len(head)), head + data, "runs past the 64 bytes of binary data"),
        (str(len(head)), head + data * 3, "64 bytes of binary data after the header belong to no"),
        ("12x", head + data * 2, "Inference-Header-Content-Length '12x'"),
        (str(len(head) + 999), head + data * 2, "must be a byte count of at most"),
    ]
    for length, body, needle in cases:
        status, _, answer = _post(
            router.http_address, "/v2/models/simple/infer", body, {"inference-header-content-length": length}
        )
        assert status == 400 and needle in _error(status, answer), (length, answer)
    status, _, answer = _post(
        router.http_address,
        "/v2/models/simple/infer",
        head + data * 2,
        {"inference-header-content-length": str(len(head))},
    )
    assert status == 200, answer


def test_unknown_model_route_and_method(router: RouterThread) -> None:
    status, _, data = _post(
        router.http_address, "/v2/models/nope/infer", json.dumps({"inputs": [SIMPLE_OK]}).encode()
    )
    assert status == 404 and "nope" in _error(status, data)
    status, data = _get(router.http_address, "/v2/models/nope")
    assert status == 404 and "nope" in _error(status, data)
    status, data = _get(router.http_address, "/v3/whatever")
    assert status == 404 and "no route for GET /v3/whatever" in _error(status, data)
    status, data = _get(router.http_address, "/v2/models/simple/infer")
    assert status == 405 and "use POST" in _error(status, data)
    status, data = _get(router.http_address, "/v2/models/simple/config")
    assert status == 501 and "metadata" in _error(status, data)


def test_tritonclient_http_sees_errors_as_exceptions(router: RouterThread) -> None:
    client = thttp.InferenceServerClient(router.http_address)
    a = np.zeros((1, 16), dtype=np.int32)
    inputs = [thttp.InferInput("INPUT0", [1, 16], "INT32"), thttp.InferInput("WRONG", [1, 16], "INT32")]
    for t in inputs:
        t.set_data_from_numpy(a)
    with pytest.raises(InferenceServerException, match="unknown input 'WRONG'"):
        client.infer("simple", inputs)


def test_non_utf8_bytes_output_as_json_is_400_suggesting_binary(router: RouterThread) -> None:
    client = thttp.InferenceServerClient(router.http_address)
    inputs = _inputs(thttp, True)  # IN_BYTES holds \x00\xff and multi-byte UTF-8, reversed
    with pytest.raises(InferenceServerException, match="not UTF-8 text; ask for it as binary"):
        client.infer("dtypes", inputs, outputs=_outputs(False))


def test_gzip_request_and_deadline_header(router: RouterThread) -> None:
    import gzip

    body = json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
            ]
        }
    ).encode()
    status, _, data = _post(
        router.http_address, "/v2/models/simple/infer", gzip.compress(body), {"content-encoding": "gzip"}
    )
    assert status == 200 and json.loads(data)["outputs"][0]["data"] == [4] * 16
    status, _, data = _post(
        router.http_address, "/v2/models/simple/infer", b"\x1f\x8b junk", {"content-encoding": "gzip"}
    )
    assert status == 400 and "not valid gzip" in _error(status, data)
    status, _, data = _post(router.http_address, "/v2/models/simple/infer", body, {"content-encoding": "br"})
    assert status == 415 and "use gzip or deflate" in _error(status, data)
    status, _, data = _post(router.http_address, "/v2/models/simple/infer", body, {"grpc-timeout": "soon"})
    assert status == 400 and "grpc-timeout header 'soon'" in _error(status, data)


def test_deadline_shorter_than_backend_is_504(router: RouterThread) -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "SECONDS", "shape": [1], "datatype": "FP32", "data": [3.0]},
            ]
        }
    ).encode()
    start = time.monotonic()
    status, _, data = _post(router.http_address, "/v2/models/slow/infer", body, {"grpc-timeout": "300m"})
    took = time.monotonic() - start
    assert status == 504, data
    assert "300m" in _error(status, data) or "deadline" in _error(status, data).lower()
    assert took < 2.5  # the caller's deadline, not the backend's 3 s


def test_shared_memory_parameters_are_refused_with_501(router: RouterThread) -> None:
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
         "parameters": {"shared_memory_region": "r0", "shared_memory_byte_size": 64}},
        SIMPLE_OK,
    ]}).encode()
    status, _, data = _post(router.http_address, "/v2/models/simple/infer", body)
    assert status == 501 and "shared memory (shared_memory_region)" in _error(status, data)
