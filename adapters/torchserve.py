"""TorchServe adapter: Open Inference Protocol requests over TorchServe's gRPC Predictions API.

The encoding (the one `adapters.torchserve_handler.TensorHandler` decodes in the worker):
- each input tensor becomes `.npy` bytes (np.save, no pickle) under its input name in
  `PredictionsRequest.input`;
- `PredictionResponse.prediction` is an uncompressed `.npz` archive of the named outputs, read
  with allow_pickle=False; a failed request answers a JSON `{"error", "code"}` body instead.
BYTES and BF16 tensors have no .npy form without pickling: they are refused as InvalidInput.

Endpoints: `host:port` is TorchServe's gRPC inference port; its gRPC management API (readiness
and tensor metadata) is taken to be on port + 1, TorchServe's default 7070/7071 layout. Give
`host:port/management_port` when it is elsewhere.

Readiness: Ping says Healthy and DescribeModel lists a READY worker. Metadata: DescribeModel
with customized=true, whose `customizedMetadata` is the handler's describe_handle() JSON.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2
from tensorgate.torchserve import (
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
)
from tritonclient.grpc import service_pb2

from adapters.base import Backend, BackendModelMetadata, BackendOptions, channel_options
from adapters.torchserve_handler import RequestError, datatype_of, decode_npz, encode_npy
from router import tensors
from router.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    TensorgateError,
)
from router.registry import TensorSpec

# TorchServe's HTTP statuses (a failed request's JSON body) as the gRPC codes its frontend uses.
_HTTP_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# What TorchServe answers (503) when a model's job queue is full or it has no worker.
_NO_WORKER = "has no worker"
# What TorchServe answers (503) when a handler that is not a TensorHandler raised.
_HANDLER_FAILED = "Prediction failed"
# TorchServe answers INTERNAL with these for a model or version it does not have.
_NOT_FOUND = ("Model not found", "does not exist for model")
# The .npz (zip) magic: a successful prediction starts with it, an error body never does.
_ZIP_MAGIC = b"PK"
# grpc-java (TorchServe's frontend) answers pings more often than every 5 minutes with GOAWAY.
_MIN_KEEPALIVE_S = 300.0


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """(inference address, management address) of a `host:port[/management_port]` endpoint."""
    address, _, management = endpoint.partition("/")
    host, _, port = address.rpartition(":")
    return address, f"{host}:{management or int(port) + 1}"


def encode_request(request: service_pb2.ModelInferRequest) -> inference_pb2.PredictionsRequest:
    """A ModelInferRequest as TorchServe's PredictionsRequest: each input as .npy bytes."""
    out = inference_pb2.PredictionsRequest(
        model_name=request.model_name, model_version=request.model_version
    )
    raw = request.raw_input_contents
    for i, t in enumerate(request.inputs):
        where = f"model {request.model_name}: input {t.name!r}"
        dtype = tensors.NUMPY_DTYPES.get(t.datatype)
        if dtype is None:
            raise InvalidInput(
                f"{where}: datatype {t.datatype} cannot be sent to TorchServe (its .npy encoding "
                f"carries {', '.join(tensors.NUMPY_DTYPES)})"
            )
        data = raw[i] if raw else tensors.typed_to_raw(where, t.datatype, t.shape, t.contents)
        tensors.check_raw_size(where, t.datatype, t.shape, data)
        array = np.frombuffer(data, dtype=dtype).reshape(tuple(t.shape))
        out.input[t.name] = encode_npy(array)
    return out


def decode_response(
    request: service_pb2.ModelInferRequest, arrays: dict[str, np.ndarray]
) -> service_pb2.ModelInferResponse:
    """The ModelInferResponse of decoded outputs, only those asked for when the request names some."""
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    wanted = [o.name for o in request.outputs] or list(arrays)
    for name in wanted:
        array = arrays.get(name)
        if array is None:
            raise BackendError(
                f"model {request.model_name}: TorchServe answered no output {name!r} "
                f"(it answered {', '.join(arrays) or 'none'})"
            )
        try:
            datatype = datatype_of(array)
        except RequestError as e:
            raise BackendError(f"model {request.model_name}: output {name!r}: {e.message}") from None
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(
            np.ascontiguousarray(array, dtype=tensors.NUMPY_DTYPES[datatype]).tobytes()
        )
    return response


def error_status(prediction: bytes) -> tuple[grpc.StatusCode, str] | None:
    """The (code, message) of a failed request's JSON body; None for an .npz answer."""
    if prediction.startswith(_ZIP_MAGIC):
        return None
    try:
        body = json.loads(prediction)
        code, message = int(body["code"]), str(body["error"])
    except (ValueError, KeyError, TypeError):
        return grpc.StatusCode.INTERNAL, f"an answer that is neither .npz nor an error: {prediction[:80]!r}"
    return _HTTP_CODES.get(code, grpc.StatusCode.UNKNOWN), message


class TorchServeBackend(Backend):
    """A TorchServe endpoint reached over gRPC (inference and management ports)."""

    kind = "torchserve"

    def __init__(self, endpoint: str, options: BackendOptions) -> None:
        super().__init__(endpoint, options)
        self.inference_address, self.management_address = split_endpoint(endpoint)
        channel_opts = channel_options(options, min_keepalive_s=_MIN_KEEPALIVE_S, idle_pings=False)
        self._channel = grpc.aio.insecure_channel(self.inference_address, options=channel_opts)
        self._management_channel = grpc.aio.insecure_channel(
            self.management_address, options=channel_opts
        )
        self._stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
        self._management = management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)

    def translate(self, code: grpc.StatusCode, detail: str, what: str) -> TensorgateError:
        """The router error for a failed TorchServe call (the one place TorchServe errors map)."""
        where = f"torchserve {self.endpoint} ({what})"
        detail = detail.strip().splitlines()[0] if detail.strip() else code.name  # no Java class lines
        if code == grpc.StatusCode.NOT_FOUND or any(m in detail for m in _NOT_FOUND):
            return BackendUnavailable(f"{where}: the model is not there: {detail}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidInput(f"{where}: {detail}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"deadline exceeded waiting for {where}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED or (
            code == grpc.StatusCode.UNAVAILABLE and _NO_WORKER in detail
        ):
            return Overloaded(f"{where}: busy: {detail}")
        if code == grpc.StatusCode.UNAVAILABLE and _HANDLER_FAILED not in detail:
            return BackendUnavailable(f"{where}: UNAVAILABLE: {detail}")
        return BackendError(f"{where}: {code.name}: {detail}")

    def _rpc_error(self, e: grpc.aio.AioRpcError, what: str) -> TensorgateError:
        return self.translate(e.code(), e.details() or e.code().name, what)

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        """Predictions on TorchServe with the caller's remaining deadline."""
        what = f"infer {request.model_name}"
        predictions = encode_request(request)
        try:
            answer: inference_pb2.PredictionResponse = await self._stub.Predictions(
                predictions, timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            raise self._rpc_error(e, what) from None
        failed = error_status(answer.prediction)
        if failed is not None:
            raise self.translate(*failed, what)
        try:
            arrays = decode_npz(answer.prediction, "the answer")
        except RequestError as e:
            raise self.translate(grpc.StatusCode.INTERNAL, e.message, what) from None
        return decode_response(request, arrays)

    async def _describe(self, model: str, version: str, customized: bool) -> list[dict[str, Any]]:
        """DescribeModel's JSON (one entry per version)."""
        try:
            answer = await self._management.DescribeModel(
                management_pb2.DescribeModelRequest(
                    model_name=model, model_version=version, customized=customized
                ),
                timeout=self.options.control_timeout_s,
            )
        except grpc.aio.AioRpcError as e:
            raise self._rpc_error(e, f"describe {model} on management {self.management_address}") from None
        try:
            described = json.loads(answer.msg)
        except ValueError:
            described = None
        if not isinstance(described, list) or not described or not isinstance(described[0], dict):
            raise BackendError(f"torchserve {self.endpoint}: DescribeModel {model}: {answer.msg[:200]!r}")
        return described

    async def model_metadata(self, model: str, version: str) -> BackendModelMetadata:
        """The tensors the model's TensorHandler describes (DescribeModel, customized=true)."""
        described = await self._describe(model, version, customized=True)
        custom = described[0].get("customizedMetadata")
        try:
            meta: Any = json.loads(custom) if isinstance(custom, str) else custom
            inputs = tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"])
            outputs = tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"])
            max_batch_size = int(meta["max_batch_size"])
        except (ValueError, KeyError, TypeError):
            raise BackendError(
                f"torchserve {self.endpoint}: model {model} does not describe its tensors (its "
                f"handler's describe_handle() said {custom!r}); derive the handler from "
                "torchserve_handler.TensorHandler, or give inputs and outputs in the registration"
            ) from None
        return BackendModelMetadata(inputs, outputs, max_batch_size, platform=self.kind)

    async def model_ready(self, model: str, version: str) -> bool:
        """True when Ping says Healthy and the model has a READY worker; False when unreachable."""
        try:
            health = await self._stub.Ping(empty_pb2.Empty(), timeout=self.options.control_timeout_s)
            if json.loads(health.health).get("status") != "Healthy":
                return False
            described = await self._describe(model, version, customized=False)
        except (grpc.aio.AioRpcError, TensorgateError, ValueError, AttributeError):
            return False
        workers = described[0].get("workers") or []
        return any(isinstance(w, dict) and w.get("status") == "READY" for w in workers)

    async def close(self) -> None:
        """Closes both channels."""
        await self._channel.close()
        await self._management_channel.close()
