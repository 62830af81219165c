"""Test model `probe` for TorchServe: Y = 2 X + 1, CALL_ROWS = the rows of the handler call each
row went through (shows TorchServe's batching), and a model error when X holds 13."""

import numpy as np
from torchserve_handler import TensorHandler


class Probe(TensorHandler):
    """Doubles and adds one; refuses the unlucky number."""

    inputs = {"X": ("FP32", (-1,))}
    outputs = {"Y": ("FP32", (-1,)), "CALL_ROWS": ("INT64", (1,))}
    max_batch_size = 64

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["X"]
        if (x == 13).any():
            raise ValueError("unlucky input 13")
        return {"Y": x * 2 + 1, "CALL_ROWS": np.full((len(x), 1), len(x), dtype=np.int64)}
