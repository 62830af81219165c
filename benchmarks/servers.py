"""The servers a benchmark runs against, started and stopped here, and their CPU accounting.

- `triton()`: a real Triton (devstack) serving examples/triton and benchmarks/models/triton;
- `proxy()`: the bare pass-through proxy (benchmarks.proxy), the floor for any Python hop;
- `router()`: `tensorgate serve` with registration files registered first;
- `torchserve()`: a real TorchServe with the example models (devstack.torchserve);
- per-process CPU from /proc, so a cell can report how many cores each server used.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from devstack.triton import free_ports

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORIES = (REPO_ROOT / "examples" / "triton", REPO_ROOT / "benchmarks" / "models" / "triton")
START_TIMEOUT_S = 120.0
_SERVICE = "/inference.GRPCInferenceService/"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress line to stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(RuntimeError):
    """A server under test could not be started or is not serving the model."""


# --------------------------------------------------------------------------- process helpers


def _read_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # skip "pid (comm) "; comm may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def all_stats() -> dict[int, tuple[int, float]]:
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
    address: str,
    timeout_s: float,
    proc: subprocess.Popen[Any] | None = None,
    name: str = "server",
    model: str = "simple",
) -> None:
    """Poll ServerReady, then ModelReady(model), until both are true; raise SetupError if not."""
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
                        service_pb2.ModelReadyRequest(name=model),
                        service_pb2.ModelReadyResponse,
                    ).ready
                    if ready:
                        return
                    last_error = f"model {model!r} not ready"
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
    address: str | None = None  # host:port of its gRPC port
    pid: int | None = None
    error: str | None = None
    http_address: str | None = None  # host:port of its HTTP port (the REST binding), if known
    metrics_address: str | None = None  # host:port of its Prometheus /metrics (the router's)


@contextlib.contextmanager
def triton(existing: str | None, workdir: Path, existing_http: str | None = None) -> Iterator[Target]:
    """Start Triton with the example and benchmark models via devstack (or use ``existing``).

    ``existing_http``: the HTTP port of the ``existing`` Triton, if known.
    """
    if existing:
        log(f"using the Triton at {existing}" + (f" (HTTP {existing_http})" if existing_http else ""))
        wait_ready(existing, 10.0, name="Triton")
        pid = pid_listening_on(int(existing.rsplit(":", 1)[1]))
        yield Target("triton", existing, pid, http_address=existing_http)
        return
    try:
        from devstack.examples import prepare
        from devstack.triton import TritonServer, ensure_triton
    except ImportError as err:
        raise SetupError(
            f"devstack is not importable ({err}); start Triton yourself and pass --triton HOST:PORT"
        ) from err
    log("preparing Triton (ensure_triton) and the example models")
    try:
        install = ensure_triton(log=log)
        prepare(log=log)  # the example repository's trained models need their weights
        server = TritonServer(
            list(MODEL_REPOSITORIES),
            log_path=workdir / "triton.log",
            install=install,
            # 4 MiB tensors in and out of the Python backend without growing its shared memory
            extra_args=["--backend-config=python,shm-default-byte-size=33554432"],
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
        log(f"Triton ready at {address}, HTTP {server.http_address} (pid {server.pid})")
        yield Target("triton", address, server.pid, http_address=server.http_address)
    finally:
        log("stopping Triton")
        server.stop()


@contextlib.contextmanager
def standby_triton(workdir: Path) -> Iterator[Any]:
    """A second Triton serving only `simple`, for the failover group: yields the devstack
    TritonServer (the suite kills and restarts it), stopped after."""
    import shutil

    from devstack.triton import TritonServer, ensure_triton

    repo = workdir / "standby-models"
    shutil.copytree(REPO_ROOT / "examples" / "triton" / "simple", repo / "simple", dirs_exist_ok=True)
    server = TritonServer([repo], log_path=workdir / "triton-standby.log", install=ensure_triton(log=log))
    log("starting the standby Triton (failover group)")
    try:
        try:
            server.start()
        except RuntimeError as err:
            raise SetupError(f"cannot start the standby Triton: {err}") from err
        log(f"standby Triton ready at {server.grpc_address} (pid {server.pid})")
        yield server
    finally:
        server.stop()


def scrape(address: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric family on a Prometheus endpoint, by their label pairs."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@contextlib.contextmanager
def torchserve(workdir: Path) -> Iterator[Target]:
    """Start a real TorchServe with the example models (devstack.torchserve); stop it after.

    Yields an unavailable Target (with the reason) when it cannot be started, so the other
    groups still run.
    """
    try:
        from devstack.torchserve import EXAMPLE_MODELS, TorchServeServer
    except ImportError as err:
        yield Target("torchserve", error=f"devstack.torchserve is not importable: {err}")
        return
    server = TorchServeServer(EXAMPLE_MODELS, workdir=workdir / "torchserve")
    log("starting TorchServe (about 30 s)")
    try:
        try:
            server.start()
        except (OSError, RuntimeError) as err:
            log(f"TorchServe unavailable: {err}")
            yield Target("torchserve", error=f"cannot start TorchServe: {err}")
            return
        log(f"TorchServe ready at {server.grpc_address} (pid {server.pid})")
        yield Target("torchserve", server.grpc_address, server.pid)
    finally:
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
def router(
    workdir: Path, registrations: Sequence[Path], env: Mapping[str, str], ready_model: str = "simple"
) -> Iterator[Target]:
    """Register ``registrations`` (with ``env`` for their ${VARS}) and serve the router; stop it after.

    Yields an unavailable Target (with the reason) when the router cannot be started.
    """
    registry = workdir / "registry.db"
    full_env = {**os.environ, **env}
    for path in registrations:
        register = [
            sys.executable, "-m", "router", "models", "register", str(path), "--registry", str(registry),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                register, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=full_env
            )
        except subprocess.TimeoutExpired:
            yield Target("router", error=f"`router models register {path.name}` timed out")
            return
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            yield Target("router", error=f"`router models register {path.name}` failed: {reason[0]}")
            return
    grpc_port, http_port, metrics_port = free_ports(3)
    logfile = workdir / "router.log"
    serve = [
        sys.executable, "-m", "router", "serve", "--registry", str(registry),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            serve, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=full_env
        )
    try:
        address = f"127.0.0.1:{grpc_port}"
        try:
            wait_ready(address, START_TIMEOUT_S, proc, "router", model=ready_model)
        except SetupError as err:
            log(f"router unavailable: {err}\n{_log_tail(logfile)}")
            yield Target("router", error=str(err))
            return
        http_address = f"127.0.0.1:{http_port}"
        log(f"router ready at {address}, HTTP {http_address} (pid {proc.pid})")
        yield Target(
            "router", address, proc.pid, http_address=http_address,
            metrics_address=f"127.0.0.1:{metrics_port}",
        )  # fmt: skip
    finally:
        stop_process(proc, "router")
