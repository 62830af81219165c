"""Admission control per model version: a bounded number of calls at the backend, a bounded
queue behind them, and everything else refused at once.

A backend serves a model at some rate; calls beyond it only wait. Without a bound they wait in
the router's memory until their deadline has long passed and the backend then works on answers
nobody reads, so goodput collapses exactly when load is highest. A `Limiter` keeps at most
`max_inflight` calls of a version at its backend and at most `max_queued` waiting for a slot, in
arrival order (with `adaptive_floor_s`, fewer at the backend while its calls show a queue there:
see `observe`). A call is refused at once (Overloaded, RESOURCE_EXHAUSTED / 429) when the queue is
full or when the wait it would face plus its own service time, both estimated from recent
service times, is longer than its remaining deadline; a queued call whose deadline passes
leaves the queue unsent (DeadlineExceeded). Refusing costs a few microseconds, so the
backend's capacity goes to calls that can still be answered in time.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

from router.errors import DeadlineExceeded, Overloaded

# Weight of the newest service time in the moving average.
_EWMA = 0.2
# Adaptive limit: backend calls slower than this many times the fastest recent ones mean calls
# queue at the backend, and the limit comes down.
TOLERANCE = 2.0


class Limiter:
    """Bounds one model version's calls; `acquire()` before the backend call, `release()` after."""

    def __init__(
        self, name: str, max_inflight: int, max_queued: int, adaptive_floor_s: float | None = None
    ) -> None:
        self.name = name
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.inflight = 0
        # seconds a call holds a slot, on average (0 until the first release)
        self.service_s = 0.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # The limit in force: max_inflight, or less when adaptive (see observe).
        self.cap = max_inflight
        self.adaptive_floor_s = adaptive_floor_s
        self._limit = float(max_inflight)
        self.rtt_min = math.inf
        self._window: list[float] = [0, 0.0, math.inf]  # calls, seconds, fastest
        self._window_queued = False

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    def expected_wait(self) -> float:
        """Seconds a call arriving now would wait for a slot (0 when one is free)."""
        if self.inflight < self.cap and not self._waiters:
            return 0.0
        return (len(self._waiters) + 1) * self.service_s / self.cap

    def try_acquire(self) -> float | None:
        """Takes a free slot without waiting (the common case, kept synchronous and cheap):
        the start time for release(), or None when the call must queue (use acquire())."""
        if self.inflight < self.cap and not self._waiters:
            self.inflight += 1
            return time.perf_counter()
        return None

    def resize(self, max_inflight: int, max_queued: int) -> None:
        """Applies new limits (a changed registration); more slots go to waiting calls at once."""
        self.max_inflight, self.max_queued = max_inflight, max_queued
        adaptive = self.adaptive_floor_s is not None
        self._limit = min(self._limit, float(max_inflight)) if adaptive else float(max_inflight)
        self.cap = max(1, int(self._limit))
        self._wake()

    def _wake(self) -> None:
        """Gives free slots (under the limit in force) to waiting calls."""
        while self._waiters and self.inflight < self.cap:
            future = self._waiters.popleft()
            if not future.done():
                self.inflight += 1
                future.set_result(None)

    async def acquire(self, timeout: float | None) -> float:
        """Takes a slot, waiting at most timeout seconds; returns the start time for release().

        Overloaded at once when the queue is full or the expected wait plus a service time
        exceeds timeout; DeadlineExceeded when the timeout passes in the queue (the call was never sent).
        """
        if self.inflight < self.cap and not self._waiters:
            self.inflight += 1
            return time.perf_counter()
        self._window_queued = True
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(
                f"model {self.name}: {self.inflight} calls at the backend and {len(self._waiters)} "
                f"waiting reach the limits ({self._limits_text()}, "
                f"limits.max_queued_per_version={self.max_queued}); retry later"
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
                    f"({self._limits_text()}); it was not sent"
                ) from None
            raise
        return time.perf_counter()

    def _limits_text(self) -> str:
        text = f"limits.max_inflight_per_version={self.max_inflight}"
        if self.cap < self.max_inflight:
            text += f", adapted to {self.cap} by the backend's latency"
        return text

    def release(self, started: float | None) -> None:
        """Gives a slot back (to the first waiting call, if any); started: acquire()'s result."""
        if started is not None:
            held = time.perf_counter() - started
            self.service_s = (
                held if self.service_s == 0.0 else (self.service_s + _EWMA * (held - self.service_s))
            )
            if self.adaptive_floor_s is not None:
                self.observe(held)
        if self.inflight > self.cap:  # the limit came down: this slot goes away
            self.inflight -= 1
            return
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes to it; inflight stays the same
                return
        self.inflight -= 1

    def observe(self, held: float) -> None:
        """Adapts the limit to one backend call's time (a Vegas-like gradient, once per window
        of max(16, limit) calls).

        The fastest calls of recent windows (rtt_min, drifting up 1% per window so that a backend
        that became slower is followed) show the backend's own service time. When a window's
        average is more than TOLERANCE times that and above adaptive_floor_s, calls queue at the
        backend: the limit is scaled down by the ratio (at most halved). When calls had to queue
        here and the backend shows no queue, it grows by its square root, up to max_inflight.
        The floor keeps fast calls (a millisecond or so, slowed by a busy CPU rather than a
        backend queue) from ever lowering it.
        """
        window = self._window
        window[0] += 1
        window[1] += held
        if held < window[2]:
            window[2] = held
        if window[0] < max(16, self.cap):
            return
        rtt = window[1] / window[0]
        self.rtt_min = min(self.rtt_min * 1.01, window[2])
        floor = self.adaptive_floor_s or 0.0
        if rtt > TOLERANCE * self.rtt_min and rtt > floor:
            self._limit = max(1.0, self._limit * max(0.5, TOLERANCE * self.rtt_min / rtt))
        elif self._window_queued and rtt <= TOLERANCE * self.rtt_min:
            self._limit = min(float(self.max_inflight), self._limit + math.sqrt(self._limit))
        self.cap = max(1, int(self._limit))
        self._window = [0, 0.0, math.inf]
        self._window_queued = False
        self._wake()
