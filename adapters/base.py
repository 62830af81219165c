"""The one interface every backend adapter implements, and the pool that owns their channels.

Requests and responses are Open Inference Protocol messages (`ModelInferRequest`): tensors as
raw bytes, the form Triton speaks natively; an adapter for another backend translates them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from tritonclient.grpc import service_pb2

from router.registry import TensorSpec


@dataclass(frozen=True)
class BackendOptions:
    """Channel settings every adapter honours."""

    keepalive_s: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    control_timeout_s: float = 5.0


@dataclass(frozen=True)
class BackendModelMetadata:
    """What a backend says about one of its models."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    platform: str


def channel_options(
    options: BackendOptions, min_keepalive_s: float = 0, idle_pings: bool = True
) -> list[tuple[str, int]]:
    """gRPC channel options for a backend: message-size limits, keepalive, quick reconnects.

    `min_keepalive_s` and `idle_pings` fit servers that police pings (grpc-java's default
    answers pings more often than every 5 minutes, or on idle connections, with GOAWAY).
    """
    return [
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.keepalive_time_ms", int(max(options.keepalive_s, min_keepalive_s) * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", int(idle_pings)),
        # Reconnect quickly after a backend restart (default backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


class Backend(abc.ABC):
    """A long-lived connection to one backend endpoint (host:port)."""

    kind: ClassVar[str]

    def __init__(self, endpoint: str, options: BackendOptions) -> None:
        self.endpoint = endpoint
        self.options = options

    @abc.abstractmethod
    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        """Runs one inference; request.model_name/version already name the backend's model.

        Raises router.errors types only (BackendUnavailable, DeadlineExceeded, InvalidInput,
        Overloaded, BackendError); cancelling the awaiting task cancels the backend call.
        """

    async def infer_bytes(self, request: bytes, timeout: float | None) -> bytes:
        """infer() on a serialized ModelInferRequest, answering a serialized response.

        Adapters that speak the Open Inference Protocol natively forward the bytes untouched;
        this default parses and serializes around infer().
        """
        response = await self.infer(service_pb2.ModelInferRequest.FromString(request), timeout)
        return response.SerializeToString()

    @abc.abstractmethod
    async def model_metadata(self, model: str, version: str) -> BackendModelMetadata:
        """The backend model's inputs, outputs and max batch size."""

    @abc.abstractmethod
    async def model_ready(self, model: str, version: str) -> bool:
        """True when the backend says the model can take requests (False when unreachable)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Closes the connection; in-flight calls are cancelled."""


class BackendPool:
    """One Backend per (kind, endpoint), created on first use and kept for the process."""

    def __init__(
        self, factories: dict[str, Callable[[str, BackendOptions], Backend]],
        options: BackendOptions,
    ) -> None:
        self._factories = factories
        self._options = options
        self._backends: dict[tuple[str, str], Backend] = {}

    def get(self, kind: str, endpoint: str) -> Backend:
        """The long-lived Backend for this endpoint."""
        key = (kind, endpoint)
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = self._factories[kind](endpoint, self._options)
        return backend

    async def close(self) -> None:
        """Closes every backend connection."""
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.close()


def default_pool(options: BackendOptions) -> BackendPool:
    """A pool that knows every adapter kind shipped with tensorgate."""
    from adapters.torchserve import TorchServeBackend
    from adapters.triton import TritonBackend

    return BackendPool(
        {TritonBackend.kind: TritonBackend, TorchServeBackend.kind: TorchServeBackend}, options
    )
