"""The benchmark harness: workloads check answers, the load generator's loops, goals, reports.

No wall-clock number is asserted anywhere: the integration tests check that the harness measures
what it says (arrival rate, request counts, error accounting, reports), not how fast things are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop
from tritonclient.grpc import service_pb2

from benchmarks import loadgen, report, suite, workloads
from benchmarks.measure import Cell, Spec, combine_rounds
from benchmarks.workloads import LoadError

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- workloads


@pytest.mark.parametrize(
    ("text", "size", "label"),
    [("64", 64, "64B"), ("64KiB", 65536, "64KiB"), ("4MiB", 4 << 20, "4MiB"), ("12 B", 12, "12B")],
)
def test_sizes_parse_and_label(text: str, size: int, label: str) -> None:
    assert workloads.parse_size(text) == size
    assert workloads.size_label(size) == label


@pytest.mark.parametrize("text", ["", "3", "1GiB", "-4", "4 MB", "0"])
def test_bad_sizes_say_why(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        workloads.parse_size(text)


def _response(**outputs: np.ndarray) -> bytes:
    response = service_pb2.ModelInferResponse(model_name="m")
    for name, array in outputs.items():
        response.outputs.add(
            name=name, datatype={"<i4": "INT32", "<f4": "FP32"}[array.dtype.str], shape=array.shape
        )
        response.raw_output_contents.append(array.tobytes())
    payload: bytes = response.SerializeToString()
    return payload


def test_simple_workload_accepts_only_the_right_answer() -> None:
    w = workloads.build("simple")
    a, b = workloads.SIMPLE_INPUT0, workloads.SIMPLE_INPUT1
    w.verify(_response(OUTPUT0=a + b, OUTPUT1=a - b))
    with pytest.raises(LoadError, match="OUTPUT1 is wrong"):
        w.verify(_response(OUTPUT0=a + b, OUTPUT1=a + b))
    with pytest.raises(LoadError, match="lacks OUTPUT1"):
        w.verify(_response(OUTPUT0=a + b))
    with pytest.raises(LoadError, match="not a ModelInferResponse"):
        w.verify(b"\xff\xff\xff")


def test_identity_workload_sends_its_size_and_serves_under_the_given_model() -> None:
    w = workloads.build("identity:64KiB", model="echo")
    request = service_pb2.ModelInferRequest.FromString(w.request)
    assert request.model_name == "echo" and w.model == "echo"
    assert [list(t.shape) for t in request.inputs] == [[16384]]
    assert len(request.raw_input_contents[0]) == 65536
    tensor = np.frombuffer(request.raw_input_contents[0], dtype="<f4")
    w.verify(_response(OUTPUT=tensor.copy()))
    with pytest.raises(LoadError):
        w.verify(_response(OUTPUT=tensor[:-1].copy()))


def test_unknown_workload_is_named() -> None:
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        workloads.build("nope")


# --------------------------------------------------------------------------- goals and reports


def cell(
    group: str,
    scenario: str,
    load: int | float,
    rps: float,
    p50: float,
    p99: float,
    workload: str = "simple",
    target: str = "router",
    **cpu: float,
) -> Cell:
    conc, rate = (load, None) if isinstance(load, int) else (1, load)
    spec = Spec(group, scenario, target, workload, concurrency=conc, rate=rate)
    result = {
        "throughput_rps": rps,
        "latency_ms": {"p50": p50, "p90": p99, "p99": p99},
        "requests": int(rps),
        "errors": {},
        "error_total": 0,
    }
    return Cell(spec, result=result, cpu_cores={"client": 0.2, **cpu})


def test_goals_are_ratios_of_cells_of_the_same_run() -> None:
    cells = [
        cell("overhead", "direct", 16, 5000, 2.0, 4.0, target="triton"),
        cell("overhead", "proxy", 16, 2000, 8.0, 10.0, target="proxy", proxy=0.8),
        cell("overhead", "router", 16, 1900, 9.0, 12.0, router=0.9),
        cell("payload", "direct", 1, 500, 2.0, 3.0, "identity:64", target="triton"),
        cell("payload", "router", 1, 400, 2.5, 3.0, "identity:64"),
        cell("payload", "direct", 1, 100, 10.0, 12.0, "identity:4MiB", target="triton"),
        cell("payload", "router", 1, 50, 20.0, 25.0, "identity:4MiB"),
        cell("batching", "router", 64, 100, 600.0, 650.0),
        cell("batching", "router+batching", 64, 2300, 27.0, 30.0),
    ]
    goals = {g.what: g for g in report.evaluate(cells, batch_delay_ms=2, service_ms=10)}
    latency = goals["added latency router / proxy, c=16"]
    assert latency.value == pytest.approx(7.0 / 6.0) and latency.ok is True
    throughput = goals["throughput router / proxy, c=16"]
    assert throughput.value == pytest.approx(0.95) and throughput.ok is True
    payload = goals["p50 latency router / direct, 4MiB FP32"]  # the largest size, not the first
    assert payload.value == pytest.approx(2.0) and payload.ok is False
    batching = goals["throughput with / without router batching, c=64"]
    assert batching.value == pytest.approx(23.0) and batching.ok is True
    p99 = goals["p99 with batching, c=64 (ms)"]
    assert p99.value == 30.0 and p99.ok is False and "22" in p99.target


def test_a_failed_cell_leaves_its_goal_undecided() -> None:
    broken = cell("batching", "router+batching", 64, 0, 0, 0)
    broken.error = "errors: {'UNAVAILABLE': 3}"
    goals = report.evaluate(
        [cell("batching", "router", 64, 100, 600.0, 650.0), broken], batch_delay_ms=2, service_ms=10
    )
    assert [g.ok for g in goals] == [None, None]
    text = report.markdown(
        [broken],
        goals,
        {
            "suite": "t",
            "timestamp": "now",
            "duration_s": 1,
            "warmup_s": 0,
            "rounds": 1,
            "cpus": 2,
            "cpu": "x",
        },
    )
    assert "| – | ≥ 8 | – |" in text


def test_rounds_combine_into_medians() -> None:
    rounds = [
        cell("overhead", "router", 1, rps, p50, p50 * 2, router=cores)
        for rps, p50, cores in ((100, 1.0, 0.5), (300, 3.0, 0.7), (200, 2.0, 0.6))
    ]
    for i, c in enumerate(rounds, 1):
        c.round = i
    (combined,) = combine_rounds(rounds)
    assert combined.round == 0 and combined.result["rounds"] == 3
    assert combined.throughput == 200 and combined.p("p50") == 2.0
    assert combined.cpu_cores["router"] == 0.6
    assert combined.cpu_us_per_call("router") == pytest.approx(3000.0)


def test_markdown_and_plot(tmp_path: Path) -> None:
    cells = [
        cell("openloop", s, float(r), r * 0.98, 1.0 + r / 1000, 3.0 + r / 500, target=t)
        for r in (250, 500, 1000)
        for s, t in (("direct", "triton"), ("router", "router"))
    ]
    cells[-1].cpu_cores["router"] = 0.5
    text = report.markdown(
        cells,
        [],
        {
            "suite": "standard",
            "timestamp": "T",
            "duration_s": 4,
            "warmup_s": 1,
            "rounds": 1,
            "cpus": 2,
            "cpu": "x",
        },
    )
    assert text.count("| openloop |") == 6 and "rate=1000/s" in text
    assert "| 980 | 2.000 | 5.000 | 5.000 | 0 | 510 |" in text  # router CPU 0.5 cores / 980 req/s
    png = tmp_path / "plot.png"
    assert report.plot(cells, png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.plot([cells[0].__class__(cells[0].spec)], tmp_path / "none.png", "empty")


def test_standard_suite_interleaves_scenarios_at_each_load() -> None:
    specs = suite.specs_for(list(suite.GROUPS), ["64", "4MiB"], [100.0])
    overhead = [(s.scenario, s.load) for s in specs if s.group == "overhead"]
    assert overhead == [
        ("direct", "c=1"),
        ("proxy", "c=1"),
        ("router", "c=1"),
        ("direct", "c=16"),
        ("proxy", "c=16"),
        ("router", "c=16"),
    ]
    batching = [s for s in specs if s.group == "batching"]
    assert [(s.model, s.concurrency) for s in batching] == [("fixed_cost", 64), ("fixed_cost_batched", 64)]
    assert {s.group for s in specs} == set(suite.GROUPS)
    assert suite.batching_constants() == (2.0, 10.0)  # read from benchmarks/models.yaml and config.pbtxt


def test_example_registration_drops_backends_not_started(tmp_path: Path) -> None:
    import yaml

    path = suite.example_registration(tmp_path, {"triton"})
    kinds = {m["backend"]["kind"] for m in yaml.safe_load(path.read_text())["models"]}
    names = {m["name"] for m in yaml.safe_load(path.read_text())["models"]}
    assert kinds == {"triton"} and {"simple", "digits", "wine"} <= names
    everything = yaml.safe_load(suite.example_registration(tmp_path, {"triton", "torchserve"}).read_text())
    assert "torchserve" in {m["backend"]["kind"] for m in everything["models"]}


# --------------------------------------------------------------------------- against the real Triton


def _run(coro: Any) -> Any:
    return uvloop.run(coro)


@pytest.mark.integration
def test_open_loop_offers_the_asked_rate(triton: Any) -> None:
    result = _run(
        loadgen.run_load(
            triton.grpc_address, workloads.build("simple"), rate=150, duration_s=2.0, warmup_s=0.5, seed=7
        )
    )
    assert result.mode == "open" and result.offered_rps == 150
    assert result.error_total == 0
    assert 150 * 2.0 * 0.7 <= result.requests <= 150 * 2.0 * 1.3  # Poisson: about rate x window
    assert result.latency_ms["p50"] > 0 and result.concurrency >= 1


@pytest.mark.integration
def test_closed_loop_counts_its_window(triton: Any) -> None:
    result = _run(
        loadgen.run_load(
            triton.grpc_address, workloads.build("fixed_cost"), concurrency=2, duration_s=1.0, warmup_s=0.2
        )
    )
    # fixed_cost runs one call at a time for 10 ms: two workers cannot complete more than ~100/s
    assert result.mode == "closed" and result.error_total == 0
    assert 0 < result.requests <= 110
    assert result.latency_ms["p50"] >= 10.0  # the model's own service time is a floor, not a speed claim


@pytest.mark.integration
def test_a_wrong_answer_stops_the_run(triton: Any) -> None:
    right = workloads.build("fixed_cost")
    wrong = workloads.Workload(
        "fixed_cost",
        right.model,
        right.method,
        right.request,
        workloads.expect_outputs({"Y": np.zeros((1, 4), "<f4")}),
        "wrong",
    )
    with pytest.raises(LoadError, match="Y is wrong"):
        _run(loadgen.run_load(triton.grpc_address, wrong, duration_s=0.2, warmup_s=0))


@pytest.mark.integration
def test_unreachable_target_is_a_clear_error() -> None:
    from tests.conftest import free_port

    with pytest.raises(LoadError, match="not reachable"):
        _run(loadgen.run_load(f"127.0.0.1:{free_port()}", workloads.build("simple"), timeout_s=0.5))


@pytest.mark.integration
def test_suite_end_to_end_writes_its_reports(triton: Any, tmp_path: Path) -> None:
    """The harness against the real Triton and a real router: every cell measured, three reports."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.suite",
        "--quick",
        "--groups",
        "batching,payload",
        "--sizes",
        "64,64KiB",
        "--triton",
        triton.grpc_address,
        "--out-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[6/6" in done.stderr  # progress per cell
    (json_path,) = tmp_path.glob("suite-*.json")
    data = json.loads(json_path.read_text())
    assert [(c["group"], c["scenario"], c["workload"]) for c in data["summary"]] == [
        ("payload", "direct", "identity:64"),
        ("payload", "router", "identity:64"),
        ("payload", "direct", "identity:64KiB"),
        ("payload", "router", "identity:64KiB"),
        ("batching", "router", "fixed_cost"),
        ("batching", "router+batching", "fixed_cost"),
    ]
    assert all(c["error"] is None and c["result"]["requests"] > 0 for c in data["summary"])
    assert {g["what"] for g in data["goals"]} == {
        "p50 latency router / direct, 64KiB FP32",
        "throughput with / without router batching, c=64",
        "p99 with batching, c=64 (ms)",
    }
    assert all(g["value"] is not None for g in data["goals"])
    markdown = json_path.with_suffix(".md").read_text()
    assert "| batching | router+batching | fixed_cost | c=64 |" in markdown and "Command:" in markdown
    assert json_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert done.stdout.startswith("Benchmark suite `quick`")
