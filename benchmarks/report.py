"""The suite's reports: goals checked on the cells, a Markdown table for the README, a PNG plot.

Every goal is a ratio of two cells measured in the same run (never a wall-clock number on its
own): these machines are noisy, and only a comparison made under the same noise means anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import Cell

# Goals (issue 2: overhead; issue 4: batching and payload size).
ADDED_LATENCY_GOAL = 1.2  # router's added p50 over the bare proxy's added p50
THROUGHPUT_GOAL = 0.9  # router / bare proxy, req/s
PAYLOAD_GOAL = 1.3  # router p50 / direct p50 for the largest payload
BATCHING_GOAL = 8.0  # router with batching / without, req/s at concurrency 64
# Goals of the HTTP edge: the router's REST req/s over its gRPC req/s on `simple`, at c=16.
REST_BINARY_GOAL = 0.8  # binary tensor data extension
REST_JSON_GOAL = 0.5  # JSON tensors
REST_GOALS = (
    ("rest_bin_simple", "REST binary", REST_BINARY_GOAL),
    ("rest_json_simple", "REST JSON", REST_JSON_GOAL),
)
GOODPUT_GOAL = 0.9  # answered calls per second at 2x capacity / capacity
REFUSAL_P99_GOAL_MS = 5.0  # p99 time to refuse a call under overload
FAILOVER_ERRORS_GOAL = 0.01  # failed / all calls while one of two backends is killed
SATURATED = 0.9  # cores: a single-threaded process (router, load generator) this busy is the limit


@dataclass(frozen=True)
class Goal:
    """One goal evaluated on this run's cells."""

    group: str
    what: str
    value: float | None
    target: str
    ok: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "group": self.group,
            "what": self.what,
            "value": self.value,
            "target": self.target,
            "ok": self.ok,
            "detail": self.detail,
        }


def _find(
    cells: Sequence[Cell], group: str, scenario: str, load: str, workload: str | None = None
) -> Cell | None:
    for cell in cells:
        s = cell.spec
        if (s.group, s.scenario, s.load) == (group, scenario, load) and workload in (None, s.workload):
            return cell if cell.ok else None
    return None


def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    """A number, or an en dash when missing."""
    return "–" if value is None else f"{value:{spec}}{suffix}"


def evaluate(cells: Sequence[Cell], *, batch_delay_ms: float, service_ms: float) -> list[Goal]:
    """The goals that this run's cells allow checking (a missing or failed cell gives ok=None)."""
    goals: list[Goal] = []
    loads = sorted({c.spec.load for c in cells if c.spec.group == "overhead"}, key=lambda x: int(x[2:]))
    for load in loads:
        d, p, r = (_find(cells, "overhead", s, load) for s in ("direct", "proxy", "router"))
        ratio = None
        detail = "a cell is missing or failed"
        if d and p and r and (d.p("p50") is not None):
            proxy_added = (p.p("p50") or 0) - (d.p("p50") or 0)
            router_added = (r.p("p50") or 0) - (d.p("p50") or 0)
            if proxy_added > 0:
                ratio = router_added / proxy_added
            detail = f"router adds {router_added:.3f} ms p50, bare proxy {proxy_added:.3f} ms"
        goals.append(
            Goal(
                "overhead",
                f"added latency router / proxy, {load}",
                ratio,
                f"≤ {ADDED_LATENCY_GOAL}",
                None if ratio is None else ratio <= ADDED_LATENCY_GOAL,
                detail,
            )
        )
        ratio = None
        if p and r and p.throughput:
            ratio = (r.throughput or 0) / p.throughput
        goals.append(
            Goal(
                "overhead",
                f"throughput router / proxy, {load}",
                ratio,
                f"≥ {THROUGHPUT_GOAL}",
                None if ratio is None else ratio >= THROUGHPUT_GOAL,
                f"{_fmt(r.throughput if r else None, '.0f')} vs "
                f"{_fmt(p.throughput if p else None, '.0f')} req/s",
            )
        )

    sizes = [c.spec.workload for c in cells if c.spec.group == "payload" and c.spec.scenario == "direct"]
    if sizes:
        largest = max(sizes, key=_payload_bytes)
        d, r = (_find(cells, "payload", s, "c=1", largest) for s in ("direct", "router"))
        direct_p50, router_p50 = (d.p("p50") if d else None), (r.p("p50") if r else None)
        ratio = router_p50 / direct_p50 if direct_p50 and router_p50 is not None else None
        goals.append(
            Goal(
                "payload",
                f"p50 latency router / direct, {largest.split(':')[1]} FP32",
                ratio,
                f"≤ {PAYLOAD_GOAL}",
                None if ratio is None else ratio <= PAYLOAD_GOAL,
                f"{_fmt(r.p('p50') if r else None)} vs {_fmt(d.p('p50') if d else None)} ms",
            )
        )

    plain = next((c for c in cells if c.spec.group == "batching" and c.spec.scenario == "router"), None)
    batched = next(
        (c for c in cells if c.spec.group == "batching" and c.spec.scenario == "router+batching"), None
    )
    if plain is not None or batched is not None:
        load = (plain or batched).spec.load  # type: ignore[union-attr]
        ok_plain = plain if plain is not None and plain.ok else None
        ok_batched = batched if batched is not None and batched.ok else None
        ratio = None
        if ok_plain and ok_batched and ok_plain.throughput:
            ratio = (ok_batched.throughput or 0) / ok_plain.throughput
        goals.append(
            Goal(
                "batching",
                f"throughput with / without router batching, {load}",
                ratio,
                f"≥ {BATCHING_GOAL:g}",
                None if ratio is None else ratio >= BATCHING_GOAL,
                f"{_fmt(ok_batched.throughput if ok_batched else None, '.0f')} vs "
                f"{_fmt(ok_plain.throughput if ok_plain else None, '.0f')} req/s",
            )
        )
        bound = batch_delay_ms + 2 * service_ms
        p99 = ok_batched.p("p99") if ok_batched else None
        goals.append(
            Goal(
                "batching",
                f"p99 with batching, {load} (ms)",
                p99,
                f"≤ {bound:g} (delay {batch_delay_ms:g} + 2 x {service_ms:g} service)",
                None if p99 is None else p99 <= bound,
                f"p50 {_fmt(ok_batched.p('p50') if ok_batched else None)} ms",
            )
        )
    goals += _rest_goals(cells)
    goals += _overload_goals(cells)
    goals += _failover_goals(cells)
    return goals


def _failover_goals(cells: Sequence[Cell]) -> list[Goal]:
    """Failed calls, the slowest call and the restarted backend's share (the failover group)."""
    cell = next((c for c in cells if c.spec.group == "failover" and c.result), None)
    if cell is None:
        return []
    errors = cell.result.get("errors", {})
    failed = sum(errors.values())
    total = failed + int(cell.result.get("requests", 0))
    share = failed / total if total else None
    record = cell.result.get("failover", {})
    deadline_ms = (cell.spec.timeout_s or 10.0) * 1000
    slowest = max(
        [cell.result.get("latency_ms", {}).get("max", 0.0)]
        + [stats.get("max", 0.0) for stats in cell.result.get("error_latency_ms", {}).values()]
    )
    back = record.get("calls_after_back")
    return [
        Goal("failover", "failed calls, one of two Tritons SIGKILLed", share,
             f"≤ {FAILOVER_ERRORS_GOAL:.0%}", None if share is None else share <= FAILOVER_ERRORS_GOAL,
             f"{failed} of {total} ({', '.join(f'{k} {v}' for k, v in sorted(errors.items())) or 'none'})"
             f"; killed {record.get('killed_at_s', '?')} s into the window, back after "
             f"{record.get('back_after_s', '?')} s"),
        Goal("failover", "slowest call (ms)", slowest, f"≤ {deadline_ms:g} (the deadline)",
             slowest <= deadline_ms, f"p99 {_fmt(cell.p('p99'))} ms"),
        Goal("failover", "calls to the restarted Triton once back", back, "> 0",
             None if back is None else back > 0, "it is health-checked back into balancing"),
    ]  # fmt: skip


def _overload_goals(cells: Sequence[Cell]) -> list[Goal]:
    """Goodput and refusal time at twice the measured capacity (the overload group)."""
    by_scenario = {c.spec.scenario: c for c in cells if c.spec.group == "overload" and c.result}
    capacity = by_scenario.get("capacity")
    over = by_scenario.get("2x, admission limits")
    if capacity is None and over is None:
        return []
    ratio = None
    detail = "a cell is missing or failed"
    if capacity is not None and over is not None and capacity.throughput:
        ratio = (over.throughput or 0) / capacity.throughput
        errors = over.result.get("errors", {})
        detail = (
            f"{_fmt(over.throughput, '.0f')} answered of {_fmt(over.spec.rate, '.0f')} offered req/s, "
            f"capacity {_fmt(capacity.throughput, '.0f')}; answered p99 {_fmt(over.p('p99'))} ms; "
            f"refused {', '.join(f'{k} {v}' for k, v in sorted(errors.items())) or 'none'}"
        )
        plain = by_scenario.get("2x, defaults")
        if plain is not None:
            detail += f"; with default limits {_fmt(plain.throughput, '.0f')} answered req/s"
    goals = [
        Goal("overload", "goodput at 2x capacity / capacity", ratio, f"≥ {GOODPUT_GOAL}",
             None if ratio is None else ratio >= GOODPUT_GOAL, detail)
    ]  # fmt: skip
    refused = (over.result.get("error_latency_ms", {}) if over else {}).get("RESOURCE_EXHAUSTED", {})
    p99 = refused.get("p99")
    goals.append(
        Goal(
            "overload",
            "refused calls at 2x capacity, p99 (ms)",
            p99,
            f"≤ {REFUSAL_P99_GOAL_MS:g}",
            None if p99 is None else p99 <= REFUSAL_P99_GOAL_MS,
            f"p50 {_fmt(refused.get('p50'))} ms" if refused else "no call was refused",
        )
    )
    return goals


def limit(cell: Cell) -> str:
    """What most likely limits a cell's throughput, judged from its CPU use.

    A process near a full core (the router and the load generator each run one event loop), else
    the whole machine when it is busy.
    """
    single = {k: v for k, v in cell.cpu_cores.items() if k in ("router", "proxy", "client")}
    if single:
        name, cores = max(single.items(), key=lambda kv: kv[1])
        if cores >= SATURATED:
            return f"{'load generator' if name == 'client' else name} ({cores:.2f} cores)"
    if cell.machine_busy is not None and cell.machine_busy >= SATURATED:
        return f"machine ({cell.machine_busy:.0%} busy)"
    return "no CPU limit seen"


def _per_call(cell: Cell, who: str) -> str:
    """CPU µs per call of `who` in a cell, formatted."""
    return _fmt(cell.cpu_us_per_call(who), ".0f")


def _rest_goals(cells: Sequence[Cell]) -> list[Goal]:
    """REST / gRPC throughput through the router, at the http group's highest concurrency."""
    loads = [c.spec.concurrency for c in cells if c.spec.group == "http" and c.spec.workload == "simple"]
    if not loads:
        return []
    load = f"c={max(loads)}"
    grpc = _find(cells, "http", "router", load, "simple")
    goals = []
    for workload, label, goal in REST_GOALS:
        rest = _find(cells, "http", "router", load, workload)
        ratio = (rest.throughput or 0) / grpc.throughput if rest and grpc and grpc.throughput else None
        detail = "a cell is missing or failed"
        if rest and grpc:
            detail = (
                f"{_fmt(rest.throughput, '.0f')} vs {_fmt(grpc.throughput, '.0f')} req/s; "
                f"router CPU {_per_call(rest, 'router')} vs {_per_call(grpc, 'router')} µs/call, "
                f"load generator {_per_call(rest, 'client')} vs {_per_call(grpc, 'client')} µs/call; "
                f"limit: {limit(rest)} vs {limit(grpc)}"
            )
        goals.append(
            Goal(
                "http",
                f"throughput router {label} / gRPC, {load}",
                ratio,
                f"≥ {goal}",
                None if ratio is None else ratio >= goal,
                detail,
            )
        )
    return goals


def _payload_bytes(workload: str) -> int:
    from benchmarks.workloads import parse_size

    return parse_size(workload.split(":", 1)[1])


def markdown(cells: Sequence[Cell], goals: Sequence[Goal], meta: dict[str, Any]) -> str:
    """The results as Markdown: one table of cells, one of goals."""
    rounds = "" if meta["rounds"] == 1 else f", median of {meta['rounds']} interleaved rounds"
    lines = [
        f"Benchmark suite `{meta['suite']}`, {meta['timestamp']}: {meta['duration_s']:g} s measured after "
        f"{meta['warmup_s']:g} s warm-up per cell{rounds}; {meta['cpus']} CPUs ({meta['cpu']}), "
        f"{meta.get('triton', '?')}; load generator in its own process on the same machine.",
        "",
        "| group | scenario | workload | load | req/s | p50 ms | p90 ms | p99 ms | errors "
        "| server CPU µs/call | client cores |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        s = cell.spec
        head = f"| {s.group} | {s.scenario} | {s.workload} | {s.load} "
        if not cell.result:
            lines.append(head + f"| {cell.error or 'no result'} |" + " |" * 6)
            continue
        res = cell.result
        server = cell.cpu_us_per_call(s.target) if s.target in ("proxy", "router") else None
        lines.append(
            head + f"| {res['throughput_rps']:.0f} | {_fmt(cell.p('p50'))} | {_fmt(cell.p('p90'))} "
            f"| {_fmt(cell.p('p99'))} | {res['error_total']} "
            f"| {_fmt(server, '.0f')} | {_fmt(cell.cpu_cores.get('client'), '.2f')} |"
        )
    lines += [
        "",
        "Server CPU is the hop's own process (proxy, router; with its children) per completed call; "
        "the direct rows have no hop. Open-loop rows (rate=) time each call from when it was due. "
        "Workloads named rest_* are HTTP/1.1 calls to the server's REST port (the Open Inference "
        "Protocol's REST binding), the others gRPC.",
        "",
        "| goal | value | target | verdict | detail |",
        "|---|---:|---|---|---|",
    ]
    for g in goals:
        verdict = "–" if g.ok is None else ("ok" if g.ok else "MISS")
        lines.append(f"| {g.what} | {_fmt(g.value, '.3f')} | {g.target} | {verdict} | {g.detail} |")
    return "\n".join(lines)


def title(meta: dict[str, Any]) -> str:
    """The plot's title line: suite, time, machine, Triton version."""
    return (
        f"tensorgate {meta['suite']} suite, {meta['timestamp']}, {meta['cpus']} CPUs, "
        f"{meta.get('triton', '')}"
    )


def plot(cells: Sequence[Cell], path: Path, title: str) -> bool:
    """Latency vs throughput (open loop) and vs payload size, as a PNG; False if nothing to draw."""
    # Open-loop cells past capacity have failed calls by design: they are drawn all the same.
    sweep = [c for c in cells if c.spec.group == "openloop" and c.result.get("latency_ms")]
    payload = [c for c in cells if c.spec.group == "payload" and c.ok]
    if not sweep and not payload:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (sweep, payload) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    ax_iter = iter(axes[0])
    if sweep:
        ax = next(ax_iter)
        for colour, scenario in enumerate(dict.fromkeys(c.spec.scenario for c in sweep)):
            points = sorted(
                (c for c in sweep if c.spec.scenario == scenario), key=lambda c: c.throughput or 0
            )
            xs = [c.throughput or 0 for c in points]
            for stat, style in (("p50", "-o"), ("p99", "--^")):
                ax.plot(
                    xs, [c.p(stat) for c in points], style, color=f"C{colour}", label=f"{scenario} {stat}"
                )
        ax.set_xlabel("achieved throughput (req/s)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_yscale("log")
        ax.set_title(f"open loop, {sweep[0].spec.workload}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if payload:
        ax = next(ax_iter)
        for scenario in dict.fromkeys(c.spec.scenario for c in payload):
            points = sorted(
                (c for c in payload if c.spec.scenario == scenario),
                key=lambda c: _payload_bytes(c.spec.workload),
            )
            ax.plot(
                [_payload_bytes(c.spec.workload) for c in points],
                [c.p("p50") for c in points],
                "-o",
                label=f"{scenario} p50",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("FP32 tensor size (bytes, in and out)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title("payload size, c=1")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def load(path: Path) -> tuple[list[Cell], dict[str, Any]]:
    """The summary cells and meta of a suite JSON file."""
    import json

    from benchmarks.measure import Spec

    data = json.loads(path.read_text())
    cells = []
    for c in data["summary"]:
        spec = Spec(
            c["group"], c["scenario"], c["target"], c["workload"], c["model"], c["concurrency"], c["rate"]
        )
        cells.append(Cell(spec, c["round"], c["result"], c["cpu_cores"], c["machine_busy"], c["error"]))
    return cells, data["meta"]


def main(argv: Sequence[str] | None = None) -> int:
    """Renders the Markdown and the PNG again from a suite JSON file (e.g. after a plot change)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument("json", type=Path, help="a benchmarks/results/suite-*.json file")
    parser.add_argument("--png", type=Path, help="where the plot goes (default: beside the JSON)")
    args = parser.parse_args(argv)
    cells, meta = load(args.json)
    delay = meta.get("batching", {})
    goals = evaluate(
        cells, batch_delay_ms=delay.get("max_queue_delay_ms", 2.0), service_ms=delay.get("service_ms", 10.0)
    )
    print(markdown(cells, goals, meta))
    png = args.png or args.json.with_suffix(".png")
    if plot(cells, png, title(meta)):
        print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
