"""The Open Inference Protocol front door (`inference.GRPCInferenceService`, Triton's API).

Model names and versions on this API are tensorgate's; `tritonclient.grpc` works against the
router as against Triton. RPCs the router does not serve answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from router import errors
from router.dataplane import Dataplane
from router.grpc.calls import (
    CallTracker,
    Servicer,
    failure,
    probe,
    raw_unary,
    stream,
    unary,
    unimplemented,
)

SERVICE = "inference.GRPCInferenceService"
# Requests of one ModelStreamInfer stream served at once.
STREAM_WINDOW = 64


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    return context.time_remaining()


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer, Servicer):
    """Translates Open Inference Protocol calls to dataplane calls."""

    def __init__(self, dataplane: Dataplane, tracker: CallTracker) -> None:
        self.dp = dataplane
        self.tracker = tracker

    @probe
    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    @probe
    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.dp.server_ready())

    @probe
    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerMetadataResponse:
        return self.dp.server_metadata()

    @probe
    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        ready = await self.dp.model_ready(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=ready)

    @probe
    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        return self.dp.model_metadata(request.name, request.version)

    @raw_unary
    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self.dp.model_infer_bytes(data, _timeout(context))

    @stream
    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Serves a stream's requests concurrently (up to STREAM_WINDOW); a failed request gets
        a response with error_message and the stream goes on, as Triton does."""
        results: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: service_pb2.ModelInferRequest) -> None:
            try:
                response = await self.dp.model_infer(request, _timeout(context))
                await results.put(service_pb2.ModelStreamInferResponse(infer_response=response))
            except Exception as e:
                _, message = failure(e)
                failed = service_pb2.ModelStreamInferResponse(error_message=message)
                failed.infer_response.id = request.id
                failed.infer_response.model_name = request.model_name
                await results.put(failed)
            finally:
                window.release()

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                yield item
            await reader  # re-raises a failure of the request stream itself
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    @unary
    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        raise errors.Unimplemented(
            "ModelConfig is a Triton-specific RPC; use ModelMetadata on tensorgate"
        )

    @probe
    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        return await self.dp.repository_index(request.ready)


# Every other RPC of the service answers UNIMPLEMENTED, naming itself.
for _method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in InferenceServicer.__dict__:
        setattr(InferenceServicer, _method.name, unimplemented(SERVICE, _method.name))
