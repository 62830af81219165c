"""Benchmark model: sleeps a fixed service time per execute (any batch), then Y = 2 * X."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """A backend whose cost is per call, not per row: the case router batching exists for."""

    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.service_s = float(params.get("SERVICE_TIME_MS", {}).get("string_value", "10")) / 1000

    def execute(self, requests):
        time.sleep(self.service_s)  # one fixed cost for everything this execute holds
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(
                        "Y", (pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2).astype(np.float32)
                    )
                ]
            )
            for r in requests
        ]
