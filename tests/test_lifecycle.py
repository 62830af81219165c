"""Server lifecycle: SIGTERM drains (health NOT_SERVING, new calls refused, in-flight finish)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.registry import parse_registration
from tests.conftest import RouterProcess, models_yaml, router_settings

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_calls(triton: Any, tmp_path: Path) -> None:
    from router.registry import RegistryStore

    db = tmp_path / "r.db"
    store = RegistryStore(db)
    # register with metadata from Triton through the admin path used by the CLI
    import asyncio

    from adapters.base import BackendOptions, default_pool
    from router.admin import RegistryAdmin

    async def register() -> None:
        pool = default_pool(BackendOptions())
        try:
            await RegistryAdmin(store, pool).register(
                parse_registration(models_yaml(triton.grpc_address), "test")
            )
        finally:
            await pool.close()

    asyncio.run(register())
    router = RouterProcess(db, tmp_path / "router.log", grace_s=20).start()
    result: dict[str, Any] = {}

    def slow_call() -> None:
        t = tgrpc.InferInput("SECONDS", [1], "FP32")
        t.set_data_from_numpy(np.array([4.0], np.float32))
        try:
            result["out"] = tgrpc.InferenceServerClient(router.address).infer(
                "slow", [t], client_timeout=30
            ).as_numpy("SLEPT")
        except Exception as e:  # recorded for the assertion below
            result["error"] = e

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)  # the slow call is in flight
    router.terminate()
    channel = grpc.insecure_channel(router.address)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 3.0  # well inside the 4 s call, even on a busy machine
        status = None
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.02)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # new calls are refused while draining
        client = tgrpc.InferenceServerClient(router.address)
        with pytest.raises(Exception, match="shutting down"):
            a = np.zeros((1, 16), np.int32)
            inputs = [tgrpc.InferInput("INPUT0", [1, 16], "INT32"),
                      tgrpc.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(a)
            client.infer("simple", inputs)
        assert not client.is_server_ready()
    caller.join(10)
    assert "error" not in result, result.get("error")
    assert result["out"].tolist() == [4.0]
    assert router.wait(10) == 0
    assert "draining: 1 calls in flight" in router.log()


def test_grace_period_bounds_the_drain(triton: Any, tmp_path: Path) -> None:
    """A call longer than the grace period is cut off; the router still exits promptly."""
    from router.registry import RegistryStore

    store = RegistryStore(tmp_path / "r.db")
    records = parse_registration(models_yaml(triton.grpc_address), "test")
    # slow's metadata, given inline so no backend call is needed to register it
    slow = next(r for r in records if r.name == "slow")
    slow.inputs.add(name="SECONDS", datatype="FP32", shape=[1])
    slow.outputs.add(name="SLEPT", datatype="FP32", shape=[1])
    store.put([slow])
    router = RouterProcess(tmp_path / "r.db", tmp_path / "router.log", grace_s=0.5).start()
    errors: list[Exception] = []

    def slow_call() -> None:
        t = tgrpc.InferInput("SECONDS", [1], "FP32")
        t.set_data_from_numpy(np.array([10.0], np.float32))
        try:
            tgrpc.InferenceServerClient(router.address).infer("slow", [t], client_timeout=30)
        except Exception as e:
            errors.append(e)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)
    started = time.monotonic()
    router.terminate()
    assert router.wait(10) == 0
    assert time.monotonic() - started < 5
    caller.join(10)
    assert len(errors) == 1
    assert "grace period over with 1 calls in flight" in router.log()
    assert router_settings(tmp_path / "x.db").server.grace_period_s == 15.0  # the default


def test_access_log_carries_the_request_id(triton: Any, tmp_path: Path) -> None:
    from router.registry import RegistryStore

    store = RegistryStore(tmp_path / "r.db")
    (simple,) = [r for r in parse_registration(models_yaml(triton.grpc_address), "t")
                 if r.name == "simple"]
    simple.inputs.add(name="INPUT0", datatype="INT32", shape=[-1, 16])
    simple.inputs.add(name="INPUT1", datatype="INT32", shape=[-1, 16])
    simple.outputs.add(name="OUTPUT0", datatype="INT32", shape=[-1, 16])
    store.put([simple])
    router = RouterProcess(tmp_path / "r.db", tmp_path / "router.log",
                           env={"TENSORGATE_LOG__ACCESS": "true"}).start()
    try:
        client = tgrpc.InferenceServerClient(router.address)
        a = np.zeros((1, 16), np.int32)
        inputs = [tgrpc.InferInput("INPUT0", [1, 16], "INT32"),
                  tgrpc.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        client.infer("simple", inputs, headers={"x-request-id": "trace-me-42"})
        with pytest.raises(Exception, match="not registered"):
            client.infer("ghost", inputs, headers={"x-request-id": "trace-me-43"})
    finally:
        router.stop()
    log = router.log()
    assert "[trace-me-42] ModelInfer model=simple:1 code=OK" in log
    assert "[trace-me-43] ModelInfer model=-:- code=NOT_FOUND" in log


def test_calls_past_the_concurrency_limit_are_refused_at_once(triton: Any, tmp_path: Path) -> None:
    from tests.conftest import RouterThread

    rt = RouterThread(router_settings(tmp_path / "r.db", **{"server.max_concurrent_rpcs": 1}))
    rt.start()
    try:
        rt.run(rt.app.admin.register(parse_registration(models_yaml(triton.grpc_address), "t")))
        done: dict[str, Any] = {}

        def slow_call() -> None:
            t = tgrpc.InferInput("SECONDS", [1], "FP32")
            t.set_data_from_numpy(np.array([4.0], np.float32))
            done["out"] = tgrpc.InferenceServerClient(rt.address).infer("slow", [t]).as_numpy("SLEPT")

        caller = threading.Thread(target=slow_call)
        caller.start()
        deadline = time.monotonic() + 5
        while rt.app.tracker.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        client = tgrpc.InferenceServerClient(rt.address)
        t = tgrpc.InferInput("SECONDS", [1], "FP32")
        t.set_data_from_numpy(np.array([0.0], np.float32))
        started = time.monotonic()
        with pytest.raises(Exception, match="RESOURCE_EXHAUSTED.*max_concurrent_rpcs=1"):
            client.infer("slow", [t])
        assert time.monotonic() - started < 2.0  # refused, not queued behind the 4 s call
        assert client.is_server_ready() and client.is_model_ready("slow")  # probes still answer
        caller.join(10)
        assert done["out"].tolist() == [4.0]
        assert client.infer("slow", [t]).as_numpy("SLEPT").tolist() == [0.0]  # room again
    finally:
        rt.stop()
