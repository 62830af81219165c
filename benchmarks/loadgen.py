"""Load generator, gRPC or HTTP: closed loop (fixed concurrency) or open loop (Poisson arrivals).

Kept as cheap as possible so it does not steal CPU from the server under test: a request
serialized once (benchmarks.workloads) and a caller for the workload's transport. gRPC: one
grpc.aio channel, a raw unary-unary call with identity serializers. HTTP (benchmarks.httpload):
one keep-alive HTTP/1.1 connection per closed-loop worker, a pool of them for open loop, on
asyncio Protocols with httptools' parser. After a warm-up, calls are measured for a window:

- closed loop (`-c N`): N coroutines each issue calls back to back; a call counts when it
  completes inside the window. Latency hides queueing (a slow answer delays the next request).
- open loop (`--rate R`): calls start at Poisson-distributed times, R per second on average,
  whether or not earlier calls have answered; a call counts when it was *due* inside the window,
  and its latency runs from when it was due, so a stalled server cannot hide its queue
  (no coordinated omission). At most `--max-outstanding` calls are in flight; an arrival beyond
  that is counted as an error (CLIENT_BACKLOG) rather than silently delayed.

    python -m benchmarks.loadgen --target 127.0.0.1:8001 --workload simple -c 16 --duration 10
    python -m benchmarks.loadgen --target 127.0.0.1:8500 --workload fixed_cost --rate 500
    python -m benchmarks.loadgen --target 127.0.0.1:8501 --workload rest_json_simple -c 16

The first response (a pre-flight call) and the last response of every worker (closed) or a sample
of responses (open) are checked by the workload's verify, so a broken target cannot look fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import grpc
import grpc.aio
import numpy as np

from benchmarks.workloads import LoadError, Workload, build

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
DEFAULT_MAX_OUTSTANDING = 2048


@dataclass
class LoadResult:
    """Outcome of one run against one target: closed loop at a concurrency or open loop at a rate."""

    target: str
    workload: str
    mode: str  # "closed" or "open"
    concurrency: int  # closed: workers; open: the most calls seen in flight at once
    offered_rps: float | None  # open loop: the arrival rate asked for
    warmup_s: float
    duration_s: float
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_cores: float = 0.0
    # per error code: how long failed calls took to fail (p50, p99, ...), e.g. how fast an
    # overloaded server refuses
    error_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def error_total(self) -> int:
        """Number of failed calls in the measured window."""
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {**asdict(self), "error_total": self.error_total}


def _summarize(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max in milliseconds (empty dict when there are no samples)."""
    if not latencies_ns:
        return {}
    arr = np.asarray(latencies_ns, dtype=np.int64) / 1e6
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(arr.mean()), 4),
        "min": round(float(arr.min()), 4),
        "max": round(float(arr.max()), 4),
    }


Send = Callable[[], Awaitable[bytes]]


class Caller(Protocol):
    """How the loops make calls over one transport: the only part that differs between gRPC and HTTP.

    A call (a `Send`) returns the response's bytes or raises `failure`, counted under `code(err)`.
    """

    @property
    def failure(self) -> type[Exception]:
        """The exception a failed call raises."""
        ...

    def code(self, err: Any) -> str:
        """The error count's key of a failed call."""
        ...

    async def preflight(self) -> bytes:
        """The first call, once the target is reachable; LoadError when it is not or the call fails."""
        ...

    def lane(self) -> Send:
        """A call for one closed-loop worker (HTTP: over a connection of its own)."""
        ...

    @property
    def shared(self) -> Send:
        """One open-loop call."""
        ...

    async def aclose(self) -> None:
        """Closes what the caller opened."""
        ...


class GrpcCaller:
    """Calls over one grpc.aio channel: a raw unary-unary call with identity (de)serializers."""

    failure = grpc.aio.AioRpcError

    def __init__(self, target: str, workload: Workload, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        call = self.channel.unary_unary(workload.method)  # identity (de)serializers: bytes both ways
        self.send: Send = functools.partial(call, workload.request, timeout=timeout_s)
        self.shared = self.send  # open loop: calls share the channel too

    @staticmethod
    def code(err: grpc.aio.AioRpcError) -> str:
        """The status code's name."""
        return str(err.code().name)

    async def preflight(self) -> bytes:
        """One call once the channel is ready."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout=self.timeout_s)
            first: bytes = await self.send()
        except TimeoutError as err:
            raise LoadError(f"{self.target}: not reachable within {self.timeout_s:g}s") from err
        except grpc.aio.AioRpcError as err:
            raise LoadError(
                f"{self.target}: pre-flight call failed: {err.code().name}: {err.details()}"
            ) from err
        return first

    def lane(self) -> Send:
        """Every worker shares the channel (gRPC multiplexes calls on it)."""
        return self.send

    async def aclose(self) -> None:
        """Closes the channel."""
        await self.channel.close()


@contextlib.asynccontextmanager
async def open_caller(target: str, workload: Workload, timeout_s: float) -> AsyncIterator[Caller]:
    """The caller of the workload's transport, closed on exit."""
    caller: Caller
    if workload.transport == "http":
        from benchmarks.httpload import HttpCaller

        caller = HttpCaller(target, workload, timeout_s)
    else:
        caller = GrpcCaller(target, workload, timeout_s)
    try:
        yield caller
    finally:
        await caller.aclose()


async def run_load(
    target: str,
    workload: Workload,
    *,
    concurrency: int = 1,
    rate: float | None = None,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    timeout_s: float = 10.0,
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    seed: int = 0,
    on_window: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> LoadResult:
    """Load `target` with `workload`: closed loop at `concurrency`, or open loop when `rate` is set.

    ``on_window`` is called with "start" and "end" at the measured window's edges.
    """
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0 or (rate is not None and rate <= 0):
        raise ValueError("need concurrency >= 1, rate > 0, duration > 0, warmup >= 0")
    say = log or (lambda _msg: None)
    async with open_caller(target, workload, timeout_s) as caller:
        workload.verify(await caller.preflight())

        latencies: list[int] = []
        errors: Counter[str] = Counter()
        error_latencies: dict[str, list[int]] = {}
        checked: list[bytes] = []
        perf = time.perf_counter_ns
        start_ns = perf() + int(warmup_s * 1e9)
        end_ns = start_ns + int(duration_s * 1e9)
        failure, code, shared = caller.failure, caller.code, caller.shared
        peak = [0]

        async def worker(slot: int) -> None:
            """Closed loop: issue calls back to back until the window ends."""
            record = latencies.append
            send = caller.lane()
            last: bytes | None = None
            while perf() < end_ns:
                t0 = perf()
                try:
                    response = await send()
                except failure as err:
                    t1 = perf()
                    if start_ns <= t1 < end_ns:
                        name = code(err)
                        errors[name] += 1
                        error_latencies.setdefault(name, []).append(t1 - t0)
                    continue
                t1 = perf()
                if start_ns <= t1 < end_ns:
                    record(t1 - t0)
                last = response
            if last is not None:
                checked.append(last)

        async def one(due: int, keep: bool) -> None:
            """Open loop: one call, timed from when it was due."""
            try:
                response = await shared()
            except failure as err:
                if start_ns <= due < end_ns:
                    name = code(err)
                    errors[name] += 1
                    error_latencies.setdefault(name, []).append(perf() - due)
                return
            if start_ns <= due < end_ns:
                latencies.append(perf() - due)
            if keep:
                checked.append(response)

        async def arrivals() -> None:
            """Open loop: start calls at Poisson times until the window ends, then await them."""
            assert rate is not None
            rng = np.random.default_rng(seed)
            gaps = iter(rng.exponential(1e9 / rate, size=int(rate * (warmup_s + duration_s) * 1.5) + 1000))
            inflight: set[asyncio.Task[None]] = set()
            due, n = perf(), 0
            while due < end_ns:
                now = perf()
                while due <= now and due < end_ns:
                    if len(inflight) >= max_outstanding:
                        if start_ns <= due < end_ns:
                            errors["CLIENT_BACKLOG"] += 1
                    else:
                        task = asyncio.create_task(one(due, n % 1000 == 0))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                        peak[0] = max(peak[0], len(inflight))
                    n += 1
                    due += int(next(gaps, 1e9 / rate))
                await asyncio.sleep(max(0.0, (due - perf()) / 1e9))
            if inflight:
                await asyncio.wait(inflight, timeout=timeout_s + 5)

        async def window() -> tuple[float, float]:
            """Mark the window's edges; return (wall s, cpu s) of the window."""
            await asyncio.sleep(max(0.0, (start_ns - perf()) / 1e9))
            cpu0, wall0 = time.process_time(), perf()
            if on_window:
                on_window("start")
            say(f"measuring {duration_s:g}s")
            await asyncio.sleep(max(0.0, (end_ns - perf()) / 1e9))
            cpu1, wall1 = time.process_time(), perf()
            if on_window:
                on_window("end")
            return (wall1 - wall0) / 1e9, cpu1 - cpu0

        say(f"warming up {warmup_s:g}s")
        gc.collect()
        gc.freeze()  # keep the collector off the long-lived setup objects while measuring
        if rate is None:
            tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        else:
            tasks = [asyncio.create_task(arrivals())]
        try:
            wall_s, cpu_s = await window()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            gc.unfreeze()

    for payload in checked:
        workload.verify(payload)
    return LoadResult(
        target=target,
        workload=workload.name,
        mode="closed" if rate is None else "open",
        concurrency=concurrency if rate is None else peak[0],
        offered_rps=rate,
        warmup_s=warmup_s,
        duration_s=duration_s,
        requests=len(latencies),
        throughput_rps=round(len(latencies) / duration_s, 2),
        latency_ms=_summarize(latencies),
        errors=dict(errors),
        client_cpu_cores=round(cpu_s / wall_s, 3) if wall_s > 0 else 0.0,
        error_latency_ms={name: _summarize(lat) for name, lat in error_latencies.items()},
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run one load and print the result (JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target", required=True, help="host:port of the server (its HTTP port for the rest_* workloads)"
    )
    parser.add_argument("--workload", default="simple", help="benchmarks.workloads name (default simple)")
    parser.add_argument("--model", help="model name the target serves the workload under (default: its own)")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("-c", "--concurrency", type=int, default=1, help="closed loop: workers (default 1)")
    loop.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    parser.add_argument(
        "--max-outstanding", type=int, default=DEFAULT_MAX_OUTSTANDING,
        help=f"open loop: most calls in flight (default {DEFAULT_MAX_OUTSTANDING})",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument(
        "--markers",
        action="store_true",
        help="print '# window start' / '# window end' lines on stdout at the window's edges",
    )
    args = parser.parse_args(argv)
    try:
        workload = build(args.workload, args.model)
    except ValueError as err:
        parser.error(str(err))
    shape = f"rate={args.rate:g}/s" if args.rate else f"c={args.concurrency}"

    def log(msg: str) -> None:
        """Progress line to stderr."""
        print(f"loadgen {args.target} {workload.name} {shape}: {msg}", file=sys.stderr, flush=True)

    def mark(edge: str) -> None:
        """Window marker on stdout."""
        print(f"# window {edge}", flush=True)

    coro = run_load(
        args.target,
        workload,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        max_outstanding=args.max_outstanding,
        on_window=mark if args.markers else None,
        log=log,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        runner: Callable[..., LoadResult] = asyncio.run
    else:
        runner = uvloop.run
    try:
        result = runner(coro)
    except (LoadError, ValueError) as err:
        print(f"loadgen: error: {err}", file=sys.stderr, flush=True)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()), flush=True)
    else:
        lat = result.latency_ms
        print(
            f"{result.target} {result.workload} {shape}: {result.throughput_rps:.1f} req/s, "
            f"p50 {lat.get('p50', float('nan')):.3f} ms, p99 {lat.get('p99', float('nan')):.3f} ms, "
            f"errors {result.error_total}, client CPU {result.client_cpu_cores:.2f} cores"
        )
    return 1 if result.error_total else 0


if __name__ == "__main__":
    sys.exit(main())
