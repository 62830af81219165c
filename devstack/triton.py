"""Fetch a real NVIDIA Triton Inference Server and run it locally, for `make run`, tests and benchmarks.

Triton comes from the `nvidia-pytriton` wheel on PyPI, which ships a complete `tritonserver`
binary (Triton 2.51), its Python backend and one backend stub per Python version. `ensure_triton`
downloads and unpacks it once into a cache folder and creates a small virtual environment for the
models (numpy<2: the bundled Python backend is built against numpy 1.x, and with numpy 2 outputs
come back empty). `TritonServer` starts and stops a tritonserver process on loopback ports.

Only the standard library is used, so this module runs before the project's dependencies exist::

    python -m devstack.triton fetch
    python -m devstack.triton serve --model-repository examples/triton
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

__all__ = [
    "DEFAULT_CACHE",
    "PYTRITON_VERSION",
    "REPO_ROOT",
    "TritonInstall",
    "TritonServer",
    "ensure_triton",
    "main",
]

PYTRITON_VERSION = "0.7.0"
"""The nvidia-pytriton release whose wheel carries the tritonserver binary (Triton 2.51)."""

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "triton"

_WHEEL_SIZE = "55 MB"
_MARKER = "READY.json"
_SERVER_DIR = "pytriton/tritonserver"
_LIBS_DIR = "nvidia_pytriton.libs"
_STUB = "triton_python_backend_stub"

Log = Callable[[str], None]


@dataclass(frozen=True)
class TritonInstall:
    """Paths of a Triton set up by `ensure_triton`, and the environment to run it with."""

    root: Path
    server: Path
    backends_dir: Path
    libs_dir: Path
    model_env_bin: Path
    python_libdir: Path | None

    @classmethod
    def at(cls, cache: Path) -> TritonInstall:
        """Return the paths an install in `cache` has (whether or not it is set up yet)."""
        cache = Path(cache).resolve()
        server_root = cache / "dist" / _SERVER_DIR
        libdir = sysconfig.get_config_var("LIBDIR")
        return cls(
            root=cache,
            server=server_root / "bin" / "tritonserver",
            backends_dir=server_root / "backends",
            libs_dir=cache / "dist" / _LIBS_DIR,
            model_env_bin=cache / "model-env" / "bin",
            python_libdir=Path(libdir) if libdir else None,
        )

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the environment to start tritonserver with (`base` defaults to os.environ)."""
        env = dict(os.environ if base is None else base)
        # The backend stub needs this interpreter's libpython and the wheel's bundled libraries.
        ld = [str(p) for p in (self.python_libdir, self.libs_dir) if p is not None]
        if env.get("LD_LIBRARY_PATH"):
            ld.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
        # The stub embeds Python in isolated mode (PYTHONPATH is ignored) and takes sys.prefix
        # from the first `python3` on PATH: put the model venv (numpy<2) first.
        env["PATH"] = os.pathsep.join(p for p in (str(self.model_env_bin), env.get("PATH")) if p)
        return env


def _py_version() -> str:
    """Return the running interpreter's "X.Y"."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _base_python() -> str:
    """Return the base interpreter behind the running one (outside any venv)."""
    base = getattr(sys, "_base_executable", None)
    if base and os.path.exists(base):
        return str(base)
    return sys.executable


def _tail(text: str, n: int = 20) -> str:
    """Return the last `n` lines of `text`."""
    return "\n".join(text.strip().splitlines()[-n:])


def _run(cmd: Sequence[str | Path], what: str, env: Mapping[str, str] | None = None) -> str:
    """Run `cmd` to completion and return stdout; raise RuntimeError naming `what` on failure."""
    argv = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except OSError as exc:
        raise RuntimeError(f"{what} failed: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        detail = _tail(proc.stderr) or _tail(proc.stdout)
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}): {' '.join(argv)}\n{detail}")
    return proc.stdout


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Hold an exclusive lock on `cache` so concurrent set-ups do not interleave."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheel(folder: Path, log: Log) -> Path:
    """Download the nvidia-pytriton wheel into `folder` (reusing an intact earlier download)."""
    pattern = f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"
    for existing in sorted(folder.glob(pattern)):
        if zipfile.is_zipfile(existing):
            log(f"using downloaded {existing.name}")
            return existing
        existing.unlink()
    log(f"downloading nvidia-pytriton {PYTRITON_VERSION} ({_WHEEL_SIZE})...")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            f"nvidia-pytriton=={PYTRITON_VERSION}",
            "-d",
            partial,
        ],
        what=f"downloading nvidia-pytriton {PYTRITON_VERSION} with pip",
    )
    wheels = sorted(partial.glob(pattern))
    if not wheels:
        raise RuntimeError(f"pip download left no {pattern} in {partial}")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder / wheels[0].name


def _unpack(wheel: Path, dest: Path, py: str, log: Log) -> None:
    """Unpack the server, its backends, its libraries and the stub for Python `py` into `dest`."""
    log(f"unpacking tritonserver from {wheel.name}...")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    stubs_prefix = f"{_SERVER_DIR}/python_backend_stubs/"
    available: set[str] = set()
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = info.filename
                if not name.startswith((_SERVER_DIR + "/", _LIBS_DIR + "/")):
                    continue
                if name.startswith(stubs_prefix):
                    version = name[len(stubs_prefix) :].split("/", 1)[0]
                    if version:
                        available.add(version)
                    if version != py:
                        continue
                target = zf.extract(info, partial)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(target, mode & ~0o022)
    except (zipfile.BadZipFile, OSError) as exc:
        raise RuntimeError(f"unpacking {wheel} failed: {exc}") from exc
    stub = partial / stubs_prefix / py / _STUB
    if not stub.is_file():
        raise RuntimeError(
            f"nvidia-pytriton {PYTRITON_VERSION} has no Python backend stub for Python {py} "
            f"(it has {', '.join(sorted(available)) or 'none'}); run with one of those"
        )
    python_backend = partial / _SERVER_DIR / "backends" / "python"
    shutil.copy2(stub, python_backend / _STUB)
    os.chmod(python_backend / _STUB, 0o755)
    os.chmod(partial / _SERVER_DIR / "bin" / "tritonserver", 0o755)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)


def _make_model_env(env_dir: Path, log: Log) -> None:
    """Create the venv the Python-backend models run in, with numpy<2."""
    log("creating model environment (numpy<2)...")
    shutil.rmtree(env_dir, ignore_errors=True)
    base = _base_python()
    python = env_dir / "bin" / "python"
    pip_args = ["install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "numpy<2"]
    what = f"installing numpy<2 into {env_dir}"
    if sys.version_info >= (3, 13):
        what += " (numpy 1.x has no wheels for Python 3.13+; use Python 3.11 or 3.12)"
    try:
        _run([base, "-m", "venv", env_dir], what=f"creating the model venv with {base}")
        _run([python, "-m", "pip", *pip_args], what=what)
    except RuntimeError as first:
        # Some interpreters (e.g. Debian's without python3-venv) cannot bootstrap pip in a
        # venv; install into the venv's site-packages with the running interpreter's pip.
        log(f"retrying without pip inside the venv ({str(first).splitlines()[0]})")
        shutil.rmtree(env_dir, ignore_errors=True)
        _run([base, "-m", "venv", "--without-pip", env_dir], what=f"creating the model venv with {base}")
        site = _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            what="locating the model venv's site-packages",
        ).strip()
        _run([sys.executable, "-m", "pip", *pip_args, "--target", site], what=what)
    version = _run(
        [python, "-c", "import numpy; print(numpy.__version__)"],
        what="importing numpy in the model venv",
    ).strip()
    if not version.startswith("1."):
        raise RuntimeError(f"the model venv has numpy {version}; the Python backend needs 1.x")


def _smoke_test(install: TritonInstall) -> None:
    """Check that the tritonserver binary loads (all its shared libraries resolve)."""
    try:
        proc = subprocess.run(
            [str(install.server), "--help"],
            capture_output=True,
            text=True,
            env=install.env(),
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"running {install.server} --help failed: {exc}") from exc
    out = proc.stdout + proc.stderr
    if "--model-repository" not in out:  # `--help` exits 1 even when it works
        raise RuntimeError(f"{install.server} does not run (exit code {proc.returncode}):\n{_tail(out)}")


def ensure_triton(cache: Path = DEFAULT_CACHE, log: Log = print) -> TritonInstall:
    """Download and set up Triton in `cache` unless already done; return its paths."""
    cache = Path(cache).resolve()
    install = TritonInstall.at(cache)
    wanted = {
        "pytriton": PYTRITON_VERSION,
        "python": _py_version(),
        "base_python": _base_python(),
        "python_libdir": str(install.python_libdir),
    }
    marker = cache / _MARKER
    with _locked(cache):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text()) == wanted and install.server.is_file():
                return install
        marker.unlink(missing_ok=True)  # written last: its absence means "(re)do the set-up"
        started = time.monotonic()
        libpython = sysconfig.get_config_var("INSTSONAME") or ""
        if install.python_libdir is None or not (install.python_libdir / libpython).is_file():
            log(
                f"warning: no shared libpython ({libpython or '?'}) in {install.python_libdir}; "
                "the Python backend stub may not load (use a --enable-shared Python)"
            )
        wheel = _download_wheel(cache / "download", log)
        _unpack(wheel, cache / "dist", _py_version(), log)
        _make_model_env(cache / "model-env", log)
        _smoke_test(install)
        marker.write_text(json.dumps(wanted, indent=2) + "\n")
        log(f"triton ready in {cache} ({time.monotonic() - started:.1f}s)")
    return install


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports that are free right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to process group `pgid`, ignoring a group that no longer exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def reap_group(pgid: int, timeout: float = 5) -> None:
    """SIGKILL whatever is left of process group `pgid` and wait briefly for it to vanish."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        kill_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    """Return whether process group `pgid` has a member that is not a zombie (reads /proc)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc: ask the kernel, which also counts zombies
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TritonServer:
    """One tritonserver process on loopback ports; start(), stop(), kill(), restart()."""

    def __init__(
        self,
        model_repositories: Sequence[Path | str],
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        log_path: Path | str | None = None,
        install: TritonInstall | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a server; ports of 0 are replaced by free loopback ports, kept on restarts."""
        if not model_repositories:
            raise ValueError("TritonServer needs at least one model repository")
        self.model_repositories = [Path(p).resolve() for p in model_repositories]
        for repo in self.model_repositories:
            if not repo.is_dir():
                raise FileNotFoundError(f"model repository {repo} is not a directory")
        free = iter(free_ports(3))
        self.grpc_port = grpc_port or next(free)
        self.http_port = http_port or next(free)
        self.metrics_port = metrics_port or next(free)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.install = install
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., TritonServer] | None = None

    @property
    def grpc_address(self) -> str:
        """Return the gRPC endpoint, "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        """Return the HTTP endpoint, "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_address(self) -> str:
        """Return the Prometheus metrics endpoint, "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def pid(self) -> int | None:
        """Return the tritonserver process id (None before the first start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Return whether the tritonserver process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Return the exit code of the last process (None while running or never started)."""
        return self._proc.poll() if self._proc is not None else None

    def command(self) -> list[str]:
        """Return the tritonserver command line this server runs."""
        install = self.install or TritonInstall.at(DEFAULT_CACHE)
        cmd = [str(install.server)]
        cmd += [f"--model-repository={repo}" for repo in self.model_repositories]
        cmd += [
            f"--backend-directory={install.backends_dir}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
        ]
        return cmd + self.extra_args

    def start(self, timeout: float = 120) -> None:
        """Launch tritonserver and wait until it reports ready; RuntimeError with the log if not."""
        if self.running:
            raise RuntimeError(f"tritonserver is already running (pid {self.pid})")
        if self.install is None:
            self.install = ensure_triton()
        env = self.install.env()
        env.update(self.extra_env)
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- devstack: {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop/kill reach the stubs too
            )
        self._finalizer = weakref.finalize(self, kill_group, self._proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                kill_group(self._proc.pid)  # backend stubs left behind, if any
                raise RuntimeError(
                    f"tritonserver exited with code {rc} while starting "
                    f"(log {self.log_path}):\n{self.log_tail(40)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"tritonserver was not ready after {timeout:g}s "
                    f"(log {self.log_path}):\n{self.log_tail(40)}"
                )
            time.sleep(0.1)

    def _ready(self) -> bool:
        """Return whether /v2/health/ready answers 200 and the gRPC port accepts connections."""
        url = f"http://{self.http_address}/v2/health/ready"
        try:
            with _NO_PROXY.open(url, timeout=2) as resp:
                if resp.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> None:
        """Stop tritonserver: SIGTERM, then SIGKILL after `timeout` seconds; no-op if not running."""
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
        self._reap_group(proc.pid)

    def kill(self) -> None:
        """Kill tritonserver and its backend stubs with SIGKILL at once (to simulate a crash)."""
        proc = self._proc
        if proc is None:
            return
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self._reap_group(proc.pid)

    def _reap_group(self, pgid: int, timeout: float = 5) -> None:
        """SIGKILL whatever is left of the process group and wait briefly for it to vanish."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        reap_group(pgid, timeout)

    def restart(self, timeout: float = 120) -> None:
        """Stop (if running) and start again on the same ports."""
        self.stop()
        self.start(timeout)

    def log_tail(self, n: int = 40) -> str:
        """Return the last `n` lines of the server log."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(deque(fh, maxlen=n))
        except OSError:
            return ""

    def __enter__(self) -> TritonServer:
        """Start the server (unless running) and return it."""
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Describe the server's state and addresses."""
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<TritonServer {state} grpc={self.grpc_address} http={self.http_address}>"


class _Stop(Exception):
    """Raised by the serve command's signal handler to leave the wait loop."""


def _serve(args: argparse.Namespace) -> int:
    """Run Triton in the foreground until Ctrl-C or SIGTERM; return the exit code."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """Turn the first SIGINT/SIGTERM into _Stop; ignore repeats while stopping."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server: TritonServer | None = None
    try:
        install = ensure_triton(args.cache, log=lambda m: print(m, flush=True))
        server = TritonServer(
            args.model_repository,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            log_path=args.log_path,
            install=install,
            extra_args=args.extra,
        )
        print(f"starting tritonserver (log {server.log_path})...", flush=True)
        started = time.monotonic()
        server.start(timeout=args.timeout)
        print(
            f"triton ready in {time.monotonic() - started:.1f}s (pid {server.pid}): "
            f"grpc {server.grpc_address}  http {server.http_address}  "
            f"metrics {server.metrics_address}",
            flush=True,
        )
        while server.running:
            time.sleep(0.5)
        print(f"tritonserver exited with code {server.returncode}:\n{server.log_tail(40)}", file=sys.stderr)
        return 1
    except _Stop:
        print("stopping tritonserver...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop(timeout=15)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `fetch` sets Triton up, `serve` runs it in the foreground."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.triton",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and set up Triton in the cache")
    fetch.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="default: %(default)s")
    serve = sub.add_parser("serve", help="run Triton in the foreground (Ctrl-C stops it)")
    serve.add_argument(
        "--model-repository",
        action="append",
        required=True,
        type=Path,
        help="model repository folder (repeatable)",
    )
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument(
        "--log-path", type=Path, default=None, help="tritonserver's log file (default: a temporary file)"
    )
    serve.add_argument("--timeout", type=float, default=120, help="seconds to wait for ready")
    serve.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="default: %(default)s")
    serve.add_argument("extra", nargs="*", help="extra tritonserver flags, after `--`")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            install = ensure_triton(args.cache, log=lambda m: print(m, flush=True))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"tritonserver: {install.server}")
        return 0
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
