"""What a benchmark sends: one pre-serialized request per workload, and a check of each answer.

A workload is the gRPC method, the request bytes (serialized once, so the load generator spends
its CPU on calls, not on protobuf) and a `verify` function that raises LoadError unless a
response is right, so a broken target can never look fast.

| name | method | request |
|---|---|---|
| `simple` | OIP ModelInfer | Triton's `simple`: INT32 [1,16] x2, answers the sums and differences |
| `identity:SIZE` | OIP ModelInfer | `identity_fp32`: FP32 tensor of SIZE bytes (64, 64KiB, 4MiB), echoed |
| `fixed_cost` | OIP ModelInfer | `fixed_cost`: FP32 [1,4], answers 2x (10 ms per backend call, any batch) |
| `digits_png` | tensorgate Predict | one 8x8 PNG of a digit through the image transform and classify |
| `wine_csv` | tensorgate Predict | one CSV row through the table transform and classify |
| `wine_tensor` | OIP ModelInfer | `wine_torch` (TorchServe) behind the router: FEATURES FP32 [1,13] |
| `ts_wine` | TorchServe Predictions | the same call straight to TorchServe, `.npy` in, `.npz` out |

`build(name, model)` makes one; `model` is the name the target serves it under (a router may
register the same backend model under several names, e.g. with and without batching).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from router import tensors as router_tensors

OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorgate.v1.InferenceService/Predict"
TS_PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
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
    method: str
    request: bytes
    verify: Callable[[bytes], None]
    description: str


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


def expect_outputs(expected: dict[str, np.ndarray]) -> Callable[[bytes], None]:
    """A verify function: the response holds exactly these arrays (names, shapes, values)."""

    def verify(payload: bytes) -> None:
        found = oip_outputs(payload)
        for name, want in expected.items():
            got = found.get(name)
            if got is None:
                raise LoadError(f"response lacks {name} (has {sorted(found)})")
            if got.shape != want.shape or not np.array_equal(got, want):
                first = got.ravel()[:4].tolist()
                raise LoadError(f"{name} is wrong: shape {got.shape}, first values {first}")

    return verify


def simple(model: str = "simple") -> Workload:
    """Triton's `simple` model: two INT32 [1,16] inputs."""
    return Workload(
        "simple", model, OIP_INFER,
        oip_request(model, {"INPUT0": SIMPLE_INPUT0, "INPUT1": SIMPLE_INPUT1}),
        expect_outputs({"OUTPUT0": SIMPLE_INPUT0 + SIMPLE_INPUT1, "OUTPUT1": SIMPLE_INPUT0 - SIMPLE_INPUT1}),
        "simple: INT32 [1,16] x2 in, x2 out",
    )  # fmt: skip


def identity(size: int, model: str = "identity_fp32") -> Workload:
    """`identity_fp32` with one FP32 tensor of `size` bytes, echoed back."""
    tensor = np.random.default_rng(size).standard_normal(size // 4).astype("<f4")
    return Workload(
        f"identity:{size_label(size)}", model, OIP_INFER,
        oip_request(model, {"INPUT": tensor}),
        expect_outputs({"OUTPUT": tensor}),
        f"identity_fp32: FP32 [{size // 4}] ({size_label(size)}) in and out",
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
    builders: dict[str, Callable[..., Workload]] = {
        "simple": simple,
        "fixed_cost": fixed_cost,
        "digits_png": digits_png,
        "wine_csv": wine_csv,
        "wine_tensor": wine_tensor,
        "ts_wine": ts_wine,
    }
    if name not in builders:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(builders)}, identity:SIZE)")
    return builders[name](**kwargs)
