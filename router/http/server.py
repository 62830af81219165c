"""The HTTP/1.1 server of the edge: an asyncio protocol around httptools' parser (llhttp).

Written on the parser rather than on a web framework because the edge's limits are about the
connection itself: a client that drips its headers or body gets 408 after
http.header_timeout_s / http.body_timeout_s, a body past http.max_body_bytes gets 413 before it
is read (its Content-Length) or as soon as it passes the limit (chunked), headers past
http.max_header_bytes get 431, and connections past http.max_connections get 503. Each request
is served in its own task, so a slow one never holds back other connections; a client that
disconnects cancels its call. Every request goes through `HttpServer.dispatch`, the HTTP twin of
router.grpc.calls.unary: request id, drain check and in-flight limit, metrics, and the one map
of router errors to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from typing import cast

import httptools

from router import context, errors, metrics
from router.config import HttpSettings
from router.grpc.calls import CallTracker
from router.http.routes import JSON, HttpError, Request, Response, Router
from router.logs import access

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = context.REQUEST_ID_KEY

# The one mapping of router errors to HTTP statuses.
STATUS: dict[type[errors.TensorgateError], int] = {
    errors.InvalidInput: 400,
    errors.Unauthenticated: 401,
    errors.ModelNotFound: 404,
    errors.AlreadyExists: 409,
    errors.Overloaded: 429,
    errors.BackendError: 500,
    errors.Unimplemented: 501,
    errors.BackendUnavailable: 503,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}

_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
# grpc-timeout header units (the header grpc-gateway and Envoy's transcoder take for deadlines)
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def status_of(error: errors.TensorgateError) -> int:
    """The HTTP status of a router error (its nearest mapped class)."""
    return errors.mapped(error, STATUS, 500)


def error_body(message: str, request_id: str) -> bytes:
    """The JSON body of every error: {"error": message, "request_id": id}.

    `error` is the field the Open Inference Protocol's REST binding (and tritonclient.http) reads.
    """
    return json.dumps({"error": message, "request_id": request_id}, ensure_ascii=False).encode()


def parse_timeout(value: str) -> float:
    """Seconds of a grpc-timeout header value ("100m", "2S"); InvalidInput when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        raise errors.InvalidInput(
            f"grpc-timeout header {value!r}: expected up to 8 digits and a unit (H, M, S, m, u, n), "
            "e.g. 500m for half a second"
        )
    return int(digits) * unit


def decode_body(encoding: str, body: bytes, limit: int) -> bytes:
    """A gzip- or deflate-encoded body, decoded; 413 past limit (a small bomb stays small)."""
    kind = encoding.strip().lower()
    if kind in ("", "identity"):
        return body
    if kind not in ("gzip", "deflate"):
        raise HttpError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    d = zlib.decompressobj(wbits=31 if kind == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit:
            raise HttpError(413, f"the decoded body exceeds http.max_body_bytes={limit}")
        if not d.eof:
            raise errors.InvalidInput(f"the {kind} body is truncated")
    except zlib.error as e:
        raise errors.InvalidInput(f"the body is not valid {kind}: {e}") from None
    return out


class HttpServer:
    """Serves a Router on one port; `start()` returns the port (0 picks a free one)."""

    def __init__(self, router: Router, settings: HttpSettings, tracker: CallTracker) -> None:
        self.router = router
        self.settings = settings
        self.tracker = tracker
        self.connections: set[_Connection] = set()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening; OSError naming the address when it cannot."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
            )
        except OSError as e:
            raise OSError(f"cannot listen for HTTP on {host}:{port}: {e.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def close_idle(self) -> None:
        """Closes keep-alive connections that wait for a request; busy ones close after their
        answer (used when draining)."""
        for conn in list(self.connections):
            conn.close_when_idle()

    async def stop(self) -> None:
        """Stops listening and closes every connection (cancelling what is in flight)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def dispatch(self, request: Request) -> tuple[Response, str]:
        """Serves one request (never raises but CancelledError): the response and request id."""
        start = time.perf_counter()
        call = context.CallContext(
            context.request_id_for(request.headers.get(REQUEST_ID_HEADER)), metadata=request.headers
        )
        context.current.set(call)  # each connection's requests run in its own task
        name, entered = "-", False
        try:
            route, request.params = self.router.match(request.method, request.path)
            name = route.name
            self.tracker.enter(route.probe)
            entered = True
            encoding = request.headers.get("content-encoding")
            if encoding is not None:
                request.body = decode_body(encoding, request.body, self.settings.max_body_bytes)
            timeout = request.headers.get("grpc-timeout")
            if timeout is None:
                response = await route.handler(request)
            else:
                request.timeout = parse_timeout(timeout)
                try:
                    async with asyncio.timeout(request.timeout):
                        response = await route.handler(request)
                except TimeoutError:
                    raise errors.DeadlineExceeded(f"no answer within the grpc-timeout of {timeout}") from None
        except errors.TensorgateError as e:
            response = _error_response(status_of(e), e.message, call.request_id)
        except HttpError as e:
            response = _error_response(e.status, e.message, call.request_id, e.headers)
        except asyncio.CancelledError:
            # the client went away; 499 as nginx counts it
            self._observe(call, request, name, "499", start)
            raise
        except Exception:
            log.exception("unexpected error (request id %s)", call.request_id)
            response = _error_response(500, f"internal error; request id {call.request_id}", call.request_id)
        finally:
            if entered:
                self.tracker.leave()
        self._observe(call, request, name, str(response.status), start)
        return response, call.request_id

    @staticmethod
    def _observe(call: context.CallContext, request: Request, name: str, status: str, start: float) -> None:
        seconds = time.perf_counter() - start
        metrics.observe_call(call.model, call.version, f"HTTP {name}", status, seconds)
        if access.isEnabledFor(logging.INFO):
            access.info(
                "HTTP %s %s model=%s:%s status=%s %.2fms",
                request.method,
                request.path,
                call.model or "-",
                call.version or "-",
                status,
                seconds * 1000,
            )


def _error_response(
    status: int, message: str, request_id: str, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    return Response(error_body(message, request_id), status, JSON, headers)


def _head(
    status: int,
    content_type: str,
    length: int,
    request_id: str,
    headers: Sequence[tuple[str, str]],
    close: bool,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"content-type: {content_type}\r\ncontent-length: {length}\r\n"
        f"{REQUEST_ID_HEADER}: {request_id}\r\n"
    ]
    for key, value in headers:
        lines.append(f"{key}: {value}\r\n")
    if close:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, serves them in order, enforces the limits."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[tuple[Request, bool]] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        # which timer runs: "header", "body", "idle" (keep-alive) or None
        self.timer_kind: str | None = None
        # the transport is closed or closing: no more work
        self.closing = False
        # answer what was asked, then close (draining)
        self.last = False
        self.writable: asyncio.Future[None] | None = None
        self._fatal: HttpError | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.reading_body = False

    # -- timers -------------------------------------------------------------------------

    def _arm(self, kind: str, seconds: float, on_expiry: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, on_expiry)
        self.timer_kind = kind

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_kind = None

    def _header_timeout(self) -> None:
        self._fail(
            HttpError(
                408,
                f"request headers not received within "
                f"http.header_timeout_s={self.limits.header_timeout_s:g}s",
            )
        )

    def _body_timeout(self) -> None:
        self._fail(
            HttpError(
                408, f"request body not received within http.body_timeout_s={self.limits.body_timeout_s:g}s"
            )
        )

    def _idle_timeout(self) -> None:
        if self.transport is not None and self.task is None:
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        if len(self.server.connections) >= self.limits.max_connections:
            rid = context.new_request_id()
            message = (
                f"{len(self.server.connections)} connections open reach "
                f"http.max_connections={self.limits.max_connections}; retry later"
            )
            transport.write(
                _head(
                    503, JSON, len(body := error_body(message, rid)), rid, [("retry-after", "1")], close=True
                )
                + body
            )
            transport.close()
            return
        self.server.connections.add(self)
        self._arm("header", self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._disarm()
        self.closing = True
        if self.task is not None:
            self.task.cancel()  # the client is gone: stop working for it
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._fatal is not None or self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError(400, "protocol upgrades (WebSocket, h2c) are not supported"))
        except httptools.HttpParserCallbackError:
            self._fail(self._pending or HttpError(400, "malformed HTTP request"))
        except httptools.HttpParserError as e:
            self._fail(HttpError(400, f"malformed HTTP request: {e}"))

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # -- httptools callbacks ------------------------------------------------------------

    _pending: HttpError | None = None

    def _reject(self, error: HttpError) -> None:
        """Stops parsing with an error answered once the requests before it are served."""
        self._pending = error
        raise error

    def on_message_begin(self) -> None:
        self._reset()
        if self.timer_kind != "header":  # from the connection's start, or after keep-alive idle
            self._arm("header", self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            self._reject(
                HttpError(
                    431 if len(self.url) < 8192 else 414,
                    f"request line and headers exceed http.max_header_bytes={self.limits.max_header_bytes}",
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            self._reject(
                HttpError(431, f"request headers exceed http.max_header_bytes={self.limits.max_header_bytes}")
            )
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        limit = self.limits.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            self._reject(
                HttpError(413, f"request body of {length} bytes exceeds http.max_body_bytes={limit}")
            )
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.reading_body = True
        self._arm("body", self.limits.body_timeout_s, self._body_timeout)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body_bytes:
            self._reject(
                HttpError(413, f"request body exceeds http.max_body_bytes={self.limits.max_body_bytes}")
            )
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
        url = httptools.parse_url(self.url)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=url.path.decode("latin-1"),
            query=url.query.decode("latin-1") if url.query else "",
            headers=self.headers,
            body=body,
        )
        self.queue.append((request, self.parser.should_keep_alive()))
        self._reset()
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif len(self.queue) > 1 and self.transport is not None:
            self.transport.pause_reading()  # a pipelining client waits for its answers

    # -- serving ------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answers the queued requests in order, then waits for the next (keep-alive)."""
        try:
            while self.queue and not self.closing:
                request, keep_alive = self.queue.popleft()
                response, rid = await self.server.dispatch(request)
                keep_alive = keep_alive and not self.last and self._fatal is None
                self._write(response, rid, close=not keep_alive)
                if not keep_alive:
                    self._close()
                    return
                if self.writable is not None:
                    await self.writable
            if self.transport is not None and not self.closing:
                self.transport.resume_reading()
        finally:
            self.task = None
        if self._fatal is not None:
            self._answer_fatal()
        elif not self.closing and self.timer_kind is None:
            self._arm("idle", self.limits.keepalive_timeout_s, self._idle_timeout)

    def _write(self, response: Response, rid: str, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = response.body
        parts = [body] if isinstance(body, bytes | bytearray | memoryview) else list(body)
        length = sum(len(p) for p in parts)
        head = _head(response.status, response.content_type, length, rid, response.headers, close)
        if len(parts) == 1 and length < 65536:
            self.transport.write(head + parts[0])
        else:
            self.transport.writelines([head, *parts])

    def _fail(self, error: HttpError) -> None:
        """A request that cannot be read: answer it (after those before it) and close."""
        self._disarm()
        if self._fatal is not None:
            return
        self._fatal = error
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.task is None:
            self._answer_fatal()

    def _answer_fatal(self) -> None:
        error = self._fatal
        assert error is not None
        rid = context.new_request_id()
        # counted like an answered call, so slow or malformed clients show in the metrics
        metrics.observe_call("", "", "HTTP -", str(error.status), 0.0)
        self._write(_error_response(error.status, error.message, rid, error.headers), rid, True)
        self._close()

    def _close(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def close_when_idle(self) -> None:
        """Closes the connection now if no request is being read or served, else after it."""
        if self.task is None and self.timer_kind in (None, "idle"):
            self._close()
        else:
            self.last = True

    def abort(self) -> None:
        """Closes the connection at once."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
