"""Router-side batching in front of the real Triton: concurrent calls share backend calls and
each caller still gets exactly its own answer."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from tensorgate.v1 import inference_pb2

from router.registry import parse_registration
from tests.conftest import RouterThread, predict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batched(router: RouterThread, triton: Any) -> RouterThread:
    records = parse_registration({
        "name": "simple-batched",
        "backend": {"kind": "triton", "endpoints": [triton.grpc_address], "model": "simple"},
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 50_000},
    }, "batching test")
    router.run(router.app.admin.register(records))
    return router


def scrape(rt: RouterThread) -> dict[str, float]:
    url = f"http://127.0.0.1:{rt.app.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if 'model="simple-batched"' in line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def rows_sum_count(metrics: dict[str, float]) -> tuple[float, float]:
    total = next((v for k, v in metrics.items() if k.startswith("tensorgate_batch_rows_sum")), 0.0)
    count = next((v for k, v in metrics.items() if k.startswith("tensorgate_batch_rows_count")), 0.0)
    return total, count


async def test_concurrent_calls_are_batched_and_split_back(batched: RouterThread) -> None:
    before = rows_sum_count(scrape(batched))
    client = tgrpc_aio.InferenceServerClient(batched.address)
    try:
        async def one(i: int) -> None:
            a = np.full((1, 16), i, np.int32)
            b = np.arange(16, dtype=np.int32).reshape(1, 16)
            inputs = [tgrpc_aio.InferInput("INPUT0", [1, 16], "INT32"),
                      tgrpc_aio.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            result = await client.infer("simple-batched", inputs, request_id=f"r{i}")
            assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
            assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
            response = result.get_response()
            assert (response.model_name, response.model_version, response.id) == (
                "simple-batched", "1", f"r{i}"
            )

        await asyncio.gather(*(one(i) for i in range(16)))
    finally:
        await client.close()
    rows, calls = (after - b for after, b in zip(rows_sum_count(scrape(batched)), before, strict=True))
    assert rows == 16  # every row went through the batcher
    assert calls < 16  # in fewer backend calls than requests
    assert any(k.startswith("tensorgate_batches_total") for k in scrape(batched))


def test_predict_items_through_the_batcher(batched: RouterThread) -> None:
    from tensorgate.v1 import tensor_pb2

    from router.tensors import from_numpy, to_numpy

    request = inference_pb2.PredictRequest(model="simple-batched")
    arrays = [np.full((2, 16), 3, np.int32), np.full((1, 16), 5, np.int32)]
    for a in arrays:
        tensors = []
        for name in ("INPUT0", "INPUT1"):
            datatype, shape, data = from_numpy(a)
            tensors.append(tensor_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=data))
        request.items.add().tensors.tensors.extend(tensors)
    response = predict(batched.address, request)
    for a, result in zip(arrays, response.results, strict=True):
        out = {t.name: to_numpy(t.datatype, t.shape, t.data) for t in result.outputs}
        assert np.array_equal(out["OUTPUT0"], a * 2)


def test_batching_bigger_than_the_model_is_refused(batched: RouterThread, triton: Any) -> None:
    from router.errors import InvalidInput

    records = parse_registration({
        "name": "too-big",
        "backend": {"kind": "triton", "endpoints": [triton.grpc_address], "model": "simple"},
        "batching": {"max_batch_size": 64, "max_queue_delay_us": 1000},
    }, "t")
    with pytest.raises(InvalidInput, match="batching.max_batch_size 64 exceeds the model's 8"):
        batched.run(batched.app.admin.register(records))


def test_a_changed_policy_retires_the_old_batcher_and_stops_it_once_drained(
    router: RouterThread, triton: Any
) -> None:
    def register(delay_us: int) -> None:
        records = parse_registration({
            "name": "simple-rebatched",
            "backend": {"kind": "triton", "endpoints": [triton.grpc_address], "model": "simple"},
            "batching": {"max_batch_size": 4, "max_queue_delay_us": delay_us},
        }, "policy change test")
        router.run(router.app.admin.register(records))

    def call(i: int) -> None:
        client = tgrpc.InferenceServerClient(router.address)
        try:
            a = np.full((1, 16), i, np.int32)
            inputs = [tgrpc.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(a)
            assert np.array_equal(client.infer("simple-rebatched", inputs).as_numpy("OUTPUT0"), 2 * a)
        finally:
            client.close()

    dataplane = router.app.dataplane
    register(1_000)
    call(1)
    first = dataplane._batchers[("simple-rebatched", "1")]
    register(2_000)
    call(2)  # served by a new batcher; the old one had drained, so it is stopped, not kept
    second = dataplane._batchers[("simple-rebatched", "1")]
    assert second is not first and second.policy.max_queue_delay_us == 2_000
    assert first not in dataplane._retired
    deadline = time.monotonic() + 5
    while not first._closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first._closed and first._task.done()
