"""What a benchmark sends: one pre-serialized request per workload, and a check of each answer.

A workload is the call (a gRPC method, or for `transport="http"` the path of an HTTP POST and
its headers), the request bytes (serialized once, so the load generator spends its CPU on calls,
not on protobuf or JSON) and a `verify` function that raises LoadError unless a response is
right, so a broken target can never look fast. A gRPC response is the serialized message; an
HTTP response is the raw HTTP/1.1 response (status line, headers, body), parsed only by verify.

| name | method | request |
|---|---|---|
| `simple` | OIP ModelInfer | Triton's `simple`: INT32 [1,16] x2, answers the sums and differences |
| `identity:SIZE` | OIP ModelInfer | `identity_fp32`: FP32 tensor of SIZE bytes (64, 64KiB, 4MiB), echoed |
| `fixed_cost` | OIP ModelInfer | `fixed_cost`: FP32 [1,4], answers 2x (10 ms per backend call, any batch) |
| `digits_png` | tensorgate Predict | one 8x8 PNG of a digit through the image transform and classify |
| `wine_csv` | tensorgate Predict | one CSV row through the table transform and classify |
| `wine_tensor` | OIP ModelInfer | `wine_torch` (TorchServe) behind the router: FEATURES FP32 [1,13] |
| `ts_wine` | TorchServe Predictions | the same call straight to TorchServe, `.npy` in, `.npz` out |
| `rest_json_simple` | OIP REST infer | `simple` with JSON tensors both ways |
| `rest_bin_simple` | OIP REST infer | `simple` with the binary tensor data extension both ways |
| `rest_bin_identity:SIZE` | OIP REST infer | `identity_fp32`, SIZE bytes as binary tensor data both ways |

Every REST workload's name starts with `rest_` (`transport_of`), so the suite knows which of a
server's ports to load without building the workload.

`build(name, model)` makes one; `model` is the name the target serves it under (a router may
register the same backend model under several names, e.g. with and without batching).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httptools
import numpy as np
from tritonclient.grpc import service_pb2

from router import tensors as router_tensors

OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorgate.v1.InferenceService/Predict"
TS_PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
# The Open Inference Protocol's REST binding: a JSON header of this many bytes, then raw tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"
REST_PREFIX = "rest_"
Transport = Literal["grpc", "http"]
# The `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [1, 16].
SIMPLE_INPUT0 = np.arange(16, dtype="<i4").reshape(1, 16)
SIMPLE_INPUT1 = np.full((1, 16), 3, dtype="<i4")
_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB)?$")
_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}


class LoadError(RuntimeError):
    """The target cannot serve the benchmark request correctly."""


@dataclass(frozen=True)
class Workload:
    """One kind of call: method, pre-serialized request, and the check of a response."""

    name: str
    model: str
    method: str  # gRPC: the method's path; HTTP: the path the request is POSTed to
    request: bytes  # gRPC: the serialized message; HTTP: the body
    verify: Callable[[bytes], None]
    description: str
    transport: Transport = "grpc"
    headers: tuple[tuple[str, str], ...] = ()  # HTTP headers besides Host and Content-Length


def transport_of(name: str) -> Transport:
    """The transport of the workload called `name` (REST workloads are named rest_*)."""
    return "http" if name.startswith(REST_PREFIX) else "grpc"


def parse_size(text: str) -> int:
    """'64', '64KiB', '4MiB' -> bytes; a multiple of 4 (FP32 elements); ValueError otherwise."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"size {text!r} is not like 64, 64KiB or 4MiB")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size <= 0 or size % 4:
        raise ValueError(f"size {text!r} must be a positive multiple of 4 bytes (FP32 elements)")
    return size


def size_label(size: int) -> str:
    """4194304 -> '4MiB', 65536 -> '64KiB', 64 -> '64B'."""
    for unit in ("MiB", "KiB"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size}B"


def oip_request(model: str, tensors: dict[str, np.ndarray]) -> bytes:
    """A ModelInferRequest with raw_input_contents, serialized."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in tensors.items():
        datatype, shape, raw = router_tensors.from_numpy(array)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    payload: bytes = request.SerializeToString()
    return payload


def oip_outputs(payload: bytes) -> dict[str, np.ndarray]:
    """The named output arrays of a serialized ModelInferResponse; LoadError when it is not one."""
    try:
        response = service_pb2.ModelInferResponse.FromString(payload)
    except Exception as err:  # noqa: BLE001 - any decode failure means a broken target
        raise LoadError(f"response is not a ModelInferResponse: {err}") from err
    out: dict[str, np.ndarray] = {}
    if len(response.raw_output_contents) != len(response.outputs):
        raise LoadError(
            f"{len(response.outputs)} outputs but {len(response.raw_output_contents)} raw contents"
        )
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        try:
            router_tensors.check_raw_size(output.name, output.datatype, output.shape, raw)
            out[output.name] = router_tensors.to_numpy(output.datatype, output.shape, raw)
        except Exception as err:  # noqa: BLE001 - a malformed output means a broken target
            raise LoadError(f"output {output.name}: {err}") from err
    return out


def expect_outputs(
    expected: dict[str, np.ndarray], decode: Callable[[bytes], dict[str, np.ndarray]] = oip_outputs
) -> Callable[[bytes], None]:
    """A verify function: the response holds exactly these arrays (names, shapes, values).

    `decode` reads the arrays of a response: `oip_outputs` (gRPC) or `rest_outputs` (HTTP).
    """

    def verify(payload: bytes) -> None:
        found = decode(payload)
        for name, want in expected.items():
            got = found.get(name)
            if got is None:
                raise LoadError(f"response lacks {name} (has {sorted(found)})")
            if got.shape != want.shape or not np.array_equal(got, want):
                first = got.ravel()[:4].tolist()
                raise LoadError(f"{name} is wrong: shape {got.shape}, first values {first}")

    return verify


class _Response:
    """httptools callbacks collecting one response's headers and body."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def http_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lower-case name, body) of one raw HTTP/1.1 response; LoadError if not one."""
    collected = _Response()
    parser = httptools.HttpResponseParser(collected)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError as err:
        raise LoadError(f"response is not HTTP/1.1: {err}") from err
    if not collected.complete:
        raise LoadError(f"the HTTP response is incomplete ({len(raw)} bytes)")
    return parser.get_status_code(), collected.headers, b"".join(collected.body)


def rest_request(
    tensors: dict[str, np.ndarray], outputs: Sequence[str] = (), binary: bool = False
) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """(body, headers) of a REST inference request.

    JSON: every tensor as a JSON array, the answer's too (no `outputs`: all of them, as JSON).
    Binary: a JSON header then each input's raw bytes, and `outputs` asked for as binary data.
    """
    inputs: list[dict[str, object]] = []
    chunks: list[bytes] = []
    for name, array in tensors.items():
        datatype, shape, raw = router_tensors.from_numpy(array)
        entry: dict[str, object] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = router_tensors.raw_to_json(name, datatype, shape, raw)
        inputs.append(entry)
    head: dict[str, object] = {"inputs": inputs}
    if binary:
        head["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = json.dumps(head, separators=(",", ":")).encode()
    if not binary:
        return header, (("Content-Type", "application/json"),)
    return header + b"".join(chunks), (
        ("Content-Type", "application/octet-stream"),
        (HEADER_LENGTH, str(len(header))),
    )


def rest_outputs(raw: bytes) -> dict[str, np.ndarray]:
    """The named output arrays of a raw REST inference response (JSON or binary tensors).

    LoadError unless it is a well-formed 200 answer.
    """
    status, headers, body = http_response(raw)
    if status != 200:
        raise LoadError(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
    length = headers.get(HEADER_LENGTH.lower())
    if length is not None and not (length.isdigit() and int(length) <= len(body)):
        raise LoadError(f"{HEADER_LENGTH} {length!r} is not a byte count of at most {len(body)}")
    split = len(body) if length is None else int(length)
    try:
        head: Any = json.loads(body[:split])
        outputs = head["outputs"]
        if not isinstance(outputs, list):
            raise TypeError("outputs is not a list")
    except (ValueError, KeyError, TypeError) as err:
        raise LoadError(f"response is not an inference response ({err}): {body[:200]!r}") from err
    binary = memoryview(body)[split:]
    offset = 0
    found: dict[str, np.ndarray] = {}
    for output in outputs:
        try:
            name, datatype, shape = output["name"], output["datatype"], output["shape"]
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise ValueError(
                        f"binary_data_size {size!r} does not fit the {len(binary)} bytes after the header"
                    )
                data = bytes(binary[offset : offset + size])
                offset += size
            else:
                data = router_tensors.json_to_raw(name, datatype, shape, output["data"])
            router_tensors.check_raw_size(name, datatype, shape, data)
            found[name] = router_tensors.to_numpy(datatype, shape, data)
        except Exception as err:  # noqa: BLE001 - a malformed output means a broken target
            raise LoadError(f"output {str(output)[:100]}: {err}") from err
    if offset != len(binary):
        raise LoadError(f"{len(binary) - offset} bytes of binary data after the header belong to no output")
    return found


def rest_workload(
    name: str,
    model: str,
    tensors: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    binary: bool,
    description: str,
) -> Workload:
    """A REST inference: POST /v2/models/{model}/infer, the answer checked against `expected`."""
    body, headers = rest_request(tensors, list(expected), binary)
    return Workload(
        name, model, f"/v2/models/{model}/infer", body, expect_outputs(expected, rest_outputs),
        description, "http", headers,
    )  # fmt: skip


def simple(model: str = "simple") -> Workload:
    """Triton's `simple` model: two INT32 [1,16] inputs."""
    return Workload(
        "simple", model, OIP_INFER,
        oip_request(model, {"INPUT0": SIMPLE_INPUT0, "INPUT1": SIMPLE_INPUT1}),
        expect_outputs({"OUTPUT0": SIMPLE_INPUT0 + SIMPLE_INPUT1, "OUTPUT1": SIMPLE_INPUT0 - SIMPLE_INPUT1}),
        "simple: INT32 [1,16] x2 in, x2 out",
    )  # fmt: skip


def _identity_tensor(size: int) -> np.ndarray:
    """The FP32 tensor of `size` bytes the identity workloads send (the same for gRPC and REST)."""
    return np.random.default_rng(size).standard_normal(size // 4).astype("<f4")


def identity(size: int, model: str = "identity_fp32") -> Workload:
    """`identity_fp32` with one FP32 tensor of `size` bytes, echoed back."""
    tensor = _identity_tensor(size)
    return Workload(
        f"identity:{size_label(size)}", model, OIP_INFER,
        oip_request(model, {"INPUT": tensor}),
        expect_outputs({"OUTPUT": tensor}),
        f"identity_fp32: FP32 [{size // 4}] ({size_label(size)}) in and out",
    )  # fmt: skip


def rest_json_simple(model: str = "simple") -> Workload:
    """`simple` over the REST binding, every tensor as JSON."""
    a, b = SIMPLE_INPUT0, SIMPLE_INPUT1
    return rest_workload(
        "rest_json_simple", model, {"INPUT0": a, "INPUT1": b}, {"OUTPUT0": a + b, "OUTPUT1": a - b}, False,
        "simple over REST: INT32 [1,16] x2 in, x2 out, as JSON",
    )  # fmt: skip


def rest_bin_simple(model: str = "simple") -> Workload:
    """`simple` over the REST binding, every tensor as binary data."""
    a, b = SIMPLE_INPUT0, SIMPLE_INPUT1
    return rest_workload(
        "rest_bin_simple", model, {"INPUT0": a, "INPUT1": b}, {"OUTPUT0": a + b, "OUTPUT1": a - b}, True,
        "simple over REST: INT32 [1,16] x2 in, x2 out, as binary tensor data",
    )  # fmt: skip


def rest_bin_identity(size: int, model: str = "identity_fp32") -> Workload:
    """`identity_fp32` over the REST binding: one FP32 tensor of `size` bytes as binary data, echoed."""
    tensor = _identity_tensor(size)
    return rest_workload(
        f"rest_bin_identity:{size_label(size)}", model, {"INPUT": tensor}, {"OUTPUT": tensor}, True,
        f"identity_fp32 over REST: FP32 [{size // 4}] ({size_label(size)}) as binary data in and out",
    )  # fmt: skip


def fixed_cost(model: str = "fixed_cost") -> Workload:
    """`fixed_cost`: FP32 [1,4] in, 2x out; the backend takes 10 ms per call, any batch."""
    x = np.array([[1.5, -2.0, 3.25, 0.5]], dtype="<f4")
    return Workload(
        "fixed_cost", model, OIP_INFER, oip_request(model, {"X": x}), expect_outputs({"Y": 2 * x}),
        "fixed_cost: FP32 [1,4], 10 ms per backend call",
    )  # fmt: skip


def _predict_request(model: str, item: object) -> bytes:
    from tensorgate.v1 import inference_pb2

    request = inference_pb2.PredictRequest(model=model, items=[item])
    payload: bytes = request.SerializeToString()
    return payload


def _expect_classification(labels: frozenset[str]) -> Callable[[bytes], None]:
    """A verify function: one item result whose top classification is one of `labels`."""
    from tensorgate.v1 import inference_pb2

    def verify(payload: bytes) -> None:
        try:
            response = inference_pb2.PredictResponse.FromString(payload)
        except Exception as err:  # noqa: BLE001
            raise LoadError(f"response is not a PredictResponse: {err}") from err
        if len(response.results) != 1 or not response.results[0].classifications:
            raise LoadError(f"expected one classified item, got {len(response.results)} results")
        top = response.results[0].classifications[0]
        if top.label not in labels or not 0.0 <= top.score <= 1.0:
            raise LoadError(f"unexpected classification {top.label!r} ({top.score})")

    return verify


def digits_png(model: str = "digits") -> Workload:
    """One held-out 8x8 digit as a PNG through the router's image transform."""
    from PIL import Image
    from tensorgate.v1 import inference_pb2

    from devstack.examples import digits_split

    _, images, _, _ = digits_split()
    buf = io.BytesIO()
    Image.fromarray(np.round(images[0] * 255 / 16).astype(np.uint8), "L").save(buf, format="PNG")
    item = inference_pb2.Item(image=inference_pb2.ImagePayload(data=buf.getvalue()))
    labels = frozenset(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
    return Workload(
        "digits_png", model, PREDICT, _predict_request(model, item), _expect_classification(labels),
        f"digits: one {len(buf.getvalue())}-byte PNG item, image transform + classify",
    )  # fmt: skip


def wine_csv(model: str = "wine") -> Workload:
    """One held-out wine row as CSV through the router's table transform."""
    from tensorgate.v1 import inference_pb2

    from devstack.examples import wine_split

    _, rows, _, _, names = wine_split()
    csv = (",".join(names) + "\n" + ",".join(str(v) for v in rows[0]) + "\n").encode()
    item = inference_pb2.Item(table=inference_pb2.TablePayload(csv=csv))
    return Workload(
        "wine_csv", model, PREDICT, _predict_request(model, item),
        _expect_classification(frozenset(("class_0", "class_1", "class_2"))),
        "wine: one CSV row, table transform + classify",
    )  # fmt: skip


def _wine_features() -> np.ndarray:
    from devstack.examples import wine_split

    _, rows, _, _, _ = wine_split()
    return np.asarray(rows[:1], dtype="<f4")


def _check_probs(probs: np.ndarray | None) -> None:
    if probs is None or probs.shape != (1, 3) or not np.isclose(float(probs.sum()), 1.0, atol=1e-4):
        raise LoadError(
            f"PROBS should be [1,3] probabilities, got {None if probs is None else probs.tolist()}"
        )


def wine_tensor(model: str = "wine_torch") -> Workload:
    """The wine classifier as a raw FEATURES tensor over the Open Inference Protocol."""

    def verify(payload: bytes) -> None:
        _check_probs(oip_outputs(payload).get("PROBS"))

    return Workload(
        "wine_tensor", model, OIP_INFER, oip_request(model, {"FEATURES": _wine_features()}), verify,
        "wine: FEATURES FP32 [1,13] in, PROBS [1,3] out",
    )  # fmt: skip


def ts_wine(model: str = "wine_torch") -> Workload:
    """The same call straight to TorchServe's Predictions: `.npy` per input in, `.npz` out."""
    from tensorgate.torchserve import inference_pb2 as ts_pb2

    from adapters.torchserve_handler import decode_npz, encode_npy

    request = ts_pb2.PredictionsRequest(model_name=model, input={"FEATURES": encode_npy(_wine_features())})

    def verify(payload: bytes) -> None:
        try:
            prediction = ts_pb2.PredictionResponse.FromString(payload).prediction
            outputs = decode_npz(prediction, "the prediction")
        except Exception as err:  # noqa: BLE001 - anything undecodable is a broken target
            raise LoadError(f"response is not a TorchServe .npz prediction: {err}") from err
        _check_probs(outputs.get("PROBS"))

    return Workload(
        "ts_wine", model, TS_PREDICTIONS, request.SerializeToString(), verify,
        "wine straight to TorchServe: FEATURES as .npy, PROBS as .npz",
    )  # fmt: skip


def build(name: str, model: str | None = None) -> Workload:
    """The workload called `name` (see the module table), served as `model` (default: its own)."""
    kwargs = {} if model is None else {"model": model}
    if name.startswith("identity:"):
        return identity(parse_size(name.split(":", 1)[1]), **kwargs)
    if name.startswith("rest_bin_identity:"):
        return rest_bin_identity(parse_size(name.split(":", 1)[1]), **kwargs)
    builders: dict[str, Callable[..., Workload]] = {
        "simple": simple,
        "fixed_cost": fixed_cost,
        "digits_png": digits_png,
        "wine_csv": wine_csv,
        "wine_tensor": wine_tensor,
        "ts_wine": ts_wine,
        "rest_json_simple": rest_json_simple,
        "rest_bin_simple": rest_bin_simple,
    }
    if name not in builders:
        raise ValueError(
            f"unknown workload {name!r} (known: {', '.join(builders)}, identity:SIZE, rest_bin_identity:SIZE)"
        )
    return builders[name](**kwargs)
