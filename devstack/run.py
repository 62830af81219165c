"""`make run`: a real Triton and a real TorchServe with the example models, the router in front
of them, until Ctrl-C.

Starts Triton on free loopback ports with examples/triton and TorchServe with the example .mars
(examples/torchserve, built into .cache/torchserve; both start in parallel), registers
examples/models.yaml in the router's registry (embedded default path), starts `tensorgate serve`
on its embedded defaults (gRPC 127.0.0.1:8500, metrics 8502; TENSORGATE_* variables apply as
usual), prints how to call it, and stops all three on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

from devstack.examples import prepare
from devstack.torchserve import EXAMPLE_MODELS, TorchServeServer
from devstack.triton import REPO_ROOT, TritonServer, ensure_triton

RUN_DIR = REPO_ROOT / ".cache" / "run"


def _wait_router_ready(proc: subprocess.Popen[bytes], address: str, timeout: float = 30) -> None:
    """Waits until the router answers ServerReady, or raises if it exits first."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the router exited with code {proc.returncode} (see above)")
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1).ready:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise RuntimeError(f"the router did not become ready on {address} within {timeout:.0f}s")


def _write_example_inputs() -> dict[str, Path]:
    """Files for the example calls: .npy inputs for `simple`, a digit PNG, wine rows as CSV."""
    import io

    import numpy as np
    from PIL import Image

    from devstack.examples import digits_split, wine_split

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    files = {name: RUN_DIR / name for name in ("INPUT0.npy", "INPUT1.npy", "digit.png", "wine.csv")}
    np.save(files["INPUT0.npy"], np.arange(16, dtype=np.int32).reshape(1, 16))
    np.save(files["INPUT1.npy"], np.ones((1, 16), dtype=np.int32))
    _, images, _, labels = digits_split()
    out = io.BytesIO()
    Image.fromarray(np.round(images[0] * 255 / 16).astype(np.uint8), "L").save(out, format="PNG")
    files["digit.png"].write_bytes(out.getvalue())
    _, rows, _, _, names = wine_split()
    files["wine.csv"].write_text(
        ",".join(names) + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows[:3]) + "\n"
    )
    return {name: path.relative_to(REPO_ROOT) for name, path in files.items()}


def main() -> int:
    """Runs the example stack in the foreground until Ctrl-C or SIGTERM."""
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    install = ensure_triton()
    tokenizer = prepare()  # the example models trained at set-up (digits, wine), minilm's weights
    triton = TritonServer(
        [REPO_ROOT / "examples" / "triton"], install=install, log_path=RUN_DIR / "triton.log"
    )
    torchserve = TorchServeServer(EXAMPLE_MODELS, workdir=RUN_DIR / "torchserve")
    router: subprocess.Popen[bytes] | None = None
    try:
        print(
            f"starting Triton (log: {triton.log_path}) and TorchServe (log: {torchserve.log_path}) ...",
            flush=True,
        )
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(triton.start), pool.submit(torchserve.start)]
            for future in started:
                future.result()
        print(f"Triton ready on {triton.grpc_address}, TorchServe on {torchserve.grpc_address}", flush=True)
        env = dict(
            os.environ,
            TENSORGATE_EXAMPLE_TRITON=triton.grpc_address,
            TENSORGATE_EXAMPLE_TORCHSERVE=torchserve.grpc_address,
            TENSORGATE_MINILM_TOKENIZER=str(tokenizer),
        )
        tensorgate = [sys.executable, "-m", "router"]
        subprocess.run(
            [*tensorgate, "models", "register", "examples/models.yaml"], cwd=REPO_ROOT, env=env, check=True
        )
        router = subprocess.Popen([*tensorgate, "serve"], cwd=REPO_ROOT, env=env)
        # The router's own settings (embedded defaults, TENSORGATE_* variables) say where it is.
        from router import config

        server = config.load().server
        address = f"{server.host}:{server.grpc_port}"
        _wait_router_ready(router, address)
        files = _write_example_inputs()
        print(
            f"""
tensorgate is serving gRPC on {address} (Open Inference Protocol + tensorgate.v1), HTTP on
http://{server.host}:{server.http_port} (REST binding, tensorgate.v1 as JSON, /openapi.json),
metrics on http://{server.host}:{server.metrics_port}/metrics. Try, in another terminal:

  .venv/bin/tensorgate infer simple --address {address} \\
      --tensor INPUT0={files["INPUT0.npy"]} --tensor INPUT1={files["INPUT1.npy"]}
  .venv/bin/tensorgate infer digits --address {address} --image {files["digit.png"]}
  .venv/bin/tensorgate infer wine --address {address} --csv {files["wine.csv"]}
  .venv/bin/tensorgate infer wine_torch --address {address} --csv {files["wine.csv"]}   # TorchServe
  .venv/bin/tensorgate infer minilm --address {address} --text "A router in front of Triton."
  .venv/bin/tensorgate models list
  .venv/bin/python examples/simple_client.py --url {address}   # Triton's own client, unchanged
  curl -s {server.host}:{server.http_port}/v1/models/minilm:predict \
      -d '{{"items": [{{"text": {{"text": "A router in front of Triton."}}}}]}}'
  curl -s {server.host}:{server.http_port}/v1/models/digits:predict \
      -d "{{\\"items\\": [{{\\"image\\": {{\\"data\\": \\"$(base64 -w0 {files["digit.png"]})\\"}}}}]}}"
  (more curl lines in the README, "Calling over HTTP")

Ctrl-C stops the router, Triton and TorchServe.
""",
            flush=True,
        )
        while not stop:
            if router.poll() is not None:
                print(f"the router exited with code {router.returncode}", file=sys.stderr)
                return 1
            if not triton.running:
                print(f"Triton exited; its log: {triton.log_path}\n{triton.log_tail(20)}", file=sys.stderr)
                return 1
            if not torchserve.running:
                print(
                    f"TorchServe exited; its log: {torchserve.log_path}\n{torchserve.log_tail(20)}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
        print("stopping ...", flush=True)
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"make run: {e}", file=sys.stderr)
        return 1
    finally:
        if router is not None and router.poll() is None:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(timeout=30)
            except subprocess.TimeoutExpired:
                router.kill()
        triton.stop()
        torchserve.stop()


if __name__ == "__main__":
    sys.exit(main())
