"""Several endpoints behind one binding, against two real Tritons: a killed instance, a hung one,
and every endpoint down.

The hung backend is a FAULT INJECTOR (a gRPC server that accepts calls and never answers them);
the instances that fail and come back are real Tritons serving `simple`.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from router.registry import parse_registration
from tests.conftest import REPO, RouterThread, free_port, router_settings

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0
# Slack on top of a call's deadline for the client, the router's loop and a busy 2-core machine.
SLACK_S = 0.75
SIMPLE_TENSORS = {
    "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ],
    "outputs": [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ],
    "max_batch_size": 8,
}


@pytest.fixture(scope="module")
def tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Two real Tritons serving only `simple` (started side by side to save time)."""
    from devstack.triton import TritonServer, ensure_triton, free_ports

    # set up once, before the threads (sysconfig's first use is not thread-safe, and a set-up
    # seen as stale by one thread would be redone under the other's running server)
    install = ensure_triton()
    repo = tmp_path_factory.mktemp("simple-only")
    shutil.copytree(REPO / "examples" / "triton" / "simple", repo / "simple")
    logs = tmp_path_factory.mktemp("triton-logs")
    ports = free_ports(6)  # distinct for both servers (each picking its own could collide)
    servers = [
        TritonServer(
            [repo],
            grpc_port=ports[3 * i],
            http_port=ports[3 * i + 1],
            metrics_port=ports[3 * i + 2],
            log_path=logs / f"triton{i}.log",
            install=install,
        )
        for i in range(2)
    ]
    errors: list[BaseException] = []

    def start(server: Any) -> None:
        try:
            server.start()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    """A router with quick health checks (0.5 s) and a short control timeout (1 s)."""
    path = tmp_path_factory.mktemp("failover-registry") / "registry.db"
    rt = RouterThread(
        router_settings(path, **{"backend.health_interval_s": 0.5, "backend.control_timeout_s": 1.0})
    ).start()
    yield rt
    rt.stop()


def register(rt: RouterThread, name: str, endpoints: list[str]) -> None:
    records = parse_registration(
        {
            "name": name,
            "backend": {"kind": "triton", "endpoints": endpoints, "model": "simple"},
            **SIMPLE_TENSORS,
        },
        "test",
    )
    rt.run(rt.app.admin.register(records))


def simple_request(model: str, value: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    a = np.full((1, 16), value, np.int32)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(a.tobytes())
    return request


def scrape(rt: RouterThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The router's /metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rt.app.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def endpoint_ok(rt: RouterThread, endpoint: str) -> float:
    """tensorgate_endpoint_requests_total{backend="triton", endpoint, code="OK"}."""
    key = (
        "tensorgate_endpoint_requests_total",
        (("backend", "triton"), ("code", "OK"), ("endpoint", endpoint)),
    )
    return scrape(rt).get(key, 0.0)


def endpoint_calls(rt: RouterThread, endpoint: str) -> float:
    """tensorgate_endpoint_requests_total of an endpoint, every status code."""
    return sum(
        value
        for (name, labels), value in scrape(rt).items()
        if name == "tensorgate_endpoint_requests_total" and ("endpoint", endpoint) in labels
    )


def admitted(rt: RouterThread, endpoint: str) -> float | None:
    """tensorgate_endpoint_admitted for the `simple` binding's endpoint (None: not reported)."""
    key = (
        "tensorgate_endpoint_admitted",
        (("backend", "triton"), ("endpoint", endpoint), ("model", "simple")),
    )
    return scrape(rt).get(key)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


class Load:
    """Closed-loop callers through the router, each call with a deadline; records every call."""

    def __init__(self, address: str, model: str, callers: int) -> None:
        self.address, self.model, self.callers = address, model, callers
        self.results: list[tuple[float, float, grpc.StatusCode]] = []  # (start, seconds, code)
        self._stop = asyncio.Event()

    async def _caller(self, index: int) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            n = 0
            while not self._stop.is_set():
                value = index * 100_000 + n
                n += 1
                started = time.monotonic()
                try:
                    answer = await stub.ModelInfer(simple_request(self.model, value), timeout=DEADLINE_S)
                    out = np.frombuffer(answer.raw_output_contents[0], np.int32)
                    assert (out == 2 * value).all(), "a caller got another caller's answer"
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                self.results.append((started, time.monotonic() - started, code))

    async def run_until(self, stopped: asyncio.Future[Any]) -> None:
        callers = [asyncio.create_task(self._caller(i)) for i in range(self.callers)]
        try:
            await stopped
        finally:
            self._stop.set()
            await asyncio.gather(*callers)


async def test_a_killed_instance_costs_under_one_percent_and_gets_traffic_again_after_restart(
    tritons: list[Any], router: RouterThread
) -> None:
    t1, t2 = tritons
    register(router, "simple-pair", [t1.grpc_address, t2.grpc_address])
    load = Load(router.address, "simple-pair", callers=8)
    marks: dict[str, float] = {}

    async def scenario() -> None:
        await asyncio.sleep(3)
        marks["t1 before kill"] = endpoint_ok(router, t1.grpc_address)
        marks["t2 before kill"] = endpoint_ok(router, t2.grpc_address)
        await asyncio.to_thread(t1.kill)  # SIGKILL, the whole process group
        marks["killed"] = time.monotonic()
        await asyncio.sleep(2)
        marks["t1 while down"] = endpoint_calls(router, t1.grpc_address)
        await asyncio.sleep(1)
        assert endpoint_calls(router, t1.grpc_address) == marks["t1 while down"]  # it got nothing
        await asyncio.to_thread(t1.start)  # the same ports
        marks["restarted"] = time.monotonic()
        await asyncio.to_thread(
            wait_for, lambda: admitted(router, t1.grpc_address) == 1.0, 15, "t1 admitted again"
        )
        marks["t1 back"] = endpoint_ok(router, t1.grpc_address)
        marks["t2 back"] = endpoint_ok(router, t2.grpc_address)
        await asyncio.sleep(3)
        marks["t1 end"] = endpoint_ok(router, t1.grpc_address)
        marks["t2 end"] = endpoint_ok(router, t2.grpc_address)

    await load.run_until(asyncio.ensure_future(scenario()))

    calls = len(load.results)
    failed = [r for r in load.results if r[2] != grpc.StatusCode.OK]
    assert calls > 500, f"only {calls} calls: the load did not run"
    assert len(failed) <= 0.01 * calls, f"{len(failed)} of {calls} calls failed: {failed[:10]}"
    slowest = max(seconds for _, seconds, _ in load.results)
    assert slowest <= DEADLINE_S + SLACK_S, f"a call took {slowest:.2f}s"
    # both instances served before the kill, and the restarted one serves its share again
    assert marks["t1 before kill"] > 0 and marks["t2 before kill"] > 0
    after_t1 = marks["t1 end"] - marks["t1 back"]
    after_t2 = marks["t2 end"] - marks["t2 back"]
    assert after_t1 >= 0.25 * (after_t1 + after_t2), (after_t1, after_t2)
    ejections = scrape(router)
    assert any(
        name == "tensorgate_endpoint_ejections_total" and ("endpoint", t1.grpc_address) in labels
        for name, labels in ejections
    )


class HungBackend(grpc.GenericRpcHandler):
    """FAULT INJECTOR: a gRPC server that accepts every call and never answers it (a hung
    backend); its handlers are released when the test ends."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append(details.method)  # type: ignore[attr-defined]
            self.release.wait(60)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the fault injector was released")
            return b""

        return grpc.unary_unary_rpc_method_handler(hang)

    def __enter__(self) -> HungBackend:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.stop(0)


class SilentListener:
    """FAULT INJECTOR: a TCP port that takes connections (the kernel's backlog) and never says
    a word, not even HTTP/2's handshake: the router's channel to it never gets ready."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> SilentListener:
        self.sock.listen(64)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.parametrize("injector", [HungBackend, SilentListener])
async def test_a_hung_backend_costs_no_more_than_the_deadline_and_is_taken_out(
    tritons: list[Any], router: RouterThread, injector: Any
) -> None:
    t2 = tritons[1]
    if not t2.running:
        t2.start()
    model = f"simple-hung-{injector.__name__.lower()}"
    with injector() as hung:
        register(router, model, [hung.address, t2.grpc_address])
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def call(value: int) -> tuple[float, grpc.StatusCode]:
                started = time.monotonic()
                try:
                    await stub.ModelInfer(simple_request(model, value), timeout=DEADLINE_S)
                    return time.monotonic() - started, grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    return time.monotonic() - started, e.code()

            # idle endpoints take turns: of four calls at once, some go to the hung one
            first = await asyncio.gather(*(call(i) for i in range(4)))
            assert any(code == grpc.StatusCode.DEADLINE_EXCEEDED for _, code in first), first
            assert all(seconds <= DEADLINE_S + SLACK_S for seconds, _ in first), first
            assert endpoint_calls(router, hung.address) >= 1
            # its health check (ModelReady) hangs too: past the control timeout it is taken out
            await asyncio.to_thread(
                wait_for, lambda: admitted(router, hung.address) == 0.0, 10, "the hung one out"
            )
            sent = endpoint_calls(router, hung.address)
            later = await asyncio.gather(*(call(i) for i in range(20)))
            assert all(code == grpc.StatusCode.OK for _, code in later), later
            assert all(seconds < DEADLINE_S / 2 for seconds, _ in later), later  # nobody waited
            assert endpoint_calls(router, hung.address) == sent
            assert endpoint_ok(router, hung.address) == 0


def test_every_endpoint_down_fails_fast_naming_each_endpoint(router: RouterThread) -> None:
    down = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    register(router, "simple-down", down)
    with grpc.insecure_channel(router.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(simple_request("simple-down", 1), timeout=DEADLINE_S)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert all(ep in info.value.details() for ep in down), info.value.details()
            assert time.monotonic() - started < DEADLINE_S
        ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="simple-down"), timeout=5)
        assert not ready.ready
        reported = {labels for name, labels in scrape(router) if name == "tensorgate_endpoint_admitted"}
        assert any(("endpoint", down[0]) in labels for labels in reported)
        # once no version has the binding, its endpoints are no longer checked nor reported
        router.run(router.app.admin.remove("simple-down"))
        wait_for(
            lambda: router.app.registry.generation > 0 and not _has_version("simple-down", router),
            5,
            "the registry to drop simple-down",
        )
        wait_for(
            lambda: (
                not any(
                    ("endpoint", ep) in labels
                    for name, labels in scrape(router)
                    for ep in down
                    if name == "tensorgate_endpoint_admitted"
                )
            ),
            5,
            "the removed binding's endpoints to leave the gauge",
        )


def _has_version(name: str, rt: RouterThread) -> bool:
    return any(mv.name == name for mv in rt.app.registry.all())


def test_torchserve_endpoint_down_is_retried_around_and_taken_out_by_its_health_check(
    router: RouterThread, torchserve: Any
) -> None:
    """TorchServe behind one binding with an endpoint where nothing listens: every call is
    answered (UNAVAILABLE retried on the live one), and Ping takes the dead one out."""
    dead = f"127.0.0.1:{free_port()}"
    backend = {"kind": "torchserve", "endpoints": [dead, torchserve.grpc_address], "model": "wine_torch"}
    router.run(
        router.app.admin.register(parse_registration([{"name": "wine_pair", "backend": backend}], "t"))
    )
    request = service_pb2.ModelInferRequest(model_name="wine_pair")
    request.inputs.add(name="FEATURES", datatype="FP32", shape=[1, 13])
    request.raw_input_contents.append(np.ones((1, 13), np.float32).tobytes())
    with grpc.insecure_channel(router.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(10):
            answer = stub.ModelInfer(request, timeout=10)
            probs = np.frombuffer(answer.raw_output_contents[0], np.float32)
            assert probs.shape == (3,) and abs(float(probs.sum()) - 1) < 1e-4
        key = (
            "tensorgate_endpoint_admitted",
            (("backend", "torchserve"), ("endpoint", dead), ("model", "wine_torch")),
        )
        wait_for(lambda: scrape(router).get(key) == 0.0, 10, "the dead endpoint taken out")
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="wine_pair"), timeout=10).ready
