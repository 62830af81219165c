"""tensorgate.v1.InferenceService (Predict) and `tensorgate infer` against the real Triton."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorgate.v1 import inference_pb2, tensor_pb2

from router.tensors import from_numpy, to_numpy
from tests.conftest import REPO, RouterThread, predict

pytestmark = pytest.mark.integration


def tensor(name: str, array: np.ndarray) -> tensor_pb2.Tensor:
    datatype, shape, data = from_numpy(array)
    return tensor_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=data)


def test_items_become_one_batch_and_each_gets_its_rows(router: RouterThread) -> None:
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(-50, 50, (rows, 16), dtype=np.int32),
              rng.integers(-50, 50, (rows, 16), dtype=np.int32)) for rows in (1, 2, 1, 3)]
    request = inference_pb2.PredictRequest(model="simple")
    for a, b in pairs:
        request.items.add().tensors.tensors.extend([tensor("INPUT0", a), tensor("INPUT1", b)])
    response = predict(router.address, request)
    assert (response.model, response.version) == ("simple", "1")
    assert len(response.request_id) == 32
    assert len(response.results) == len(pairs)
    for (a, b), result in zip(pairs, response.results, strict=True):
        out = {t.name: to_numpy(t.datatype, t.shape, t.data) for t in result.outputs}
        assert np.array_equal(out["OUTPUT0"], a + b)
        assert np.array_equal(out["OUTPUT1"], a - b)


def test_bytes_items_split_back_and_output_selection(router: RouterThread) -> None:
    rng = np.random.default_rng(5)
    items = []
    for word in (b"one", b"", "tr\u00e9s".encode()):
        items.append({
            "IN_FP32": rng.standard_normal((1, 3)).astype(np.float32),
            "IN_FP16": rng.standard_normal((1, 3)).astype(np.float16),
            "IN_INT32": np.ones((1, 3), np.int32),
            "IN_INT64": np.ones((1, 3), np.int64),
            "IN_BYTES": np.array([[word, word + b"x", b"y"]], dtype=object),
        })
    request = inference_pb2.PredictRequest(model="dtypes", outputs=["OUT_BYTES", "OUT_FP32"])
    for item in items:
        request.items.add().tensors.tensors.extend(tensor(k, v) for k, v in item.items())
    response = predict(router.address, request)
    for item, result in zip(items, response.results, strict=True):
        out = {t.name: to_numpy(t.datatype, t.shape, t.data) for t in result.outputs}
        assert sorted(out) == ["OUT_BYTES", "OUT_FP32"]
        assert out["OUT_BYTES"].tolist() == [[w[::-1] for w in item["IN_BYTES"][0]]]
        assert np.array_equal(out["OUT_FP32"], item["IN_FP32"] * 2)


@pytest.mark.parametrize(
    ("build", "code", "text"),
    [
        (lambda r: None, grpc.StatusCode.INVALID_ARGUMENT, "no items"),
        (lambda r: r.items.add().text.CopyFrom(inference_pb2.TextPayload(text="hi")),
         grpc.StatusCode.INVALID_ARGUMENT, "has no text input spec"),
        (lambda r: r.items.add().tensors.tensors.append(tensor("INPUT0", np.zeros((1, 16), np.int32))),
         grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) INPUT1"),
        (lambda r: [r.items.add().tensors.tensors.extend(
            [tensor("INPUT0", np.zeros((1, n), np.int32)), tensor("INPUT1", np.zeros((1, n), np.int32))]
        ) for n in (16, 8)], grpc.StatusCode.INVALID_ARGUMENT, "cannot be batched"),
        (lambda r: r.items.add().tensors.tensors.append(
            tensor_pb2.Tensor(name="INPUT0", datatype="INT32", shape=[1, 16], data=b"\x00" * 3)),
         grpc.StatusCode.INVALID_ARGUMENT, "needs 64 bytes"),
    ],
    ids=["no-items", "text-without-spec", "missing-input", "unbatchable", "short-data"],
)
def test_predict_errors(router: RouterThread, build: object, code: grpc.StatusCode, text: str) -> None:
    request = inference_pb2.PredictRequest(model="simple")
    build(request)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as info:
        predict(router.address, request)
    assert info.value.code() == code
    assert text in info.value.details()


def test_cli_infer_with_npy_tensors(router: RouterThread, tmp_path: Path) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 10, np.int32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    cmd = [sys.executable, "-m", "router", "infer", "simple", "--address", router.address,
           "--tensor", f"INPUT0={tmp_path / 'a.npy'}", "--tensor", f"INPUT1={tmp_path / 'b.npy'}"]
    result = subprocess.run([*cmd, "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"] == "simple" and answer["version"] == "1"
    assert answer["results"][0]["outputs"]["OUTPUT0"] == {
        "datatype": "INT32", "shape": [1, 16], "data": (a + b).reshape(-1).tolist()
    }
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "OUTPUT1 INT32[1, 16]" in text.stdout
    unknown = subprocess.run([*cmd[:4], "nope", *cmd[5:]], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    bad = subprocess.run([*cmd[:7], "--tensor", "INPUT0"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "NAME=FILE.npy" in bad.stderr
    both = subprocess.run([*cmd, "--text", "hi"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "exactly one kind of input" in both.stderr
