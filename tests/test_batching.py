"""Unit tests of router.batching: merging, splitting, triggers, deadlines, failures, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from router import tensors
from router.batching import Batcher, BatchPolicy
from router.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded, Unavailable

LONG = 10_000_000  # a queue delay (us) no test waits for
GUARD = 5.0  # seconds before a stuck await fails the test instead of hanging it


class FakeBackend:
    """A fake of the backend call with fault injection: records every request it gets (with the
    timeout and the loop time), may hold calls on a gate, may fail. It answers Y = 2*X (FP32),
    T = S upper-cased (BYTES) and Z = X[:, 0] as INT32, so each row's answer shows whose it is."""

    def __init__(self, fail: Exception | None = None, gate: asyncio.Event | None = None) -> None:
        self.fail = fail
        self.gate = gate
        self.calls: list[tuple[service_pb2.ModelInferRequest, float | None, float]] = []
        self.called = asyncio.Event()

    def rows_seen(self) -> list[int]:
        """The batch size of every call, in order."""
        return [request.inputs[0].shape[0] for request, _, _ in self.calls]

    async def __call__(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        self.calls.append((request, timeout, asyncio.get_running_loop().time()))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        inputs = {
            t.name: tensors.to_numpy(t.datatype, t.shape, raw)
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id  # Triton echoes the id
        )
        x = inputs["X"]
        results = {
            "Y": x * 2,
            "T": np.vectorize(lambda b: b.upper(), otypes=[object])(inputs["S"]),
            "Z": x[:, 0].astype(np.int32),
        }
        for out in request.outputs:
            datatype, shape, raw = tensors.from_numpy(results[out.name])
            response.outputs.add(name=out.name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response


def make_request(
    x: np.ndarray, strings: list[list[bytes]], outputs: tuple[str, ...] = ("Y", "T", "Z"), rid: str = ""
) -> service_pb2.ModelInferRequest:
    """A request with inputs X (FP32 [rows, n]) and S (BYTES [rows, 2]) asking for `outputs`."""
    request = service_pb2.ModelInferRequest(model_name="m", id=rid)
    for name, array in (("X", x.astype(np.float32)), ("S", np.array(strings, dtype=object))):
        datatype, shape, raw = tensors.from_numpy(array)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def rows_request(rows: int, base: float, width: int = 3, rid: str = "") -> service_pb2.ModelInferRequest:
    """A request of `rows` rows whose values start at `base` (so its rows are recognizable)."""
    x = base + np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    strings = [[f"r{base:g}-{i}a".encode(), f"r{base:g}-{i}b-\u00e9".encode()] for i in range(rows)]
    return make_request(x, strings, rid=rid)


def output(response: service_pb2.ModelInferResponse, name: str) -> np.ndarray:
    """One output of a response as numpy, checking its raw size against its shape."""
    for t, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if t.name == name:
            tensors.check_raw_size(name, t.datatype, t.shape, raw)
            return tensors.to_numpy(t.datatype, t.shape, raw)
    raise AssertionError(f"no output {name}")


def check_own_rows(request: service_pb2.ModelInferRequest, response: service_pb2.ModelInferResponse) -> None:
    """The response holds exactly the answer to this request's rows."""
    x = tensors.to_numpy("FP32", request.inputs[0].shape, request.raw_input_contents[0])
    s = tensors.to_numpy("BYTES", request.inputs[1].shape, request.raw_input_contents[1])
    assert response.id == request.id
    assert [t.name for t in response.outputs] == ["Y", "T", "Z"]
    np.testing.assert_array_equal(output(response, "Y"), x * 2)
    assert output(response, "T").tolist() == [[b.upper() for b in row] for row in s.tolist()]
    np.testing.assert_array_equal(output(response, "Z"), x[:, 0].astype(np.int32))
    assert [list(t.shape)[0] for t in response.outputs] == [x.shape[0]] * 3


@asynccontextmanager
async def batcher(policy: BatchPolicy, backend: FakeBackend, **kwargs: object) -> AsyncIterator[Batcher]:
    """A Batcher over the fake, closed afterwards."""
    b = Batcher(policy, backend, **kwargs)  # type: ignore[arg-type]
    try:
        yield b
    finally:
        await b.close()


async def test_split_gives_each_caller_exactly_its_rows() -> None:
    backend = FakeBackend()
    batches: list[tuple[int, str, list[float]]] = []
    policy = BatchPolicy(max_batch_size=16, max_queue_delay_us=20_000)
    async with batcher(policy, backend, on_batch=lambda *a: batches.append(a)) as b:
        requests = [rows_request(1, 0, rid="a"), rows_request(3, 100, rid="b"), rows_request(2, 200, rid="c")]
        answers = await asyncio.wait_for(asyncio.gather(*(b.submit(r, None) for r in requests)), GUARD)
    assert backend.rows_seen() == [6]
    merged = backend.calls[0][0]
    assert [list(t.shape) for t in merged.inputs] == [[6, 3], [6, 2]]
    assert merged.raw_input_contents[0] == b"".join(r.raw_input_contents[0] for r in requests)
    for request, answer in zip(requests, answers, strict=True):
        check_own_rows(request, answer)
    assert [(rows, trigger, len(waits)) for rows, trigger, waits in batches] == [(6, "delay", 3)]


async def test_batch_waits_for_its_delay_unless_full() -> None:
    backend = FakeBackend()
    delay = 0.05
    async with batcher(BatchPolicy(max_batch_size=8, max_queue_delay_us=int(delay * 1e6)), backend) as b:
        loop = asyncio.get_running_loop()
        submitted = loop.time()
        first = asyncio.create_task(b.submit(rows_request(2, 0), None))
        await asyncio.sleep(0.01)
        assert backend.calls == []  # not full, not old enough
        second = asyncio.create_task(b.submit(rows_request(3, 50), None))
        await asyncio.wait_for(asyncio.gather(first, second), GUARD)
    assert backend.rows_seen() == [5]
    assert backend.calls[0][2] - submitted >= delay - 0.002  # sent no sooner than the oldest's delay


async def test_full_batch_flushes_at_once() -> None:
    backend = FakeBackend()
    batches: list[tuple[int, str, list[float]]] = []
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_us=LONG)
    async with batcher(policy, backend, on_batch=lambda *a: batches.append(a)) as b:
        requests = [rows_request(1, 0), rows_request(3, 10), rows_request(2, 20)]
        tasks = [asyncio.create_task(b.submit(r, None)) for r in requests]
        # 1 + 3 rows fill a batch; the third request's 2 rows wait for more.
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), GUARD)
        assert backend.rows_seen() == [4]
        assert not tasks[2].done()
        tasks.append(asyncio.create_task(b.submit(rows_request(2, 30), None)))
        await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert backend.rows_seen() == [4, 4]
    assert [trigger for _, trigger, _ in batches] == ["size", "size"]
    for request, task in zip(requests, tasks, strict=False):
        check_own_rows(request, task.result())


async def test_preferred_size_flushes_at_once() -> None:
    backend = FakeBackend()
    policy = BatchPolicy(max_batch_size=16, max_queue_delay_us=LONG, preferred_sizes=(4,))
    async with batcher(policy, backend) as b:
        first = asyncio.create_task(b.submit(rows_request(1, 0), None))
        await asyncio.sleep(0.01)
        assert backend.calls == []
        await asyncio.wait_for(asyncio.gather(first, b.submit(rows_request(3, 10), None)), GUARD)
    assert backend.rows_seen() == [4]


async def test_request_over_max_batch_size_is_sent_alone() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=4, max_queue_delay_us=LONG), backend) as b:
        request = rows_request(6, 0, rid="big")
        answer = await asyncio.wait_for(b.submit(request, None), GUARD)
    assert backend.rows_seen() == [6]
    assert backend.calls[0][0] is request
    check_own_rows(request, answer)


async def test_incompatible_requests_go_in_separate_batches() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=16, max_queue_delay_us=20_000), backend) as b:
        narrow = [rows_request(1, 0), rows_request(2, 10)]
        wide = [rows_request(2, 20, width=4)]
        fewer_outputs = rows_request(1, 30)
        del fewer_outputs.outputs[2]
        answers = await asyncio.wait_for(
            asyncio.gather(*(b.submit(r, None) for r in [*narrow, *wide, fewer_outputs])), GUARD
        )
    shapes = sorted((list(req.inputs[0].shape), len(req.outputs)) for req, _, _ in backend.calls)
    assert shapes == [([1, 3], 2), ([2, 4], 3), ([3, 3], 3)]
    for request, answer in zip([*narrow, *wide], answers, strict=False):
        check_own_rows(request, answer)
    assert [t.name for t in answers[3].outputs] == ["Y", "T"]


async def test_expired_requests_are_never_sent() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=16, max_queue_delay_us=50_000), backend) as b:
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExceeded):
            await b.submit(rows_request(1, 0), loop.time() - 0.001)
        short = asyncio.create_task(b.submit(rows_request(2, 10), loop.time() + 0.01))
        keep = rows_request(3, 20)
        kept = asyncio.create_task(b.submit(keep, None))
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(short, GUARD)
        assert backend.calls == []  # failed at its deadline, before the batch's delay
        check_own_rows(keep, await asyncio.wait_for(kept, GUARD))
    assert backend.rows_seen() == [3]


async def test_batch_call_carries_the_tightest_deadline() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=16, max_queue_delay_us=20_000), backend) as b:
        now = asyncio.get_running_loop().time()
        deadlines = [now + 5.0, now + 2.0, None]
        await asyncio.wait_for(
            asyncio.gather(*(b.submit(rows_request(1, i), d) for i, d in enumerate(deadlines))), GUARD
        )
        [(_, timeout, called_at)] = backend.calls
    assert timeout is not None
    assert timeout == pytest.approx(now + 2.0 - called_at, abs=0.005)


async def test_batch_without_deadlines_has_no_timeout() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=2, max_queue_delay_us=LONG), backend) as b:
        await asyncio.wait_for(asyncio.gather(b.submit(rows_request(1, 0), None),
                                              b.submit(rows_request(1, 1), None)), GUARD)
    assert [timeout for _, timeout, _ in backend.calls] == [None]


async def test_failing_batch_fails_all_its_callers() -> None:
    boom = BackendError("backend fell over")
    backend = FakeBackend(fail=boom)
    async with batcher(BatchPolicy(max_batch_size=16, max_queue_delay_us=20_000), backend) as b:
        results = await asyncio.wait_for(
            asyncio.gather(*(b.submit(rows_request(n, n), None) for n in (1, 2, 3)), return_exceptions=True),
            GUARD,
        )
    assert results == [boom, boom, boom]
    assert all(r is boom for r in results)
    assert backend.rows_seen() == [6]


async def test_unsplittable_output_fails_the_batch() -> None:
    class NoBatchAxis(FakeBackend):
        """Fault injection: answers outputs whose first axis is not the batch's rows."""

        async def __call__(
            self, request: service_pb2.ModelInferRequest, timeout: float | None
        ) -> service_pb2.ModelInferResponse:
            response = await super().__call__(request, timeout)
            response.outputs[0].shape[0] += 1
            return response

    async with batcher(BatchPolicy(max_batch_size=3, max_queue_delay_us=LONG), NoBatchAxis()) as b:
        results = await asyncio.wait_for(
            asyncio.gather(*(b.submit(rows_request(n, n), None) for n in (1, 2)), return_exceptions=True),
            GUARD,
        )
    assert all(isinstance(r, BackendError) for r in results)


async def test_cancelled_queued_caller_is_not_sent() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=16, max_queue_delay_us=30_000), backend) as b:
        gone = asyncio.create_task(b.submit(rows_request(2, 0), None))
        keep = rows_request(3, 10)
        kept = asyncio.create_task(b.submit(keep, None))
        await asyncio.sleep(0)
        assert b.waiting == 2
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.waiting == 1
        check_own_rows(keep, await asyncio.wait_for(kept, GUARD))
    assert backend.rows_seen() == [3]


async def test_cancelled_in_flight_caller_leaves_others_unaffected() -> None:
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    async with batcher(BatchPolicy(max_batch_size=5, max_queue_delay_us=LONG), backend) as b:
        gone = asyncio.create_task(b.submit(rows_request(2, 0), None))
        keep = rows_request(3, 10)
        kept = asyncio.create_task(b.submit(keep, None))
        await asyncio.wait_for(backend.called.wait(), GUARD)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        gate.set()
        check_own_rows(keep, await asyncio.wait_for(kept, GUARD))
    assert backend.rows_seen() == [5]


async def test_queue_overflow_is_refused_at_once() -> None:
    backend = FakeBackend()
    policy = BatchPolicy(max_batch_size=100, max_queue_delay_us=LONG, max_queue_depth=2)
    b = Batcher(policy, backend)
    waiting = [asyncio.create_task(b.submit(rows_request(1, i), None)) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await b.submit(rows_request(1, 9), None)
    assert b.waiting == 2
    await b.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert backend.calls == []


async def test_close_fails_waiting_callers_and_stops() -> None:
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    b = Batcher(BatchPolicy(max_batch_size=2, max_queue_delay_us=LONG), backend)
    in_flight = [asyncio.create_task(b.submit(rows_request(1, i), None)) for i in range(2)]
    await asyncio.wait_for(backend.called.wait(), GUARD)
    queued = asyncio.create_task(b.submit(rows_request(1, 5), None))
    await asyncio.sleep(0)
    await asyncio.wait_for(b.close(), GUARD)
    results = await asyncio.gather(*in_flight, queued, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert backend.rows_seen() == [2]
    assert b._task.done()
    with pytest.raises(Unavailable):
        await b.submit(rows_request(1, 0), None)


async def test_malformed_raw_input_is_refused() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=8, max_queue_delay_us=LONG), backend) as b:
        request = rows_request(2, 0)
        request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
        with pytest.raises(InvalidInput):
            await b.submit(request, None)
    assert backend.calls == []


async def test_on_batch_hook_errors_do_not_break_batching() -> None:
    def hook(rows: int, trigger: str, waits: list[float]) -> None:
        raise RuntimeError("metrics broke")

    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=1, max_queue_delay_us=LONG), backend, on_batch=hook) as b:
        request = rows_request(1, 0)
        check_own_rows(request, await asyncio.wait_for(b.submit(request, None), GUARD))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0, "max_queue_delay_us": 1},
        {"max_batch_size": 4, "max_queue_delay_us": -1},
        {"max_batch_size": 4, "max_queue_delay_us": 1, "max_queue_depth": 0},
        {"max_batch_size": 4, "max_queue_delay_us": 1, "preferred_sizes": (2, 5)},
        {"max_batch_size": 4, "max_queue_delay_us": 1, "preferred_sizes": (0,)},
        {"max_batch_size": 4, "max_queue_delay_us": 1, "max_inflight_batches": 0},
    ],
)
def test_policy_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**kwargs)  # type: ignore[arg-type]


async def test_many_callers_with_deadlines_all_get_their_rows() -> None:
    backend = FakeBackend()
    async with batcher(BatchPolicy(max_batch_size=7, max_queue_delay_us=1_000), backend) as b:
        now = asyncio.get_running_loop().time()
        requests = [rows_request(1 + i % 3, 10 * i, rid=str(i)) for i in range(200)]
        answers = await asyncio.wait_for(asyncio.gather(*(b.submit(r, now + 30) for r in requests)), GUARD)
        assert len(b._deadlines) <= 64 + 2 * b.waiting
    for request, answer in zip(requests, answers, strict=True):
        check_own_rows(request, answer)
    assert all(rows <= 7 for rows in backend.rows_seen())
    assert sum(backend.rows_seen()) == sum(1 + i % 3 for i in range(200))


async def test_batches_are_held_back_while_the_backend_is_busy() -> None:
    """With max_inflight_batches out, calls keep gathering: the busy backend then gets one full
    batch instead of a queue of small ones, and it goes as soon as a slot frees up."""
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_us=1_000, max_inflight_batches=1)
    async with batcher(policy, backend) as b:
        first = asyncio.create_task(b.submit(rows_request(1, 0), None))
        await asyncio.wait_for(backend.called.wait(), GUARD)  # sent after its 1 ms delay
        backend.called.clear()
        requests = [rows_request(1, 10 * (i + 1)) for i in range(6)]
        later = [asyncio.create_task(b.submit(r, None)) for r in requests]
        await asyncio.sleep(0.02)  # 20x the queue delay: without the limit these would be out
        assert backend.rows_seen() == [1]
        assert b.waiting == 6
        gate.set()  # the first batch returns; the six waiting calls go as one batch
        await asyncio.wait_for(asyncio.gather(first, *later), GUARD)
    assert backend.rows_seen() == [1, 6]
    for request, task in zip(requests, later, strict=True):
        check_own_rows(request, task.result())


async def test_inflight_limit_still_expires_waiting_calls() -> None:
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_us=0, max_inflight_batches=1)
    async with batcher(policy, backend) as b:
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(b.submit(rows_request(1, 0), None))
        await asyncio.wait_for(backend.called.wait(), GUARD)
        held = asyncio.create_task(b.submit(rows_request(1, 5), loop.time() + 0.02))
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(held, GUARD)  # failed at its deadline, not when the slot frees
        assert not first.done()
        gate.set()
        await asyncio.wait_for(first, GUARD)
    assert backend.rows_seen() == [1]


async def test_next_batch_leaves_before_the_previous_callers_are_answered() -> None:
    """When a batch's answer arrives, the held-back batch is sent first, then its callers resume:
    the backend is not left idle while the router answers them."""
    events: list[str] = []
    gate = asyncio.Event()
    inner = FakeBackend()

    async def backend(
        request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        events.append(f"call {request.inputs[0].shape[0]}")
        if len(events) == 1:
            await gate.wait()
        return await inner(request, timeout)

    async def caller(b: Batcher, request: service_pb2.ModelInferRequest, tag: str) -> None:
        check_own_rows(request, await b.submit(request, None))
        events.append(tag)

    policy = BatchPolicy(max_batch_size=2, max_queue_delay_us=LONG, max_inflight_batches=1)
    async with batcher(policy, backend) as b:  # type: ignore[arg-type]
        first = [asyncio.create_task(caller(b, rows_request(1, i), "answered A")) for i in range(2)]
        await asyncio.sleep(0.01)
        second = [asyncio.create_task(caller(b, rows_request(1, 10 + i), "answered B")) for i in range(2)]
        await asyncio.sleep(0.01)
        assert events == ["call 2"]  # B is full but held back while A is out
        gate.set()
        await asyncio.wait_for(asyncio.gather(*first, *second), GUARD)
    assert events[:2] == ["call 2", "call 2"]  # B went out before A's callers resumed
    assert events[2:] == ["answered A", "answered A", "answered B", "answered B"]


async def test_idle_means_nothing_waits_and_nothing_is_out() -> None:
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    async with batcher(BatchPolicy(max_batch_size=4, max_queue_delay_us=LONG), backend) as b:
        assert b.idle
        task = asyncio.create_task(b.submit(rows_request(1, 0), None))
        await asyncio.sleep(0)
        assert not b.idle  # waiting
        task2 = asyncio.create_task(b.submit(rows_request(3, 5), None))
        await asyncio.wait_for(backend.called.wait(), GUARD)
        assert not b.idle and b.waiting == 0  # the batch is out
        gate.set()
        await asyncio.wait_for(asyncio.gather(task, task2), GUARD)
        await asyncio.sleep(0)
        assert b.idle
