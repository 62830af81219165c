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
        match=r"2 calls at the backend and 2 waiting reach the limits "
        r"\(limits.max_inflight_per_version=2, limits.max_queued_per_version=2\)",
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


def _serial_backend(lim: Limiter, service_s: float, rounds: int) -> list[int]:
    """Feeds the limiter the call times of a backend serving one call at a time with `cap` calls
    outstanding (each waits for those ahead of it); the limit after each window."""
    caps = []
    for _ in range(rounds):
        lim._window_queued = True  # callers are queueing in the router: the limit binds
        for _ in range(max(16, lim.cap)):
            lim.observe(lim.cap * service_s)
        caps.append(lim.cap)
    return caps


def test_adaptive_limit_comes_down_to_what_a_queueing_backend_serves() -> None:
    lim = Limiter("m:1", max_inflight=64, max_queued=100, adaptive_floor_s=0.02)
    lim.observe(0.010)  # one call alone: the backend's own 10 ms
    caps = _serial_backend(lim, 0.010, 12)
    assert caps[0] < 64  # down after the first window
    assert 1 <= caps[-1] <= 4  # 10 ms per call, 20 ms tolerated: a couple at the backend
    assert "adapted to" in lim._limits_text()


def test_fast_calls_slowed_by_the_cpu_never_lower_the_limit() -> None:
    lim = Limiter("m:1", max_inflight=64, max_queued=100, adaptive_floor_s=0.02)
    lim.observe(0.0004)
    for _ in range(10):
        for _ in range(64):
            lim.observe(0.008)  # 20x the fastest, but under the 20 ms floor
    assert lim.cap == 64


def test_adaptive_limit_grows_back_when_the_queue_is_gone() -> None:
    lim = Limiter("m:1", max_inflight=64, max_queued=100, adaptive_floor_s=0.02)
    lim.observe(0.010)
    _serial_backend(lim, 0.010, 12)
    low = lim.cap
    for _ in range(30):  # the backend got capacity: calls take their own 10 ms again
        lim._window_queued = True
        for _ in range(max(16, lim.cap)):
            lim.observe(0.010)
    assert lim.cap > low and lim.cap == 64


def test_explicit_limits_do_not_adapt() -> None:
    lim = Limiter("m:1", max_inflight=8, max_queued=100)  # no floor: not adaptive
    held = [lim.try_acquire() for _ in range(8)]
    for s in held:
        assert s is not None
        lim.release(s - 1.0)  # every call took a second
    assert lim.cap == 8
