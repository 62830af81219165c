"""Endpoint sets: least-outstanding balancing, retries and their budget, ejection, health checks.

The backends here are FAULT INJECTORS (scripted fakes that answer, refuse, hang or fail their
health check on demand); the real Triton is in tests/test_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tritonclient.grpc import service_pb2

from adapters.base import Backend, BackendModelMetadata, BackendOptions, BackendPool
from router import metrics
from router.endpoints import EndpointPolicy, EndpointSet, RetryBudget
from router.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    TensorgateError,
)


class FaultInjector(Backend):
    """FAULT INJECTOR: a backend whose answers the test scripts (ok, an error, or a hang)."""

    kind = "fake"

    def __init__(self, endpoint: str, options: BackendOptions) -> None:
        super().__init__(endpoint, options)
        self.error: TensorgateError | None = None  # raised by infer when set
        self.hang = False  # infer never answers (until its timeout, as a real channel would)
        self.ready = True  # what model_ready answers
        self.calls: list[float | None] = []  # the timeout of every infer
        self.gate: asyncio.Event | None = None  # infer waits for it when set
        self.checks = 0

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        self.calls.append(timeout)
        if self.gate is not None:
            await self.gate.wait()
        if self.hang:
            await asyncio.sleep(timeout or 3600)
            raise DeadlineExceeded(f"deadline exceeded waiting for fake {self.endpoint}")
        if self.error is not None:
            raise self.error
        return service_pb2.ModelInferResponse(model_name=self.endpoint)

    async def model_metadata(self, model: str, version: str) -> BackendModelMetadata:
        raise NotImplementedError

    async def model_ready(self, model: str, version: str) -> bool:
        self.checks += 1
        return self.ready

    async def close(self) -> None:
        pass


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_set(
    n: int = 2, clock: Callable[[], float] | None = None, **policy: Any
) -> tuple[EndpointSet, list[FaultInjector]]:
    pool = BackendPool({"fake": FaultInjector}, BackendOptions())
    addresses = [f"10.0.0.{i + 1}:8001" for i in range(n)]
    # health checks far apart unless a test asks: they run only when the test calls them
    options = {"health_interval_s": 3600.0, **policy}
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    endpoints = EndpointSet("fake", addresses, "m", "", pool, EndpointPolicy(**options), **kwargs)
    fakes = [pool.get("fake", a) for a in addresses]
    assert all(isinstance(f, FaultInjector) for f in fakes)
    return endpoints, fakes  # type: ignore[return-value]


def infer(backend: Backend, timeout: float) -> Awaitable[service_pb2.ModelInferResponse]:
    return backend.infer(service_pb2.ModelInferRequest(), timeout)


async def test_idle_endpoints_take_turns_and_busy_ones_are_avoided() -> None:
    endpoints, fakes = make_set(3)
    try:
        answers = [(await endpoints.call(infer, 5)).model_name for _ in range(6)]
        assert sorted(answers) == sorted([f.endpoint for f in fakes] * 2)
        # two calls stuck at endpoint 0 and one at endpoint 1: the next ones go to endpoint 2
        gate = asyncio.Event()
        fakes[0].gate = fakes[1].gate = gate
        stuck = [asyncio.create_task(endpoints.call(infer, 5)) for _ in range(2)]
        await asyncio.sleep(0)
        for f in fakes:
            f.calls.clear()
        fakes[2].gate = gate
        third = asyncio.create_task(endpoints.call(infer, 5))
        await asyncio.sleep(0)
        assert [len(f.calls) for f in fakes] == [0, 0, 1]  # the idle one
        fakes[2].gate = None
        assert [e.outstanding for e in endpoints.endpoints] == [1, 1, 1]
        fakes[1].gate = None
        fakes[0].calls.clear()
        gate.set()
        await asyncio.gather(*stuck, third)
        assert [e.outstanding for e in endpoints.endpoints] == [0, 0, 0]
    finally:
        await endpoints.close()


async def test_unavailable_is_retried_on_another_endpoint_within_the_deadline() -> None:
    endpoints, fakes = make_set(2)
    try:
        fakes[0].error = BackendUnavailable("fake 10.0.0.1:8001: UNAVAILABLE: connection refused")
        before = metrics.ENDPOINT_RETRIES._values.get(("fake", "10.0.0.1:8001"), 0.0)
        for _ in range(4):
            assert (await endpoints.call(infer, 2.0)).model_name == "10.0.0.2:8001"
        retried = metrics.ENDPOINT_RETRIES._values[("fake", "10.0.0.1:8001")] - before
        assert retried == len(fakes[0].calls) >= 1
        # the retry gets the caller's remaining time, not a fresh timeout
        assert all(t is not None and t <= 2.0 for t in fakes[1].calls)
    finally:
        await endpoints.close()


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("bad shape"),
        Overloaded("fake: busy"),
        BackendError("fake: INTERNAL: model raised"),
        DeadlineExceeded("deadline exceeded waiting for fake"),
    ],
)
async def test_other_errors_are_never_retried(error: TensorgateError) -> None:
    endpoints, fakes = make_set(2)
    try:
        for f in fakes:
            f.error = error
        with pytest.raises(type(error)):
            await endpoints.call(infer, 2.0)
        assert sum(len(f.calls) for f in fakes) == 1
    finally:
        await endpoints.close()


def test_retry_budget_is_a_token_bucket() -> None:
    budget = RetryBudget(0.2, 3)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]  # starts full
    for _ in range(4):
        budget.earn()
    assert not budget.spend()  # 0.8 tokens
    budget.earn()
    assert budget.spend() and not budget.spend()
    for _ in range(100):
        budget.earn()
    assert budget.tokens == 3.0  # capped


async def test_retries_stay_within_the_budget_under_a_failing_endpoint() -> None:
    # ejection off: endpoint 0 keeps failing and keeps being tried, so every call that starts
    # there wants a retry; the budget allows 20% of calls (plus the bucket's 10 at the start)
    endpoints, fakes = make_set(2, eject_after_failures=10**9, retry_budget=0.2, retry_budget_cap=10)
    try:
        fakes[0].error = BackendUnavailable("fake 10.0.0.1:8001: UNAVAILABLE: down")
        calls, failed = 1000, 0
        for _ in range(calls):
            try:
                await endpoints.call(infer, 2.0)
            except BackendUnavailable as e:
                failed += 1
                assert "retry budget spent" in e.message and "10.0.0.1:8001" in e.message
        first_tries = len(fakes[0].calls)
        retries = len(fakes[1].calls) + first_tries - calls
        assert first_tries == calls // 2  # the two endpoints take turns
        assert retries <= 0.2 * calls + 10
        assert retries >= 0.2 * calls - 1  # and the budget is used, not wasted
        assert failed == first_tries - retries
    finally:
        await endpoints.close()


async def test_consecutive_failures_eject_with_doubling_backoff_and_success_resets() -> None:
    clock = Clock()
    endpoints, fakes = make_set(
        2, clock=clock, eject_after_failures=3, eject_base_s=1.0, eject_max_s=3.0, retry_budget_cap=0
    )
    ep0 = endpoints.endpoints[0]
    try:
        fakes[0].error = BackendUnavailable("fake 10.0.0.1:8001: UNAVAILABLE: refused")

        async def fail_until_ejected() -> int:
            tries = len(fakes[0].calls)
            while ep0.admitted(clock.now):
                with pytest.raises(BackendUnavailable):
                    while True:  # endpoint 1 answers in between
                        await endpoints.call(infer, 2.0)
            return len(fakes[0].calls) - tries

        assert await fail_until_ejected() == 3
        assert ep0.ejected_until == clock.now + 1.0
        # while ejected it gets nothing
        for _ in range(4):
            assert (await endpoints.call(infer, 2.0)).model_name == "10.0.0.2:8001"
        clock.now += 1.0
        # back on probation: one more failure ejects it again, for twice as long
        assert await fail_until_ejected() == 1
        assert ep0.ejected_until == clock.now + 2.0
        clock.now += 2.0
        assert await fail_until_ejected() == 1
        assert ep0.ejected_until == clock.now + 3.0  # eject_max_s
        clock.now += 3.0
        fakes[0].error = None  # it recovered: a success resets the counts
        for _ in range(4):
            await endpoints.call(infer, 2.0)
        assert ep0.failures == 0 and ep0.ejections == 0
        fakes[0].error = BackendUnavailable("fake 10.0.0.1:8001: UNAVAILABLE: refused")
        assert await fail_until_ejected() == 3
        assert ep0.ejected_until == clock.now + 1.0
    finally:
        await endpoints.close()


async def test_failures_of_calls_sent_before_the_ejection_do_not_extend_it() -> None:
    clock = Clock()
    endpoints, fakes = make_set(1, clock=clock, eject_after_failures=2)
    try:
        gate = asyncio.Event()
        fakes[0].gate = gate
        fakes[0].error = BackendUnavailable("fake 10.0.0.1:8001: UNAVAILABLE: reset")
        calls = [asyncio.create_task(endpoints.call(infer, 2.0)) for _ in range(6)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*calls, return_exceptions=True)
        assert endpoints.endpoints[0].ejections == 1
        assert endpoints.endpoints[0].ejected_until == clock.now + 1.0
    finally:
        await endpoints.close()


async def test_no_endpoint_left_fails_fast_naming_every_endpoint_and_why() -> None:
    clock = Clock()
    endpoints, fakes = make_set(2, clock=clock, eject_after_failures=1)
    try:
        fakes[0].error = BackendUnavailable("fake 10.0.0.1:8001: UNAVAILABLE: connection refused")
        fakes[1].error = BackendUnavailable("fake 10.0.0.2:8001: UNAVAILABLE: socket closed")
        with pytest.raises(BackendUnavailable) as info:
            await endpoints.call(infer, 2.0)
        message = info.value.message
        assert "fake model m: no endpoint can take the call" in message
        assert "10.0.0.1:8001" in message and "connection refused" in message
        assert "10.0.0.2:8001" in message and "socket closed" in message
        # both ejected now: the next call fails at once, without calling anyone
        sent = sum(len(f.calls) for f in fakes)
        with pytest.raises(BackendUnavailable) as info:
            await endpoints.call(infer, 2.0)
        assert sum(len(f.calls) for f in fakes) == sent
        assert info.value.message.count("ejected for 1.0s more after 1 failures in a row") == 2
        assert not await endpoints.ready()
    finally:
        await endpoints.close()


async def test_health_checks_take_endpoints_out_and_let_them_back() -> None:
    endpoints, fakes = make_set(2)
    try:
        fakes[0].ready = False
        await endpoints.check_health()
        for _ in range(4):
            assert (await endpoints.call(infer, 2.0)).model_name == "10.0.0.2:8001"
        assert fakes[0].calls == []
        assert (("fake", "10.0.0.1:8001", "m"), 0.0) in list(endpoints.gauge_samples())
        fakes[1].ready = False
        await endpoints.check_health()
        assert not await endpoints.ready()
        with pytest.raises(BackendUnavailable, match="not ready: health check failed"):
            await endpoints.call(infer, 2.0)
        fakes[0].ready = True
        await endpoints.check_health()
        assert await endpoints.ready()
        assert (await endpoints.call(infer, 2.0)).model_name == "10.0.0.1:8001"
    finally:
        await endpoints.close()


async def test_health_checks_run_in_the_background_once_used_and_stop_on_close() -> None:
    endpoints, fakes = make_set(2, health_interval_s=0.02)
    await endpoints.call(infer, 2.0)
    await asyncio.sleep(0.2)
    assert fakes[0].checks >= 3 and fakes[1].checks >= 3
    await endpoints.close()
    checks = fakes[0].checks
    await asyncio.sleep(0.1)
    assert fakes[0].checks == checks


async def test_a_timeout_is_not_a_failure_but_makes_the_endpoint_checked_at_once() -> None:
    endpoints, fakes = make_set(2, eject_after_failures=1)
    try:
        fakes[0].hang = True
        fakes[1].hang = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = asyncio.create_task(endpoints.call(infer, 0.1))
        await asyncio.sleep(0.01)  # the first background health round is done
        checks = [f.checks for f in fakes]
        with pytest.raises(DeadlineExceeded):
            await call
        assert loop.time() - started < 1.0  # the caller's deadline, not more
        await asyncio.sleep(0.01)
        # the endpoint that timed out was checked once more at once, the other one not
        assert [f.checks - c for f, c in zip(fakes, checks, strict=True)] == [
            1 if f.calls else 0 for f in fakes
        ]
        # a slow model on a healthy server: the check passes, the endpoint stays in
        assert all(e.admitted(loop.time()) for e in endpoints.endpoints)
        # a hung server fails the check as well: it is taken out
        fakes[0].ready = fakes[1].ready = False
        with pytest.raises(DeadlineExceeded):
            await endpoints.call(infer, 0.1)
        await asyncio.sleep(0.01)
        assert sum(not e.healthy for e in endpoints.endpoints) == 1
    finally:
        await endpoints.close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend.eject_after_failures": 0}, "backend.eject_after_failures: must be > 0"),
        ({"backend.health_interval_s": 0}, "backend.health_interval_s: must be > 0"),
        ({"backend.eject_base_s": -1}, "backend.eject_base_s: must be > 0"),
        ({"backend.eject_base_s": 5, "backend.eject_max_s": 2}, "backend.eject_max_s: must be >= "),
        ({"backend.retry_budget": 1.5}, "backend.retry_budget: must be between 0 and 1"),
        ({"backend.retry_budget_cap": -1}, "backend.retry_budget_cap: must be >= 0"),
    ],
)
def test_endpoint_settings_are_validated_naming_the_key(overrides: dict[str, Any], message: str) -> None:
    from router.config import ConfigError, load

    with pytest.raises(ConfigError, match=message):
        load(overrides=overrides, environ={})


def test_the_policy_follows_the_settings() -> None:
    from router.config import load

    settings = load(
        overrides={"backend.eject_after_failures": 2, "backend.retry_budget": 0.5, "backend.eject_max_s": 4},
        environ={},
    )
    policy = EndpointPolicy.from_settings(settings.backend)
    assert (policy.eject_after_failures, policy.retry_budget, policy.health_interval_s) == (2, 0.5, 2.0)
    assert [policy.ejection_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
