"""Image, text and table payloads through Predict against the real Triton.

The identity_* test models echo their inputs, so every item's result must equal the transform
computed locally on that item alone: the router transformed, batched and split back exactly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorgate.v1 import inference_pb2

from router.registry import parse_registration
from router.tensors import to_numpy
from tests.conftest import RouterThread, predict
from tests.test_transforms_text import tokenizer_path  # noqa: F401  (session fixture)
from transforms.base import build

pytestmark = pytest.mark.integration

IMAGE_SPEC = {"kind": "image", "input": "IMAGE", "resize": {"mode": "exact", "size": [8, 8]},
              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
TABLE_SPEC = {"kind": "table", "input": "FEATURES", "columns": [
    {"name": "alcohol", "mean": 10.0, "std": 2.0},
    {"name": "year", "type": "integer", "default": 2000},
    {"name": "colour", "type": "category", "vocabulary": ["red", "white"], "encoding": "onehot"},
]}


def text_spec(path: Path) -> dict[str, Any]:
    return {"kind": "text", "tokenizer": str(path), "max_length": 12}


@pytest.fixture(scope="module")
def transform_router(router: RouterThread, triton: Any, tokenizer_path: Path) -> RouterThread:  # noqa: F811
    backend = {"kind": "triton", "endpoints": [triton.grpc_address]}
    records = parse_registration({"models": [
        {"name": "img", "backend": {**backend, "model": "identity_image"}, "transforms": [IMAGE_SPEC]},
        {"name": "tab", "backend": {**backend, "model": "identity_table"}, "transforms": [TABLE_SPEC]},
        {"name": "txt", "backend": {**backend, "model": "identity_tokens"},
         "transforms": [text_spec(tokenizer_path)]},
    ]}, "transform tests")
    router.run(router.app.admin.register(records))
    return router


def outputs(result: inference_pb2.ItemResult) -> dict[str, np.ndarray]:
    return {t.name: to_numpy(t.datatype, t.shape, t.data) for t in result.outputs}


def encoded(size: tuple[int, int], fmt: str, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_images_through_predict_equal_the_local_transform(transform_router: RouterThread) -> None:
    images = [encoded((31, 17), "PNG", 1), encoded((64, 48), "JPEG", 2), encoded((5, 40), "PNG", 3, "L")]
    request = inference_pb2.PredictRequest(model="img")
    for data in images:
        request.items.add().image.data = data
    response = predict(transform_router.address, request)
    local = build(IMAGE_SPEC)
    assert len(response.results) == 3
    for data, result in zip(images, response.results, strict=True):
        expected = local.transform([data])["IMAGE"]
        got = outputs(result)["OUT"]
        assert got.shape == (1, 3, 8, 8) and got.dtype == np.float32
        assert np.array_equal(got, expected)


def test_a_bad_image_names_its_item(transform_router: RouterThread) -> None:
    good = encoded((20, 20), "JPEG", 4)
    request = inference_pb2.PredictRequest(model="img")
    request.items.add().image.data = good
    request.items.add().image.data = good[: len(good) // 2]
    with pytest.raises(grpc.RpcError) as info:
        predict(transform_router.address, request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model img:1: items[1]" in info.value.details()
    # and the same router keeps serving the good image
    ok = inference_pb2.PredictRequest(model="img")
    ok.items.add().image.data = good
    assert outputs(predict(transform_router.address, ok).results[0])["OUT"].shape == (1, 3, 8, 8)


def test_table_csv_and_records_items_get_their_own_rows(transform_router: RouterThread) -> None:
    request = inference_pb2.PredictRequest(model="tab")
    request.items.add().table.csv = b"colour,alcohol,year\nred,12,1990\nwhite,8,\n"
    record = request.items.add().table.records.add()
    record.values.update({"alcohol": "11", "colour": "white", "year": "2020"})
    response = predict(transform_router.address, request)
    first, second = (outputs(r)["OUT"] for r in response.results)
    #                  alcohol std   year   red  white
    assert first.tolist() == [[1.0, 1990.0, 1.0, 0.0], [-1.0, 2000.0, 0.0, 1.0]]
    assert second.tolist() == [[0.5, 2020.0, 0.0, 1.0]]
    bad = inference_pb2.PredictRequest(model="tab")
    bad.items.add().table.csv = b"alcohol,colour\nstrong,red\n"
    with pytest.raises(grpc.RpcError) as info:
        predict(transform_router.address, bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[0]" in info.value.details() and "alcohol" in info.value.details()


def test_text_through_predict_equals_the_tokenizer(
    transform_router: RouterThread, tokenizer_path: Path  # noqa: F811
) -> None:
    texts = ["The quick brown fox.", "", "Café crème brûlée " * 10, "東京は日本の首都です"]
    request = inference_pb2.PredictRequest(model="txt")
    for text in texts:
        request.items.add().text.text = text
    response = predict(transform_router.address, request)
    local = build(text_spec(tokenizer_path)).transform(texts)
    for i, result in enumerate(response.results):
        got = outputs(result)
        assert np.array_equal(got["OUT_IDS"], local["input_ids"][i : i + 1])
        assert np.array_equal(got["OUT_MASK"], local["attention_mask"][i : i + 1])
        assert np.array_equal(got["OUT_TYPES"], local["token_type_ids"][i : i + 1])


def test_payload_kind_errors(transform_router: RouterThread) -> None:
    mixed = inference_pb2.PredictRequest(model="img")
    mixed.items.add().image.data = encoded((8, 8), "PNG", 5)
    mixed.items.add().text.text = "hi"
    with pytest.raises(grpc.RpcError) as info:
        predict(transform_router.address, mixed)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[1] is text, items[0] is image" in info.value.details()
    no_spec = inference_pb2.PredictRequest(model="tab")
    no_spec.items.add().image.data = encoded((8, 8), "PNG", 6)
    with pytest.raises(grpc.RpcError) as info:
        predict(transform_router.address, no_spec)
    assert "has no image input spec" in info.value.details() and "table" in info.value.details()


def test_registration_checks_specs_against_the_model(transform_router: RouterThread, triton: Any) -> None:
    from router.errors import InvalidInput

    backend = {"kind": "triton", "endpoints": [triton.grpc_address], "model": "identity_image"}
    wrong_input = parse_registration({"name": "img-bad", "backend": backend,
                                      "transforms": [{**IMAGE_SPEC, "input": "PIXELS"}]}, "t")
    with pytest.raises(InvalidInput, match="produces 'PIXELS', which is not an input"):
        transform_router.run(transform_router.app.admin.register(wrong_input))
    bad_mode = parse_registration({"name": "img-bad", "backend": backend,
                                   "transforms": [{**IMAGE_SPEC, "mode": "CMYK"}]}, "t")
    with pytest.raises(InvalidInput, match=r"transforms\[0\]: spec.mode"):
        transform_router.run(transform_router.app.admin.register(bad_mode))
    assert [r.name for r in transform_router.app.store.records("img-bad")] == []


def test_settings_limits_reach_the_transforms(
    triton: Any, tmp_path: Path, tokenizer_path: Path  # noqa: F811
) -> None:
    from tests.conftest import router_settings

    rt = RouterThread(router_settings(tmp_path / "r.db", **{"limits.max_text_bytes": 10})).start()
    try:
        backend = {"kind": "triton", "endpoints": [triton.grpc_address], "model": "identity_tokens"}
        records = parse_registration(
            {"name": "txt", "backend": backend, "transforms": [text_spec(tokenizer_path)]}, "t"
        )
        rt.run(rt.app.admin.register(records))
        request = inference_pb2.PredictRequest(model="txt")
        request.items.add().text.text = "short"
        request.items.add().text.text = "eleven byte"
        with pytest.raises(grpc.RpcError) as info:
            predict(rt.address, request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "items[1]" in info.value.details()
        assert "limits.max_text_bytes=10" in info.value.details()
    finally:
        rt.stop()


def test_cli_infer_with_images_csv_and_text(
    transform_router: RouterThread, tmp_path: Path, tokenizer_path: Path  # noqa: F811
) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    def cli(*args: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "router", "infer", *args, "--address", transform_router.address,
             "--json"], cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    a.write_bytes(encoded((12, 9), "PNG", 7))
    b.write_bytes(encoded((30, 30), "JPEG", 8))
    answer = cli("img", "--image", str(a), "--image", str(b))
    local = build(IMAGE_SPEC)
    for path, result in zip((a, b), answer["results"], strict=True):
        out = result["outputs"]["OUT"]
        assert out["shape"] == [1, 3, 8, 8]
        assert np.array_equal(np.array(out["data"], np.float32),
                              local.transform([path.read_bytes()])["IMAGE"].reshape(-1))
    table = tmp_path / "t.csv"
    table.write_text("alcohol,colour\n12,red\n8,white\n")
    rows = cli("tab", "--csv", str(table))["results"][0]["outputs"]["OUT"]
    assert rows["shape"] == [2, 4] and rows["data"] == [1.0, 2000.0, 1.0, 0.0, -1.0, 2000.0, 0.0, 1.0]
    texts = cli("txt", "--text", "the quick fox", "--text", "")["results"]
    expected = build(text_spec(tokenizer_path)).transform(["the quick fox", ""])["input_ids"]
    assert [r["outputs"]["OUT_IDS"]["data"] for r in texts] == expected.tolist()
