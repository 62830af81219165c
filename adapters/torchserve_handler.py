"""The TorchServe handler base class for models served through tensorgate's TorchServe adapter.

This module runs INSIDE the TorchServe worker, not in the router: it needs only the standard
library, numpy and (optionally) torch. devstack/torchserve.py ships it into each .mar as the
top-level module `torchserve_handler` (torch-model-archiver --extra-files).

The encoding (the one the adapter speaks, see adapters/torchserve.py):
- request: each input tensor as `.npy` bytes (np.save format, never pickled) under its input
  name in `PredictionsRequest.input`;
- response: `PredictionResponse.prediction` is an uncompressed `.npz` archive of the named output
  tensors; a failed request gets a JSON body `{"error": message, "code": http_status}` and that
  status on the request (an .npz always starts with the zip magic "PK", JSON never does).

A model author subclasses `TensorHandler` in the model's handler file (the .mar's --handler,
which must define exactly one class), declares its tensors and writes `load` and `predict`::

    import numpy as np
    from torchserve_handler import TensorHandler

    class Doubler(TensorHandler):
        inputs = {"X": ("FP32", (4,))}       # name -> (datatype, shape of one row)
        outputs = {"Y": ("FP32", (4,))}
        max_batch_size = 32                   # 0: the model takes no batch dimension

        def load(self, model_dir: str) -> None:
            self.factor = 2.0

        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"Y": inputs["X"] * self.factor}

When TorchServe hands the handler several requests at once (its batch_size > 1), requests whose
inputs agree in datatype and in every dimension but the first are concatenated along axis 0,
`predict` runs once per such group, and its outputs are split back so each request gets exactly
its own rows. `predict` may return numpy arrays or torch tensors. An exception in `predict`
fails the requests of that call with a message naming the exception, not the worker.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

log = logging.getLogger(__name__)

# Open Inference Protocol datatype <-> numpy dtype (little-endian). BYTES and BF16 have no
# .npy form without pickling, so the encoding does not carry them.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES: dict[np.dtype, str] = {dt: name for name, dt in DTYPES.items()}


class RequestError(Exception):
    """A request that cannot be served; `code` is the HTTP status TorchServe reports for it."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def datatype_of(array: np.ndarray) -> str:
    """The Open Inference Protocol datatype of a numpy array (any byte order)."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    name = DATATYPES.get(dt)
    if name is None:
        raise RequestError(f"dtype {array.dtype} has no tensor datatype (numbers and bool only)", 500)
    return name


def encode_npy(array: np.ndarray) -> bytes:
    """One tensor as .npy bytes (no pickle)."""
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def decode_npy(data: bytes | bytearray | memoryview, what: str) -> np.ndarray:
    """A tensor from .npy bytes; RequestError naming `what` when they are not a plain array."""
    try:
        array = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RequestError(f"{what}: not a .npy array ({e})") from None
    if not isinstance(array, np.ndarray):
        raise RequestError(f"{what}: not a .npy array (an archive?)")
    return array


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named tensors as an uncompressed .npz archive, in the mapping's order."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            zf.writestr(f"{name}.npy", encode_npy(array))
    return out.getvalue()


def decode_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    """Named tensors from an .npz archive (no pickle), in the archive's order."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise RequestError(f"{what}: not an .npz archive ({e})", 500) from None


def error_body(message: str, code: int) -> bytes:
    """The JSON body of a failed request."""
    return json.dumps({"error": message, "code": code}).encode()


def _as_numpy(value: Any, what: str) -> np.ndarray:
    """A predict() output (numpy array or torch tensor) as a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        return np.asarray(value.detach().cpu().numpy())
    raise RequestError(f"{what} is a {type(value).__name__}, not a numpy array or torch tensor", 500)


class TensorHandler:
    """TorchServe handler base: .npy inputs -> `predict` -> .npz outputs, batches split back."""

    inputs: ClassVar[Mapping[str, tuple[str, Sequence[int]]]] = {}
    """Input name -> (datatype, shape of one row; -1 = any size)."""
    outputs: ClassVar[Mapping[str, tuple[str, Sequence[int]]]] = {}
    """Output name -> (datatype, shape of one row)."""
    max_batch_size: ClassVar[int] = 0
    """Rows one call may hold (tensors then have a leading batch axis); 0: no batch axis."""
    torch_threads: ClassVar[int | None] = 1
    """torch.set_num_threads() for the worker (None leaves torch's default, one per core)."""

    def __init__(self) -> None:
        self.initialized = False
        self.context: Any = None

    # -- what a model author writes ---------------------------------------------------------

    def load(self, model_dir: str) -> None:
        """Loads the model from the unpacked .mar folder (weights, extra files)."""

    def predict(self, inputs: dict[str, np.ndarray]) -> Mapping[str, Any]:
        """Runs the model on a batch: input name -> array, to output name -> array (or tensor)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    # -- TorchServe's entry points ----------------------------------------------------------

    def initialize(self, context: Any) -> None:
        """TorchServe's start-up call: torch threads, then the author's load()."""
        self.context = context
        if self.torch_threads is not None:
            try:
                import torch

                torch.set_num_threads(self.torch_threads)
            except ImportError:  # a numpy-only model
                pass
        self.load(context.system_properties.get("model_dir") or os.getcwd())
        self.initialized = True

    def describe_handle(self) -> str:
        """The model's tensors as JSON, for describe-model with customized=true."""

        def specs(items: Mapping[str, tuple[str, Sequence[int]]]) -> list[dict[str, Any]]:
            batch = [-1] if self.max_batch_size > 0 else []
            return [{"name": name, "datatype": dt, "shape": [*batch, *shape]}
                    for name, (dt, shape) in items.items()]

        return json.dumps({"inputs": specs(self.inputs), "outputs": specs(self.outputs),
                           "max_batch_size": self.max_batch_size})

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """TorchServe's per-call entry: one answer (bytes) per request in `data`."""
        self.context = context
        if context is not None and context.get_request_header(0, "describe") == "True":
            return [self.describe_handle()]
        answers: list[bytes | None] = [None] * len(data)
        decoded: dict[int, dict[str, np.ndarray]] = {}
        for i, request in enumerate(data):
            try:
                decoded[i] = self._decode_request(request)
            except RequestError as e:
                answers[i] = self._fail(context, i, e)
        for group in self._groups(decoded):
            try:
                outputs = self._run(group, decoded)
            except RequestError as e:
                for i in group:
                    answers[i] = self._fail(context, i, e)
                continue
            for i, arrays in zip(group, outputs, strict=True):
                answers[i] = encode_npz(arrays)
        return answers

    # -- the parts ------------------------------------------------------------------------

    def _decode_request(self, request: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One request's tensors, checked against the declared inputs."""
        arrays: dict[str, np.ndarray] = {}
        for name, value in request.items():
            if name not in self.inputs:
                raise RequestError(
                    f"unknown input {name!r}; the model takes {', '.join(self.inputs) or 'none'}"
                )
            if not isinstance(value, bytes | bytearray):
                raise RequestError(f"input {name!r}: expected .npy bytes, got {type(value).__name__}")
            array = decode_npy(value, f"input {name!r}")
            datatype, shape = self.inputs[name]
            if array.dtype != DTYPES[datatype] and array.dtype.newbyteorder("=") != DTYPES[datatype]:
                raise RequestError(f"input {name!r}: dtype {array.dtype}, the model takes {datatype}")
            want = [-1, *shape] if self.max_batch_size > 0 else list(shape)
            if array.ndim != len(want) or any(w not in (-1, d) for w, d in zip(want, array.shape,
                                                                              strict=True)):
                raise RequestError(
                    f"input {name!r}: shape {list(array.shape)}, the model takes {want} (-1 = any size)"
                )
            arrays[name] = array
        missing = [n for n in self.inputs if n not in arrays]
        if missing:
            raise RequestError(f"missing input(s) {', '.join(missing)}")
        if self.max_batch_size > 0:
            rows = {len(a) for a in arrays.values()}
            if len(rows) > 1:
                raise RequestError(f"inputs disagree on the batch size: {sorted(rows)}")
        return arrays

    def _groups(self, decoded: Mapping[int, dict[str, np.ndarray]]) -> list[list[int]]:
        """Requests that can run as one call: same datatypes and shapes but the first axis."""
        if self.max_batch_size <= 0:
            return [[i] for i in decoded]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, arrays in decoded.items():
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(arrays.items()))
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def _run(self, group: list[int], decoded: Mapping[int, dict[str, np.ndarray]]
             ) -> list[dict[str, np.ndarray]]:
        """predict() once over the group's requests; each request's own outputs."""
        parts = [decoded[i] for i in group]
        if len(parts) == 1:
            batch = parts[0]
        else:
            batch = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        rows = [len(next(iter(p.values()))) for p in parts] if self.max_batch_size > 0 else [0]
        try:
            result = self._predict(batch)
        except RequestError:
            raise
        except Exception as e:  # the author's model failed: report it, keep the worker
            log.exception("predict() failed")
            raise RequestError(f"the model failed: {type(e).__name__}: {e}", 500) from None
        if not isinstance(result, Mapping):
            raise RequestError(f"predict() returned a {type(result).__name__}, not a dict", 500)
        outputs = {str(n): _as_numpy(v, f"output {n!r}") for n, v in result.items()}
        for name, array in outputs.items():
            datatype_of(array)
            if self.max_batch_size > 0 and (array.ndim == 0 or len(array) != sum(rows)):
                got = "a scalar" if array.ndim == 0 else f"{len(array)} rows"
                raise RequestError(f"output {name!r} has {got} for {sum(rows)} input rows", 500)
        if len(parts) == 1:
            return [outputs]
        bounds = np.cumsum(rows)[:-1]
        split = {n: np.split(a, bounds) for n, a in outputs.items()}
        return [{n: split[n][k] for n in outputs} for k in range(len(parts))]

    def _predict(self, batch: dict[str, np.ndarray]) -> Mapping[str, Any]:
        """predict() without autograd when torch is there."""
        try:
            import torch
        except ImportError:
            return self.predict(batch)
        with torch.inference_mode():
            return self.predict(batch)

    @staticmethod
    def _fail(context: Any, index: int, error: RequestError) -> bytes:
        """Marks request `index` failed with the error's status; its JSON error body."""
        if context is not None:
            context.set_response_status(error.code, error.message, index)
        return error_body(error.message, error.code)
