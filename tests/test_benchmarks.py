"""The benchmark harness: workloads check answers, the load generator's loops, goals, reports.

No wall-clock number is asserted anywhere: the integration tests check that the harness measures
what it says (arrival rate, request counts, error accounting, reports), not how fast things are.
"""

from __future__ import annotations

import dataclasses
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


# --------------------------------------------------------------------------- REST (HTTP/1.1) workloads


def _http(
    body: bytes, status: int = 200, headers: tuple[tuple[str, str], ...] = (), chunked: bool = False
) -> bytes:
    """A raw HTTP/1.1 response, as the HTTP load generator hands it to verify."""
    head = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:]) if p)
        body += b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _rest_answer(binary: bool, extra: bytes = b"", **outputs: np.ndarray) -> bytes:
    """A REST inference response holding `outputs` as JSON or as binary tensor data (then `extra`)."""
    entries, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "INT32", "shape": list(array.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            chunks.append(array.tobytes())
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    head = json.dumps({"model_name": "simple", "model_version": "1", "outputs": entries}).encode()
    if not binary:
        return _http(head, headers=(("Content-Type", "application/json"),))
    return _http(
        head + b"".join(chunks) + extra, headers=(("Inference-Header-Content-Length", str(len(head))),)
    )


def test_rest_requests_are_what_tritonclient_http_sends() -> None:
    """The REST workloads' bodies carry the same tensors as tritonclient.http's requests."""
    import tritonclient.http as triton_http

    a, b = workloads.SIMPLE_INPUT0, workloads.SIMPLE_INPUT1
    for binary in (True, False):
        inputs = [triton_http.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=binary)
        outputs = [triton_http.InferRequestedOutput(n, binary_data=True) for n in ("OUTPUT0", "OUTPUT1")]
        theirs, their_len = triton_http.InferenceServerClient.generate_request_body(
            inputs, outputs=outputs if binary else None
        )
        w = workloads.build("rest_bin_simple" if binary else "rest_json_simple")
        assert w.transport == "http" and w.method == "/v2/models/simple/infer"
        headers = dict(w.headers)
        our_len = int(headers["Inference-Header-Content-Length"]) if binary else len(w.request)
        their_split = their_len or len(theirs)
        ours_head, theirs_head = json.loads(w.request[:our_len]), json.loads(theirs[:their_split])
        assert ours_head["inputs"] == theirs_head["inputs"]
        assert w.request[our_len:] == theirs[their_split:]  # the raw tensors, in order
        if binary:
            assert ours_head["outputs"] == theirs_head["outputs"]
            assert headers["Content-Type"] == "application/octet-stream"
        else:
            assert "outputs" not in ours_head and headers["Content-Type"] == "application/json"
    big = workloads.build("rest_bin_identity:64KiB", model="echo")
    assert big.method == "/v2/models/echo/infer" and big.name == "rest_bin_identity:64KiB"
    n = int(dict(big.headers)["Inference-Header-Content-Length"])
    assert len(big.request) == n + 65536
    grpc_twin = service_pb2.ModelInferRequest.FromString(workloads.build("identity:64KiB").request)
    assert big.request[n:] == grpc_twin.raw_input_contents[0]  # the same tensor as over gRPC
    assert workloads.transport_of("rest_bin_identity:1MiB") == "http"
    assert workloads.transport_of("simple") == "grpc"
    assert Spec("http", "router", "router", "rest_json_simple").transport == "http"


def test_request_bytes_are_one_well_framed_post() -> None:
    from benchmarks.httpload import request_bytes

    raw = request_bytes(
        "127.0.0.1:9", "/v2/models/m/infer", b"{}xyz", (("Inference-Header-Content-Length", "2"),)
    )
    seen: dict[str, Any] = {"body": b"", "headers": {}}

    class Collect:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen["headers"][name.decode().lower()] = value.decode()

        def on_body(self, body: bytes) -> None:
            seen["body"] += body

        def on_message_complete(self) -> None:
            seen["done"] = True

    import httptools

    parser = httptools.HttpRequestParser(Collect())
    parser.feed_data(raw)
    assert seen.get("done") and parser.get_method() == b"POST" and seen["body"] == b"{}xyz"
    assert seen["headers"] == {
        "host": "127.0.0.1:9",
        "content-length": "5",
        "inference-header-content-length": "2",
    }


@pytest.mark.parametrize("name", ["rest_json_simple", "rest_bin_simple"])
def test_rest_workloads_accept_only_the_right_answer(name: str) -> None:
    w = workloads.build(name)
    a, b = workloads.SIMPLE_INPUT0, workloads.SIMPLE_INPUT1
    for binary in (False, True):  # either answer form is read, whatever was asked
        w.verify(_rest_answer(binary, OUTPUT0=a + b, OUTPUT1=a - b))
        with pytest.raises(LoadError, match="OUTPUT1 is wrong"):
            w.verify(_rest_answer(binary, OUTPUT0=a + b, OUTPUT1=a + b))
        with pytest.raises(LoadError, match="lacks OUTPUT1"):
            w.verify(_rest_answer(binary, OUTPUT0=a + b))
    right = _rest_answer(False, OUTPUT0=a + b, OUTPUT1=a - b)
    body = right.split(b"\r\n\r\n", 1)[1]
    w.verify(_http(body, chunked=True))  # framing is the parser's business
    with pytest.raises(LoadError, match="HTTP 400: .*bad input"):
        w.verify(_http(b'{"error":"bad input"}', 400))
    with pytest.raises(LoadError, match="not HTTP"):
        w.verify(b"\xff\xff\xff\r\n\r\n")
    with pytest.raises(LoadError, match="incomplete"):
        w.verify(right[:-5])
    with pytest.raises(LoadError, match="not an inference response"):
        w.verify(_http(b"[1, 2]"))
    with pytest.raises(LoadError, match="4 bytes of binary data after the header belong to no output"):
        w.verify(_rest_answer(True, b"more", OUTPUT0=a + b, OUTPUT1=a - b))


# --------------------------------------------------------------------------- the http group's goals


def test_rest_goals_are_ratios_of_the_router_s_cells_at_c16() -> None:
    cells = [
        cell("http", "router", 1, 900, 1.1, 2.0, router=0.5),
        cell("http", "router", 1, 500, 2.0, 3.0, "rest_bin_simple", router=0.5),  # c=1: not a goal
        cell("http", "router", 16, 2000, 8.0, 10.0, router=0.8, client=0.4),
        cell("http", "router", 16, 1700, 9.0, 11.0, "rest_bin_simple", router=0.95, client=0.1),
        cell("http", "router", 16, 900, 17.0, 20.0, "rest_json_simple", router=0.9, client=0.05),
        cell("http", "direct", 16, 9000, 1.0, 2.0, "rest_bin_simple", target="triton", triton=1.5),
    ]
    cells[2].machine_busy = 0.95
    goals = {g.what: g for g in report.evaluate(cells, batch_delay_ms=2, service_ms=10)}
    assert set(goals) == {
        "throughput router REST binary / gRPC, c=16",
        "throughput router REST JSON / gRPC, c=16",
    }
    binary = goals["throughput router REST binary / gRPC, c=16"]
    assert binary.group == "http" and binary.value == pytest.approx(0.85) and binary.ok is True
    assert binary.target == "≥ 0.8"
    # router CPU per call 0.95/1700 vs 0.8/2000 cores; the load generator's likewise
    assert (
        "1700 vs 2000 req/s; router CPU 559 vs 400 µs/call, load generator 59 vs 200 µs/call" in binary.detail
    )
    assert "limit: router (0.95 cores) vs machine (95% busy)" in binary.detail
    text = report.markdown(cells, list(goals.values()), {
        "suite": "t", "timestamp": "now", "duration_s": 1, "warmup_s": 0, "rounds": 1, "cpus": 2, "cpu": "x",
    })  # fmt: skip
    assert "| throughput router REST binary / gRPC, c=16 | 0.850 | ≥ 0.8 | ok |" in text
    json_goal = goals["throughput router REST JSON / gRPC, c=16"]
    assert json_goal.value == pytest.approx(0.45) and json_goal.ok is False and json_goal.target == "≥ 0.5"
    assert "| throughput router REST JSON / gRPC, c=16 | 0.450 | ≥ 0.5 | MISS |" in text
    assert "| http | router | rest_bin_simple | c=16 | 1700 |" in text

    failed = cell("http", "router", 16, 0, 0, 0, "rest_json_simple")
    failed.error = "errors: {'HTTP_503': 4}"
    undecided = report.evaluate([cells[2], failed], batch_delay_ms=2, service_ms=10)
    assert [(g.value, g.ok, g.detail) for g in undecided] == [(None, None, "a cell is missing or failed")] * 2
    assert report.evaluate(cells[5:], batch_delay_ms=2, service_ms=10) == []  # no router gRPC cell: no goal


def test_limit_names_a_saturated_process_or_the_machine() -> None:
    c = cell("http", "router", 16, 1000, 1.0, 2.0, router=0.5, client=0.97)
    assert report.limit(c) == "load generator (0.97 cores)"
    c = cell("http", "router", 16, 1000, 1.0, 2.0, router=0.5, client=0.2)
    assert report.limit(c) == "no CPU limit seen"
    c.machine_busy = 0.93
    assert report.limit(c) == "machine (93% busy)"


def test_http_group_interleaves_transports_and_picks_each_port() -> None:
    from benchmarks.servers import Target

    specs = [s for s in suite.specs_for(["http"], [], []) if s.group == "http"]
    small = [(s.scenario, s.workload, s.load) for s in specs if s.concurrency == 16]
    assert small == [
        ("direct", "simple", "c=16"),
        ("direct", "rest_bin_simple", "c=16"),
        ("direct", "rest_json_simple", "c=16"),
        ("router", "simple", "c=16"),
        ("router", "rest_bin_simple", "c=16"),
        ("router", "rest_json_simple", "c=16"),
    ]
    assert {s.load for s in specs} == {"c=1", "c=16", "c=4"}
    assert [s.workload for s in specs if s.scenario == "router" and s.concurrency == 4] == [
        "identity:64KiB", "rest_bin_identity:64KiB", "identity:1MiB", "rest_bin_identity:1MiB",
    ]  # fmt: skip
    both = Target("router", "127.0.0.1:1", 5, http_address="127.0.0.1:2")
    grpc_spec, rest_spec = specs[3], specs[4]
    assert suite.address_for(both, grpc_spec)[0] == "127.0.0.1:1"
    assert suite.address_for(both, rest_spec)[0] == "127.0.0.1:2"
    address, why = suite.address_for(Target("triton", "127.0.0.1:1"), rest_spec)
    assert address is None and "--triton-http" in why
    assert suite.address_for(Target("router", error="boom"), grpc_spec) == (None, "boom")


# --------------------------------------------------------------------------- the HTTP load generator


class FakeHttpServer:
    """A fake HTTP server for fault injection only (never a stand-in for Triton's REST port).

    Answers `simple` requests right, but per `mode` closes every connection after its answer
    ("close"), answers every second request 503 ("flaky"), or stops answering after the first
    request ("silent").
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.connections = 0
        a, b = workloads.SIMPLE_INPUT0, workloads.SIMPLE_INPUT1
        self.answer = _rest_answer(False, OUTPUT0=a + b, OUTPUT1=a - b)

    async def __aenter__(self) -> str:
        import asyncio

        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def handle(self, reader: Any, writer: Any) -> None:
        import asyncio
        import re

        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
                self.requests += 1
                if self.mode == "silent" and self.requests > 1:
                    continue
                if self.mode == "flaky" and self.requests % 2 == 0:
                    writer.write(_http(b'{"error":"try later"}', 503))
                elif self.mode == "close":
                    writer.write(self.answer.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(self.answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _fake_load(mode: str, **kwargs: Any) -> tuple[loadgen.LoadResult, FakeHttpServer]:
    fake = FakeHttpServer(mode)

    async def go() -> loadgen.LoadResult:
        async with fake as address:
            return await loadgen.run_load(address, workloads.build("rest_json_simple"), **kwargs)

    return _run(go()), fake


def test_http_client_reconnects_when_the_server_closes_each_connection() -> None:
    result, fake = _fake_load("close", concurrency=2, duration_s=0.3, warmup_s=0)
    assert result.error_total == 0 and result.requests > 4
    assert fake.connections == fake.requests  # a new connection per call, none counted as failed


def test_http_client_counts_error_statuses_and_keeps_going() -> None:
    result, fake = _fake_load("flaky", concurrency=2, duration_s=0.3, warmup_s=0)
    assert set(result.errors) == {"HTTP_503"} and result.errors["HTTP_503"] >= 2
    # a 503 keeps its keep-alive connection: one per worker, and the pre-flight call's
    assert result.requests >= 2 and fake.connections == 3


def test_http_client_times_out_a_silent_server() -> None:
    result, fake = _fake_load("silent", concurrency=2, duration_s=0.5, warmup_s=0, timeout_s=0.2)
    assert result.requests == 0 and result.errors.get("DEADLINE_EXCEEDED", 0) >= 2
    assert fake.connections >= 3  # an expired call's connection is not reused


def test_http_unreachable_target_is_a_clear_error() -> None:
    from tests.conftest import free_port

    with pytest.raises(LoadError, match="not reachable within 0.3s"):
        _run(loadgen.run_load(f"127.0.0.1:{free_port()}", workloads.build("rest_bin_simple"), timeout_s=0.3))


# --------------------------------------------------------------------------- REST against the real Triton


@pytest.mark.integration
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_client_gets_what_tritonclient_http_gets(triton: Any, binary: bool) -> None:
    """The same `simple` call through the HTTP load generator and through tritonclient.http."""
    import tritonclient.http as triton_http

    from benchmarks.httpload import HttpCaller

    w = workloads.build("rest_bin_simple" if binary else "rest_json_simple")

    async def ours() -> bytes:
        caller = HttpCaller(triton.http_address, w, timeout_s=10)
        try:
            first = await caller.preflight()
            again = await caller.lane()()  # a second connection, and a keep-alive call on the first
            assert workloads.http_response(again)[2] == workloads.http_response(await caller.shared())[2]
            return first
        finally:
            await caller.aclose()

    raw = _run(ours())
    status, headers, _ = workloads.http_response(raw)
    assert status == 200 and ("inference-header-content-length" in headers) == binary
    mine = workloads.rest_outputs(raw)
    client = triton_http.InferenceServerClient(triton.http_address)
    try:
        inputs = [triton_http.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(workloads.SIMPLE_INPUT0, binary_data=binary)
        inputs[1].set_data_from_numpy(workloads.SIMPLE_INPUT1, binary_data=binary)
        outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
        theirs = client.infer("simple", inputs, outputs=outputs)
    finally:
        client.close()
    assert set(mine) == {"OUTPUT0", "OUTPUT1"}
    for name in mine:
        assert mine[name].dtype == theirs.as_numpy(name).dtype
        assert np.array_equal(mine[name], theirs.as_numpy(name))
    w.verify(raw)


@pytest.mark.integration
def test_http_loops_count_their_window(triton: Any) -> None:
    closed = _run(
        loadgen.run_load(
            triton.http_address,
            workloads.build("rest_bin_identity:64KiB"),
            concurrency=2,
            duration_s=0.5,
            warmup_s=0.1,
        )
    )
    assert closed.mode == "closed" and closed.error_total == 0 and closed.requests > 0
    assert closed.workload == "rest_bin_identity:64KiB" and closed.concurrency == 2
    opened = _run(
        loadgen.run_load(
            triton.http_address,
            workloads.build("rest_json_simple"),
            rate=150,
            duration_s=2.0,
            warmup_s=0.5,
            seed=7,
        )
    )
    assert opened.mode == "open" and opened.offered_rps == 150 and opened.error_total == 0
    assert 150 * 2.0 * 0.7 <= opened.requests <= 150 * 2.0 * 1.3  # Poisson: about rate x window
    assert opened.latency_ms["p50"] > 0 and opened.concurrency >= 1


@pytest.mark.integration
def test_a_wrong_rest_answer_stops_the_run(triton: Any) -> None:
    right = workloads.build("rest_bin_simple")
    wrong = workloads.rest_workload(
        "rest_bin_simple",
        "simple",
        {"INPUT0": workloads.SIMPLE_INPUT0, "INPUT1": workloads.SIMPLE_INPUT1},
        {"OUTPUT0": workloads.SIMPLE_INPUT0, "OUTPUT1": workloads.SIMPLE_INPUT1},
        True,
        "wrong",
    )
    assert wrong.request == right.request
    with pytest.raises(LoadError, match="OUTPUT0 is wrong"):
        _run(loadgen.run_load(triton.http_address, wrong, duration_s=0.2, warmup_s=0))
    with pytest.raises(LoadError, match="pre-flight call failed: HTTP_4"):
        _run(
            loadgen.run_load(
                triton.http_address, workloads.build("rest_bin_simple", model="nope"), duration_s=0.2
            )
        )


@pytest.mark.integration
def test_router_rest_edge_serves_the_rest_workloads(router: Any) -> None:
    """The router's HTTP edge (the fixture's, on the router's own loop) answers both REST forms right."""
    for name in ("rest_json_simple", "rest_bin_simple"):
        result = _run(
            loadgen.run_load(
                router.http_address, workloads.build(name), concurrency=2, duration_s=0.3, warmup_s=0
            )
        )
        assert result.error_total == 0 and result.requests > 0, name


# --------------------------------------------------------------------------- overload group


def test_overload_rate_is_twice_the_capacity_cell_of_the_same_round() -> None:
    from benchmarks.suite import relative_rate, specs_for

    specs = [s for s in specs_for(["overload"], [], []) if s.group == "overload"]
    assert [s.scenario for s in specs] == ["capacity", "2x, admission limits", "2x, defaults"]
    capacity = cell("overload", "capacity", 8, 96.0, 80.0, 90.0)
    capacity.spec = specs[0]
    spec, _ = relative_rate(specs[1], [capacity])
    assert spec.rate == pytest.approx(192.0) and spec.timeout_s == 1.0
    assert spec.load == specs[1].load == "rate=2x capacity"  # rounds combine by this key
    failed = Cell(specs[0], error="unavailable")
    spec, why = relative_rate(specs[1], [failed])
    assert spec.rate is None and "capacity cell, which did not run" in why


def test_overload_goals_read_goodput_and_refusal_time() -> None:
    from benchmarks.suite import specs_for

    specs = {s.scenario: s for s in specs_for(["overload"], [], [])}
    capacity = Cell(
        specs["capacity"],
        result={"throughput_rps": 100.0, "latency_ms": {"p99": 30.0}, "errors": {}, "error_total": 0},
    )
    over = Cell(
        dataclasses.replace(specs["2x, admission limits"], rate=200.0),
        result={
            "throughput_rps": 93.0,
            "latency_ms": {"p50": 20.0, "p99": 40.0},
            "errors": {"RESOURCE_EXHAUSTED": 400},
            "error_total": 400,
            "error_latency_ms": {"RESOURCE_EXHAUSTED": {"p50": 0.8, "p99": 3.2}},
        },
        error="errors: {'RESOURCE_EXHAUSTED': 400}",  # refusals are what the cell shows
    )
    goals = {g.what: g for g in report.evaluate([capacity, over], batch_delay_ms=2, service_ms=10)}
    goodput = goals["goodput at 2x capacity / capacity"]
    assert goodput.value == pytest.approx(0.93) and goodput.ok is True
    assert "93 answered of 200 offered" in goodput.detail
    refused = goals["refused calls at 2x capacity, p99 (ms)"]
    assert refused.value == 3.2 and refused.ok is True
    over.result["throughput_rps"] = 60.0
    over.result["error_latency_ms"]["RESOURCE_EXHAUSTED"]["p99"] = 12.0
    goals = {g.what: g for g in report.evaluate([capacity, over], batch_delay_ms=2, service_ms=10)}
    assert goals["goodput at 2x capacity / capacity"].ok is False
    assert goals["refused calls at 2x capacity, p99 (ms)"].ok is False


def test_failover_goals_count_failures_the_slowest_call_and_the_comeback() -> None:
    from benchmarks.suite import specs_for

    (spec,) = specs_for(["failover"], [], [])
    assert (spec.disrupt, spec.timeout_s, spec.model) == ("kill-restart", 2.0, "simple_ha")
    result = {
        "throughput_rps": 390.0, "requests": 4680, "latency_ms": {"p99": 4.0, "max": 30.0},
        "errors": {"UNAVAILABLE": 20}, "error_total": 20,
        "error_latency_ms": {"UNAVAILABLE": {"max": 2100.0}},
        "failover": {"killed_at_s": 3.0, "back_after_s": 1.4, "calls_after_back": 900.0},
    }  # fmt: skip
    goals = {g.what: g for g in report.evaluate([Cell(spec, result=result)], batch_delay_ms=2, service_ms=10)}
    failed = goals["failed calls, one of two Tritons SIGKILLed"]
    assert failed.value == pytest.approx(20 / 4700) and failed.ok is True
    assert "UNAVAILABLE 20" in failed.detail and "back after 1.4 s" in failed.detail
    slowest = goals["slowest call (ms)"]  # a failed call that took past the deadline counts too
    assert slowest.value == 2100.0 and slowest.ok is False
    assert goals["calls to the restarted Triton once back"].ok is True
    result["failover"] = {"killed_at_s": 3.0}  # never came back
    goals = {g.what: g for g in report.evaluate([Cell(spec, result=result)], batch_delay_ms=2, service_ms=10)}
    assert goals["calls to the restarted Triton once back"].ok is None
