"""Closed-loop gRPC load generator for the Open Inference Protocol ``ModelInfer`` call.

Kept as cheap as possible so it does not steal CPU from the server under test: one grpc.aio
channel, a raw unary-unary call with identity serializers, and a request serialized once. N
coroutines each issue calls back to back (closed loop) for a warm-up, then for a measured window.
A call counts in the window when it completes inside it; workers stop issuing at the window end.

    python -m benchmarks.loadgen --target 127.0.0.1:8001 --concurrency 16 --duration 10 --warmup 2

The first response (a pre-flight call) and the last response of every worker are parsed and
checked against the expected sums and differences, so a broken target cannot look fast.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import grpc
import grpc.aio
import numpy as np
from tritonclient.grpc import service_pb2

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# The `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [1, 16].
INPUT0 = np.arange(16, dtype="<i4").reshape(1, 16)
INPUT1 = np.full((1, 16), 3, dtype="<i4")
EXPECTED = {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}


class LoadError(RuntimeError):
    """The target cannot serve the benchmark request correctly."""


@dataclass
class LoadResult:
    """Outcome of one closed-loop run against one target at one concurrency."""

    target: str
    concurrency: int
    warmup_s: float
    duration_s: float
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_cores: float = 0.0

    @property
    def error_total(self) -> int:
        """Number of failed calls in the measured window."""
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {**asdict(self), "error_total": self.error_total}


def build_request(model: str = "simple", version: str = "") -> bytes:
    """Serialize the ``simple`` model's ModelInferRequest once (raw_input_contents, no outputs list)."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, array in (("INPUT0", INPUT0), ("INPUT1", INPUT1)):
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = "INT32"
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(array.tobytes())
    payload: bytes = request.SerializeToString()
    return payload


def verify_response(payload: bytes) -> None:
    """Raise LoadError unless ``payload`` is a ModelInferResponse with the expected outputs."""
    try:
        response = service_pb2.ModelInferResponse.FromString(payload)
    except Exception as err:  # noqa: BLE001 - any decode failure means a broken target
        raise LoadError(f"response is not a ModelInferResponse: {err}") from err
    found: dict[str, np.ndarray] = {}
    for index, output in enumerate(response.outputs):
        if output.datatype != "INT32":
            raise LoadError(f"{output.name}: datatype {output.datatype!r}, expected 'INT32'")
        if index < len(response.raw_output_contents):
            values = np.frombuffer(response.raw_output_contents[index], dtype="<i4")
        else:
            values = np.asarray(output.contents.int_contents, dtype="<i4")
        found[output.name] = values.reshape(tuple(output.shape))
    for name, expected in EXPECTED.items():
        if name not in found:
            raise LoadError(f"response lacks {name} (has {sorted(found)})")
        if found[name].shape != expected.shape or not np.array_equal(found[name], expected):
            raise LoadError(f"{name} is wrong: got {found[name].tolist()}")


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


async def run_load(
    target: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    *,
    model: str = "simple",
    timeout_s: float = 10.0,
    on_window: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> LoadResult:
    """Drive ``concurrency`` closed-loop workers against ``target`` and measure the window.

    ``on_window`` is called with "start" and "end" at the measured window's edges.
    """
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("need concurrency >= 1, duration > 0, warmup >= 0")
    say = log or (lambda _msg: None)
    request = build_request(model)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(MODEL_INFER)  # identity (de)serializers: bytes both ways
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=timeout_s)
            first: bytes = await call(request, timeout=timeout_s)
        except TimeoutError as err:
            raise LoadError(f"{target}: not reachable within {timeout_s:g}s") from err
        except grpc.aio.AioRpcError as err:
            raise LoadError(f"{target}: pre-flight call failed: {err.code().name}: {err.details()}") from err
        verify_response(first)

        latencies: list[int] = []
        errors: Counter[str] = Counter()
        last: list[bytes | None] = [None] * concurrency
        perf = time.perf_counter_ns
        start_ns = perf() + int(warmup_s * 1e9)
        end_ns = start_ns + int(duration_s * 1e9)

        async def worker(slot: int) -> None:
            """Issue calls back to back until the window ends."""
            record = latencies.append
            while perf() < end_ns:
                t0 = perf()
                try:
                    response = await call(request, timeout=timeout_s)
                except grpc.aio.AioRpcError as err:
                    if start_ns <= perf() < end_ns:
                        errors[err.code().name] += 1
                    continue
                t1 = perf()
                if start_ns <= t1 < end_ns:
                    record(t1 - t0)
                last[slot] = response

        async def window() -> tuple[float, float, float]:
            """Mark the window's edges; return (wall s, cpu s, start perf ns) of the window."""
            await asyncio.sleep(max(0.0, (start_ns - perf()) / 1e9))
            cpu0, wall0 = time.process_time(), perf()
            if on_window:
                on_window("start")
            say(f"measuring {duration_s:g}s")
            await asyncio.sleep(max(0.0, (end_ns - perf()) / 1e9))
            cpu1, wall1 = time.process_time(), perf()
            if on_window:
                on_window("end")
            return (wall1 - wall0) / 1e9, cpu1 - cpu0, wall0

        say(f"warming up {warmup_s:g}s")
        gc.collect()
        gc.freeze()  # keep the collector off the long-lived setup objects while measuring
        workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        try:
            wall_s, cpu_s, _ = await window()
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            gc.unfreeze()

    for payload in last:
        if payload is not None:
            verify_response(payload)
    return LoadResult(
        target=target,
        concurrency=concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        requests=len(latencies),
        throughput_rps=round(len(latencies) / duration_s, 2),
        latency_ms=_summarize(latencies),
        errors=dict(errors),
        client_cpu_cores=round(cpu_s / wall_s, 3) if wall_s > 0 else 0.0,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run one load and print the result (JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the gRPC inference server")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="closed-loop workers")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds")
    parser.add_argument("--model", default="simple", help="model name (default: simple)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument(
        "--markers",
        action="store_true",
        help="print '# window start' / '# window end' lines on stdout at the window's edges",
    )
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        """Progress line to stderr."""
        print(f"loadgen {args.target} c={args.concurrency}: {msg}", file=sys.stderr, flush=True)

    def mark(edge: str) -> None:
        """Window marker on stdout."""
        print(f"# window {edge}", flush=True)

    coro = run_load(
        args.target,
        args.concurrency,
        args.duration,
        args.warmup,
        model=args.model,
        timeout_s=args.timeout,
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
    except LoadError as err:
        print(f"loadgen: error: {err}", file=sys.stderr, flush=True)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()), flush=True)
    else:
        lat = result.latency_ms
        print(
            f"{result.target} c={result.concurrency}: {result.throughput_rps:.1f} req/s, "
            f"p50 {lat.get('p50', float('nan')):.3f} ms, p99 {lat.get('p99', float('nan')):.3f} ms, "
            f"errors {result.error_total}, client CPU {result.client_cpu_cores:.2f} cores"
        )
    return 1 if result.error_total else 0


if __name__ == "__main__":
    sys.exit(main())
