"""Foundation benchmark: direct Triton vs a bare Python proxy vs the tensorgate router.

Starts a real Triton with the example model repository, a bare pass-through proxy
(benchmarks.proxy) and the router, then runs the closed-loop load generator (benchmarks.loadgen,
one subprocess per cell) against each, interleaving scenarios at each concurrency so drift
affects all alike. Prints a Markdown table on stdout, progress on stderr, and writes JSON to
benchmarks/results/foundation-<timestamp>.json.

    python -m benchmarks.foundation [--duration 10] [--warmup 2] [--concurrency 1,16] [--out FILE]

Goals: added latency router vs proxy = (router_p50 - direct_p50) / (proxy_p50 - direct_p50) <= 1.2
and throughput router / proxy >= 0.9, at each concurrency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "examples" / "triton"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODEL = "simple"
SCENARIOS = ("direct", "proxy", "router")
LATENCY_GOAL = 1.2
THROUGHPUT_GOAL = 0.9
START_TIMEOUT_S = 90.0
_SERVICE = "/inference.GRPCInferenceService/"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress line to stderr."""
    print(f"[foundation {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(RuntimeError):
    """A server under test could not be started or is not serving the model."""


# --------------------------------------------------------------------------- process helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # skip "pid (comm) "; comm may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _all_stats() -> dict[int, tuple[int, float]]:
    """(parent pid, CPU seconds) for every live process."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def tree_cpu_seconds(roots: dict[str, int], stats: dict[int, tuple[int, float]]) -> dict[str, float]:
    """CPU seconds of each named root process plus its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, float] = {}
    for name, root in roots.items():
        total, stack = 0.0, [root]
        while stack:
            pid = stack.pop()
            if pid in stats:
                total += stats[pid][1]
                stack.extend(children.get(pid, ()))
        totals[name] = total
    return totals


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - values[3] - values[4], total


def pid_listening_on(port: int) -> int | None:
    """Pid of the process with a listening TCP socket on ``port`` (Linux /proc), if visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                        return int(entry)
    return None


def stop_process(proc: subprocess.Popen[Any], name: str, grace_s: float = 10.0) -> None:
    """SIGTERM a child (its session), then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    log(f"stopping {name} (pid {proc.pid})")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in {grace_s:g}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _log_tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log file, indented, for error messages."""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
        return "\n".join("    " + line for line in text)
    return "    (no log)"


# --------------------------------------------------------------------------- gRPC probes


def _unary(channel: grpc.Channel, method: str, request: Any, response_type: Any) -> Any:
    """One OIP unary call with protobuf (de)serialization."""
    call = channel.unary_unary(
        _SERVICE + method,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return call(request, timeout=2.0)


def wait_ready(
    address: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None, name: str = "server"
) -> None:
    """Poll ServerReady, then ModelReady(simple), until both are true; raise SetupError if not."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SetupError(f"{name} exited with status {proc.returncode} before it was ready")
            try:
                if _unary(
                    channel, "ServerReady", service_pb2.ServerReadyRequest(), service_pb2.ServerReadyResponse
                ).ready:
                    ready = _unary(
                        channel,
                        "ModelReady",
                        service_pb2.ModelReadyRequest(name=MODEL),
                        service_pb2.ModelReadyResponse,
                    ).ready
                    if ready:
                        return
                    last_error = f"model {MODEL!r} not ready"
                else:
                    last_error = "ServerReady returned ready=false"
            except grpc.RpcError as err:
                last_error = f"{err.code().name}: {err.details()}"
            time.sleep(0.25)
    raise SetupError(f"{name} at {address} not ready within {timeout_s:g}s ({last_error})")


def server_version(address: str) -> str:
    """``name version`` from ServerMetadata, or '?'."""
    with grpc.insecure_channel(address) as channel:
        try:
            meta = _unary(
                channel,
                "ServerMetadata",
                service_pb2.ServerMetadataRequest(),
                service_pb2.ServerMetadataResponse,
            )
            return f"{meta.name} {meta.version}"
        except grpc.RpcError:
            return "?"


# --------------------------------------------------------------------------- servers under test


@dataclass
class Target:
    """A scenario's endpoint, or why it is unavailable."""

    name: str
    address: str | None = None
    pid: int | None = None
    error: str | None = None


@contextlib.contextmanager
def triton(existing: str | None, workdir: Path) -> Iterator[Target]:
    """Start Triton with the example models via devstack (or use ``existing``); stop it after."""
    if existing:
        log(f"using the Triton at {existing}")
        wait_ready(existing, 10.0, name="Triton")
        yield Target("direct", existing, pid_listening_on(int(existing.rsplit(":", 1)[1])))
        return
    try:
        from devstack.triton import TritonServer, ensure_triton
    except ImportError as err:
        raise SetupError(
            f"devstack.triton is not importable ({err}); start Triton yourself and pass --triton HOST:PORT"
        ) from err
    log("preparing Triton (ensure_triton)")
    try:
        install = ensure_triton(log=log)
        from devstack.examples import prepare

        prepare(log=log)  # the example repository's trained models need their weights
        server = TritonServer(
            [MODEL_REPOSITORY],
            grpc_port=0,
            http_port=0,
            metrics_port=0,
            log_path=workdir / "triton.log",
            install=install,
        )
    except (OSError, RuntimeError) as err:
        raise SetupError(f"cannot prepare Triton: {err}") from err
    log("starting Triton")
    try:
        try:
            server.start()
        except RuntimeError as err:
            raise SetupError(f"cannot start Triton: {err}") from err
        address: str = server.grpc_address
        wait_ready(address, START_TIMEOUT_S, name="Triton")
        log(f"Triton ready at {address} (pid {server.pid})")
        yield Target("direct", address, server.pid)
    finally:
        log("stopping Triton")
        server.stop()


@contextlib.contextmanager
def proxy(upstream: str, workdir: Path) -> Iterator[Target]:
    """Run benchmarks.proxy in front of ``upstream``; stop it after."""
    logfile = workdir / "proxy.log"
    with open(logfile, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.proxy", "--listen", "127.0.0.1:0", "--upstream", upstream],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("ready "):
            raise SetupError(f"proxy did not start (got {line!r}):\n{_log_tail(logfile)}")
        address = line.split()[1]
        wait_ready(address, 30.0, proc, "proxy")
        log(f"proxy ready at {address} (pid {proc.pid})")
        yield Target("proxy", address, proc.pid)
    finally:
        stop_process(proc, "proxy")


@contextlib.contextmanager
def router(upstream: str, workdir: Path) -> Iterator[Target]:
    """Register ``simple`` and run the tensorgate router in front of ``upstream``; stop it after.

    Yields an unavailable Target (with the reason) when the router cannot be started.
    """
    registry = workdir / "registry.db"
    models = workdir / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        '    version: "1"\n'
        f'    backend: {{kind: triton, endpoints: ["{upstream}"], model: {MODEL}}}\n'
    )
    register = [
        sys.executable,
        "-m",
        "router",
        "models",
        "register",
        str(models),
        "--registry",
        str(registry),
    ]
    try:
        done = subprocess.run(register, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        yield Target("router", error="`router models register` timed out")
        return
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        yield Target("router", error=f"`router models register` failed: {reason[0]}")
        return
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    logfile = workdir / "router.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router",
                "serve",
                "--grpc-port",
                str(grpc_port),
                "--http-port",
                str(http_port),
                "--metrics-port",
                str(metrics_port),
                "--registry",
                str(registry),
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        address = f"127.0.0.1:{grpc_port}"
        try:
            wait_ready(address, START_TIMEOUT_S, proc, "router")
        except SetupError as err:
            log(f"router unavailable: {err}\n{_log_tail(logfile)}")
            yield Target("router", error=str(err))
            return
        log(f"router ready at {address} (pid {proc.pid})")
        yield Target("router", address, proc.pid)
    finally:
        stop_process(proc, "router")


# --------------------------------------------------------------------------- measurement


@dataclass
class Cell:
    """One scenario at one concurrency."""

    scenario: str
    concurrency: int
    round: int = 1
    result: dict[str, Any] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    machine_busy: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "round": self.round,
            "error": self.error,
            "result": self.result,
            "cpu_cores": self.cpu_cores,
            "machine_busy": self.machine_busy,
        }


def run_cell(
    target: Target, concurrency: int, duration: float, warmup: float, servers: dict[str, int]
) -> Cell:
    """Run the load generator subprocess against one target; sample server CPU over its window."""
    cell = Cell(target.name, concurrency)
    if target.address is None:
        cell.error = target.error or "unavailable"
        return cell
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--target",
        target.address,
        "-c",
        str(concurrency),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--json",
        "--markers",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(duration + warmup + 60.0, proc.kill)
    watchdog.start()
    before: tuple[dict[str, float], tuple[int, int], float] | None = None
    last_line = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "# window start":
                before = (tree_cpu_seconds(servers, _all_stats()), machine_jiffies(), time.monotonic())
            elif line == "# window end" and before is not None:
                after = (tree_cpu_seconds(servers, _all_stats()), machine_jiffies(), time.monotonic())
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
        cell.error = f"load generator exited with status {proc.returncode} (see stderr above)"
        return cell
    cell.cpu_cores["client"] = cell.result.get("client_cpu_cores", 0.0)
    if cell.machine_busy is not None:  # busy cores nobody above accounts for (kernel, others)
        busy_cores = cell.machine_busy * len(os.sched_getaffinity(0))
        cell.cpu_cores["other"] = round(busy_cores - sum(cell.cpu_cores.values()), 3)
    if cell.result.get("error_total"):
        cell.error = f"errors: {cell.result['errors']}"
    return cell


def _median(values: list[float]) -> float:
    """Median of a non-empty list."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def combine_rounds(cells: list[Cell]) -> list[Cell]:
    """One cell per (scenario, concurrency): medians over its rounds, errors summed.

    With one round this returns the cells unchanged; a key whose every round failed keeps the
    first failure.
    """
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.scenario, cell.concurrency), []).append(cell)
    combined: list[Cell] = []
    for (scenario, conc), group in groups.items():
        if len(group) == 1:
            combined.append(group[0])
            continue
        ok = [c for c in group if c.result]
        if not ok:
            combined.append(group[0])
            continue
        errors: dict[str, int] = {}
        for c in ok:
            for code, n in c.result.get("errors", {}).items():
                errors[code] = errors.get(code, 0) + n
        latency_keys = set.intersection(*(set(c.result["latency_ms"]) for c in ok))
        result = {
            "throughput_rps": round(_median([c.result["throughput_rps"] for c in ok]), 2),
            "latency_ms": {
                k: round(_median([c.result["latency_ms"][k] for c in ok]), 4) for k in sorted(latency_keys)
            },
            "requests": sum(c.result["requests"] for c in ok),
            "errors": errors,
            "error_total": sum(errors.values()),
            "rounds": len(ok),
        }
        cpu_keys = set.intersection(*(set(c.cpu_cores) for c in ok))
        busy = [c.machine_busy for c in ok if c.machine_busy is not None]
        failed = [c.error for c in group if c.error]
        combined.append(
            Cell(
                scenario,
                conc,
                round=0,
                result=result,
                cpu_cores={k: round(_median([c.cpu_cores[k] for c in ok]), 3) for k in sorted(cpu_keys)},
                machine_busy=round(_median(busy), 3) if busy else None,
                error="; ".join(failed) if failed else None,
            )
        )
    return combined


def derive_ratios(cells: list[Cell], concurrencies: list[int]) -> list[dict[str, Any]]:
    """Added-latency and throughput ratios of the router vs the bare proxy, per concurrency."""
    by_key = {(c.scenario, c.concurrency): c for c in cells if c.error is None and c.result}
    ratios: list[dict[str, Any]] = []
    for conc in concurrencies:
        d, p, r = (by_key.get((s, conc)) for s in SCENARIOS)
        entry: dict[str, Any] = {
            "concurrency": conc,
            "proxy_added_p50_ms": None,
            "router_added_p50_ms": None,
            "added_latency_ratio": None,
            "throughput_ratio": None,
            "latency_ok": None,
            "throughput_ok": None,
        }
        if d and p:
            entry["proxy_added_p50_ms"] = round(
                p.result["latency_ms"]["p50"] - d.result["latency_ms"]["p50"], 4
            )
        if d and r:
            entry["router_added_p50_ms"] = round(
                r.result["latency_ms"]["p50"] - d.result["latency_ms"]["p50"], 4
            )
        if entry["proxy_added_p50_ms"] is not None and entry["router_added_p50_ms"] is not None:
            if entry["proxy_added_p50_ms"] > 0:
                ratio = entry["router_added_p50_ms"] / entry["proxy_added_p50_ms"]
                entry["added_latency_ratio"] = round(ratio, 4)
                entry["latency_ok"] = ratio <= LATENCY_GOAL
        if p and r and p.result["throughput_rps"] > 0:
            ratio = r.result["throughput_rps"] / p.result["throughput_rps"]
            entry["throughput_ratio"] = round(ratio, 4)
            entry["throughput_ok"] = ratio >= THROUGHPUT_GOAL
        ratios.append(entry)
    return ratios


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    """Format a number, or an en dash when missing."""
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown(cells: list[Cell], ratios: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown (for the README)."""
    rounds = "" if meta["rounds"] == 1 else f" (median of {meta['rounds']} interleaved rounds)"
    lines = [
        f"Foundation benchmark, {meta['timestamp']}: `{MODEL}` model (INT32 [1,16] x2), "
        f"{meta['duration_s']:g} s measured after {meta['warmup_s']:g} s warm-up per cell"
        f"{rounds}, "
        f"{meta['cpus']} CPUs, {meta['triton']}.",
        "",
        "| scenario | conc | req/s | p50 ms | p99 ms | errors "
        "| client CPU | hop CPU | Triton CPU | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        if cell.error and not cell.result:
            lines.append(f"| {cell.scenario} | {cell.concurrency} | {cell.error} |" + " |" * 7)
            continue
        res, cpu = cell.result, cell.cpu_cores
        hop = cpu.get(cell.scenario) if cell.scenario != "direct" else None
        lines.append(
            f"| {cell.scenario} | {cell.concurrency} | {res['throughput_rps']:.0f} "
            f"| {_fmt(res['latency_ms'].get('p50'))} | {_fmt(res['latency_ms'].get('p99'))} "
            f"| {res['error_total']} | {_fmt(cpu.get('client'), '.2f')} | {_fmt(hop, '.2f')} "
            f"| {_fmt(cpu.get('triton'), '.2f')} "
            f"| {_fmt(None if cell.machine_busy is None else cell.machine_busy * 100, '.0f', '%')} |"
        )
    lines += [
        "",
        "CPU columns are cores used during the measured window (1.00 = one core busy).",
        "",
        "| conc | proxy adds p50 ms | router adds p50 ms "
        f"| added latency router/proxy (goal ≤ {LATENCY_GOAL}) "
        f"| throughput router/proxy (goal ≥ {THROUGHPUT_GOAL}) |",
        "|---:|---:|---:|---:|---:|",
    ]

    def verdict(value: float | None, ok: bool | None) -> str:
        """Ratio with ok/MISS."""
        return "–" if value is None else f"{value:.4f} ({'ok' if ok else 'MISS'})"

    for r in ratios:
        lines.append(
            f"| {r['concurrency']} | {_fmt(r['proxy_added_p50_ms'])} | {_fmt(r['router_added_p50_ms'])} "
            f"| {verdict(r['added_latency_ratio'], r['latency_ok'])} "
            f"| {verdict(r['throughput_ratio'], r['throughput_ok'])} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _log_cell(cell: Cell) -> None:
    """Progress line for a finished cell."""
    if cell.result:
        lat = cell.result["latency_ms"]
        log(
            f"  {cell.result['throughput_rps']:.0f} req/s, p50 {lat.get('p50', 0):.3f} ms, "
            f"p99 {lat.get('p99', 0):.3f} ms, CPU cores {cell.cpu_cores}"
        )
    if cell.error:
        log(f"  {cell.scenario} c={cell.concurrency}: {cell.error}")


def _parse_concurrency(text: str) -> list[int]:
    """'1,16' -> [1, 16]."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("need positive integers, e.g. 1,16")
    return values


def _parse_scenarios(text: str) -> list[str]:
    """'direct,proxy' -> ['direct', 'proxy'] (validated, in canonical order)."""
    wanted = {v.strip() for v in text.split(",") if v.strip()}
    if not wanted or wanted - set(SCENARIOS):
        raise argparse.ArgumentTypeError(f"choose from {','.join(SCENARIOS)}")
    return [s for s in SCENARIOS if s in wanted]


def _raise_interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so cleanup runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 0 when every cell ran without errors."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.foundation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell")
    parser.add_argument(
        "--concurrency",
        type=_parse_concurrency,
        default=[1, 16],
        help="comma-separated concurrencies (default 1,16)",
    )
    parser.add_argument(
        "--scenarios",
        type=_parse_scenarios,
        default=list(SCENARIOS),
        help="comma-separated subset of direct,proxy,router (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the interleaved matrix N times; report medians (default 1)",
    )
    parser.add_argument(
        "--triton",
        metavar="HOST:PORT",
        help="use this running Triton (serving examples/triton) instead of starting one",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON output file (default benchmarks/results/foundation-<timestamp>.json)"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("need --duration > 0, --warmup >= 0 and --rounds >= 1")
    signal.signal(signal.SIGTERM, _raise_interrupt)

    started = datetime.now(UTC)
    cells: list[Cell] = []
    meta: dict[str, Any] = {
        "timestamp": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "scenarios": args.scenarios,
        "rounds": args.rounds,
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp, contextlib.ExitStack() as stack:
            workdir = Path(tmp)
            upstream = stack.enter_context(triton(args.triton, workdir))
            assert upstream.address is not None
            meta["triton"] = server_version(upstream.address)
            targets: dict[str, Target] = {"direct": upstream}
            if "proxy" in args.scenarios:
                targets["proxy"] = stack.enter_context(proxy(upstream.address, workdir))
            if "router" in args.scenarios:
                targets["router"] = stack.enter_context(router(upstream.address, workdir))
            servers = {
                ("triton" if n == "direct" else n): t.pid for n, t in targets.items() if t.pid is not None
            }
            total = args.rounds * len(args.concurrency) * len(args.scenarios)
            for round_no in range(1, args.rounds + 1):
                for conc in args.concurrency:
                    for name in args.scenarios:
                        log(f"cell {len(cells) + 1}/{total}: {name} c={conc} (round {round_no})")
                        cell = run_cell(targets[name], conc, args.duration, args.warmup, servers)
                        cell.round = round_no
                        cells.append(cell)
                        _log_cell(cell)
    except SetupError as err:
        log(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130

    summary = sorted(
        combine_rounds(cells),
        key=lambda c: (args.concurrency.index(c.concurrency), SCENARIOS.index(c.scenario)),
    )
    ratios = derive_ratios(summary, args.concurrency)
    out = args.out or RESULTS_DIR / f"foundation-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": [c.to_dict() for c in summary],
                "cells": [c.to_dict() for c in cells],
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(markdown(summary, ratios, meta), flush=True)
    log(f"wrote {out}")
    return 0 if all(c.error is None for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
