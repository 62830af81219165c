"""Run a real TorchServe locally, for `make run`, tests and benchmarks.

TorchServe comes from the project's dev dependencies (`torchserve`, `torch-model-archiver`; its
frontend is Java, so a JDK must be on PATH). `build_mar` packs a handler file, tensorgate's
handler base class (adapters/torchserve_handler.py, as the top-level module `torchserve_handler`)
and extra files into a .mar under .cache/torchserve/; `TorchServeServer` writes a
config.properties (loopback ports, token auth off, logs in its own folder) and runs
`torchserve --foreground` in its own process group until stop().

The gRPC management port is always the inference port + 1 (TorchServe's 7070/7071 layout), so
the router's TorchServe adapter finds it from the `host:port` endpoint alone.

    python -m devstack.torchserve serve          # the example models, until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from devstack.triton import REPO_ROOT, free_ports, kill_group, reap_group

__all__ = ["DEFAULT_CACHE", "EXAMPLE_MODELS", "HANDLER_BASE", "MarSpec", "TorchServeServer", "build_mar"]

DEFAULT_CACHE = REPO_ROOT / ".cache" / "torchserve"
HANDLER_BASE = REPO_ROOT / "adapters" / "torchserve_handler.py"
_BIN = Path(sys.executable).parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class MarSpec:
    """What goes into one .mar: the handler file (one TensorHandler subclass) and its files."""

    name: str
    handler: Path
    extra_files: tuple[Path, ...] = ()
    config: Path | None = None  # model-config.yaml: workers, batchSize, maxBatchDelay, ...
    version: str = "1.0"

    def files(self) -> list[Path]:
        """Every file the archive is made from (the handler base class included)."""
        return [self.handler, HANDLER_BASE, *self.extra_files, *([self.config] if self.config else [])]


EXAMPLES = REPO_ROOT / "examples"
EXAMPLE_MODELS = (
    MarSpec(
        "wine_torch",
        EXAMPLES / "torchserve" / "wine" / "model.py",
        extra_files=(EXAMPLES / "triton" / "wine" / "1" / "weights.npz",),  # trained by prepare()
        config=EXAMPLES / "torchserve" / "wine" / "model-config.yaml",
    ),
)


def _tool(name: str) -> str:
    """The path of a console script of this environment (torchserve, torch-model-archiver)."""
    path = _BIN / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: it is a dev dependency (`make` installs it, or "
            "`pip install -e '.[dev]'`)"
        )
    return found


def build_mar(spec: MarSpec, store: Path = DEFAULT_CACHE / "model-store") -> Path:
    """Packs spec into store/NAME.mar unless an archive of the same files is there already."""
    store.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(spec.version.encode())
    for path in spec.files():
        if not path.is_file():
            raise RuntimeError(f"{spec.name}.mar: {path} does not exist")
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    mar, stamp = store / f"{spec.name}.mar", store / f"{spec.name}.sha256"
    if mar.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return mar
    extras = [HANDLER_BASE, *spec.extra_files]
    cmd = [_tool("torch-model-archiver"), "--model-name", spec.name, "--version", spec.version,
           "--handler", str(spec.handler), "--extra-files", ",".join(str(p) for p in extras),
           "--export-path", str(store), "--force"]
    if spec.config is not None:
        cmd += ["--config-file", str(spec.config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed for {spec.name} (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    stamp.write_text(digest.hexdigest())
    return mar


def _free_pair() -> int:
    """A loopback port p with p + 1 free too (gRPC inference and management)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("found no two consecutive free loopback ports")


class TorchServeServer:
    """One TorchServe (Java frontend + Python workers) on loopback ports; start(), stop(), kill()."""

    def __init__(
        self,
        models: Sequence[MarSpec],
        *,
        grpc_port: int = 0,
        workdir: Path | str | None = None,
        store: Path | None = None,
    ) -> None:
        """Describe a server; grpc_port 0 picks free ports (management is grpc_port + 1)."""
        if not models:
            raise ValueError("TorchServeServer needs at least one model")
        self.models = list(models)
        self.store = store or DEFAULT_CACHE / "model-store"
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="torchserve-"))
        self.grpc_port = grpc_port or _free_pair()
        self.http_port, self.management_http_port, self.metrics_port = free_ports(3)
        self.log_path = self.workdir / "torchserve.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., TorchServeServer] | None = None

    @property
    def grpc_address(self) -> str:
        """The gRPC inference endpoint, "127.0.0.1:PORT" (the adapter's endpoint)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def management_address(self) -> str:
        """The gRPC management endpoint (the inference port + 1)."""
        return f"127.0.0.1:{self.grpc_port + 1}"

    @property
    def running(self) -> bool:
        """Whether the torchserve process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The torchserve process id (None before the first start)."""
        return self._proc.pid if self._proc is not None else None

    def write_config(self) -> Path:
        """Writes config.properties for this server; returns its path."""
        shutil.rmtree(self.workdir / "tmp", ignore_errors=True)  # a stale pid file of a killed run
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        lines = {
            "inference_address": f"http://127.0.0.1:{self.http_port}",
            "management_address": f"http://127.0.0.1:{self.management_http_port}",
            "metrics_address": f"http://127.0.0.1:{self.metrics_port}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.grpc_port),
            "grpc_management_port": str(self.grpc_port + 1),
            "disable_token_authorization": "true",
            "enable_metrics_api": "false",
            "disable_system_metrics": "true",
            "install_py_dep_per_model": "false",
            "default_workers_per_model": "1",
            "model_store": str(self.store),
            "vmargs": "-Xmx1g -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError",
        }
        path = self.workdir / "config.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return path

    def command(self) -> list[str]:
        """The torchserve command line this server runs."""
        models = ",".join(f"{m.name}={m.name}.mar" for m in self.models)
        return [_tool("torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                "--model-store", str(self.store), "--models", models,
                "--ts-config", str(self.workdir / "config.properties")]

    def start(self, timeout: float = 180) -> None:
        """Builds the .mars, launches TorchServe and waits until every model has a READY worker."""
        if self.running:
            raise RuntimeError(f"torchserve is already running (pid {self.pid})")
        for spec in self.models:
            build_mar(spec, self.store)
        self.write_config()
        env = dict(os.environ)
        tmp = str(self.workdir / "tmp")
        # Its own temp dir: torchserve keeps a pid file there and refuses a second server per dir.
        env.update(TMPDIR=tmp, TEMP=tmp, LOG_LOCATION=str(self.workdir / "logs"),
                   METRICS_LOCATION=str(self.workdir / "logs"))
        env.pop("TS_CONFIG_FILE", None)
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"--- devstack: {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,  # its own process group: stop reaches the workers
            )
        self._finalizer = weakref.finalize(self, kill_group, self._proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                kill_group(self._proc.pid)
                raise RuntimeError(f"torchserve exited with code {rc} while starting "
                                   f"(log {self.log_path}):\n{self.log_tail(40)}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"torchserve was not ready after {timeout:g}s "
                                   f"(log {self.log_path}):\n{self.log_tail(40)}")
            time.sleep(0.25)

    def _get(self, url: str) -> object:
        with _NO_PROXY.open(url, timeout=2) as resp:
            return json.loads(resp.read())

    def _ready(self) -> bool:
        """Whether /ping says Healthy and every model has a READY worker (HTTP APIs)."""
        try:
            ping = self._get(f"http://127.0.0.1:{self.http_port}/ping")
            if not isinstance(ping, dict) or ping.get("status") != "Healthy":
                return False
            for spec in self.models:
                described = self._get(f"http://127.0.0.1:{self.management_http_port}/models/{spec.name}")
                workers = described[0].get("workers", []) if isinstance(described, list) else []
                if not any(w.get("status") == "READY" for w in workers):
                    return False
        except (urllib.error.URLError, OSError, ValueError):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group, SIGKILL after `timeout` s; no-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self._reap(proc.pid)

    def kill(self) -> None:
        """SIGKILL the frontend and its workers at once (a crash)."""
        proc = self._proc
        if proc is None:
            return
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._reap(proc.pid)

    def _reap(self, pgid: int, timeout: float = 5) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        reap_group(pgid, timeout)

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of torchserve's console log and its model log."""
        out = []
        for path in (self.log_path, self.workdir / "logs" / "model_log.log"):
            with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as fh:
                out.append(f"[{path.name}]\n" + "".join(deque(fh, maxlen=n)))
        return "\n".join(out)

    def __enter__(self) -> TorchServeServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<TorchServeServer {state} grpc={self.grpc_address}>"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `build` packs the example .mars, `serve` runs them until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devstack.torchserve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="pack the example models' .mar files")
    serve = sub.add_parser("serve", help="run TorchServe with the example models")
    serve.add_argument("--grpc-port", type=int, default=7070, help="management: this + 1")
    args = parser.parse_args(argv)
    from devstack.examples import prepare

    prepare()
    if args.command == "build":
        for spec in EXAMPLE_MODELS:
            print(build_mar(spec))
        return 0
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = TorchServeServer(EXAMPLE_MODELS, grpc_port=args.grpc_port)
    try:
        server.start()
        print(f"torchserve ready: grpc {server.grpc_address}, management {server.management_address} "
              f"(log {server.log_path})", flush=True)
        while not stop and server.running:
            time.sleep(0.5)
        return 0 if stop else 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
