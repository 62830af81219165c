"""Admission control per model version: a bounded number of calls at the backend, a bounded
queue behind them, and everything else refused at once.

A backend serves a model at some rate; calls beyond it only wait. Without a bound they wait in
the router's memory until their deadline has long passed and the backend then works on answers
nobody reads, so goodput collapses exactly when load is highest. A `Limiter` keeps at most
`max_inflight` calls of a version at its backend and at most `max_queued` waiting for a slot, in
arrival order. A call is refused at once (Overloaded, RESOURCE_EXHAUSTED / 429) when the queue is
full or when the wait it would face plus its own service time, both estimated from recent
service times, is longer than its remaining deadline; a queued call whose deadline passes
leaves the queue unsent (DeadlineExceeded). Refusing costs a few microseconds, so the
backend's capacity goes to calls that can still be answered in time.
"""

from __future__ import annotations

import asyncio
import collections
import time

from router.errors import DeadlineExceeded, Overloaded

# Weight of the newest service time in the moving average.
_EWMA = 0.2


class Limiter:
    """Bounds one model version's calls; `acquire()` before the backend call, `release()` after."""

    def __init__(self, name: str, max_inflight: int, max_queued: int) -> None:
        self.name = name
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.inflight = 0
        # seconds a call holds a slot, on average (0 until the first release)
        self.service_s = 0.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    def expected_wait(self) -> float:
        """Seconds a call arriving now would wait for a slot (0 when one is free)."""
        if self.inflight < self.max_inflight and not self._waiters:
            return 0.0
        return (len(self._waiters) + 1) * self.service_s / self.max_inflight

    def try_acquire(self) -> float | None:
        """Takes a free slot without waiting (the common case, kept synchronous and cheap):
        the start time for release(), or None when the call must queue (use acquire())."""
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return time.perf_counter()
        return None

    def resize(self, max_inflight: int, max_queued: int) -> None:
        """Applies new limits (a changed registration); more slots go to waiting calls at once."""
        self.max_inflight, self.max_queued = max_inflight, max_queued
        while self._waiters and self.inflight < self.max_inflight:
            future = self._waiters.popleft()
            if not future.done():
                self.inflight += 1
                future.set_result(None)

    async def acquire(self, timeout: float | None) -> float:
        """Takes a slot, waiting at most timeout seconds; returns the start time for release().

        Overloaded at once when the queue is full or the expected wait plus a service time
        exceeds timeout; DeadlineExceeded when the timeout passes in the queue (the call was never sent).
        """
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return time.perf_counter()
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(
                f"model {self.name}: {self.inflight} calls at the backend and {len(self._waiters)} "
                f"waiting reach limits.max_inflight_per_version={self.max_inflight} and "
                f"limits.max_queued_per_version={self.max_queued}; retry later"
            )
        wait = self.expected_wait()
        if timeout is not None and wait + self.service_s > timeout:
            raise Overloaded(
                f"model {self.name}: a slot is expected in {wait * 1000:.0f} ms ({len(self._waiters)} "
                f"calls waiting) and a call takes {self.service_s * 1000:.0f} ms, past the call's "
                f"deadline in {max(timeout, 0) * 1000:.0f} ms; retry later"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            if timeout is None:
                await future
            else:
                async with asyncio.timeout(timeout):
                    await future
        except BaseException as e:
            if future.done() and not future.cancelled():
                self.release(None)  # the slot was handed over as we gave up: pass it on
            else:
                future.cancel()
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            if isinstance(e, TimeoutError):
                raise DeadlineExceeded(
                    f"model {self.name}: the deadline passed while the call waited for a slot "
                    f"(limits.max_inflight_per_version={self.max_inflight}); it was not sent"
                ) from None
            raise
        return time.perf_counter()

    def release(self, started: float | None) -> None:
        """Gives a slot back (to the first waiting call, if any); started: acquire()'s result."""
        if started is not None:
            held = time.perf_counter() - started
            self.service_s = (
                held if self.service_s == 0.0 else (self.service_s + _EWMA * (held - self.service_s))
            )
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes to it; inflight stays the same
                return
        self.inflight -= 1
