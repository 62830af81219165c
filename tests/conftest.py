"""Shared fixtures: a real Triton, a real TorchServe, and the router in a thread or a subprocess
in front of them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import uvloop
from tritonclient.grpc import service_pb2, service_pb2_grpc

from router import config
from router.app import App
from router.registry import parse_registration

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORIES = [
    REPO / "examples" / "triton",
    REPO / "tests" / "models" / "triton",
    REPO / "benchmarks" / "models" / "triton",  # the harness is tested against its own models
]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def models_yaml(triton_address: str) -> dict[str, Any]:
    """The registration document of the test models on one Triton."""
    backend = {"kind": "triton", "endpoints": [triton_address]}
    return {
        "models": [
            {"name": "simple", "version": "1", "backend": {**backend, "model": "simple"}},
            {"name": "dtypes", "version": "1", "backend": {**backend, "model": "dtypes"}},
            {"name": "slow", "version": "1", "backend": {**backend, "model": "slow"}},
        ]
    }


@pytest.fixture(scope="session")
def cancel_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file the `slow` test model appends to when it sees a request cancelled."""
    return tmp_path_factory.mktemp("triton") / "cancelled.log"


@pytest.fixture(scope="session")
def triton(cancel_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Triton (CPU) with the example and test model repositories."""
    from devstack.examples import prepare
    from devstack.triton import TritonServer

    prepare()
    server = TritonServer(
        MODEL_REPOSITORIES,
        log_path=tmp_path_factory.mktemp("triton-log") / "triton.log",
        env={"TENSORGATE_CANCEL_LOG": str(cancel_log)},
    )
    server.start()
    yield server
    server.stop()


def torchserve_models() -> list[Any]:
    """The .mars the test TorchServe serves: the example wine_torch and the test model probe."""
    from devstack.torchserve import EXAMPLE_MODELS, MarSpec

    models = REPO / "tests" / "models" / "torchserve"
    return [*EXAMPLE_MODELS, MarSpec("probe", models / "probe.py", config=models / "probe-config.yaml")]


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real TorchServe (CPU) with wine_torch and probe; gRPC management on its port + 1."""
    from devstack.examples import prepare
    from devstack.torchserve import TorchServeServer

    prepare()
    server = TorchServeServer(torchserve_models(), workdir=tmp_path_factory.mktemp("torchserve"))
    server.start()
    yield server
    server.stop()


class RouterThread:
    """The router (App) on its own event loop in a background thread, on free ports."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.app = App(settings)
        self.loop = uvloop.new_event_loop()  # as `tensorgate serve` runs it
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RouterThread:
        self._thread.start()
        self.run(self.app.start())
        return self

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Runs a coroutine on the router's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def http_address(self) -> str:
        """host:port of the HTTP edge."""
        return f"127.0.0.1:{self.app.http_port}"

    def stop(self) -> None:
        self.run(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def router_settings(registry_path: Path, **overrides: Any) -> config.Settings:
    """Settings for a test router: free ports, a private registry, fast change polling."""
    values = {
        "server.grpc_port": 0,
        "server.http_port": 0,
        "server.metrics_port": 0,
        "registry.path": str(registry_path),
        "registry.poll_interval_s": 0.2,
        **overrides,
    }
    return config.load(None, values, environ={})


@pytest.fixture(scope="session")
def router(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    """The router in front of the real Triton with simple, dtypes and slow registered."""
    path = tmp_path_factory.mktemp("registry") / "registry.db"
    rt = RouterThread(router_settings(path)).start()
    records = parse_registration(models_yaml(triton.grpc_address), "test models")
    rt.run(rt.app.admin.register(records))
    yield rt
    rt.stop()


def predict(address: str, request: Any, timeout: float = 20) -> Any:
    """One tensorgate.v1.InferenceService/Predict call on a fresh channel."""
    from tensorgate.v1 import inference_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return inference_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=timeout)


def oip_stub(address: str) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    """A plain gRPC channel and Open Inference Protocol stub."""
    channel = grpc.insecure_channel(address)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


class RouterProcess:
    """`python -m router serve` as a child process, for restart and signal tests."""

    def __init__(
        self, registry: Path, log_path: Path, grace_s: float = 15.0, env: dict[str, str] | None = None
    ) -> None:
        self.registry = registry
        self.port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        self.log_path = log_path
        self.grace_s = grace_s
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> RouterProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
        env["TENSORGATE_SERVER__GRACE_PERIOD_S"] = str(self.grace_s)
        env["TENSORGATE_REGISTRY__POLL_INTERVAL_S"] = "0.2"
        env.update(self.env)
        cmd = [sys.executable, "-m", "router", "serve", "--registry", str(self.registry),
               "--grpc-port", str(self.port), "--metrics-port", str(self.metrics_port),
               "--http-port", str(self.http_port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
        channel, stub = oip_stub(self.address)
        deadline = time.monotonic() + timeout
        with channel:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"router exited early:\n{self.log()}"
                try:
                    if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1).ready:
                        return self
                except grpc.RpcError:
                    time.sleep(0.1)
        raise AssertionError(f"router not ready in {timeout}s:\n{self.log()}")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]
