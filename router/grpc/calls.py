"""What every gRPC call goes through: request id, drain check, metrics, and the one error map.

Servicer methods are wrapped with `@unary` / `@stream`; they hold no try/except of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from router import errors, logs, metrics
from router.dataplane import CallLabels, call_labels

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

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
    for cls in type(error).__mro__:
        code = STATUS.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


class CallTracker:
    """Counts calls in flight and refuses new ones once draining starts."""

    def __init__(self) -> None:
        self.inflight = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    def enter(self, probe: bool = False) -> None:
        """Admits a call, or raises Unavailable while draining (probes are always admitted)."""
        if self.draining and not probe:
            raise errors.Unavailable("the router is shutting down; retry on another instance")
        self.inflight += 1
        metrics.INFLIGHT.inc()

    def leave(self) -> None:
        """Marks a call finished."""
        self.inflight -= 1
        metrics.INFLIGHT.dec()
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
        cls = self.request_classes[method]
        try:
            return cls.FromString(request)
        except message.DecodeError as e:
            raise errors.InvalidInput(
                f"malformed {cls.DESCRIPTOR.full_name} message ({len(request)} bytes): {e}"
            ) from None


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: Servicer) -> None:
    """Registers a servicer's methods for a service, receiving raw bytes so that a malformed
    message becomes INVALID_ARGUMENT in the method's wrapper instead of an opaque UNKNOWN."""
    handlers = {}
    servicer.request_classes = {}
    for m in service.methods:
        servicer.request_classes[m.name] = message_factory.GetMessageClass(m.input_type)
        serialize = message_factory.GetMessageClass(m.output_type).SerializeToString
        behavior = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                behavior, response_serializer=serialize
            )
        elif not m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                behavior, response_serializer=serialize
            )
        else:
            raise NotImplementedError(f"{service.full_name}/{m.name}: unsupported streaming kind")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's x-request-id when it is sane, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _CLIENT_ID.match(value):
            return value
    return uuid.uuid4().hex


def _failure(rid: str, e: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for an exception (logs unexpected ones)."""
    if isinstance(e, errors.TensorgateError):
        return status_of(e), e.message
    log.error("unexpected error (request id %s)", rid, exc_info=e)
    return grpc.StatusCode.INTERNAL, f"internal error; request id {rid}"


def _cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """DEADLINE_EXCEEDED when a cancelled call ran out of time, else CANCELLED."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Call:
    """Per-call bookkeeping shared by the unary and streaming wrappers."""

    __slots__ = ("method", "rid", "labels", "start", "code", "tokens")

    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.rid = _request_id(context)
        self.labels = CallLabels()
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.tokens = (logs.request_id.set(self.rid), call_labels.set(self.labels))
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.rid),))

    def finish(self) -> None:
        labels = self.labels
        metrics.REQUESTS.labels(labels.model, labels.version, self.method, self.code.name).inc()
        metrics.REQUEST_LATENCY.labels(labels.model, labels.version, self.method).observe(
            time.perf_counter() - self.start
        )
        logs.request_id.reset(self.tokens[0])
        call_labels.reset(self.tokens[1])


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def unary(fn: Handler[Req, Resp], probe: bool = False) -> Handler[Req, Resp]:
    """Wraps a unary servicer method with request id, drain check, metrics and error mapping."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        call = _Call(method, context)
        tracker = self.tracker
        try:
            tracker.enter(probe)
        except errors.Unavailable as e:
            call.code = grpc.StatusCode.UNAVAILABLE
            call.finish()
            await context.abort(call.code, e.message)
        try:
            return await fn(self, self.parse(method, request), context)
        except asyncio.CancelledError:
            call.code = _cancelled_code(context)
            raise
        except Exception as e:
            call.code, message = _failure(call.rid, e)
        finally:
            tracker.leave()
            call.finish()
        await context.abort(call.code, message)
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


def probe(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """`unary` for health and metadata calls, which keep answering while the router drains."""
    return unary(fn, probe=True)


StreamHandler = Callable[[Any, AsyncIterator[Req], grpc.aio.ServicerContext], AsyncIterator[Resp]]


def stream(fn: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """Wraps a streaming servicer method like `unary`: the whole stream is one call."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(
        self: Servicer, requests: AsyncIterator[Req], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        call = _Call(method, context)
        tracker = self.tracker
        message = ""
        try:
            tracker.enter()
        except errors.Unavailable as e:
            call.code = grpc.StatusCode.UNAVAILABLE
            call.finish()
            await context.abort(call.code, e.message)
        async def parsed() -> AsyncIterator[Req]:
            async for request in requests:
                yield self.parse(method, request)

        try:
            async for response in fn(self, parsed(), context):
                yield response
        except asyncio.CancelledError:
            call.code = _cancelled_code(context)
            raise
        except Exception as e:
            call.code, message = _failure(call.rid, e)
        finally:
            tracker.leave()
            call.finish()
        if call.code != grpc.StatusCode.OK:
            await context.abort(call.code, message)

    return wrapper


def unimplemented(service: str, name: str) -> Handler[Any, Any]:
    """A servicer method that answers UNIMPLEMENTED with a message naming the RPC."""

    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise errors.Unimplemented(f"{service}/{name} is not supported by tensorgate")

    method.__name__ = name
    return unary(method)
