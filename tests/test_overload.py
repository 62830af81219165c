"""Overload on the real Triton: a version's admission limits refuse the excess at once, with
RESOURCE_EXHAUSTED, and no call outlives its deadline; calls within the limits are answered.

`fixed_cost` (benchmarks/models/triton) takes 10 ms per call, one call at a time: about 100
calls/s. The benchmark suite's overload group measures goodput and refusal times at twice the
capacity (`python -m benchmarks.suite --groups overload`); this test checks the behaviour.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as tgrpc_aio
from tritonclient.utils import InferenceServerException

from router.registry import parse_registration
from tests.conftest import RouterThread, router_settings

pytestmark = pytest.mark.integration

DEADLINE_S = 1.0


def _registration(triton: Any, admission: dict[str, int] | None) -> list[Any]:
    record: dict[str, Any] = {
        "name": "fixed", "version": "1",
        "backend": {"kind": "triton", "endpoints": [triton.grpc_address], "model": "fixed_cost"},
    }  # fmt: skip
    if admission is not None:
        record["admission"] = admission
    return parse_registration({"models": [record]}, "test")


async def _burst(address: str, calls: int, messages: list[str] | None = None) -> list[tuple[str, float]]:
    """`calls` concurrent calls with a 1 s deadline: (outcome, seconds) of each (and the error
    messages, into `messages`)."""
    client = tgrpc_aio.InferenceServerClient(address)
    x = np.ones((1, 4), dtype=np.float32)

    async def one() -> tuple[str, float]:
        t = tgrpc_aio.InferInput("X", [1, 4], "FP32")
        t.set_data_from_numpy(x)
        start = time.monotonic()
        try:
            result = await client.infer("fixed", [t], client_timeout=DEADLINE_S)
        except InferenceServerException as e:
            if messages is not None:
                messages.append(str(e.message()))
            return str(e.status()), time.monotonic() - start
        assert np.array_equal(result.as_numpy("Y"), x * 2)
        return "OK", time.monotonic() - start

    try:
        return list(await asyncio.gather(*(one() for _ in range(calls))))
    finally:
        await client.close()


def test_admission_limits_refuse_the_excess_at_once(triton: Any, tmp_path: Path) -> None:
    rt = RouterThread(router_settings(tmp_path / "r.db")).start()
    try:
        rt.run(rt.app.admin.register(_registration(triton, {"max_inflight": 1, "max_queued": 4})))
        messages: list[str] = []
        outcomes = asyncio.run(_burst(rt.address, 200, messages))  # 2 s of work offered at once
        codes = {code for code, _ in outcomes}
        ok = [t for code, t in outcomes if code == "OK"]
        refused = [t for code, t in outcomes if code == "StatusCode.RESOURCE_EXHAUSTED"]
        assert codes <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
        assert len(ok) >= 5 and len(refused) >= 100
        assert len(ok) + len(refused) == 200
        # refused at once, not after waiting for the deadline; answered calls within it
        assert max(refused) < DEADLINE_S / 2, sorted(refused)[-5:]
        assert max(ok) < DEADLINE_S + 0.2
        # the refusal names the model and the limit
        assert any("model fixed:1" in m and "max_inflight_per_version=1" in m for m in messages)
        limiter = rt.app.dataplane._limiters[("fixed", "1")][1]
        assert (limiter.inflight, limiter.queued) == (0, 0)
    finally:
        rt.stop()


def test_without_explicit_limits_the_settings_apply(triton: Any, tmp_path: Path) -> None:
    settings = router_settings(
        tmp_path / "r.db", **{"limits.max_inflight_per_version": 2, "limits.max_queued_per_version": 3}
    )
    rt = RouterThread(settings).start()
    try:
        rt.run(rt.app.admin.register(_registration(triton, None)))
        outcomes = asyncio.run(_burst(rt.address, 40))
        assert sum(code == "OK" for code, _ in outcomes) >= 5
        assert sum(code == "StatusCode.RESOURCE_EXHAUSTED" for code, _ in outcomes) >= 20
        limiter = rt.app.dataplane._limiters[("fixed", "1")][1]
        assert (limiter.max_inflight, limiter.max_queued) == (2, 3)
    finally:
        rt.stop()
