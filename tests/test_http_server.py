"""The HTTP edge's server against misbehaving clients: limits, timeouts, framing, isolation.

The server is real (router.http.server on port 0); the routes are small test handlers (echo,
sleep, fail) standing in for the dataplane, since what is tested is the connection handling.
Clients are raw sockets, so the tests control every byte and its timing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from router import errors
from router.config import HttpSettings
from router.grpc.calls import CallTracker
from router.http.routes import Request, Response, Route, Router, Template
from router.http.server import HttpServer, parse_timeout

LIMITS = HttpSettings(
    max_body_bytes=4096,
    max_header_bytes=2048,
    max_json_depth=8,
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    keepalive_timeout_s=0.6,
    max_connections=8,
)


class Probe:
    """What the test handlers saw."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = asyncio.Event()


async def _echo(request: Request) -> Response:
    return Response(
        json.dumps(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "params": request.params,
                "size": len(request.body),
            }
        ).encode()
    )


def _router(probe: Probe) -> Router:
    async def sleep(request: Request) -> Response:
        probe.started.set()
        try:
            await asyncio.sleep(float(request.params["seconds"]))
        except asyncio.CancelledError:
            probe.cancelled += 1
            raise
        return Response(b'{"slept":true}')

    async def fail(request: Request) -> Response:
        kind = request.params["kind"]
        if kind == "invalid":
            raise errors.InvalidInput("input 'x' is wrong")
        if kind == "overloaded":
            raise errors.Overloaded("queue full")
        raise RuntimeError("secret internal detail")

    router = Router()
    router.add(Route("POST", "/echo", _echo, "Echo"))
    router.add(Route("GET", "/echo/{name}/items/{rest=**}", _echo, "EchoPath"))
    router.add(Route("GET", "/sleep/{seconds}", sleep, "Sleep"))
    router.add(Route("GET", "/fail/{kind}", fail, "Fail"))
    router.add(Route("GET", "/health", _echo, "Health", probe=True))
    return router


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, Probe]]:
    probe = Probe()
    srv = HttpServer(_router(probe), LIMITS, CallTracker(limit=4))
    await srv.start("127.0.0.1", 0)
    yield srv, probe
    await srv.stop()


async def _open(srv: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", srv.port)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off a connection (Content-Length framed)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def _request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    length = f"content-length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nhost: t\r\n{length}{extra}\r\n".encode() + body


async def _call(srv: HttpServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await _open(srv)
    writer.write(raw)
    try:
        return await _response(reader)
    finally:
        writer.close()


def _error(body: bytes) -> str:
    parsed = json.loads(body)
    assert set(parsed) == {"error", "request_id"}
    return str(parsed["error"])


async def test_keep_alive_serves_several_requests_on_one_connection(server) -> None:
    srv, _ = server
    reader, writer = await _open(srv)
    for i in range(3):
        writer.write(_request("POST", f"/echo?i={i}", b"x" * i))
        status, headers, body = await _response(reader)
        assert status == 200 and json.loads(body) == {
            "method": "POST",
            "path": "/echo",
            "query": f"i={i}",
            "params": {},
            "size": i,
        }
        assert "connection" not in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server) -> None:
    srv, _ = server
    reader, writer = await _open(srv)
    writer.write(
        _request("GET", "/sleep/0.2")
        + _request("POST", "/echo", b"abc")
        + _request("GET", "/echo/a%2Fb/items/x/y%20z")
    )
    first, second, third = [await _response(reader) for _ in range(3)]
    assert json.loads(first[2]) == {"slept": True}
    assert json.loads(second[2])["size"] == 3
    # a single-segment variable decodes %2F; a ** variable keeps its slashes
    assert json.loads(third[2])["params"] == {"name": "a/b", "rest": "x/y z"}
    writer.close()


async def test_http_1_0_and_connection_close_end_the_connection(server) -> None:
    srv, _ = server
    for raw in (b"GET /health HTTP/1.0\r\n\r\n", _request("GET", "/health", extra="connection: close\r\n")):
        reader, writer = await _open(srv)
        writer.write(raw)
        status, headers, _ = await _response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 2) == b""  # the server closed it
        writer.close()


async def test_declared_oversized_body_is_413_before_it_is_sent(server) -> None:
    srv, _ = server
    reader, writer = await _open(srv)
    writer.write(b"POST /echo HTTP/1.1\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n")
    status, headers, body = await _response(reader)
    assert status == 413 and "http.max_body_bytes=4096" in _error(body)
    assert headers["connection"] == "close"
    writer.close()


async def test_chunked_body_past_the_limit_is_413(server) -> None:
    srv, _ = server
    chunk = b"x" * 1000
    raw = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    raw += b"".join(b"3e8\r\n" + chunk + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    status, _, body = await _call(srv, raw)
    assert status == 413 and "exceeds http.max_body_bytes=4096" in _error(body)
    # within the limit, chunked works
    raw = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n" + chunk + b"\r\n0\r\n\r\n"
    status, _, body = await _call(srv, raw)
    assert status == 200 and json.loads(body)["size"] == 1000


async def test_headers_past_the_limit_are_431(server) -> None:
    srv, _ = server
    status, _, body = await _call(srv, _request("GET", "/health", extra=f"x-big: {'a' * 3000}\r\n"))
    assert status == 431 and "http.max_header_bytes=2048" in _error(body)


async def test_expect_100_continue_gets_100_then_the_answer(server) -> None:
    srv, _ = server
    reader, writer = await _open(srv)
    writer.write(b"POST /echo HTTP/1.1\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    status, _, body = await _response(reader)
    assert status == 200 and json.loads(body)["size"] == 3
    writer.close()


async def test_malformed_http_is_400_and_closes(server) -> None:
    srv, _ = server
    status, headers, body = await _call(srv, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and "malformed HTTP request" in _error(body)
    assert headers["connection"] == "close"


async def test_slow_drip_clients_get_408_and_do_not_delay_others(server) -> None:
    srv, _ = server
    # one client drips its headers, another its body, a byte every 100 ms
    head_r, head_w = await _open(srv)
    body_r, body_w = await _open(srv)
    body_w.write(b"POST /echo HTTP/1.1\r\ncontent-length: 100\r\n\r\n")

    async def drip() -> None:
        for ch in b"GET /health HTTP/1.1\r\nx-slow: " + b"a" * 40:
            if head_w.is_closing() or body_w.is_closing():
                return
            head_w.write(bytes([ch]))
            body_w.write(b"b")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    # meanwhile, ordinary calls are answered at once
    started = time.monotonic()
    for _ in range(5):
        status, _, _ = await _call(srv, _request("POST", "/echo", b"ok"))
        assert status == 200
    assert time.monotonic() - started < 0.5 * 5
    status, _, body = await _response(head_r)
    assert status == 408 and "http.header_timeout_s=0.5s" in _error(body)
    status, _, body = await _response(body_r)
    assert status == 408 and "http.body_timeout_s=0.5s" in _error(body)
    dripping.cancel()
    for w in (head_w, body_w):
        w.close()


async def test_a_connection_that_sends_nothing_is_closed(server) -> None:
    srv, _ = server
    reader, _writer = await _open(srv)
    status, _, body = await _response(reader)  # no request at all: header timeout
    assert status == 408
    # an idle keep-alive connection is closed quietly after keepalive_timeout_s
    reader, writer = await _open(srv)
    writer.write(_request("GET", "/health"))
    assert (await _response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 3) == b""


async def test_connections_past_the_limit_get_503(server) -> None:
    srv, _ = server
    held = [await _open(srv) for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    reader, writer = await _open(srv)
    status, headers, body = await _response(reader)
    assert status == 503 and "http.max_connections=8" in _error(body)
    assert headers["retry-after"] == "1"
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    assert (await _call(srv, _request("GET", "/health")))[0] == 200


async def test_errors_map_to_statuses_without_internals(server) -> None:
    srv, _ = server
    status, headers, body = await _call(srv, _request("GET", "/fail/invalid"))
    assert status == 400 and _error(body) == "input 'x' is wrong"
    assert json.loads(body)["request_id"] == headers["x-request-id"]
    status, _, body = await _call(srv, _request("GET", "/fail/overloaded"))
    assert status == 429 and _error(body) == "queue full"
    status, _, body = await _call(srv, _request("GET", "/fail/crash"))
    assert status == 500 and "secret" not in body.decode() and "Traceback" not in body.decode()
    assert _error(body).startswith("internal error; request id ")
    status, _, body = await _call(srv, _request("DELETE", "/echo"))
    assert status == 405 and "use POST" in _error(body)


async def test_client_request_id_is_kept_when_sane(server) -> None:
    srv, _ = server
    _, headers, _ = await _call(srv, _request("GET", "/health", extra="x-request-id: abc-123\r\n"))
    assert headers["x-request-id"] == "abc-123"
    _, headers, _ = await _call(srv, _request("GET", "/health", extra="x-request-id: bad id!\r\n"))
    assert headers["x-request-id"] != "bad id!" and len(headers["x-request-id"]) == 32


async def test_deadline_header_bounds_the_call(server) -> None:
    srv, probe = server
    started = time.monotonic()
    status, _, body = await _call(srv, _request("GET", "/sleep/5", extra="grpc-timeout: 200m\r\n"))
    assert status == 504 and "200m" in _error(body)
    assert time.monotonic() - started < 2
    assert probe.cancelled == 1


async def test_client_gone_cancels_its_call_and_frees_the_slot(server) -> None:
    srv, probe = server
    reader, writer = await _open(srv)
    writer.write(_request("GET", "/sleep/10"))
    await asyncio.wait_for(probe.started.wait(), 2)
    assert srv.tracker.inflight == 1
    writer.close()
    for _ in range(50):
        if probe.cancelled:
            break
        await asyncio.sleep(0.02)
    assert probe.cancelled == 1 and srv.tracker.inflight == 0


async def test_in_flight_limit_and_draining(server) -> None:
    srv, _ = server
    tasks = [asyncio.create_task(_call(srv, _request("GET", "/sleep/0.5"))) for _ in range(4)]
    await asyncio.sleep(0.2)
    status, _, body = await _call(srv, _request("GET", "/sleep/0"))
    assert status == 429 and "max_concurrent_rpcs=4" in _error(body)
    assert (await _call(srv, _request("GET", "/health")))[0] == 200  # probes are exempt
    assert [r[0] for r in await asyncio.gather(*tasks)] == [200] * 4
    srv.tracker.draining = True
    try:
        status, _, body = await _call(srv, _request("GET", "/sleep/0"))
        assert status == 503 and "shutting down" in _error(body)
    finally:
        srv.tracker.draining = False


async def test_close_idle_closes_waiting_connections_but_finishes_busy_ones(server) -> None:
    srv, _ = server
    idle_r, idle_w = await _open(srv)
    idle_w.write(_request("GET", "/health"))
    assert (await _response(idle_r))[0] == 200
    busy_r, busy_w = await _open(srv)
    busy_w.write(_request("GET", "/sleep/0.3"))
    await asyncio.sleep(0.1)
    srv.close_idle()
    assert await asyncio.wait_for(idle_r.read(), 2) == b""
    status, headers, _ = await _response(busy_r)
    assert status == 200 and headers["connection"] == "close"
    for w in (idle_w, busy_w):
        w.close()


def test_templates_follow_google_api_http() -> None:
    t = Template("/v1/models/{model}:predict")
    assert t.match("/v1/models/wine:predict") == {"model": "wine"}
    assert t.match("/v1/models/wine") is None and t.match("/v1/models/a/b:predict") is None
    t = Template("/v1/{name=projects/*/models/*}/versions/{version}")
    assert t.match("/v1/projects/p/models/m/versions/2") == {"name": "projects/p/models/m", "version": "2"}
    assert Template("/v1/{a.b}").fields == ["a.b"]
    for bad in ("v1/x", "/v1/{x", "/v1/{x={y}}", "/v1//x"):
        with pytest.raises(ValueError):
            Template(bad)


def test_grpc_timeout_values() -> None:
    assert parse_timeout("2S") == 2.0 and parse_timeout("250m") == 0.25
    assert parse_timeout("1M") == 60.0 and parse_timeout("5u") == pytest.approx(5e-6)
    for bad in ("", "S", "1.5S", "10x", "123456789S"):
        with pytest.raises(errors.InvalidInput):
            parse_timeout(bad)
