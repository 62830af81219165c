"""The dataplane: every front (gRPC now, HTTP next) calls these methods and nothing else.

One request: resolve (registry) -> validate/normalize tensors -> backend call -> response named
in tensorgate's terms. Business logic lives here, not in the fronts.
"""

from __future__ import annotations

import asyncio
import contextvars
import csv
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tensorgate.v1 import inference_pb2, tensor_pb2
from tritonclient.grpc import service_pb2

from adapters.base import BackendPool
from router import context, metrics, tensors, wire
from router.admission import Limiter
from router.batching import Batcher
from router.config import Settings
from router.endpoints import EndpointPolicy, EndpointSet
from router.errors import BackendError, BackendUnavailable, InvalidInput, ModelNotFound
from router.registry import ModelVersion, Registry
from router.traffic import Policy

log = logging.getLogger(__name__)

SERVER_NAME = "tensorgate"
# Distinct validated request headers remembered (a few per model and batch size is typical).
HEADER_CACHE_SIZE = 4096
# Shadow calls (traffic policies) in flight at most; more are dropped (and counted).
SHADOW_MAX_INFLIGHT = 64


def _same_checks(a: ModelVersion, b: ModelVersion) -> bool:
    """True when a request valid for one version is valid for the other (same tensors)."""
    return a is b or (
        a.inputs == b.inputs and a.max_batch_size == b.max_batch_size and a.output_names == b.output_names
    )


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """An answer's outputs by name: datatype, shape and raw bytes (typed contents serialized)."""
    raw = response.raw_output_contents
    return {
        t.name: (
            t.datatype,
            tuple(t.shape),
            raw[i] if i < len(raw) else t.contents.SerializeToString(deterministic=True),
        )
        for i, t in enumerate(response.outputs)
    }


def _table_csv(model: str, index: int, payload: inference_pb2.TablePayload) -> bytes:
    """A table item as CSV bytes: its csv field, or its records written as CSV (a column
    missing from a record becomes an empty value, which the spec treats as missing)."""
    if payload.csv:
        if payload.records:
            raise InvalidInput(f"{model}: items[{index}]: give records or csv, not both")
        return payload.csv
    if not payload.records:
        raise InvalidInput(f"{model}: items[{index}]: the table has no records and no csv")
    columns: dict[str, None] = {}
    for record in payload.records:
        columns.update(dict.fromkeys(record.values))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in payload.records:
        writer.writerow(dict(record.values))
    return out.getvalue().encode()


class Dataplane:
    """Resolves, validates and forwards inference calls; answers health and metadata."""

    def __init__(self, settings: Settings, registry: Registry, backends: BackendPool) -> None:
        self.settings = settings
        self.registry = registry
        self.backends = backends
        self.ready = False
        # Endpoint sets by binding (kind, endpoints, backend model, backend version): versions
        # with the same binding share balancing, health and ejection state.
        self._endpoint_sets: dict[tuple[str, tuple[str, ...], str, str], EndpointSet] = {}
        self._endpoint_policy = EndpointPolicy.from_settings(settings.backend)
        self._sets_generation = -1
        # Validated request headers (router.wire.scan_infer_request) -> (model version, raw
        # input sizes, traffic policy); emptied whenever the registry reloads. With a policy,
        # the version is only the one the header was checked against: the policy chooses per call.
        self._headers: dict[bytes, tuple[ModelVersion, tuple[int, ...], Policy | None]] = {}
        self._headers_generation = -1
        # Router-side batchers by (model, version); retired ones were replaced by a new policy.
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._retired: list[Batcher] = []
        # Admission limiters of unbatched versions by (model, version) (router.admission).
        # Each with the ModelVersion it was last sized for: the registry keeps that object while
        # the record is unchanged, so a call checks identity rather than recomputing limits.
        self._limiters: dict[tuple[str, str], tuple[ModelVersion, Limiter]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._shadows: set[asyncio.Task[None]] = set()

    # -- health and metadata -------------------------------------------------------------

    def server_ready(self) -> bool:
        """True while the router takes calls (started and not draining)."""
        return self.ready

    def server_metadata(self) -> service_pb2.ServerMetadataResponse:
        """The router's name, version and protocol extensions."""
        from router import __version__

        return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    def _resolve(self, name: str, version: str) -> ModelVersion:
        """The model version to serve, recording it for the call's metrics."""
        mv = self.registry.resolve(name, version)
        self._label_call(mv)
        return mv

    def _route(self, name: str, version: str) -> tuple[ModelVersion, Policy | None]:
        """The model version to serve and, when the model's traffic policy chose it, that
        policy: an explicit version bypasses the policy."""
        if version:
            return self._resolve(name, version), None
        mv, policy = self.registry.route(name, context.current.get())
        self._label_call(mv)
        return mv, policy

    @staticmethod
    def _label_call(mv: ModelVersion) -> None:
        """Records the resolved version on the call, for the front's metrics and access log."""
        call = context.current.get()
        if call is not None:
            call.model, call.version = mv.name, mv.version

    def model_metadata(self, name: str, version: str) -> service_pb2.ModelMetadataResponse:
        """The registered tensor metadata of a model version."""
        mv = self._resolve(name, version)
        meta = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=mv.name,
            versions=self.registry.versions(mv.name),
            platform=mv.backend_kind,
            inputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in mv.inputs],
            outputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in mv.outputs],
        )

    async def model_ready(self, name: str, version: str) -> bool:
        """True when the version is registered and one of its backend endpoints has it ready."""
        try:
            mv = self.registry.resolve(name, version)
        except ModelNotFound:
            return False
        return await self._backend_ready(mv)

    async def _backend_ready(self, mv: ModelVersion) -> bool:
        """True when an endpoint of the binding takes calls (health checked, not ejected)."""
        return await self._endpoints(mv).ready()

    async def repository_index(self, ready_only: bool) -> service_pb2.RepositoryIndexResponse:
        """Every routed model version with its backend readiness."""
        models = self.registry.all()
        states = await asyncio.gather(*(self._backend_ready(mv) for mv in models))
        index = service_pb2.RepositoryIndexResponse()
        for mv, ok in zip(models, states, strict=True):
            if ready_only and not ok:
                continue
            index.models.add(
                name=mv.name,
                version=mv.version,
                state="READY" if ok else "UNAVAILABLE",
                reason="" if ok else f"backend {mv.backend_kind} model {mv.backend_model} not ready",
            )
        return index

    # -- inference -----------------------------------------------------------------------

    def _endpoints(self, mv: ModelVersion) -> EndpointSet:
        """The endpoint set of a version's binding, made on first use (in the running loop)."""
        self._drop_unbound_sets()
        key = (mv.backend_kind, mv.endpoints, mv.backend_model, mv.backend_version)
        endpoints = self._endpoint_sets.get(key)
        if endpoints is None:
            endpoints = self._endpoint_sets[key] = EndpointSet(
                mv.backend_kind,
                mv.endpoints,
                mv.backend_model,
                mv.backend_version,
                self.backends,
                self._endpoint_policy,
                before_checks=self._drop_unbound_sets,
            )
        return endpoints

    def _drop_unbound_sets(self) -> None:
        """After a registry change: stops the health checks of bindings no version has now
        (called on every call and before every health round, so within one health interval)."""
        if self._sets_generation == self.registry.generation:
            return
        self._sets_generation = self.registry.generation
        bound = {
            (mv.backend_kind, mv.endpoints, mv.backend_model, mv.backend_version)
            for mv in self.registry.all()
        }
        for key in [k for k in self._endpoint_sets if k not in bound]:
            task = asyncio.get_running_loop().create_task(self._endpoint_sets.pop(key).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _timeout(self, timeout: float | None) -> float:
        """The backend call's timeout: the caller's remaining deadline, else the default."""
        if timeout is None:
            return self.settings.backend.default_timeout_s
        return timeout

    async def model_infer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        """Open Inference Protocol inference; the request is checked and forwarded in place."""
        mv, policy = self._route(request.model_name, request.model_version)
        self._check_infer_request(mv, request)
        return (await self._infer_by_policy(mv, policy, request, timeout))[1]

    async def _infer_by_policy(
        self,
        mv: ModelVersion,
        policy: Policy | None,
        request: service_pb2.ModelInferRequest,
        timeout: float | None,
    ) -> tuple[ModelVersion, service_pb2.ModelInferResponse]:
        """_infer() of a checked request, with the traffic policy's fallback (when every
        endpoint of `mv` is unavailable) and shadow; the version that answered and its answer."""
        if policy is None:
            return mv, await self._infer(mv, request, timeout)
        shadow = policy.shadow_for(mv.version)
        mirrored = None
        if shadow:
            mirrored = service_pb2.ModelInferRequest()
            mirrored.CopyFrom(request)
        try:
            response = await self._infer(mv, request, timeout)
        except BackendUnavailable as e:
            fallback = policy.fallback_for(mv.version)
            if not fallback:
                raise
            other = self.registry.resolve(mv.name, fallback)
            try:
                self._check_infer_request(other, request)
            except InvalidInput:  # the fallback takes other tensors: the primary's error stands
                raise e from None
            self._label_call(other)
            return other, await self._infer(other, request, timeout)
        if mirrored is not None:
            candidate = self.registry.resolve(mv.name, shadow)
            copy = mirrored

            async def call() -> service_pb2.ModelInferResponse:
                self._check_infer_request(candidate, copy)
                return await self._infer(candidate, copy, None)

            self._shadow(mv.name, shadow, call, response)
        return mv, response

    async def _infer_bytes_by_policy(
        self, data: bytes, mv: ModelVersion, policy: Policy, timeout: float | None
    ) -> bytes:
        """model_infer_bytes() of a request the traffic policy sent to `mv`, with its fallback
        and shadow: the request goes on with the version set explicitly (which bypasses the
        policy), its bytes still unparsed."""
        shadow = policy.shadow_for(mv.version)
        try:
            response = await self.model_infer_bytes(data + wire.rename(mv.name, mv.version), timeout)
        except BackendUnavailable:
            fallback = policy.fallback_for(mv.version)
            if not fallback:
                raise
            return await self.model_infer_bytes(data + wire.rename(mv.name, fallback), timeout)
        if shadow:
            mirrored = data + wire.rename(mv.name, shadow)

            async def call() -> service_pb2.ModelInferResponse:
                answer = await self.model_infer_bytes(mirrored, None)
                return wire.parse(service_pb2.ModelInferResponse, answer)

            self._shadow(mv.name, shadow, call, response)
        return response

    def _shadow(
        self,
        model: str,
        version: str,
        call: Callable[[], Awaitable[service_pb2.ModelInferResponse]],
        primary: service_pb2.ModelInferResponse | bytes,
    ) -> None:
        """Mirrors a call to a shadow version in its own task, after the primary answered:
        its answer is compared with the primary's (tensorgate_shadow_requests_total) and
        discarded. Beyond SHADOW_MAX_INFLIGHT shadow calls in flight, it is dropped."""
        if len(self._shadows) >= SHADOW_MAX_INFLIGHT:
            metrics.observe_shadow(model, version, "dropped")
            return

        async def run() -> None:
            try:
                answer = await call()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("shadow call to %s:%s failed: %s", model, version, e)
                metrics.observe_shadow(model, version, "error")
                return
            first = primary
            if isinstance(first, bytes):
                first = wire.parse(service_pb2.ModelInferResponse, first)
            same = _outputs(first) == _outputs(answer)
            metrics.observe_shadow(model, version, "match" if same else "differ")

        # a fresh context: the shadow call is not the caller's call (metrics, access log)
        loop = asyncio.get_running_loop()
        task = contextvars.Context().run(loop.create_task, run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _infer(
        self, mv: ModelVersion, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        """A checked request, sent under the backend's model name; answered under tensorgate's."""
        request.model_name, request.model_version = mv.backend_model, mv.backend_version
        response = await self._call_backend(mv, request, timeout)
        response.model_name, response.model_version = mv.name, mv.version
        return response

    async def model_infer_bytes(self, data: bytes, timeout: float | None) -> bytes:
        """model_infer() on a request in its wire form, answered in wire form.

        After the checks, the client's bytes go to the backend with only the model renamed
        (appended fields, see router.wire), and the backend's bytes come back the same way:
        tensors are never copied into new messages. A request whose header (everything but
        tensor data and id) was validated before is checked for its tensor sizes only. A
        request that names no version goes where the model's traffic policy sends it, chosen
        per call (a cached header then only spares the checks).
        """
        scanned = wire.scan_infer_request(data)
        cached = None
        if scanned is not None:
            if self._headers_generation != self.registry.generation:
                self._headers.clear()
                self._headers_generation = self.registry.generation
            cached = self._headers.get(scanned[0])
        forced: ModelVersion | None = None
        if cached is not None and scanned is not None and cached[1] == scanned[1]:
            mv, policy = cached[0], cached[2]
            if policy is not None:
                chosen = self.registry.resolve(mv.name, policy.choose(context.current.get()))
                if not _same_checks(chosen, mv):  # check the request against the chosen one
                    forced, cached = chosen, None
                mv = chosen
        else:
            cached = None
        if cached is not None:
            self._label_call(mv)
            if policy is not None:
                return await self._infer_bytes_by_policy(data, mv, policy, timeout)
            data += mv.request_rename
        else:
            request = wire.parse(service_pb2.ModelInferRequest, data)
            if forced is not None:
                mv, policy = forced, self.registry.policies.get(forced.name)
                self._label_call(mv)
            else:
                mv, policy = self._route(request.model_name, request.model_version)
            typed = not request.raw_input_contents and len(request.inputs) > 0
            self._check_infer_request(mv, request)
            if policy is not None:
                if scanned is not None and not typed and all(s.itemsize for s in mv.inputs):
                    if len(self._headers) >= HEADER_CACHE_SIZE:
                        self._headers.clear()
                    self._headers[scanned[0]] = (mv, scanned[1], policy)
                return await self._infer_bytes_by_policy(data, mv, policy, timeout)
            if mv.batching is not None:  # the batcher merges messages: no byte forwarding
                return (await self._infer(mv, request, timeout)).SerializeToString()
            if typed:  # typed contents became raw: the message changed
                request.model_name, request.model_version = mv.backend_model, mv.backend_version
                data = request.SerializeToString()
            else:
                data += mv.request_rename
                if scanned is not None and all(s.itemsize for s in mv.inputs):
                    if len(self._headers) >= HEADER_CACHE_SIZE:
                        self._headers.clear()
                    self._headers[scanned[0]] = (mv, scanned[1], None)
        limiter = self._limiter(mv)
        admitted = limiter.try_acquire()
        if admitted is None:
            admitted = await limiter.acquire(self._timeout(timeout))
        try:
            endpoints = self._endpoints(mv)
            start = time.perf_counter()
            try:
                response = await endpoints.call(
                    lambda backend, remaining: backend.infer_bytes(data, remaining),
                    self._timeout(timeout),
                )
            finally:
                metrics.observe_backend(mv.name, mv.version, mv.backend_kind, time.perf_counter() - start)
        finally:
            limiter.release(admitted)
        return response + mv.response_rename

    async def _call_backend(
        self, mv: ModelVersion, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        """The backend's answer: through the version's batcher when it batches, else directly."""
        if mv.batching is not None:
            deadline = asyncio.get_running_loop().time() + self._timeout(timeout)
            return await self._batcher(mv).submit(request, deadline)
        limiter = self._limiter(mv)
        admitted = limiter.try_acquire()
        if admitted is None:
            admitted = await limiter.acquire(self._timeout(timeout))
        try:
            return await self._direct_call(mv, request, timeout)
        finally:
            limiter.release(admitted)

    def _limiter(self, mv: ModelVersion) -> Limiter:
        """The admission limiter of an unbatched model version (router.admission), made on first
        use; a changed registration resizes it in place, so calls in flight stay counted."""
        key = (mv.name, mv.version)
        entry = self._limiters.get(key)
        if entry is not None and entry[0] is mv:
            return entry[1]
        limits = self.settings.limits
        inflight = mv.admission[0] or limits.max_inflight_per_version
        queued = mv.admission[1] or limits.max_queued_per_version
        adaptive = limits.adaptive_inflight and not mv.admission[0]  # explicit limits stay
        floor = limits.adaptive_floor_ms / 1000 if adaptive else None
        if entry is None:
            limiter = Limiter(f"{mv.name}:{mv.version}", inflight, queued, floor)
        else:
            limiter = entry[1]
            if (limiter.max_inflight, limiter.max_queued, limiter.adaptive_floor_s) != (
                inflight,
                queued,
                floor,
            ):
                limiter.adaptive_floor_s = floor
                limiter.resize(inflight, queued)
        self._limiters[key] = (mv, limiter)
        return limiter

    def _batcher(self, mv: ModelVersion) -> Batcher:
        """The batcher of a model version, made on first use (inside the running loop)."""
        key = (mv.name, mv.version)
        batcher = self._batchers.get(key)
        if batcher is not None and batcher.policy == mv.batching:
            return batcher
        if batcher is not None:  # the policy changed: the old one finishes what it holds
            self._retired.append(batcher)
            task = asyncio.get_running_loop().create_task(self._stop_when_drained(batcher))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        name, version = key
        assert mv.batching is not None

        async def call(
            request: service_pb2.ModelInferRequest, timeout: float | None
        ) -> service_pb2.ModelInferResponse:
            # the current registration: endpoints may have changed since the batcher was made
            return await self._direct_call(self.registry.resolve(name, version), request, timeout)

        def on_batch(rows: int, trigger: str, waits: list[float]) -> None:
            metrics.observe_batch(name, version, rows, trigger, waits)

        batcher = Batcher(mv.batching, call, on_batch=on_batch, name=f"{name}:{version}")
        self._batchers[key] = batcher
        return batcher

    async def _stop_when_drained(self, batcher: Batcher) -> None:
        """Closes a retired batcher once nothing waits in it and no batch of it is out."""
        while not batcher.idle:
            await asyncio.sleep(0.05)
        if batcher in self._retired:
            self._retired.remove(batcher)
            await batcher.close()

    async def close(self) -> None:
        """Stops the batchers (calls still waiting in them get UNAVAILABLE) and the endpoint
        sets' health checks."""
        batchers = [*self._batchers.values(), *self._retired]
        self._batchers, self._retired = {}, []
        for task in [*self._closing, *self._shadows]:
            task.cancel()
        for batcher in batchers:
            await batcher.close()
        sets, self._endpoint_sets = list(self._endpoint_sets.values()), {}
        for endpoints in sets:
            await endpoints.close()

    async def _direct_call(
        self, mv: ModelVersion, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        endpoints = self._endpoints(mv)
        start = time.perf_counter()
        try:
            return await endpoints.call(
                lambda backend, remaining: backend.infer(request, remaining), self._timeout(timeout)
            )
        finally:
            metrics.observe_backend(mv.name, mv.version, mv.backend_kind, time.perf_counter() - start)

    def _check_infer_request(self, mv: ModelVersion, request: service_pb2.ModelInferRequest) -> None:
        """Checks inputs against the model's metadata; typed contents become raw bytes.

        A lean pass accepts well-formed requests (the hot path); anything it doubts goes to
        _explain_bad_request, which finds the problem and raises an error naming it.
        """
        inputs, raw = request.inputs, request.raw_input_contents
        n, max_batch = len(inputs), mv.max_batch_size
        ok = (
            mv.has_metadata
            and n == len(mv.inputs)
            and n <= self.settings.limits.max_tensors
            and (not raw or len(raw) == n)
        )
        if ok:
            checks, seen = mv.input_map, set()
            for i, t in enumerate(inputs):
                spec = checks.get(t.name)
                shape = t.shape
                if (
                    spec is None
                    or t.name in seen
                    or t.datatype != spec.datatype
                    or len(shape) != len(spec.shape)
                    or any(shape[j] != d for j, d in spec.fixed_dims)
                    or (max_batch and shape[0] > max_batch)
                ):
                    ok = False
                    break
                seen.add(t.name)
                count = 1
                for d in shape:
                    if d < 0:
                        ok = False
                    count *= d
                if raw and ok:
                    if spec.itemsize:
                        ok = len(raw[i]) == count * spec.itemsize and not t.HasField("contents")
                    else:  # BYTES: the framing must hold exactly `count` elements
                        ok = False
                if not ok:
                    break
        if not ok:
            self._explain_bad_request(mv, request)
        if request.outputs:
            for out in request.outputs:
                if out.name not in mv.output_names:
                    expected = ", ".join(s.name for s in mv.outputs)
                    raise InvalidInput(
                        f"model {mv.name}:{mv.version}: unknown output {out.name!r}; the model has {expected}"
                    )
        if not raw:
            # Triton takes raw contents for every input or for none: send raw, as the design says.
            for t in inputs:
                where = f"model {mv.name}:{mv.version}: input {t.name!r}"
                request.raw_input_contents.append(
                    tensors.typed_to_raw(where, t.datatype, t.shape, t.contents)
                )
                t.ClearField("contents")

    def _explain_bad_request(self, mv: ModelVersion, request: service_pb2.ModelInferRequest) -> None:
        """Raises InvalidInput naming what is wrong with a request's inputs (if anything is)."""
        model = f"model {mv.name}:{mv.version}"
        if not mv.has_metadata:
            raise BackendUnavailable(f"{model}: tensor metadata unknown; register it again")
        n = len(request.inputs)
        if n > self.settings.limits.max_tensors:
            raise InvalidInput(
                f"{model}: {n} inputs exceed limits.max_tensors={self.settings.limits.max_tensors}"
            )
        raw = request.raw_input_contents
        if raw and len(raw) != n:
            raise InvalidInput(f"{model}: raw_input_contents has {len(raw)} entries for {n} inputs")
        seen: set[str] = set()
        for i, t in enumerate(request.inputs):
            spec = mv.input_map.get(t.name)
            where = f"{model}: input {t.name!r}"
            if spec is None:
                expected = ", ".join(s.name for s in mv.inputs)
                raise InvalidInput(f"{model}: unknown input {t.name!r}; the model takes {expected}")
            if t.name in seen:
                raise InvalidInput(f"{where} is given twice")
            seen.add(t.name)
            if t.datatype != spec.datatype:
                raise InvalidInput(
                    f"{where}: datatype {t.datatype or '(empty)'}, the model expects {spec.datatype}"
                )
            self._check_shape(mv, where, spec.shape, t.shape)
            if raw:
                if t.HasField("contents"):
                    raise InvalidInput(f"{where}: both raw_input_contents and typed contents set")
                tensors.check_raw_size(where, t.datatype, t.shape, raw[i])
        missing = [s.name for s in mv.inputs if s.name not in seen]
        if missing:
            raise InvalidInput(f"{model}: missing input(s) {', '.join(missing)}")

    @staticmethod
    def _check_shape(mv: ModelVersion, where: str, expected: Sequence[int], shape: Sequence[int]) -> None:
        tensors.check_shape(where, shape)
        ok = len(shape) == len(expected) and all(
            e == -1 or e == d for e, d in zip(expected, shape, strict=True)
        )
        if not ok:
            raise InvalidInput(
                f"{where}: shape {list(shape)}, the model expects {list(expected)} (-1 = any size)"
            )
        if mv.max_batch_size > 0 and shape[0] > mv.max_batch_size:
            raise InvalidInput(
                f"{where}: batch of {shape[0]} exceeds the model's max_batch_size {mv.max_batch_size}"
            )

    async def predict(
        self, request: inference_pb2.PredictRequest, timeout: float | None
    ) -> inference_pb2.PredictResponse:
        """tensorgate's payload-level inference: the items become one batch, split back per item."""
        mv, policy = self._route(request.model, request.version)
        model = f"model {mv.name}:{mv.version}"
        items = request.items
        if not items:
            raise InvalidInput(f"{model}: the request has no items")
        if len(items) > self.settings.limits.max_items:
            raise InvalidInput(
                f"{model}: {len(items)} items exceed limits.max_items={self.settings.limits.max_items}"
            )
        if len(items) > 1 and mv.max_batch_size == 0:
            raise InvalidInput(f"{model}: the model does not batch; send one item per request")
        kinds = [item.WhichOneof("payload") for item in items]
        if None in kinds:
            raise InvalidInput(f"{model}: items[{kinds.index(None)}] has no payload")
        kind = kinds[0]
        if any(k != kind for k in kinds):
            other = next(i for i, k in enumerate(kinds) if k != kind)
            raise InvalidInput(
                f"{model}: items[{other}] is {kinds[other]}, items[0] is {kind}; "
                "send one payload kind per request"
            )
        if kind == "tensors":
            infer, rows = self._batch_items(
                mv, [self._named_tensors(mv, i, item) for i, item in enumerate(items)]
            )
        else:
            infer, rows = await self._transform_items(mv, str(kind), items)
        for name in request.outputs:
            infer.outputs.add(name=name)
        self._check_infer_request(mv, infer)
        served, response = await self._infer_by_policy(mv, policy, infer, timeout)
        answer = self._split_response(served, response, rows)
        if served.postprocess:
            self._classify(served, answer)
        return answer

    @staticmethod
    def _classify(mv: ModelVersion, answer: inference_pb2.PredictResponse) -> None:
        """Adds each item's top classes for the model's classify output specs."""
        for result in answer.results:
            by_name = {t.name: t for t in result.outputs}
            for spec in mv.postprocess:
                t = by_name.get(spec.output)
                if t is None:  # the caller asked for other outputs only
                    continue
                try:
                    classes = spec.apply(tensors.to_numpy(t.datatype, t.shape, t.data))
                except InvalidInput as e:  # the spec does not fit what the model answered
                    raise BackendError(f"model {mv.name}:{mv.version}: {e.message}") from None
                for c in classes:
                    result.classifications.add(
                        output=spec.output, row=c.row, index=c.index, label=c.label, score=c.score
                    )

    @staticmethod
    def _named_tensors(mv: ModelVersion, i: int, item: inference_pb2.Item) -> dict[str, tensor_pb2.Tensor]:
        """An item's tensors by input name."""
        named: dict[str, tensor_pb2.Tensor] = {}
        for t in item.tensors.tensors:
            if t.name in named:
                raise InvalidInput(
                    f"model {mv.name}:{mv.version}: items[{i}]: input {t.name!r} is given twice"
                )
            named[t.name] = t
        return named

    async def _transform_items(
        self, mv: ModelVersion, kind: str, items: Sequence[inference_pb2.Item]
    ) -> tuple[service_pb2.ModelInferRequest, list[int]]:
        """Runs the model's input spec for this payload kind (off the event loop) over the
        items; one ModelInferRequest of the resulting tensors, and each item's row count."""
        model = f"model {mv.name}:{mv.version}"
        transform = mv.transforms.get(kind)
        if transform is None:
            raise InvalidInput(
                f"{model}: has no {kind} input spec (its registration's transforms: "
                f"{', '.join(sorted(mv.transforms)) or 'none'}); send tensors, or register one"
            )
        targets = set(transform.outputs())
        payloads: list[Any] = []
        for i, item in enumerate(items):
            payload = getattr(item, kind)
            if kind in ("image", "text") and payload.input and payload.input not in targets:
                raise InvalidInput(
                    f"{model}: items[{i}]: input {payload.input!r} is not fed by the {kind} spec "
                    f"(it feeds {', '.join(sorted(targets))})"
                )
            if kind == "image":
                payloads.append(payload.data)
            elif kind == "text":
                payloads.append(payload.text)
            else:
                payloads.append(_table_csv(model, i, payload))
        loop = asyncio.get_running_loop()
        try:
            arrays, rows = await loop.run_in_executor(None, transform.transform_rows, payloads)
        except InvalidInput as e:
            raise InvalidInput(f"{model}: {e.message}") from None
        infer = service_pb2.ModelInferRequest()
        for name, array in arrays.items():
            datatype, shape, raw = tensors.from_numpy(array)
            infer.inputs.add(name=name, datatype=datatype, shape=shape)
            infer.raw_input_contents.append(raw)
        return infer, rows

    def _batch_items(
        self, mv: ModelVersion, per_item: list[dict[str, tensor_pb2.Tensor]]
    ) -> tuple[service_pb2.ModelInferRequest, list[int]]:
        """One ModelInferRequest holding every item, concatenated along the batch axis."""
        model = f"model {mv.name}:{mv.version}"
        first = per_item[0]
        for i, named in enumerate(per_item[1:], start=1):
            if named.keys() != first.keys():
                raise InvalidInput(
                    f"{model}: items[{i}] has inputs {sorted(named)}, items[0] has {sorted(first)}"
                )
        infer = service_pb2.ModelInferRequest()
        rows: list[int] = []
        for name, t0 in first.items():
            where = f"{model}: input {name!r}"
            tensors.check_datatype(where, t0.datatype)
            tensors.check_shape(where, t0.shape)
            if len(per_item) > 1:
                if not t0.shape:
                    raise InvalidInput(f"{where}: batched items need a leading batch dimension")
                item_rows = [named[name].shape[0] if named[name].shape else 0 for named in per_item]
                if rows and item_rows != rows:
                    raise InvalidInput(
                        f"{where}: items' batch sizes {item_rows} differ from other inputs' {rows}"
                    )
                rows = item_rows
            parts = []
            for i, named in enumerate(per_item):
                t = named[name]
                where_i = f"{model}: items[{i}]: input {name!r}"
                if t.datatype != t0.datatype or list(t.shape[1:]) != list(t0.shape[1:]):
                    raise InvalidInput(
                        f"{where_i}: {t.datatype}{list(t.shape)} cannot be batched with "
                        f"items[0]'s {t0.datatype}{list(t0.shape)}"
                    )
                tensors.check_raw_size(where_i, t.datatype, t.shape, t.data)
                parts.append(t.data)
            shape = [sum(rows), *t0.shape[1:]] if len(per_item) > 1 else list(t0.shape)
            infer.inputs.add(name=name, datatype=t0.datatype, shape=shape)
            infer.raw_input_contents.append(b"".join(parts))
        return infer, rows or [1]

    @staticmethod
    def _split_response(
        mv: ModelVersion, response: service_pb2.ModelInferResponse, rows: list[int]
    ) -> inference_pb2.PredictResponse:
        """Gives each item its own rows of every output."""
        out = inference_pb2.PredictResponse(model=mv.name, version=mv.version)
        results = [out.results.add() for _ in rows]
        for i, t in enumerate(response.outputs):
            raw = response.raw_output_contents[i]
            if len(rows) == 1:
                results[0].outputs.add(name=t.name, datatype=t.datatype, shape=t.shape, data=raw)
                continue
            for result, n, chunk in zip(
                results, rows, tensors.split_rows(t.datatype, t.shape, raw, rows), strict=True
            ):
                result.outputs.add(name=t.name, datatype=t.datatype, shape=[n, *t.shape[1:]], data=chunk)
        return out
