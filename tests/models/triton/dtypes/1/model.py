"""Test model: one simple transform per wire type (FP32, FP16, INT32, INT64, BYTES)."""

import numpy as np
import triton_python_backend_utils as pb_utils


def _get(request, name):
    """Return input `name` of `request` as a numpy array."""
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _reverse_each(values):
    """Return an object array of bytes with every element of `values` reversed."""
    out = np.empty(values.shape, dtype=np.object_)
    for index, value in np.ndenumerate(values):
        if isinstance(value, str):
            value = value.encode("utf-8")
        out[index] = bytes(value)[::-1]
    return out


class TritonPythonModel:
    """OUT_FP32 = IN_FP32 * 2, OUT_FP16 = IN_FP16 + 1, OUT_INT32 = IN_INT32 * 3,
    OUT_INT64 = IN_INT64 - 7, OUT_BYTES = each IN_BYTES element reversed."""

    def execute(self, requests):
        responses = []
        for request in requests:
            fp32, fp16 = _get(request, "IN_FP32"), _get(request, "IN_FP16")
            int32, int64 = _get(request, "IN_INT32"), _get(request, "IN_INT64")
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUT_FP32", (fp32 * np.float32(2)).astype(np.float32)),
                        pb_utils.Tensor("OUT_FP16", (fp16 + np.float16(1)).astype(np.float16)),
                        pb_utils.Tensor("OUT_INT32", (int32 * np.int32(3)).astype(np.int32)),
                        pb_utils.Tensor("OUT_INT64", (int64 - np.int64(7)).astype(np.int64)),
                        pb_utils.Tensor("OUT_BYTES", _reverse_each(_get(request, "IN_BYTES"))),
                    ]
                )
            )
        return responses
