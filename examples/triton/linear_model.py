"""Shared by the example models `digits` and `wine` (their 1/model.py link here): a linear
classifier trained at set-up (devstack/examples.py), run with numpy. Output PROBS: softmax."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """PROBS = softmax(standardise(x) @ W + b), x = the model's input flattened per row."""

    def initialize(self, args):
        weights = np.load(Path(args["model_repository"]) / args["model_version"] / "weights.npz")
        self.w, self.b = weights["weights"], weights["bias"]
        self.mean = weights["mean"] if "mean" in weights else None
        self.std = weights["std"] if "std" in weights else None
        self.input = json.loads(args["model_config"])["input"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            x = x.reshape(len(x), -1).astype(np.float32)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            logits = x @ self.w + self.b
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROBS", probs)]))
        return responses
