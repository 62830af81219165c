"""Several endpoints behind one backend binding: balancing, health, ejection and retries.

An EndpointSet serves one binding (backend kind, endpoints, the backend's model and version);
model versions with the same binding share it. Per call it picks the admitted endpoint with the
fewest calls outstanding (ties rotate), and when the call fails with BackendUnavailable
(UNAVAILABLE) it retries once per other endpoint within the caller's deadline, as long as the
retry budget allows: a token bucket where each call earns `retry_budget` tokens (up to
`retry_budget_cap`) and each retry spends one, so retries stay within that share of calls.

An endpoint is admitted unless
- passively ejected: `eject_after_failures` consecutive UNAVAILABLE answers eject it for
  `eject_base_s`, doubled for every further ejection without a successful call in between (up
  to `eject_max_s`); once back, a single failure ejects it again (it is on probation until a
  call succeeds);
- or its last active health check failed: every `health_interval_s` a background task asks
  each endpoint whether the model is ready (Triton ModelReady, TorchServe Ping and a READY
  worker) with the control timeout; a passing check admits it again once its ejection is over.

Timeouts are not counted as failures: a caller's short deadline is not the backend's fault. A
call that times out instead makes the set check that endpoint's health at once; a hung backend
also fails (times out) that check and is taken out, while a slow model on a healthy server
passes it. Until then least-outstanding balancing already steers calls away from it, since
its stuck calls count as outstanding.

When no endpoint can take a call, it fails at once with BackendUnavailable naming every
endpoint and why (the dataplane may then use a fallback version).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from adapters.base import Backend, BackendPool
from router import metrics
from router.config import BackendSettings
from router.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    TensorgateError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# The status code an endpoint's answer is counted under (tensorgate_endpoint_requests_total).
_CODES: dict[type[TensorgateError], str] = {
    BackendUnavailable: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    InvalidInput: "INVALID_ARGUMENT",
    Overloaded: "RESOURCE_EXHAUSTED",
    BackendError: "INTERNAL",
}


@dataclass(frozen=True)
class EndpointPolicy:
    """Health, ejection and retry limits of every endpoint set (the backend.* settings)."""

    health_interval_s: float = 2.0
    eject_after_failures: int = 5
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0
    retry_budget: float = 0.2
    retry_budget_cap: int = 10

    @classmethod
    def from_settings(cls, s: BackendSettings) -> EndpointPolicy:
        """The policy the settings describe."""
        return cls(
            health_interval_s=s.health_interval_s,
            eject_after_failures=s.eject_after_failures,
            eject_base_s=s.eject_base_s,
            eject_max_s=s.eject_max_s,
            retry_budget=s.retry_budget,
            retry_budget_cap=s.retry_budget_cap,
        )

    def ejection_s(self, ejections: int) -> float:
        """How long the ejection after `ejections` earlier ones (without success) lasts."""
        return min(self.eject_base_s * 2.0 ** min(ejections, 32), self.eject_max_s)


class RetryBudget:
    """A token bucket bounding retries to a share of calls: each call earns `ratio` tokens
    (the bucket holds at most `cap`; it starts full), each retry spends one."""

    def __init__(self, ratio: float, cap: int) -> None:
        self.ratio = ratio
        self.cap = float(cap)
        self.tokens = float(cap)

    def earn(self) -> None:
        """A call was made: adds its share of a retry."""
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.cap else self.cap

    def spend(self) -> bool:
        """Takes one retry's token; False (and nothing taken) when there is none."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Endpoint:
    """One endpoint of a set: its backend connection and what the set knows of its health."""

    __slots__ = (
        "address",
        "backend",
        "outstanding",
        "failures",
        "ejections",
        "ejected_until",
        "healthy",
        "reason",
        "probing",
    )

    def __init__(self, address: str, backend: Backend) -> None:
        self.address = address
        self.backend = backend
        self.outstanding = 0  # calls sent and not answered
        self.failures = 0  # consecutive UNAVAILABLE answers
        self.ejections = 0  # ejections since the last successful call
        self.ejected_until = 0.0  # the set's clock when the current ejection ends
        self.healthy = True  # the last health check passed (or none has run yet)
        self.reason = ""  # why it was last ejected or found unhealthy
        self.probing = False  # a health check of this endpoint alone is running

    def admitted(self, now: float) -> bool:
        """True when calls may be sent to it."""
        return self.healthy and now >= self.ejected_until

    def why_not(self, now: float) -> str:
        """Why it takes no calls now (for error messages)."""
        if not self.healthy:
            return f"not ready: {self.reason}"
        if now < self.ejected_until:
            return f"ejected for {self.ejected_until - now:.1f}s more after {self.reason}"
        return "admitted"


class EndpointSet:
    """The endpoints of one backend binding: picks one per call, retries, checks health.

    Made and used inside the running event loop; close() stops its background checks.
    """

    def __init__(
        self,
        kind: str,
        endpoints: Sequence[str],
        model: str,
        version: str,
        pool: BackendPool,
        policy: EndpointPolicy,
        clock: Callable[[], float] = time.monotonic,
        before_checks: Callable[[], None] | None = None,
    ) -> None:
        """clock (seconds, monotonic) times ejections and deadlines; tests pass their own.
        before_checks runs before every periodic health round (the dataplane drops sets whose
        binding left the registry there)."""
        if not endpoints:
            raise ValueError("an endpoint set needs at least one endpoint")
        self.kind = kind
        self.model = model
        self.version = version
        self.policy = policy
        self._clock = clock
        self._before_checks = before_checks
        self.endpoints = [Endpoint(a, pool.get(kind, a)) for a in endpoints]
        self.budget = RetryBudget(policy.retry_budget, policy.retry_budget_cap)
        self._next = 0
        self._health_task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._closed = False
        metrics.ENDPOINT_ADMITTED.add_source(self)

    @property
    def name(self) -> str:
        """The binding, for messages: `triton model simple`."""
        version = f" version {self.version}" if self.version else ""
        return f"{self.kind} model {self.model}{version}"

    # -- calls -----------------------------------------------------------------------------

    def _pick(self, now: float, tried: dict[Endpoint, str]) -> Endpoint | None:
        """The admitted, untried endpoint with the fewest outstanding calls (ties rotate)."""
        endpoints = self.endpoints
        n = len(endpoints)
        start = self._next
        if not tried:  # a call's first pick moves the tie-break on; its retries do not
            self._next = start + 1 if start + 1 < n else 0
        best: Endpoint | None = None
        for i in range(n):
            ep = endpoints[(start + i) % n]
            if (best is None or ep.outstanding < best.outstanding) and ep.admitted(now):
                if ep not in tried:
                    best = ep
        return best

    async def call(self, fn: Callable[[Backend, float], Awaitable[T]], timeout: float) -> T:
        """fn(backend, remaining timeout) on a picked endpoint; on BackendUnavailable, again on
        another endpoint while time, endpoints and the retry budget last.

        Raises BackendUnavailable naming every endpoint and why when none can take the call,
        and whatever else fn raised (DeadlineExceeded, InvalidInput, ...) as it is.
        """
        if self._health_task is None:
            self._start_health()
        now = self._clock()
        deadline = now + timeout
        self.budget.earn()
        tried: dict[Endpoint, str] = {}  # endpoint -> why its attempt failed
        ep = self._pick(now, tried)
        while True:
            if ep is None:
                raise BackendUnavailable(self._none_left(now, tried))
            ep.outstanding += 1
            try:
                result = await fn(ep.backend, deadline - now)
            except BackendUnavailable as e:
                error = e
                self._count(ep, "UNAVAILABLE")
                self._failed(ep, e.message)
            except DeadlineExceeded:
                self._count(ep, "DEADLINE_EXCEEDED")
                self._timed_out(ep)
                raise
            except TensorgateError as e:  # it answered: alive, the error is the call's
                self._count(ep, _CODES.get(type(e), "UNKNOWN"))
                self._answered(ep)
                raise
            except asyncio.CancelledError:
                self._count(ep, "CANCELLED")
                raise
            except BaseException:
                self._count(ep, "UNKNOWN")
                raise
            else:
                self._count(ep, "OK")
                self._answered(ep)
                return result
            finally:
                ep.outstanding -= 1
            tried[ep] = error.message
            failed = ep
            now = self._clock()
            if now >= deadline:
                raise error
            ep = self._pick(now, tried)
            if ep is None:
                if len(self.endpoints) == 1:
                    raise error
                raise BackendUnavailable(self._none_left(now, tried))
            if not self.budget.spend():
                metrics.ENDPOINT_RETRIES_DENIED.inc((self.kind,))
                raise BackendUnavailable(f"{error.message} (not retried: retry budget spent)")
            metrics.ENDPOINT_RETRIES.inc((self.kind, failed.address))

    def _count(self, ep: Endpoint, code: str) -> None:
        metrics.ENDPOINT_REQUESTS.inc((self.kind, ep.address, code))

    def _none_left(self, now: float, tried: dict[Endpoint, str]) -> str:
        """Why no endpoint can take the call, naming each."""
        whys = []
        for ep in self.endpoints:
            why = tried.get(ep)
            whys.append(f"{ep.address}: {ep.why_not(now) if why is None else why}")
        return f"{self.name}: no endpoint can take the call ({'; '.join(whys)})"

    def _answered(self, ep: Endpoint) -> None:
        """The endpoint answered: its failure and ejection counts start over."""
        ep.failures = 0
        ep.ejections = 0

    def _failed(self, ep: Endpoint, reason: str) -> None:
        """One UNAVAILABLE answer; the last of eject_after_failures in a row ejects it."""
        now = self._clock()
        if now < ep.ejected_until:  # a call sent before the ejection: keep the ejection's reason
            return
        ep.failures += 1
        if ep.failures >= self.policy.eject_after_failures:
            self._eject(ep, now, f"{ep.failures} failures in a row (the last: {reason})", "failures")

    def _eject(self, ep: Endpoint, now: float, reason: str, kind: str) -> None:
        """Ejects an endpoint for its backoff; it comes back on probation (one failure ejects)."""
        duration = self.policy.ejection_s(ep.ejections)
        ep.ejections += 1
        ep.ejected_until = now + duration
        ep.failures = self.policy.eject_after_failures - 1
        ep.reason = reason
        metrics.ENDPOINT_EJECTIONS.inc((self.kind, ep.address, kind))
        log.warning("%s: endpoint %s ejected for %.1fs: %s", self.name, ep.address, duration, reason)

    def _timed_out(self, ep: Endpoint) -> None:
        """A call to ep timed out: checks ep's health now (a hung backend fails the check)."""
        if ep.probing or self._closed:
            return
        ep.probing = True
        task = asyncio.get_running_loop().create_task(self._probe(ep))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, ep: Endpoint) -> None:
        try:
            await self._check(ep, "after a timed-out call")
        finally:
            ep.probing = False

    # -- health ----------------------------------------------------------------------------

    def _start_health(self) -> None:
        """Starts the periodic health checks (once, in the running loop)."""
        if self._closed:
            return
        self._health_task = asyncio.get_running_loop().create_task(
            self._health_loop(), name=f"health {self.name}"
        )

    async def _health_loop(self) -> None:
        while True:
            try:
                if self._before_checks is not None:
                    self._before_checks()
                await self.check_health()
            except Exception:  # a bug must not stop the checks
                log.exception("%s: health check failed", self.name)
            await asyncio.sleep(self.policy.health_interval_s)

    async def check_health(self) -> None:
        """Checks every endpoint once, concurrently."""
        await asyncio.gather(*(self._check(ep, "") for ep in self.endpoints))

    async def _check(self, ep: Endpoint, when: str) -> None:
        """One health check of one endpoint: a failure takes it out, a pass lets it back."""
        ok = await ep.backend.model_ready(self.model, self.version)
        if ok and not ep.healthy:
            ep.healthy = True
            log.warning("%s: endpoint %s passes its health check again", self.name, ep.address)
        elif not ok and ep.healthy:
            ep.healthy = False
            ep.reason = (
                f"health check {when + ' ' if when else ''}failed ({self.kind} says model "
                f"{self.model} is not ready, or did not answer within the control timeout)"
            )
            metrics.ENDPOINT_EJECTIONS.inc((self.kind, ep.address, "health"))
            log.warning("%s: endpoint %s taken out: %s", self.name, ep.address, ep.reason)

    async def ready(self) -> bool:
        """True when an endpoint is admitted after checking every endpoint's health now."""
        if self._health_task is None:
            self._start_health()
        await self.check_health()
        now = self._clock()
        return any(ep.admitted(now) for ep in self.endpoints)

    def gauge_samples(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """tensorgate_endpoint_admitted: 1 per endpoint taking calls, else 0 (any thread)."""
        now = self._clock()
        for ep in self.endpoints:
            model = f"{self.model}:{self.version}" if self.version else self.model
            yield (self.kind, ep.address, model), 1.0 if ep.admitted(now) else 0.0

    async def close(self) -> None:
        """Stops the health checks."""
        self._closed = True
        metrics.ENDPOINT_ADMITTED.remove_source(self)
        tasks = [t for t in (self._health_task, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
