"""One measurement cell: the load generator in a subprocess, the servers' CPU sampled around it.

A cell is one scenario (which server, which workload) under one load (closed loop at a
concurrency, or open loop at a rate). The generator runs as its own process so its CPU is not the
servers'; it prints window markers, and the servers' CPU (from /proc, each with its children) is
read at those edges. Rounds of the same cell are combined by medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.servers import REPO_ROOT, all_stats, machine_jiffies, tree_cpu_seconds
from benchmarks.workloads import Transport, transport_of


@dataclass(frozen=True)
class Spec:
    """What one cell runs: a scenario of a group, against a target, with a workload and a load."""

    group: str
    scenario: str  # the row label: direct, proxy, router, router+batching, ...
    target: str  # which server: triton, proxy, router, torchserve
    workload: str  # a benchmarks.workloads name
    model: str | None = None  # the name the target serves the workload under
    concurrency: int = 1  # closed loop workers (ignored with rate)
    rate: float | None = None  # open loop arrivals per second
    # open loop at rate_factor x the throughput of this scenario of the group in the same round
    # (its cell runs first); the suite sets `rate` from it
    rate_of: str | None = None
    rate_factor: float = 1.0
    # the load generator's per-call deadline, seconds (None: its default)
    timeout_s: float | None = None
    # measured seconds of this cell (None: the suite's --duration)
    duration_s: float | None = None
    # what the suite does to the servers during the window: "kill-restart" (failover group)
    disrupt: str | None = None

    @property
    def load(self) -> str:
        """'c=16', 'rate=500/s' or 'rate=2x capacity'."""
        if self.rate_of is not None:
            return f"rate={self.rate_factor:g}x {self.rate_of}"
        return f"c={self.concurrency}" if self.rate is None else f"rate={self.rate:g}/s"

    @property
    def transport(self) -> Transport:
        """Which of the target's ports the workload loads: grpc or http."""
        return transport_of(self.workload)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identifies the cell across rounds."""
        return (self.group, self.scenario, self.workload, self.load)


@dataclass
class Cell:
    """A spec's outcome in one round (round 0: the median of several)."""

    spec: Spec
    round: int = 1
    result: dict[str, Any] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    machine_busy: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Measured without errors."""
        return self.error is None and bool(self.result)

    def p(self, key: str) -> float | None:
        """A latency statistic in ms (p50, p90, p99, mean), or None."""
        value = self.result.get("latency_ms", {}).get(key)
        return None if value is None else float(value)

    @property
    def throughput(self) -> float | None:
        """Completed calls per second in the window, or None."""
        value = self.result.get("throughput_rps")
        return None if value is None else float(value)

    def cpu_us_per_call(self, server: str) -> float | None:
        """CPU microseconds `server` (or "client", the load generator) spent per completed call, or None."""
        cores, rps = self.cpu_cores.get(server), self.throughput
        return None if cores is None or not rps else cores / rps * 1e6

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "group": self.spec.group,
            "scenario": self.spec.scenario,
            "target": self.spec.target,
            "workload": self.spec.workload,
            "model": self.spec.model,
            "load": self.spec.load,
            "concurrency": self.spec.concurrency,
            "rate": self.spec.rate,
            "round": self.round,
            "error": self.error,
            "result": self.result,
            "cpu_cores": self.cpu_cores,
            "machine_busy": self.machine_busy,
        }


def run_cell(
    spec: Spec,
    address: str | None,
    duration: float,
    warmup: float,
    servers: dict[str, int],
    unavailable: str = "unavailable",
) -> Cell:
    """Runs the load generator subprocess for one spec; samples the servers' CPU over its window."""
    cell = Cell(spec)
    if address is None:
        cell.error = unavailable
        return cell
    cmd = [
        sys.executable, "-m", "benchmarks.loadgen", "--target", address, "--workload", spec.workload,
        "--duration", str(duration), "--warmup", str(warmup), "--json", "--markers",
    ]  # fmt: skip
    if spec.model:
        cmd += ["--model", spec.model]
    cmd += ["-c", str(spec.concurrency)] if spec.rate is None else ["--rate", str(spec.rate)]
    if spec.timeout_s is not None:
        cmd += ["--timeout", str(spec.timeout_s)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(duration + warmup + 90.0, proc.kill)
    watchdog.start()
    before: tuple[dict[str, float], tuple[int, int], float] | None = None
    last_line = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "# window start":
                before = (tree_cpu_seconds(servers, all_stats()), machine_jiffies(), time.monotonic())
            elif line == "# window end" and before is not None:
                after = (tree_cpu_seconds(servers, all_stats()), machine_jiffies(), time.monotonic())
                wall = after[2] - before[2]
                cell.cpu_cores = {k: round((after[0][k] - before[0][k]) / wall, 3) for k in servers}
                busy, total = (after[1][0] - before[1][0]), (after[1][1] - before[1][1])
                cell.machine_busy = round(busy / total, 3) if total else None
            elif line:
                last_line = line
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        cell.result = json.loads(last_line)
    except json.JSONDecodeError:
        cell.error = f"load generator exited with status {proc.returncode} (see its stderr above)"
        return cell
    cell.cpu_cores["client"] = cell.result.get("client_cpu_cores", 0.0)
    if cell.machine_busy is not None:  # busy cores nobody above accounts for (kernel, others)
        busy_cores = cell.machine_busy * len(os.sched_getaffinity(0))
        cell.cpu_cores["other"] = round(busy_cores - sum(cell.cpu_cores.values()), 3)
    if cell.result.get("error_total"):
        cell.error = f"errors: {cell.result['errors']}"
    return cell


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def combine_rounds(cells: list[Cell]) -> list[Cell]:
    """One cell per spec: medians over its rounds, errors summed (in first-seen order).

    A spec measured once is returned unchanged; a spec whose every round failed keeps the first
    failure.
    """
    groups: dict[tuple[str, str, str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.spec.key, []).append(cell)
    combined: list[Cell] = []
    for group in groups.values():
        ok = [c for c in group if c.result]
        if len(group) == 1 or not ok:
            combined.append(group[0])
            continue
        errors: dict[str, int] = {}
        for c in ok:
            for code, n in c.result.get("errors", {}).items():
                errors[code] = errors.get(code, 0) + n
        latency_keys = set.intersection(*(set(c.result["latency_ms"]) for c in ok))
        result = {
            "throughput_rps": round(median([c.result["throughput_rps"] for c in ok]), 2),
            "latency_ms": {
                k: round(median([c.result["latency_ms"][k] for c in ok]), 4) for k in sorted(latency_keys)
            },
            "requests": sum(c.result["requests"] for c in ok),
            "errors": errors,
            "error_total": sum(errors.values()),
            "rounds": len(ok),
        }
        # per error code, the worst round's statistics (a median would hide a bad round)
        error_latency: dict[str, dict[str, float]] = {}
        for c in ok:
            for code, stats in c.result.get("error_latency_ms", {}).items():
                seen = error_latency.setdefault(code, {})
                for k, v in stats.items():
                    seen[k] = max(seen.get(k, v), v)
        if error_latency:
            result["error_latency_ms"] = error_latency
        cpu_keys = set.intersection(*(set(c.cpu_cores) for c in ok))
        busy = [c.machine_busy for c in ok if c.machine_busy is not None]
        failed = [c.error for c in group if c.error]
        combined.append(
            Cell(
                group[0].spec,
                round=0,
                result=result,
                cpu_cores={k: round(median([c.cpu_cores[k] for c in ok]), 3) for k in sorted(cpu_keys)},
                machine_busy=round(median(busy), 3) if busy else None,
                error="; ".join(failed) if failed else None,
            )
        )
    return combined
