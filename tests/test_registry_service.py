"""The registry: gRPC admin API, the CLI, changes without restart, persistence across restarts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import yaml
from tensorgate.v1 import registry_pb2, registry_pb2_grpc

from tests.conftest import REPO, RouterProcess, RouterThread, router_settings

pytestmark = pytest.mark.integration


def registry_stub(address: str) -> tuple[grpc.Channel, registry_pb2_grpc.ModelRegistryStub]:
    channel = grpc.insecure_channel(address)
    return channel, registry_pb2_grpc.ModelRegistryStub(channel)


def infer_simple(address: str, model: str = "simple") -> np.ndarray:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [tgrpc.InferInput("INPUT0", [1, 16], "INT32"), tgrpc.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return tgrpc.InferenceServerClient(address).infer(model, inputs).as_numpy("OUTPUT0")


def test_grpc_registry_register_reads_metadata_and_remove_takes_effect(
    triton: Any, tmp_path: Path
) -> None:
    rt = RouterThread(router_settings(tmp_path / "r.db")).start()
    try:
        channel, stub = registry_stub(rt.address)
        with channel:
            model = registry_pb2.ModelVersion(name="adder", version="3")
            model.backend.kind = "triton"
            model.backend.endpoints.append(triton.grpc_address)
            model.backend.model = "simple"
            stored = stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model), timeout=10)
            # metadata was read from Triton
            assert [t.name for t in stored.inputs] == ["INPUT0", "INPUT1"]
            assert list(stored.inputs[0].shape) == [-1, 16] and stored.max_batch_size == 8
            assert stored.created_at.seconds > 0
            # routable at once, under the tensorgate name
            assert np.array_equal(infer_simple(rt.address, "adder"), np.arange(16).reshape(1, 16) * 2)
            listed = stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5).models
            assert [(m.name, m.version) for m in listed] == [("adder", "3")]
            got = stub.GetModel(registry_pb2.GetModelRequest(name="adder"), timeout=5)
            assert got.version == "3" and got.backend.model == "simple"
            removed = stub.RemoveModel(registry_pb2.RemoveModelRequest(name="adder"), timeout=5)
            assert [m.version for m in removed.removed] == ["3"]
            with pytest.raises(Exception, match="not registered"):
                infer_simple(rt.address, "adder")
            # invalid registrations say what is wrong
            bad = registry_pb2.ModelVersion(name="bad", version="1")
            bad.backend.kind = "onnx"
            bad.backend.endpoints.append("127.0.0.1:1")
            with pytest.raises(grpc.RpcError) as info:
                stub.RegisterModel(registry_pb2.RegisterModelRequest(model=bad), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "backend.kind" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.GetModel(registry_pb2.GetModelRequest(name="missing"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        rt.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_cli_changes_reach_a_running_router_and_survive_restart(triton: Any, tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    spec = tmp_path / "models.yaml"
    spec.write_text(yaml.safe_dump({"models": [
        {"name": "simple", "version": 1, "backend": {"kind": "triton", "endpoints": ["${T_ADDR}"]}},
    ]}))
    router = RouterProcess(db, tmp_path / "router.log").start()
    try:
        with pytest.raises(Exception, match="not registered"):
            infer_simple(router.address)
        env_cli = subprocess.run(
            [sys.executable, "-m", "router", "models", "register", str(spec), "--registry", str(db)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
            env={**__import__("os").environ, "T_ADDR": triton.grpc_address},
        )
        assert env_cli.returncode == 0, env_cli.stderr
        assert "registered simple:1" in env_cli.stdout and "INPUT0:INT32[-1, 16]" in env_cli.stdout
        # the running router picks the change up without a restart
        deadline = time.monotonic() + 5
        while True:
            try:
                out = infer_simple(router.address)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert np.array_equal(out, np.arange(16).reshape(1, 16) * 2)
        listed = run_cli("models", "list", "--registry", str(db), "--json")
        assert listed.returncode == 0 and '"name": "simple"' in listed.stdout
        router.stop()
        assert router.proc is not None and router.proc.returncode == 0
        # a new router process on the same registry serves it at once
        router = RouterProcess(db, tmp_path / "router2.log").start()
        assert np.array_equal(infer_simple(router.address), np.arange(16).reshape(1, 16) * 2)
        removed = run_cli("models", "remove", "simple:1", "--registry", str(db))
        assert removed.returncode == 0 and "removed simple:1" in removed.stdout
        missing = run_cli("models", "remove", "simple", "--registry", str(db))
        assert missing.returncode == 1 and "not registered" in missing.stderr
    finally:
        router.stop()


def test_cli_register_errors_name_the_problem(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("models:\n  - name: m\n    backend: {kind: triton, endpoints: [nohost]}\n")
    result = run_cli("models", "register", str(spec), "--registry", str(tmp_path / "r.db"))
    assert result.returncode == 1
    assert "nohost" in result.stderr and "host:port" in result.stderr
    spec.write_text("models:\n  - name: m\n    colour: blue\n")
    result = run_cli("models", "register", str(spec), "--registry", str(tmp_path / "r.db"))
    assert result.returncode == 1 and "colour" in result.stderr
    result = run_cli("models", "register", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "absent.yaml" in result.stderr
    # backend down at registration: metadata cannot be read, and the message says what to do
    spec.write_text("models:\n  - name: m\n    backend: {kind: triton, endpoints: ['127.0.0.1:1']}\n")
    result = run_cli("models", "register", str(spec), "--registry", str(tmp_path / "r.db"))
    assert result.returncode == 1 and "cannot read its tensor metadata" in result.stderr
