"""Traffic policies end to end, against the real Triton: canary split, sticky keys, shadow,
fallback, promote and rollback, over gRPC and HTTP."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorgate.v1 import inference_pb2, registry_pb2, registry_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from router import dataplane, metrics
from router.registry import RegistryStore, parse_registration
from tests.conftest import RouterThread, free_port, predict, router_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rt(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    """A router with `canary` (1 and 2 both Triton's simple), `shadowed` (1: simple,
    2: simple_candidate, which differs where INPUT0[0] < 0) and `failover` (1: an endpoint
    nobody listens on, 2: simple)."""
    path = tmp_path_factory.mktemp("traffic") / "registry.db"
    router = RouterThread(router_settings(path)).start()
    backend = {"kind": "triton", "endpoints": [triton.grpc_address]}
    down = {"kind": "triton", "endpoints": [f"127.0.0.1:{free_port()}"], "model": "simple"}
    tensors = {
        "inputs": [{"name": n, "datatype": "INT32", "shape": [-1, 16]} for n in ("INPUT0", "INPUT1")],
        "outputs": [{"name": n, "datatype": "INT32", "shape": [-1, 16]} for n in ("OUTPUT0", "OUTPUT1")],
        "max_batch_size": 8,
    }
    doc = {
        "models": [
            {"name": "canary", "version": "1", "backend": {**backend, "model": "simple"}},
            {"name": "canary", "version": "2", "backend": {**backend, "model": "simple"}},
            {"name": "shadowed", "version": "1", "backend": {**backend, "model": "simple"}},
            {"name": "shadowed", "version": "2", "backend": {**backend, "model": "simple_candidate"}},
            {"name": "failover", "version": "1", "backend": down, **tensors},
            {"name": "failover", "version": "2", "backend": {**backend, "model": "simple"}},
        ]
    }
    router.run(router.app.admin.register(parse_registration(doc, "traffic test models")))
    yield router
    router.stop()


def registry(address: str) -> tuple[grpc.Channel, registry_pb2_grpc.ModelRegistryStub]:
    channel = grpc.insecure_channel(address)
    return channel, registry_pb2_grpc.ModelRegistryStub(channel)


def set_policy(rt: RouterThread, actor: str = "tester", **fields: Any) -> registry_pb2.TrafficPolicy:
    split = fields.pop("split", {})
    shadow = fields.pop("shadow", None)
    policy = registry_pb2.TrafficPolicy(**fields)
    for version, weight in split.items():
        policy.split.add(version=version, weight=weight)
    if shadow is not None:
        policy.shadow.version, policy.shadow.fraction = shadow
    channel, stub = registry(rt.address)
    with channel:
        request = registry_pb2.SetTrafficPolicyRequest(policy=policy)
        return stub.SetTrafficPolicy(request, metadata=(("x-actor", actor),), timeout=10)


def infer_request(model: str, first: int = 0, version: str = "") -> service_pb2.ModelInferRequest:
    a = np.arange(first, first + 16, dtype=np.int32).reshape(1, 16)
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(a.tobytes())
    return request


def served_versions(
    rt: RouterThread, model: str, n: int, metadata: tuple[tuple[str, str], ...] = (), version: str = ""
) -> list[str]:
    with grpc.insecure_channel(rt.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request(model, version=version)
        return [stub.ModelInfer(request, metadata=metadata, timeout=10).model_version for _ in range(n)]


def http_call(
    address: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(address, timeout=20)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def http_infer(address: str, model: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    body = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    status, answer = http_call(address, "POST", f"/v2/models/{model}/infer", body, headers)
    assert status == 200, answer
    return dict(answer)


def test_a_90_10_split_over_5000_grpc_calls_lands_within_3_points(rt: RouterThread) -> None:
    set_policy(rt, model="canary", split={"1": 90, "2": 10})

    async def run() -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        request = infer_request("canary").SerializeToString()
        async with grpc.aio.insecure_channel(rt.address) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=None,
                response_deserializer=service_pb2.ModelInferResponse.FromString,
            )

            async def worker(n: int) -> None:
                for _ in range(n):
                    answer = await call(request, timeout=10)
                    assert np.array_equal(
                        np.frombuffer(answer.raw_output_contents[0], np.int32), np.arange(16) * 2
                    )
                    counts[answer.model_version] += 1

            await asyncio.gather(*(worker(250) for _ in range(20)))
        return counts

    start = time.monotonic()
    counts = asyncio.run(run())
    assert sum(counts.values()) == 5000 and set(counts) == {"1", "2"}
    assert abs(counts["2"] / 5000 - 0.10) <= 0.03, counts
    print(f"5000 calls in {time.monotonic() - start:.1f}s: {dict(counts)}")
    # over HTTP too
    versions = collections.Counter(http_infer(rt.http_address, "canary")["model_version"] for _ in range(300))
    assert set(versions) == {"1", "2"} and 0.03 <= versions["2"] / 300 <= 0.2, versions
    # an explicit version bypasses the policy
    assert set(served_versions(rt, "canary", 50, version="2")) == {"2"}
    assert set(served_versions(rt, "canary", 50, version="1")) == {"1"}


def test_sticky_keys_always_reach_the_same_version_over_grpc_and_http(rt: RouterThread) -> None:
    set_policy(rt, model="canary", split={"1": 50, "2": 50}, sticky_key="X-User")
    seen: dict[str, str] = {}
    for i in range(60):
        key = f"user-{i}"
        versions = served_versions(rt, "canary", 4, metadata=(("x-user", key),))
        versions += [
            http_infer(rt.http_address, "canary", {"X-User": key})["model_version"] for _ in range(3)
        ]
        assert len(set(versions)) == 1, (key, versions)
        seen[key] = versions[0]
    assert set(seen.values()) == {"1", "2"}  # the keys are spread over both versions
    # the same keys keep their versions through Predict, also after the registry reloads
    rt.run(asyncio.to_thread(rt.app.registry.load))
    for key, version in list(seen.items())[:10]:
        request = inference_pb2.PredictRequest(model="canary")
        item = request.items.add().tensors
        for name in ("INPUT0", "INPUT1"):
            item.tensors.add(
                name=name, datatype="INT32", shape=[1, 16], data=np.zeros(16, np.int32).tobytes()
            )
        with grpc.insecure_channel(rt.address) as channel:
            from tensorgate.v1 import inference_pb2_grpc

            answer = inference_pb2_grpc.InferenceServiceStub(channel).Predict(
                request, metadata=(("x-user", key),), timeout=10
            )
        assert answer.version == version


def shadow_counts(model: str, version: str) -> dict[str, float]:
    values = metrics.SHADOW_REQUESTS._values
    return {r: values.get((model, version, r), 0.0) for r in ("match", "differ", "error", "dropped")}


def wait_for_counts(model: str, version: str, expected: dict[str, float], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while shadow_counts(model, version) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shadow_counts(model, version) == expected


def test_shadow_traffic_leaves_the_answer_untouched_and_counts_differences(rt: RouterThread) -> None:
    set_policy(rt, model="shadowed", default_version="1", shadow=("2", 1.0))
    before = shadow_counts("shadowed", "2")
    with grpc.insecure_channel(rt.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for first in [*range(0, 12), *range(-8, 0)]:  # 12 where the candidate agrees, 8 where it differs
            answer = stub.ModelInfer(infer_request("shadowed", first), timeout=10)
            a = np.arange(first, first + 16, dtype=np.int32)
            assert answer.model_version == "1"
            assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], np.int32), a * 2)
            assert np.array_equal(np.frombuffer(answer.raw_output_contents[1], np.int32), a * 0)
    expected = {**before, "match": before["match"] + 12, "differ": before["differ"] + 8}
    wait_for_counts("shadowed", "2", expected)
    # Predict (the parsed path) is mirrored and compared the same way
    for first in (3, -3):
        request = inference_pb2.PredictRequest(model="shadowed")
        item = request.items.add().tensors
        a = np.arange(first, first + 16, dtype=np.int32).reshape(1, 16)
        for name in ("INPUT0", "INPUT1"):
            item.tensors.add(name=name, datatype="INT32", shape=[1, 16], data=a.tobytes())
        answer = predict(rt.address, request)
        assert answer.version == "1"
        assert np.array_equal(np.frombuffer(answer.results[0].outputs[0].data, np.int32), a.ravel() * 2)
    expected = {**expected, "match": expected["match"] + 1, "differ": expected["differ"] + 1}
    wait_for_counts("shadowed", "2", expected)
    # an explicit version is not mirrored
    served_versions(rt, "shadowed", 5, version="1")
    time.sleep(0.3)
    assert shadow_counts("shadowed", "2") == expected
    # the candidate itself is plainly different where INPUT0[0] < 0 (the comparison is real)
    answer = served_versions(rt, "shadowed", 1, version="2")
    assert answer == ["2"]


def test_shadow_calls_that_fail_or_exceed_the_in_flight_bound_are_counted(
    rt: RouterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the shadow version's only endpoint is down: the caller still gets the primary's answer
    set_policy(rt, model="failover", default_version="2", shadow=("1", 1.0))
    before = shadow_counts("failover", "1")
    assert served_versions(rt, "failover", 3) == ["2", "2", "2"]
    wait_for_counts("failover", "1", {**before, "error": before["error"] + 3})
    # no room for another shadow call in flight: dropped, not queued
    monkeypatch.setattr(dataplane, "SHADOW_MAX_INFLIGHT", 0)
    assert served_versions(rt, "failover", 2) == ["2", "2"]
    wait_for_counts(
        "failover", "1", {**before, "error": before["error"] + 3, "dropped": before["dropped"] + 2}
    )


def test_fallback_version_answers_when_every_endpoint_of_the_primary_is_down(rt: RouterThread) -> None:
    set_policy(rt, model="failover", default_version="1")
    with pytest.raises(grpc.RpcError) as info:
        served_versions(rt, "failover", 1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    set_policy(rt, model="failover", default_version="1", fallback_version="2")
    assert served_versions(rt, "failover", 3) == ["2", "2", "2"]
    assert http_infer(rt.http_address, "failover")["model_version"] == "2"
    # an explicit version bypasses the policy, its fallback included
    with pytest.raises(grpc.RpcError):
        served_versions(rt, "failover", 1, version="1")


def test_promote_and_rollback_take_effect_for_the_next_request(rt: RouterThread) -> None:
    set_policy(rt, model="canary", actor="alice", split={"1": 90, "2": 10})
    channel, stub = registry(rt.address)
    with channel:
        promoted = stub.PromoteVersion(
            registry_pb2.PromoteVersionRequest(model="canary", version="2"),
            metadata=(("x-actor", "bob"),),
            timeout=10,
        )
        assert promoted == registry_pb2.TrafficPolicy(model="canary", default_version="2")
        assert set(served_versions(rt, "canary", 20)) == {"2"}
        rolled = stub.RollbackTraffic(registry_pb2.RollbackTrafficRequest(model="canary"), timeout=10)
        assert [(w.version, w.weight) for w in rolled.split] == [("1", 90), ("2", 10)]
        assert set(served_versions(rt, "canary", 200)) == {"1", "2"}
        # rollback again: back to the promoted policy
        stub.RollbackTraffic(registry_pb2.RollbackTrafficRequest(model="canary"), timeout=10)
        assert set(served_versions(rt, "canary", 20)) == {"2"}
        history = stub.GetTrafficHistory(registry_pb2.GetTrafficHistoryRequest(model="canary"), timeout=10)
        last = history.changes[-4:]
        assert [c.action for c in last] == ["set", "promote", "rollback", "rollback"]
        assert [c.actor for c in last][:2] == ["alice", "bob"]
        assert last[2].actor.startswith("ipv") or ":" in last[2].actor  # no x-actor: the peer
        got = stub.GetTrafficPolicy(registry_pb2.GetTrafficPolicyRequest(model="canary"), timeout=10)
        assert got.default_version == "2"
        with pytest.raises(grpc.RpcError) as info:
            stub.PromoteVersion(registry_pb2.PromoteVersionRequest(model="canary", version="9"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "default_version '9' is not a registered version" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.RemoveModel(registry_pb2.RemoveModelRequest(name="canary", version="2"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "traffic policy" in info.value.details()


def test_traffic_api_over_http(rt: RouterThread) -> None:
    address = rt.http_address
    status, policy = http_call(
        address,
        "PUT",
        "/v1/registry/models/canary/traffic",
        {"split": [{"version": "1", "weight": 1}, {"version": "2", "weight": 3}], "stickyKey": "x-user"},
        {"x-actor": "http-user"},
    )
    assert status == 200, policy
    assert policy["model"] == "canary" and policy["stickyKey"] == "x-user" and len(policy["split"]) == 2
    assert http_call(address, "GET", "/v1/registry/models/canary/traffic") == (200, policy)
    status, promoted = http_call(
        address,
        "POST",
        "/v1/registry/models/canary/traffic:promote",
        {"version": "1"},
        {"x-actor": "http-user"},
    )
    assert status == 200 and promoted["defaultVersion"] == "1" and promoted["split"] == []
    assert {http_infer(address, "canary")["model_version"] for _ in range(10)} == {"1"}
    status, rolled = http_call(address, "POST", "/v1/registry/models/canary/traffic:rollback", {})
    assert (status, rolled) == (200, policy)
    status, history = http_call(address, "GET", "/v1/registry/models/canary/traffic/history")
    assert status == 200
    assert [c["action"] for c in history["changes"][-3:]] == ["set", "promote", "rollback"]
    assert [c["actor"] for c in history["changes"][-3:]] == ["http-user", "http-user", "http"]
    status, error = http_call(
        address, "PUT", "/v1/registry/models/canary/traffic", {"shadow": {"version": "2", "fraction": 2}}
    )
    assert status == 400 and "shadow.fraction must be in [0, 1]" in error["error"]
    status, _ = http_call(address, "GET", "/v1/registry/models/missing/traffic")
    assert status == 404


def test_a_change_from_another_process_is_seen_within_the_poll_interval(rt: RouterThread) -> None:
    store = RegistryStore(Path(rt.settings.registry.path))  # as the CLI does: its own connection
    try:
        store.promote("canary", "1", "cli-user")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and set(served_versions(rt, "canary", 5)) != {"1"}:
            time.sleep(0.05)
        assert set(served_versions(rt, "canary", 20)) == {"1"}
        store.promote("canary", "2", "cli-user")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and set(served_versions(rt, "canary", 5)) != {"2"}:
            time.sleep(0.05)
        assert set(served_versions(rt, "canary", 20)) == {"2"}
    finally:
        store.close()
