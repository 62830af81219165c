"""Benchmark model: OUTPUT = INPUT (FP32, any length)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Echoes the tensor, so the payload crosses every hop twice."""

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy())
                ]
            )
            for r in requests
        ]
