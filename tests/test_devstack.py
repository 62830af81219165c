"""devstack.triton: a real Triton starts, answers `simple` and `dtypes` exactly, and stops."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from devstack.examples import prepare
from devstack.triton import REPO_ROOT, TritonServer, ensure_triton

EXAMPLES = REPO_ROOT / "examples" / "triton"
TEST_MODELS = REPO_ROOT / "tests" / "models" / "triton"


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    """Build a tritonclient gRPC input holding `array`."""
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _process_gone(pid: int) -> bool:
    """Return whether `pid` no longer exists (or is only a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_triton_server_serves_and_stops(tmp_path: Path) -> None:
    """Start on free ports with both repositories, infer `simple` and `dtypes`, stop cleanly."""
    install = ensure_triton()
    prepare()  # the trained example models' weights
    server = TritonServer([EXAMPLES, TEST_MODELS], install=install, log_path=tmp_path / "triton.log")
    server.start(timeout=60)
    pid = server.pid
    assert pid is not None
    try:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        assert client.is_server_ready()

        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        b = np.full((1, 16), 3, dtype=np.int32)
        result = client.infer("simple", [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

        fp32 = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, -7.5]], dtype=np.float32)
        fp16 = np.array([[0.5, 1.0, -2.5], [100.0, 0.25, 2048.0]], dtype=np.float16)
        int32 = np.array([[1, -2, 3], [0, 2**20, -(2**20)]], dtype=np.int32)
        int64 = np.array([[10, 2**40, -1], [7, 0, -(2**50)]], dtype=np.int64)
        raw = np.array([[b"abc", b"", b"\x00\xffz"], [b"hello", b"x", "é".encode()]], dtype=np.object_)
        result = client.infer(
            "dtypes",
            [
                _input("IN_FP32", fp32, "FP32"),
                _input("IN_FP16", fp16, "FP16"),
                _input("IN_INT32", int32, "INT32"),
                _input("IN_INT64", int64, "INT64"),
                _input("IN_BYTES", raw, "BYTES"),
            ],
        )
        expected = {
            "OUT_FP32": fp32 * np.float32(2),
            "OUT_FP16": fp16 + np.float16(1),
            "OUT_INT32": int32 * np.int32(3),
            "OUT_INT64": int64 - np.int64(7),
        }
        for name, want in expected.items():
            got = result.as_numpy(name)
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)
        got_bytes = result.as_numpy("OUT_BYTES")
        assert got_bytes.shape == raw.shape
        assert got_bytes.tolist() == [[v[::-1] for v in row] for row in raw.tolist()]
    finally:
        server.stop()
    assert not server.running
    assert _process_gone(pid)
