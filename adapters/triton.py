"""Triton Inference Server adapter: the Open Inference Protocol over one long-lived channel."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from adapters.base import Backend, BackendModelMetadata, BackendOptions, channel_options
from router.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    TensorgateError,
)
from router.registry import TensorSpec

# Triton status code -> router error; anything else is a BackendError.
_ERRORS: dict[grpc.StatusCode, type[TensorgateError]] = {
    grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.NOT_FOUND: BackendUnavailable,
}


class TritonBackend(Backend):
    """A Triton endpoint reached over gRPC; tensors stay raw bytes both ways."""

    kind = "triton"

    def __init__(self, endpoint: str, options: BackendOptions) -> None:
        super().__init__(endpoint, options)
        self._channel = grpc.aio.insecure_channel(endpoint, options=channel_options(options))
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with bytes in and out: tensors are forwarded without (de)serializing.
        self._infer_bytes = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    def _translate(self, e: grpc.aio.AioRpcError, what: str) -> TensorgateError:
        """The router error for a failed Triton call (the one place Triton errors map)."""
        code = e.code()
        error = _ERRORS.get(code, BackendError)
        detail = e.details() or code.name
        if error is InvalidInput:
            return InvalidInput(detail)
        if error is DeadlineExceeded:
            return DeadlineExceeded(f"deadline exceeded waiting for triton {self.endpoint} ({what})")
        return error(f"triton {self.endpoint} ({what}): {code.name}: {detail}")

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        """ModelInfer on Triton with the caller's remaining deadline."""
        try:
            response: service_pb2.ModelInferResponse = await self._stub.ModelInfer(
                request, timeout=timeout
            )
            return response
        except grpc.aio.AioRpcError as e:
            raise self._translate(e, f"infer {request.model_name}") from None

    async def infer_bytes(self, request: bytes, timeout: float | None) -> bytes:
        """ModelInfer on Triton with serialized messages both ways."""
        try:
            response: bytes = await self._infer_bytes(request, timeout=timeout)
            return response
        except grpc.aio.AioRpcError as e:
            raise self._translate(e, "infer") from None

    async def model_metadata(self, model: str, version: str) -> BackendModelMetadata:
        """ModelMetadata plus max_batch_size from ModelConfig."""
        timeout = self.options.control_timeout_s
        try:
            meta = await self._stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=model, version=version), timeout=timeout
            )
            config = await self._stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=model, version=version), timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            raise self._translate(e, f"metadata of {model}") from None

        def specs(items: list[service_pb2.ModelMetadataResponse.TensorMetadata]) -> tuple[
            TensorSpec, ...
        ]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        return BackendModelMetadata(
            inputs=specs(list(meta.inputs)),
            outputs=specs(list(meta.outputs)),
            max_batch_size=config.config.max_batch_size,
            platform=meta.platform,
        )

    async def model_ready(self, model: str, version: str) -> bool:
        """ModelReady on Triton; False when Triton cannot be reached."""
        try:
            response = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=model, version=version),
                timeout=self.options.control_timeout_s,
            )
            return bool(response.ready)
        except grpc.aio.AioRpcError:
            return False

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()
