"""HTTP/1.1 transport of the load generator: keep-alive connections on asyncio Protocols.

As lean as the gRPC transport (benchmarks.loadgen), so that a REST-vs-gRPC comparison on a small
machine measures the servers, not the clients: the request (request line, headers and body) is
built once; each connection is an asyncio Protocol whose response is framed by httptools' parser
(llhttp, in C: Content-Length or chunked), with one call in flight at a time (no pipelining).
A call's answer is the raw HTTP response (status line, headers and body), which a workload's
verify parses only for the responses it checks (benchmarks.workloads.http_response).

- closed loop: each worker owns one connection (a `Lane`), reconnecting if the server closes it;
- open loop: calls take an idle connection from a pool, or open one, and give it back.

A call fails with `HttpCallError`, whose `code` is counted like a gRPC status name: `HTTP_<status>`
for an answer other than 200, `DEADLINE_EXCEEDED`, `CONNECTION_LOST`, `CONNECT_FAILED`,
`BAD_RESPONSE`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import cast

import httptools

from benchmarks.workloads import LoadError, Workload


class HttpCallError(Exception):
    """A call without a 200 answer; `code` names why (HTTP_503, DEADLINE_EXCEEDED, ...)."""

    def __init__(self, code: str, detail: str = "", response: bytes = b"") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.response = response


def split_target(target: str) -> tuple[str, int]:
    """'127.0.0.1:8000' -> ('127.0.0.1', 8000); ValueError otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target {target!r} is not host:port")
    return host.strip("[]"), int(port)


def request_bytes(target: str, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The whole POST request, built once: request line, headers, body."""
    head = [f"POST {path} HTTP/1.1\r\nHost: {target}\r\nContent-Length: {len(body)}\r\n"]
    head += [f"{name}: {value}\r\n" for name, value in headers]
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body


class Lane(asyncio.Protocol):
    """One keep-alive connection with at most one call in flight; awaiting it makes one call.

    Connects on its first call, and again after the server closed the connection or a call failed
    midway (leaving the connection in an unknown state). The same Lane is the protocol of each of
    its successive connections: a new one is opened only once the old one is gone.
    """

    def __init__(self, host: str, port: int, request: bytes, timeout_s: float) -> None:
        self.host, self.port = host, port
        self.request = request
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None  # the connection, until it is lost
        self.live: asyncio.Transport | None = None  # the connection while calls may be sent on it
        self.gone: asyncio.Future[None] | None = None  # set when a dropped connection is lost
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.waiter: asyncio.Future[bytes] | None = None

    async def __call__(self) -> bytes:
        """One call: the raw HTTP response of a 200 answer, or HttpCallError."""
        transport = self.live or await self.connect()
        waiter = self.loop.create_future()
        self.waiter = waiter
        transport.write(self.request)
        timer = self.loop.call_later(self.timeout_s, self._expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def connect(self) -> asyncio.Transport:
        """Opens the connection (TCP_NODELAY, as asyncio sets it); HttpCallError if refused."""
        if self.live is not None:
            return self.live
        if self.transport is not None:  # a dropped connection not yet lost
            self.gone = self.loop.create_future()
            await self.gone
        try:
            transport, _ = await self.loop.create_connection(lambda: self, self.host, self.port)
        except OSError as err:
            raise HttpCallError("CONNECT_FAILED", str(err)) from None
        return cast(asyncio.Transport, transport)

    def close(self) -> None:
        """Closes the connection (the next call opens a new one)."""
        self.live = None
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: HttpCallError) -> None:
        """Fails the call in flight and drops the connection, whose state is now unknown."""
        waiter, self.waiter = self.waiter, None
        if self.transport is not None:
            self.live = None
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _expire(self, waiter: asyncio.Future[bytes]) -> None:
        if waiter is self.waiter:
            self._fail(HttpCallError("DEADLINE_EXCEEDED", f"no answer within {self.timeout_s:g}s"))

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio.Transport
        self.transport = self.live = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpResponseParser(self)
        self.chunks = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.live = None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                HttpCallError("CONNECTION_LOST", str(exc) if exc else "the server closed the connection")
            )

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            if self.live is not None:
                self._fail(HttpCallError("BAD_RESPONSE", "bytes from the server when no call was in flight"))
            return
        self.chunks.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(HttpCallError("BAD_RESPONSE", f"malformed HTTP response: {err}"))

    # -- httptools callback -------------------------------------------------------------

    def on_message_complete(self) -> None:
        chunks = self.chunks
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.close()
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if status == 200:
            waiter.set_result(raw)
        else:
            waiter.set_exception(HttpCallError(f"HTTP_{status}", raw[-300:].decode("utf-8", "replace"), raw))


class HttpCaller:
    """The load generator's HTTP caller: a Lane per closed-loop worker, a pool for open loop."""

    failure = HttpCallError

    def __init__(self, target: str, workload: Workload, timeout_s: float) -> None:
        self.target = target
        self.host, self.port = split_target(target)
        self.request = request_bytes(target, workload.method, workload.request, workload.headers)
        self.timeout_s = timeout_s
        self.lanes: list[Lane] = []
        self.idle: list[Lane] = []

    @staticmethod
    def code(err: HttpCallError) -> str:
        """The error count's key."""
        return err.code

    def lane(self) -> Lane:
        """A connection of its own for one closed-loop worker (opened on its first call)."""
        lane = Lane(self.host, self.port, self.request, self.timeout_s)
        self.lanes.append(lane)
        return lane

    async def shared(self) -> bytes:
        """Open loop: one call on an idle pooled connection, or on a new one."""
        idle = self.idle
        lane = idle.pop() if idle else self.lane()
        try:
            return await lane()
        finally:
            idle.append(lane)

    async def preflight(self) -> bytes:
        """The first call, retried while the port refuses connections: LoadError if it cannot be made."""
        deadline = time.monotonic() + self.timeout_s
        lane = self.lane()
        while True:
            try:
                await lane.connect()
                break
            except HttpCallError as err:
                if time.monotonic() >= deadline:
                    raise LoadError(
                        f"{self.target}: not reachable within {self.timeout_s:g}s ({err})"
                    ) from None
                await asyncio.sleep(0.05)
        try:
            first = await lane()
        except HttpCallError as err:
            raise LoadError(f"{self.target}: pre-flight call failed: {err}") from None
        self.idle.append(lane)
        return first

    async def aclose(self) -> None:
        """Closes every connection."""
        for lane in self.lanes:
            lane.close()
        self.lanes.clear()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports close
