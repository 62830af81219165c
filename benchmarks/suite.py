"""The benchmark harness: real servers, scenarios in groups, goals as same-run ratios, reports.

Starts a real Triton (examples/triton plus benchmarks/models/triton), the bare pass-through proxy
and the tensorgate router (examples/models.yaml plus benchmarks/models.yaml registered), then runs
each group's cells with the load generator (benchmarks.loadgen, one subprocess per cell), rounds
interleaved so drift hits every scenario alike. Progress goes to stderr; the Markdown report to
stdout; JSON, Markdown and a PNG plot to benchmarks/results/suite-<timestamp>.{json,md,png}.

Groups (the standard suite runs them all, in a few minutes on 2 cores):

- overhead: direct Triton, bare proxy, router on `simple`, closed loop c=1 and 16. Goals: the
  router adds at most 1.2x the proxy's p50 latency and reaches at least 0.9x its req/s.
- payload: direct and router on an FP32 identity model, 64 B to 4 MiB, c=1. Goal: at 4 MiB the
  router's p50 is at most 1.3x direct.
- batching: router without and with router-side batching on `fixed_cost` (10 ms per backend
  call, any batch), c=64. Goals: at least 8x the req/s; p99 at most the queue delay plus two
  service times.
- openloop: direct and router on `simple` at Poisson rates: the latency-vs-throughput plot.
- transforms: router Predict with one PNG image or one CSV row per call, c=8 (reported).
- torchserve: the wine classifier straight to a real TorchServe (`.npy` in, `.npz` out) and
  through the router (OIP tensors in and out), c=1 and 8 (reported).
- http: the REST binding (HTTP/1.1, benchmarks.httpload) against gRPC, router and direct Triton:
  `simple` as gRPC, REST binary tensors and REST JSON at c=1 and 16, and FP32 identity of 64 KiB
  and 1 MiB as gRPC and REST binary at c=4. Goals at c=16: the router's REST binary reaches at
  least 0.8x its gRPC req/s, REST JSON at least 0.5x.

    python -m benchmarks.suite                       # the standard suite (`make bench`)
    python -m benchmarks.suite --groups batching --duration 10 --rounds 3
    python -m benchmarks.suite --quick               # every group, short windows (a smoke run)
    python -m benchmarks.suite --groups http --triton 127.0.0.1:8001 --triton-http 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks.measure import Cell, Spec, combine_rounds, run_cell
from benchmarks.report import evaluate, markdown, plot, title
from benchmarks.servers import (
    REPO_ROOT,
    SetupError,
    Target,
    log,
    proxy,
    router,
    scrape,
    server_version,
    standby_triton,
    torchserve,
    triton,
)

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
BENCH_MODELS = REPO_ROOT / "benchmarks" / "models.yaml"
EXAMPLE_MODELS = REPO_ROOT / "examples" / "models.yaml"
FIXED_COST_CONFIG = REPO_ROOT / "benchmarks" / "models" / "triton" / "fixed_cost" / "config.pbtxt"
GROUPS = (
    "overhead", "payload", "batching", "openloop", "transforms", "torchserve", "http", "overload",
    "failover",
)  # fmt: skip
# the failover group: `simple` on two Tritons, open loop; one is SIGKILLed a quarter into the
# window and restarted at once
FAILOVER_RATE = 400.0
FAILOVER_TIMEOUT_S = 2.0
FAILOVER_DURATION_S = 12.0
# the overload group's deadline per call: a call answered later than this is no use to its caller
OVERLOAD_TIMEOUT_S = 1.0
DEFAULT_SIZES = ("64", "64KiB", "1MiB", "4MiB")
DEFAULT_RATES = (250.0, 500.0, 1000.0, 2000.0, 3000.0)
BATCHING_CONCURRENCY = 64
HTTP_LOADS = (1, 16)
# `simple` as gRPC, as REST with binary tensors, as REST with JSON tensors
HTTP_SMALL = ("simple", "rest_bin_simple", "rest_json_simple")
HTTP_SIZES = ("64KiB", "1MiB")
HTTP_SIZE_CONCURRENCY = 4


def specs_for(groups: list[str], sizes: list[str], rates: list[float]) -> list[Spec]:
    """The cells of the chosen groups, in run order (scenarios interleaved at each load)."""
    specs: list[Spec] = []
    if "overhead" in groups:
        for conc in (1, 16):
            for scenario, target in (("direct", "triton"), ("proxy", "proxy"), ("router", "router")):
                specs.append(Spec("overhead", scenario, target, "simple", concurrency=conc))
    if "payload" in groups:
        for size in sizes:
            for scenario, target in (("direct", "triton"), ("router", "router")):
                specs.append(Spec("payload", scenario, target, f"identity:{size}"))
    if "batching" in groups:
        specs.append(Spec("batching", "router", "router", "fixed_cost", "fixed_cost", BATCHING_CONCURRENCY))
        specs.append(
            Spec(
                "batching",
                "router+batching",
                "router",
                "fixed_cost",
                "fixed_cost_batched",
                BATCHING_CONCURRENCY,
            )
        )
    if "openloop" in groups:
        for rate in rates:
            for scenario, target in (("direct", "triton"), ("router", "router")):
                specs.append(Spec("openloop", scenario, target, "simple", rate=rate))
    if "transforms" in groups:
        specs.append(Spec("transforms", "router", "router", "digits_png", concurrency=8))
        specs.append(Spec("transforms", "router", "router", "wine_csv", concurrency=8))
    if "torchserve" in groups:
        for conc in (1, 8):
            specs.append(Spec("torchserve", "direct", "torchserve", "ts_wine", concurrency=conc))
            specs.append(Spec("torchserve", "router", "router", "wine_tensor", concurrency=conc))
    if "http" in groups:
        pairs = (("direct", "triton"), ("router", "router"))
        for conc in HTTP_LOADS:
            for scenario, target in pairs:
                for workload in HTTP_SMALL:
                    specs.append(Spec("http", scenario, target, workload, concurrency=conc))
        for size in HTTP_SIZES:
            for scenario, target in pairs:
                for workload in (f"identity:{size}", f"rest_bin_identity:{size}"):
                    specs.append(Spec("http", scenario, target, workload, concurrency=HTTP_SIZE_CONCURRENCY))
    if "overload" in groups:
        # fixed_cost serves about 100 calls/s (10 ms each, one at a time): measure that, then
        # offer twice as much, open loop, with a 1 s deadline per call
        specs.append(Spec("overload", "capacity", "router", "fixed_cost", "fixed_cost_limited", 8))
        overloads = (("2x, admission limits", "fixed_cost_limited"), ("2x, defaults", "fixed_cost"))
        for scenario, model in overloads:
            specs.append(
                Spec("overload", scenario, "router", "fixed_cost", model, rate_of="capacity",
                     rate_factor=2.0, timeout_s=OVERLOAD_TIMEOUT_S)
            )  # fmt: skip
    if "failover" in groups:
        specs.append(
            Spec("failover", "kill one of two Tritons", "router", "simple", "simple_ha",
                 rate=FAILOVER_RATE, timeout_s=FAILOVER_TIMEOUT_S, duration_s=FAILOVER_DURATION_S,
                 disrupt="kill-restart")
        )  # fmt: skip
    return specs


def failover_registration(workdir: Path) -> Path:
    """The failover group's model: `simple` bound to the main and the standby Triton."""
    path = workdir / "failover.yaml"
    path.write_text(
        "models:\n"
        "  - name: simple_ha\n"
        "    version: '1'\n"
        "    backend:\n"
        "      kind: triton\n"
        "      model: simple\n"
        "      endpoints: ['${TENSORGATE_BENCH_TRITON}', '${TENSORGATE_BENCH_TRITON_B}']\n"
    )
    return path


def _calls_to(router: Target, endpoint: str) -> float:
    """Backend calls the router sent to an endpoint so far (every status code)."""
    if router.metrics_address is None:
        return 0.0
    samples = scrape(router.metrics_address, "tensorgate_endpoint_requests_total")
    return sum(v for labels, v in samples.items() if dict(labels).get("endpoint") == endpoint)


def run_with_failover(
    spec: Spec,
    address: str | None,
    duration: float,
    warmup: float,
    servers: dict[str, int],
    standby: Any,
    router: Target,
    unavailable: str,
) -> Cell:
    """run_cell, while the standby Triton is SIGKILLed a quarter into the window and restarted at
    once; records how long it was gone and how many calls it got once back."""
    record: dict[str, float] = {}
    endpoint = standby.grpc_address

    def disrupt() -> None:
        time.sleep(warmup + duration * 0.25)
        record["killed_at_s"] = round(duration * 0.25, 2)
        started = time.monotonic()
        standby.kill()
        standby.restart()
        record["back_after_s"] = round(time.monotonic() - started, 2)
        record["calls_when_back"] = _calls_to(router, endpoint)

    thread = threading.Thread(target=disrupt, name="failover", daemon=True)
    thread.start()
    cell = run_cell(spec, address, duration, warmup, servers, unavailable=unavailable)
    thread.join(timeout=180)
    if "calls_when_back" in record:
        record["calls_after_back"] = _calls_to(router, endpoint) - record.pop("calls_when_back")
    if cell.result:
        cell.result["failover"] = record
    return cell


def address_for(target: Target, spec: Spec) -> tuple[str | None, str]:
    """(the target's host:port for the spec's transport, or None; why it is unavailable)."""
    if target.error is not None:
        return None, target.error
    if spec.transport == "http":
        hint = " (pass --triton-http HOST:PORT with --triton)" if target.name == "triton" else ""
        return target.http_address, f"{target.name}'s HTTP port is unknown{hint}"
    return target.address, "unavailable"


def relative_rate(spec: Spec, this_round: list[Cell]) -> tuple[Spec, str]:
    """The spec with its open-loop rate set from the capacity cell it refers to (rate None, and
    why, when that cell failed)."""
    base = next(
        (c for c in this_round if c.spec.group == spec.group and c.spec.scenario == spec.rate_of), None
    )
    if base is None or not base.ok or not base.throughput:
        return spec, f"its rate is {spec.rate_factor:g}x the {spec.rate_of} cell, which did not run"
    return dataclasses.replace(spec, rate=round(spec.rate_factor * base.throughput, 1)), "unavailable"


def batching_constants() -> tuple[float, float]:
    """(max queue delay ms of fixed_cost_batched, service ms of fixed_cost), from their config files."""
    import yaml

    models = yaml.safe_load(BENCH_MODELS.read_text())["models"]
    batched = next(m for m in models if m["name"] == "fixed_cost_batched")
    delay_ms = float(batched["batching"]["max_queue_delay_us"]) / 1000
    match = re.search(r'SERVICE_TIME_MS".*?string_value:\s*"([\d.]+)"', FIXED_COST_CONFIG.read_text())
    if match is None:
        raise SetupError(f"{FIXED_COST_CONFIG}: no SERVICE_TIME_MS parameter")
    return delay_ms, float(match.group(1))


def example_registration(workdir: Path, backends: set[str]) -> Path:
    """examples/models.yaml less the versions whose backend kind this run does not start."""
    import yaml

    data = yaml.safe_load(EXAMPLE_MODELS.read_text())
    kept = [m for m in data["models"] if m["backend"]["kind"] in backends]
    path = workdir / "example-models.yaml"
    path.write_text(yaml.safe_dump({"models": kept}, sort_keys=False))
    return path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _log_cell(cell: Cell, index: int, total: int, started: float) -> None:
    """Progress line for a finished cell, with an estimate of the time left."""
    elapsed = time.monotonic() - started
    left = elapsed / index * (total - index)
    s = cell.spec
    what = f"[{index}/{total}, ~{left:.0f}s left] {s.group} {s.scenario} {s.workload} {s.load}"
    if cell.result:
        log(
            f"{what}: {cell.result['throughput_rps']:.0f} req/s, p50 {cell.p('p50') or 0:.3f} ms, "
            f"p99 {cell.p('p99') or 0:.3f} ms, errors {cell.result['error_total']}, "
            f"cores {cell.cpu_cores}"
        )
    if cell.error:
        log(f"{what}: {cell.error}")


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _raise_interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the servers are stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 1 when a cell could not run or a closed-loop call failed (not on misses)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--groups", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}"
    )
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the cells N times, report medians")
    parser.add_argument(
        "--sizes", default=",".join(DEFAULT_SIZES), help="payload sizes (default 64,64KiB,1MiB,4MiB)"
    )
    parser.add_argument(
        "--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES), help="open-loop rates, req/s"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short windows (1 s after 0.5 s warm-up), one round"
    )
    parser.add_argument(
        "--triton", metavar="HOST:PORT", help="use this running Triton instead of starting one"
    )
    parser.add_argument(
        "--triton-http", metavar="HOST:PORT", help="with --triton: its HTTP port (for the http group)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the reports go")
    args = parser.parse_args(argv)
    groups = _csv(args.groups)
    if not groups or set(groups) - set(GROUPS):
        parser.error(f"--groups: choose from {','.join(GROUPS)}")
    try:
        from benchmarks.workloads import parse_size

        sizes = _csv(args.sizes)
        for size in sizes:
            parse_size(size)
        rates = [float(r) for r in _csv(args.rates)]
    except ValueError as err:
        parser.error(str(err))
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.0, 0.5, 1
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or any(r <= 0 for r in rates):
        parser.error("need --duration > 0, --warmup >= 0, --rounds >= 1 and positive rates")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    delay_ms, service_ms = batching_constants()
    specs = specs_for(groups, sizes, rates)

    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "suite": "quick" if args.quick else "standard",
        "timestamp": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m benchmarks.suite " + " ".join(argv if argv is not None else sys.argv[1:]),
        "groups": groups,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "batching": {"max_queue_delay_ms": delay_ms, "service_ms": service_ms},
    }
    cells: list[Cell] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp, contextlib.ExitStack() as stack:
            workdir = Path(tmp)
            upstream = stack.enter_context(triton(args.triton, workdir, args.triton_http))
            assert upstream.address is not None
            meta["triton"] = server_version(upstream.address)
            targets: dict[str, Target] = {"triton": upstream}
            needed = {s.target for s in specs}
            if "proxy" in needed:
                targets["proxy"] = stack.enter_context(proxy(upstream.address, workdir))
            backends = {"triton"}
            env = {"TENSORGATE_EXAMPLE_TRITON": upstream.address, "TENSORGATE_BENCH_TRITON": upstream.address}
            if "torchserve" in groups:
                targets["torchserve"] = stack.enter_context(torchserve(workdir))
                if targets["torchserve"].address is not None:
                    backends.add("torchserve")
                    env["TENSORGATE_EXAMPLE_TORCHSERVE"] = targets["torchserve"].address
            standby = None
            registrations = [BENCH_MODELS]
            if "failover" in groups:
                standby = stack.enter_context(standby_triton(workdir))
                env["TENSORGATE_BENCH_TRITON_B"] = standby.grpc_address
                registrations.append(failover_registration(workdir))
            if "router" in needed:
                from devstack.examples import prepare

                env["TENSORGATE_MINILM_TOKENIZER"] = str(prepare())
                examples = example_registration(workdir, backends)
                targets["router"] = stack.enter_context(router(workdir, [examples, *registrations], env))
            servers = {name: t.pid for name, t in targets.items() if t.pid is not None}
            total, clock = args.rounds * len(specs), time.monotonic()
            log(f"{total} cells of {args.warmup:g}+{args.duration:g} s: groups {', '.join(groups)}")
            for round_no in range(1, args.rounds + 1):
                for spec in specs:
                    address, why = address_for(targets[spec.target], spec)
                    if spec.rate_of is not None:
                        spec, why = relative_rate(spec, [c for c in cells if c.round == round_no])
                        address = address if spec.rate is not None else None
                    duration = spec.duration_s or args.duration
                    if spec.disrupt == "kill-restart" and standby is not None:
                        cell = run_with_failover(
                            spec, address, duration, args.warmup, servers, standby, targets["router"], why
                        )
                    else:
                        cell = run_cell(spec, address, duration, args.warmup, servers, unavailable=why)
                    cell.round = round_no
                    cells.append(cell)
                    _log_cell(cell, len(cells), total, clock)
    except SetupError as err:
        log(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130

    summary = combine_rounds(cells)
    goals = evaluate(summary, batch_delay_ms=delay_ms, service_ms=service_ms)
    report = markdown(summary, goals, meta)
    stem = args.out_dir / f"suite-{started.strftime('%Y%m%d-%H%M%S')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({
        "meta": meta,
        "goals": [g.to_dict() for g in goals],
        "summary": [c.to_dict() for c in summary],
        "cells": [c.to_dict() for c in cells],
    }, indent=2) + "\n")  # fmt: skip
    stem.with_suffix(".md").write_text(f"{report}\n\nCommand: `{meta['command'].strip()}`\n")
    drew = plot(summary, stem.with_suffix(".png"), title(meta))
    print(report, flush=True)
    log(f"wrote {stem}.json, {stem}.md" + (f", {stem}.png" if drew else ""))
    # Open-loop cells past capacity fail calls by design (that is what they show); any other
    # error, or a cell that could not run, fails the run.
    broken = [c for c in cells if not c.result or (c.error and c.spec.rate is None)]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
