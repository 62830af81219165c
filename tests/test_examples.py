"""The example models trained at set-up answer correctly through the router: `digits` from PNG
and JPEG images, `wine` from CSV and records, equal to the same model applied offline."""

from __future__ import annotations

import io
import os
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorgate.v1 import inference_pb2, inference_pb2_grpc

from devstack.examples import digits_split, offline_predict, prepare, wine_split
from router.config import load_yaml
from router.registry import parse_registration
from router.tensors import to_numpy
from tests.conftest import REPO, RouterThread

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def examples_router(router: RouterThread, triton: Any, torchserve: Any) -> RouterThread:
    """The router with examples/models.yaml registered, as `make run` does."""
    os.environ["TENSORGATE_EXAMPLE_TRITON"] = triton.grpc_address
    os.environ["TENSORGATE_EXAMPLE_TORCHSERVE"] = torchserve.grpc_address
    os.environ["TENSORGATE_MINILM_TOKENIZER"] = str(prepare())
    try:
        records = parse_registration(load_yaml(REPO / "examples" / "models.yaml"), "examples")
    finally:
        for var in (
            "TENSORGATE_EXAMPLE_TRITON",
            "TENSORGATE_EXAMPLE_TORCHSERVE",
            "TENSORGATE_MINILM_TOKENIZER",
        ):
            del os.environ[var]
    router.run(router.app.admin.register([r for r in records if r.name != "simple"]))
    return router


def predict(address: str, request: inference_pb2.PredictRequest) -> list[np.ndarray]:
    """Each item's PROBS; checks that each item's classifications agree with them."""
    with grpc.insecure_channel(address) as channel:
        response = inference_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=60)
    out = []
    for r in response.results:
        probs = next(to_numpy(t.datatype, t.shape, t.data) for t in r.outputs if t.name == "PROBS")
        best = [c for c in r.classifications if c.index == probs[c.row].argmax()]
        assert len(best) == len(probs), "every row's best class is among its classifications"
        for c in r.classifications:
            assert c.score == pytest.approx(float(probs[c.row, c.index]), rel=1e-6)
        out.append(probs)
    return out


def digit_file(image: np.ndarray, fmt: str) -> bytes:
    """A held-out 8x8 digit (values 0..16) as an 8-bit grayscale image file."""
    pixels = np.round(image * 255 / 16).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_digits_from_image_files(examples_router: RouterThread, fmt: str) -> None:
    _, x_test, _, y_test = digits_split()
    files = [digit_file(img, fmt) for img in x_test]
    predicted = []
    for start in range(0, len(files), 64):  # max_batch_size 64
        request = inference_pb2.PredictRequest(model="digits")
        for data in files[start : start + 64]:
            request.items.add().image.data = data
        predicted += [int(p.argmax()) for p in predict(examples_router.address, request)]
    # offline: the same model on the same pixels (decoded locally, scaled back to 0..16)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("L"), np.float32) for f in files])
    offline = offline_predict("digits", pixels * np.float32(16 / 255)).argmax(axis=1)
    assert predicted == offline.tolist()
    one = inference_pb2.PredictRequest(model="digits")
    one.items.add().image.data = files[0]
    with grpc.insecure_channel(examples_router.address) as channel:
        answer = inference_pb2_grpc.InferenceServiceStub(channel).Predict(one, timeout=60)
    top = answer.results[0].classifications
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert len(top) == 3 and top[0].label == names[offline[0]] and top[0].score >= top[1].score
    accuracy = float(np.mean(np.array(predicted) == y_test))
    print(f"digits via the router from {fmt}: accuracy {accuracy:.3f} on {len(files)} held-out images")
    assert accuracy > 0.9


def test_wine_from_csv_and_records(examples_router: RouterThread) -> None:
    _, x_test, _, y_test, names = wine_split()
    csv_text = ",".join(names) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x_test)
    request = inference_pb2.PredictRequest(model="wine")
    request.items.add().table.csv = csv_text.encode()
    (from_csv,) = predict(examples_router.address, request)
    records = inference_pb2.PredictRequest(model="wine")
    for row in x_test:
        records.items.add().table.records.add().values.update(
            {n: repr(float(v)) for n, v in zip(names, row, strict=True)}
        )
    from_records = np.concatenate(predict(examples_router.address, records))
    offline = offline_predict("wine", x_test.astype(np.float32))
    assert from_csv.argmax(axis=1).tolist() == offline.argmax(axis=1).tolist()
    assert from_records.argmax(axis=1).tolist() == offline.argmax(axis=1).tolist()
    np.testing.assert_allclose(from_csv, offline, rtol=1e-5, atol=1e-6)
    accuracy = float(np.mean(from_csv.argmax(axis=1) == y_test))
    print(f"wine via the router: accuracy {accuracy:.3f} on {len(x_test)} held-out rows")
    assert accuracy > 0.9


def test_minilm_embeddings_equal_sentence_transformers(examples_router: RouterThread) -> None:
    """Text through the router's tokenizer spec and the numpy BERT in Triton gives the same
    embeddings as sentence-transformers running the model directly."""
    from sentence_transformers import SentenceTransformer

    texts = [
        "A router in front of Triton.",
        "Café crème brûlée",
        "東京は日本の首都です",
        "",
        "tensors travel as raw bytes " * 40,
    ]
    request = inference_pb2.PredictRequest(model="minilm")
    for text in texts:
        request.items.add().text.text = text
    with grpc.insecure_channel(examples_router.address) as channel:
        response = inference_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=120)
    got = np.concatenate([to_numpy(t.datatype, t.shape, t.data) for r in response.results for t in r.outputs])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = prepare().parent
    direct = SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_numpy=True)
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, direct, atol=1e-4)


def test_minilm_from_the_cli(examples_router: RouterThread) -> None:
    import json
    import subprocess
    import sys

    text = "A router in front of Triton."
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "infer",
            "minilm",
            "--text",
            text,
            "--address",
            examples_router.address,
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    embedding = json.loads(result.stdout)["results"][0]["outputs"]["EMBEDDING"]
    assert embedding["shape"] == [1, 384]
    request = inference_pb2.PredictRequest(model="minilm")
    request.items.add().text.text = text
    with grpc.insecure_channel(examples_router.address) as channel:
        response = inference_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=60)
    (out,) = response.results[0].outputs
    assert np.allclose(embedding["data"], to_numpy(out.datatype, out.shape, out.data).reshape(-1))
    assert abs(np.linalg.norm(embedding["data"]) - 1.0) < 1e-5


def _readme_curl_lines() -> list[str]:
    """The curl lines of the README's "Calling over HTTP" block."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("tests/test_examples.py runs every line of this block", 1)[1]
    block = block.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("curl ")]


# A shell function standing in for curl that prints the -d argument: the request body as the
# shell expands it (base64 of the files included).
_PRINT_BODY = 'curl() { while [ $# -gt 0 ]; do [ "$1" = -d ] && printf "%s" "$2"; shift; done; }; '


def test_readme_curl_lines_answer_as_grpc_does(examples_router: RouterThread) -> None:
    import json
    import subprocess

    from google.protobuf import json_format

    from devstack.run import _write_example_inputs

    _write_example_inputs()  # .cache/run/digit.png and wine.csv, as `make run` writes them
    lines = _readme_curl_lines()
    assert len(lines) == 7
    seen = set()
    for line in lines:
        cmd = line.replace("localhost:8501", examples_router.http_address)
        done = subprocess.run(
            ["bash", "-c", cmd + " -w '\\n%{http_code}'"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        body, _, code = done.stdout.rpartition("\n")
        assert code == "200", (line, done.stdout[-500:], done.stderr)
        answer = json.loads(body)
        if ":predict" in line:
            sent = subprocess.run(
                ["bash", "-c", _PRINT_BODY + cmd],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            request = json_format.ParseDict(json.loads(sent), inference_pb2.PredictRequest())
            request.model = line.split("/v1/models/", 1)[1].split(":predict", 1)[0]
            with grpc.insecure_channel(examples_router.address) as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                expected = json_format.MessageToDict(
                    stub.Predict(request, timeout=60), always_print_fields_with_no_presence=True
                )
            assert answer.pop("requestId") and expected.pop("requestId")
            assert answer == expected, line
            if request.model != "minilm":
                assert answer["results"][0]["classifications"], line
            seen.add(request.model)
        elif "/v2/models/simple/infer" in line:
            outputs = {o["name"]: o["data"] for o in answer["outputs"]}
            assert outputs["OUTPUT0"] == [i + 1 for i in range(16)]
            assert outputs["OUTPUT1"] == [i - 1 for i in range(16)]
            seen.add("simple")
        elif "/v1/registry/models" in line:
            assert [(m["name"], m["version"]) for m in answer["models"]] == [("wine", "1")]
            seen.add("registry")
        else:
            assert answer["openapi"].startswith("3.") and "/v2/models/{name}/infer" in answer["paths"]
            seen.add("openapi")
    assert seen == {"simple", "digits", "minilm", "wine", "wine_torch", "registry", "openapi"}
