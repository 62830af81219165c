"""Registry administration shared by the CLI and the gRPC registry service.

Registering fills in tensor metadata from the backend when the file leaves it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from tensorgate.v1 import registry_pb2, tensor_pb2

from adapters.base import BackendPool
from router.errors import BackendUnavailable, InvalidInput, ModelNotFound, TensorgateError
from router.registry import ModelVersion, RegistryStore, version_key
from transforms.base import TransformLimits


class RegistryAdmin:
    """Register, list, get and remove model versions; `on_change` runs after each write."""

    def __init__(
        self,
        store: RegistryStore,
        backends: BackendPool,
        on_change: Callable[[], None] | None = None,
        limits: TransformLimits | None = None,
    ) -> None:
        self.store = store
        self.backends = backends
        self.on_change = on_change
        self.limits = limits

    async def fill_metadata(self, record: registry_pb2.ModelVersion) -> None:
        """Reads inputs, outputs and max_batch_size from the backend when they are not given."""
        if record.inputs:
            return
        mv = ModelVersion.from_record(record)
        errors = []
        for endpoint in mv.endpoints:
            backend = self.backends.get(mv.backend_kind, endpoint)
            try:
                meta = await backend.model_metadata(mv.backend_model, mv.backend_version)
            except TensorgateError as e:  # try the next endpoint
                errors.append(str(e))
                continue
            for spec in meta.inputs:
                record.inputs.append(
                    tensor_pb2.TensorSpec(name=spec.name, datatype=spec.datatype, shape=spec.shape)
                )
            for spec in meta.outputs:
                record.outputs.append(
                    tensor_pb2.TensorSpec(name=spec.name, datatype=spec.datatype, shape=spec.shape)
                )
            record.max_batch_size = meta.max_batch_size
            return
        raise BackendUnavailable(
            f"model {mv.name}:{mv.version}: cannot read its tensor metadata from the backend "
            f"(give inputs and outputs in the registration, or start the backend): "
            + "; ".join(errors)
        )

    async def register(
        self, records: Iterable[registry_pb2.ModelVersion]
    ) -> list[registry_pb2.ModelVersion]:
        """Validates, completes and stores records in one transaction."""
        records = list(records)
        for record in records:
            ModelVersion.from_record(record, self.limits)  # validates before any backend call
        await asyncio.gather(*(self.fill_metadata(r) for r in records))
        for record in records:
            ModelVersion.from_record(record, self.limits)  # input specs against the model's inputs
        stored = await asyncio.to_thread(self.store.put, records)
        self._changed()
        return stored

    async def list_models(self, name: str = "") -> list[registry_pb2.ModelVersion]:
        """Registered versions, of one model or all."""
        return await asyncio.to_thread(self.store.records, name)

    async def get(self, name: str, version: str = "") -> registry_pb2.ModelVersion:
        """One version; the default (highest) one when version is empty."""
        records = await self.list_models(name)
        if version:
            records = [r for r in records if r.version == version]
        if not records:
            what = f"{name}:{version}" if version else name
            raise ModelNotFound(f"model {what} is not registered")
        return max(records, key=lambda r: version_key(r.version))

    async def remove(
        self, name: str, version: str = "", actor: str = ""
    ) -> list[registry_pb2.ModelVersion]:
        """Removes one version, or all versions of a model (and then its traffic policy)."""
        if not name:
            raise InvalidInput("name is required")
        removed = await asyncio.to_thread(self.store.remove, name, version, actor)
        self._changed()
        return removed

    # -- traffic policies ------------------------------------------------------------------

    async def set_traffic(
        self, policy: registry_pb2.TrafficPolicy, actor: str
    ) -> registry_pb2.TrafficPolicy:
        """Replaces a model's traffic policy (an empty one clears it); one atomic change."""
        if not policy.model:
            raise InvalidInput("traffic policy: model is required")
        stored = await asyncio.to_thread(self.store.set_policy, policy, actor)
        self._changed()
        return stored

    async def get_traffic(self, model: str) -> registry_pb2.TrafficPolicy:
        """A model's traffic policy (empty but for the model when it has none)."""
        if not model:
            raise InvalidInput("model is required")
        if not await asyncio.to_thread(self.store.records, model):
            raise ModelNotFound(f"model {model!r} is not registered")
        return await asyncio.to_thread(self.store.policy, model)

    async def promote(self, model: str, version: str, actor: str) -> registry_pb2.TrafficPolicy:
        """Makes a version the default, clearing split and shadow; one atomic change."""
        if not model:
            raise InvalidInput("model is required")
        stored = await asyncio.to_thread(self.store.promote, model, version, actor)
        self._changed()
        return stored

    async def rollback(self, model: str, actor: str) -> registry_pb2.TrafficPolicy:
        """Restores the policy before the last change; one atomic change."""
        if not model:
            raise InvalidInput("model is required")
        stored = await asyncio.to_thread(self.store.rollback, model, actor)
        self._changed()
        return stored

    async def traffic_history(self, model: str) -> list[registry_pb2.TrafficChange]:
        """Every change of a model's policy, oldest first."""
        if not model:
            raise InvalidInput("model is required")
        return await asyncio.to_thread(self.store.history, model)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
