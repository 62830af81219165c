"""The wine classifier as a torch model in TorchServe: the same weights as the Triton `wine`
example (examples/triton/wine/1/weights.npz, trained at set-up), so both give the same class
probabilities. PROBS = softmax(Linear((FEATURES - mean) / std)).

devstack/torchserve.py packs this file, the weights and torchserve_handler.py into wine_torch.mar.
"""

import os

import numpy as np
import torch
from torchserve_handler import TensorHandler


class WineClassifier(TensorHandler):
    """Wine cultivar probabilities from 13 measurements."""

    inputs = {"FEATURES": ("FP32", (13,))}
    outputs = {"PROBS": ("FP32", (3,))}
    max_batch_size = 64

    def load(self, model_dir: str) -> None:
        weights = np.load(os.path.join(model_dir, "weights.npz"))
        self.mean = torch.from_numpy(weights["mean"])
        self.std = torch.from_numpy(weights["std"])
        w = torch.from_numpy(weights["weights"])  # [13, 3]
        self.linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(w.T)
            self.linear.bias.copy_(torch.from_numpy(weights["bias"]))
        self.linear.eval()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        x = (torch.from_numpy(inputs["FEATURES"]) - self.mean) / self.std
        return {"PROBS": torch.softmax(self.linear(x), dim=1)}
