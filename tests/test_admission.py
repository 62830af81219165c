"""Admission control per model version: bounded slots and queue, refusals at once, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from router.admission import Limiter
from router.errors import DeadlineExceeded, Overloaded


async def test_slots_then_queue_then_refusal_in_arrival_order() -> None:
    lim = Limiter("m:1", max_inflight=2, max_queued=2)
    a, b = await lim.acquire(None), await lim.acquire(None)
    order: list[str] = []

    async def waiter(tag: str) -> None:
        started = await lim.acquire(None)
        order.append(tag)
        lim.release(started)

    tasks = [asyncio.create_task(waiter(t)) for t in ("c", "d")]
    await asyncio.sleep(0)
    assert (lim.inflight, lim.queued) == (2, 2)
    with pytest.raises(
        Overloaded,
        match=r"2 calls at the backend and 2 waiting reach "
        r"limits.max_inflight_per_version=2",
    ):
        await lim.acquire(None)
    lim.release(a)
    lim.release(b)
    await asyncio.gather(*tasks)
    assert order == ["c", "d"] and (lim.inflight, lim.queued) == (0, 0)


async def test_a_queued_call_past_its_deadline_leaves_unsent() -> None:
    lim = Limiter("m:1", max_inflight=1, max_queued=4)
    held = await lim.acquire(None)
    with pytest.raises(DeadlineExceeded, match="waited for a slot .* it was not sent"):
        await lim.acquire(0.05)
    assert lim.queued == 0
    lim.release(held)
    assert lim.inflight == 0


async def test_expected_wait_past_the_deadline_is_refused_at_once() -> None:
    lim = Limiter("m:1", max_inflight=1, max_queued=100)
    lim.release(await lim.acquire(None))
    lim.service_s = 0.1  # calls hold a slot 100 ms on average
    held = await lim.acquire(None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(
        Overloaded, match="expected in 100 ms .* takes 100 ms, past the call's deadline in 150 ms"
    ):
        await lim.acquire(0.15)  # a slot in 100 ms, then 100 ms of service: past 150 ms
    assert loop.time() - start < 0.05  # refused, not queued until the deadline
    lim.release(held)


async def test_cancelled_waiter_gives_its_place_and_slot_back() -> None:
    lim = Limiter("m:1", max_inflight=1, max_queued=4)
    held = await lim.acquire(None)
    task = asyncio.create_task(lim.acquire(None))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.queued == 0
    lim.release(held)
    assert lim.inflight == 0
    # a slot handed to a waiter that is cancelled at the same moment is passed on, not lost
    held = await lim.acquire(None)
    first = asyncio.create_task(lim.acquire(None))
    second = asyncio.create_task(lim.acquire(None))
    await asyncio.sleep(0)
    lim.release(held)  # hands the slot to `first`...
    first.cancel()  # ...which gives up before running
    with pytest.raises(asyncio.CancelledError):
        await first
    lim.release(await second)
    assert (lim.inflight, lim.queued) == (0, 0)


async def test_service_time_is_a_moving_average() -> None:
    lim = Limiter("m:1", max_inflight=4, max_queued=4)
    started = await lim.acquire(None)
    lim.release(started - 0.1)  # held 100 ms
    assert lim.service_s == pytest.approx(0.1, abs=0.01)
    lim.release(await lim.acquire(None) - 0.2)
    assert lim.service_s == pytest.approx(0.1 + 0.2 * (0.2 - 0.1), abs=0.01)
    assert lim.expected_wait() == 0.0


async def test_resize_gives_new_slots_to_waiting_calls() -> None:
    lim = Limiter("m:1", max_inflight=1, max_queued=4)
    held = lim.try_acquire()
    assert held is not None and lim.try_acquire() is None
    waiting = [asyncio.create_task(lim.acquire(None)) for _ in range(2)]
    await asyncio.sleep(0)
    lim.resize(3, 4)  # a changed registration: two more slots
    started = await asyncio.gather(*waiting)
    assert lim.inflight == 3 and lim.queued == 0
    for s in (held, *started):
        lim.release(s)
    assert lim.inflight == 0
