"""What every gRPC call goes through: request id, drain check, metrics, and the one error map.

Servicer methods are wrapped with `@unary`, `@probe` or `@stream`; they hold no try/except of
their own. This is the per-request hot path: keep it lean (`make bench`, group overhead).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from router import context, errors, metrics, wire
from router.logs import access

log = logging.getLogger(__name__)

REQUEST_ID_KEY = context.REQUEST_ID_KEY

# The one mapping of router errors to gRPC status codes.
STATUS: dict[type[errors.TensorgateError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.BackendError: grpc.StatusCode.INTERNAL,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def status_of(error: errors.TensorgateError) -> grpc.StatusCode:
    """The gRPC status code of a router error (its nearest mapped class)."""
    return errors.mapped(error, STATUS, grpc.StatusCode.INTERNAL)


class CallTracker:
    """Counts calls in flight; refuses new ones past the limit and once draining starts.

    The limit lives here rather than in grpc's maximum_concurrent_rpcs, which measurably cost
    CPU per call, and health probes stay exempt from it.
    """

    def __init__(self, limit: int = 1 << 30) -> None:
        self.inflight = 0
        self.limit = limit
        self.draining = False
        self._idle: asyncio.Event | None = None

    def enter(self, probe: bool = False) -> None:
        """Admits a call, or raises Unavailable while draining / Overloaded past the limit
        (probes are always admitted)."""
        if not probe:
            if self.draining:
                raise errors.Unavailable("the router is shutting down; retry on another instance")
            if self.inflight >= self.limit:
                raise errors.Overloaded(
                    f"{self.inflight} calls in flight reach server.max_concurrent_rpcs="
                    f"{self.limit}; retry later"
                )
        self.inflight += 1

    def leave(self) -> None:
        """Marks a call finished."""
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no call is in flight; False when timeout passed first."""
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class Servicer:
    """Base of every tensorgate servicer: the wrappers admit calls through its tracker and
    parse requests with the classes add_service() records."""

    tracker: CallTracker
    request_classes: dict[str, type[message.Message]]

    def parse(self, method: str, request: Any) -> Any:
        """The request message of a raw request; malformed bytes are the client's error."""
        if not isinstance(request, bytes):
            return request
        return wire.parse(self.request_classes[method], request)


def _serializer(cls: type[message.Message]) -> Callable[[Any], bytes]:
    """Serializes a response message; a method may also answer with bytes already serialized."""
    to_bytes = cls.SerializeToString

    def serialize(response: Any) -> bytes:
        return response if type(response) is bytes else to_bytes(response)

    return serialize


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: Servicer) -> None:
    """Registers a servicer's methods for a service, receiving raw bytes so that a malformed
    message becomes INVALID_ARGUMENT in the method's wrapper instead of an opaque UNKNOWN."""
    handlers = {}
    servicer.request_classes = {}
    for m in service.methods:
        servicer.request_classes[m.name] = message_factory.GetMessageClass(m.input_type)
        serialize = _serializer(message_factory.GetMessageClass(m.output_type))
        behavior = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(behavior, response_serializer=serialize)
        elif not m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(behavior, response_serializer=serialize)
        else:
            raise NotImplementedError(f"{service.full_name}/{m.name}: unsupported streaming kind")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # Registered methods are matched by grpc's core instead of a Python lookup per call.
    server.add_registered_method_handlers(service.full_name, handlers)


def failure(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for an exception (logs unexpected ones)."""
    if isinstance(e, errors.TensorgateError):
        return status_of(e), e.message
    rid = context.request_id()
    log.error("unexpected error (request id %s)", rid, exc_info=e)
    return grpc.StatusCode.INTERNAL, f"internal error; request id {rid}"


def _begin(ctx: grpc.aio.ServicerContext) -> context.CallContext:
    """Starts a call: its request id (the client's x-request-id when sane), in trailing metadata."""
    metadata = ctx.invocation_metadata() or ()
    client_id = next((value for key, value in metadata if key == REQUEST_ID_KEY), None)
    call = context.CallContext(context.request_id_for(client_id), metadata=metadata)
    # Each gRPC call runs in its own task and context, so no reset is needed.
    context.current.set(call)
    ctx.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
    return call


_CODE_NAMES = {code: code.name for code in grpc.StatusCode}  # enum .name is slow per call


def _finish(call: context.CallContext, method: str, code: grpc.StatusCode, start: float) -> None:
    """Records a finished call: metrics, and the access log line when it is on."""
    seconds = time.perf_counter() - start
    name = _CODE_NAMES[code]
    metrics.observe_call(call.model, call.version, method, name, seconds)
    if access.isEnabledFor(logging.INFO):
        access.info(
            "%s model=%s:%s code=%s %.2fms",
            method,
            call.model or "-",
            call.version or "-",
            name,
            seconds * 1000,
        )


def _cancelled_code(ctx: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """DEADLINE_EXCEEDED when a cancelled call ran out of time, else CANCELLED."""
    remaining = ctx.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]
_OK = grpc.StatusCode.OK


def unary(fn: Handler[Req, Resp], probe: bool = False, raw: bool = False) -> Handler[Req, Resp]:
    """Wraps a unary servicer method with request id, drain check, metrics and error mapping.

    probe: health/metadata calls, answered while draining; raw: the method gets the request's
    bytes and parses them itself (with self.parse), to forward them unparsed.
    """
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Req, ctx: grpc.aio.ServicerContext) -> Resp:
        start = time.perf_counter()
        call = _begin(ctx)
        code, message = _OK, ""
        tracker = self.tracker
        try:
            tracker.enter(probe)
        except (errors.Unavailable, errors.Overloaded) as e:
            code, message = status_of(e), e.message
            _finish(call, method, code, start)
        else:
            try:
                return await fn(self, request if raw else self.parse(method, request), ctx)
            except asyncio.CancelledError:
                code = _cancelled_code(ctx)
                raise
            except Exception as e:
                code, message = failure(e)
            finally:
                tracker.leave()
                _finish(call, method, code, start)
        await ctx.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper


def probe(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """`unary` for health and metadata calls, which keep answering while the router drains."""
    return unary(fn, probe=True)


def raw_unary(fn: Handler[bytes, Resp]) -> Handler[bytes, Resp]:
    """`unary` for methods that take the request's wire bytes."""
    return unary(fn, raw=True)


StreamHandler = Callable[[Any, AsyncIterator[Req], grpc.aio.ServicerContext], AsyncIterator[Resp]]


def stream(fn: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """Wraps a bidirectional streaming method like `unary`: the whole stream is one call."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(
        self: Servicer, requests: AsyncIterator[Req], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        start = time.perf_counter()
        call = _begin(ctx)
        code, message = _OK, ""
        tracker = self.tracker

        async def parsed() -> AsyncIterator[Req]:
            async for request in requests:
                yield self.parse(method, request)

        try:
            tracker.enter()
        except (errors.Unavailable, errors.Overloaded) as e:
            code, message = status_of(e), e.message
            _finish(call, method, code, start)
        else:
            try:
                async for response in fn(self, parsed(), ctx):
                    yield response
            except asyncio.CancelledError:
                code = _cancelled_code(ctx)
                raise
            except Exception as e:
                code, message = failure(e)
            finally:
                tracker.leave()
                _finish(call, method, code, start)
        if code is not _OK:
            await ctx.abort(code, message)

    return wrapper


def unimplemented(service: str, name: str) -> Handler[Any, Any]:
    """A servicer method that answers UNIMPLEMENTED with a message naming the RPC."""

    async def method(self: Any, request: Any, ctx: grpc.aio.ServicerContext) -> Any:
        raise errors.Unimplemented(f"{service}/{name} is not supported by tensorgate")

    method.__name__ = name
    return unary(method)
