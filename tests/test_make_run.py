"""`make run`'s program (devstack.run): Triton + TorchServe + router come up, Triton's own example
client works through the router, and Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


def test_make_run_serves_examples_until_ctrl_c(tmp_path: Path) -> None:
    port, metrics, http_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
    env.update(
        {
            "TENSORGATE_SERVER__GRPC_PORT": str(port),
            "TENSORGATE_SERVER__METRICS_PORT": str(metrics),
            "TENSORGATE_SERVER__HTTP_PORT": str(http_port),
            "TENSORGATE_REGISTRY__PATH": str(tmp_path / "registry.db"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client = subprocess.run(
            [sys.executable, "examples/simple_client.py", "--url", f"127.0.0.1:{port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert "PASS: simple via" in client.stdout
        assert "OUTPUT0 [ 1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16]" in client.stdout
        # the example calls it prints work as printed (digits and wine, trained at set-up)
        printed = log.read_text()
        for model in ("digits", "wine", "wine_torch"):
            line = next(ln for ln in printed.splitlines() if f"tensorgate infer {model}" in ln)
            args = line.split("tensorgate infer", 1)[1].split("#", 1)[0].split()  # as a shell would
            answer = subprocess.run(
                [sys.executable, "-m", "router", "infer", *args, "--json"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert answer.returncode == 0, answer.stderr
            probs = json.loads(answer.stdout)["results"][0]["outputs"]["PROBS"]
            assert probs["shape"][-1] == {"digits": 10, "wine": 3, "wine_torch": 3}[model]
            assert abs(sum(probs["data"][: probs["shape"][-1]]) - 1.0) < 1e-4
        # and so do the curl lines, over HTTP
        curls = [
            ln.strip()
            for ln in printed.replace("\\\n", "").splitlines()
            if ln.strip().startswith(f"curl -s 127.0.0.1:{http_port}/")
        ]
        assert len(curls) == 2, printed
        for cmd in curls:
            answer = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=60)
            results = json.loads(answer.stdout)["results"]
            assert len(results) == 1 and results[0]["outputs"], answer.stdout[-300:]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert "registered simple:1" in text and "stopped" in text
    # nothing it started is left running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--grpc-port {port}" not in ps
    assert str(tmp_path) not in ps
    assert str(REPO / ".cache" / "run" / "torchserve") not in ps  # TorchServe and its workers
