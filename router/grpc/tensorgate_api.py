"""tensorgate's own gRPC services: payload-level inference and the model registry admin API."""

from __future__ import annotations

import grpc
from tensorgate.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

from router.admin import RegistryAdmin
from router.context import request_id as current_request_id
from router.dataplane import Dataplane
from router.grpc.calls import CallTracker, Servicer, unary

ACTOR_KEY = "x-actor"


def actor_of(context: grpc.aio.ServicerContext) -> str:
    """Who makes a registry change: the call's x-actor metadata / header, else the peer."""
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_KEY and isinstance(value, str) and value:
            return value[:128]
    return str(context.peer())


class PredictServicer(inference_pb2_grpc.InferenceServiceServicer, Servicer):
    """tensorgate.v1.InferenceService -> Dataplane.predict."""

    def __init__(self, dataplane: Dataplane, tracker: CallTracker) -> None:
        self.dp = dataplane
        self.tracker = tracker

    @unary
    async def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.PredictResponse:
        response = await self.dp.predict(request, context.time_remaining())
        response.request_id = current_request_id()
        return response


class RegistryServicer(registry_pb2_grpc.ModelRegistryServicer, Servicer):
    """tensorgate.v1.ModelRegistry -> RegistryAdmin."""

    def __init__(self, admin: RegistryAdmin, tracker: CallTracker) -> None:
        self.admin = admin
        self.tracker = tracker

    @unary
    async def RegisterModel(
        self, request: registry_pb2.RegisterModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ModelVersion:
        (stored,) = await self.admin.register([request.model])
        return stored

    @unary
    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(models=await self.admin.list_models(request.name))

    @unary
    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ModelVersion:
        return await self.admin.get(request.name, request.version)

    @unary
    async def RemoveModel(
        self, request: registry_pb2.RemoveModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RemoveModelResponse:
        removed = await self.admin.remove(request.name, request.version, actor_of(context))
        return registry_pb2.RemoveModelResponse(removed=removed)

    @unary
    async def SetTrafficPolicy(
        self, request: registry_pb2.SetTrafficPolicyRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TrafficPolicy:
        return await self.admin.set_traffic(request.policy, actor_of(context))

    @unary
    async def GetTrafficPolicy(
        self, request: registry_pb2.GetTrafficPolicyRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TrafficPolicy:
        return await self.admin.get_traffic(request.model)

    @unary
    async def PromoteVersion(
        self, request: registry_pb2.PromoteVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TrafficPolicy:
        return await self.admin.promote(request.model, request.version, actor_of(context))

    @unary
    async def RollbackTraffic(
        self, request: registry_pb2.RollbackTrafficRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TrafficPolicy:
        return await self.admin.rollback(request.model, actor_of(context))

    @unary
    async def GetTrafficHistory(
        self, request: registry_pb2.GetTrafficHistoryRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TrafficHistory:
        return registry_pb2.TrafficHistory(changes=await self.admin.traffic_history(request.model))
