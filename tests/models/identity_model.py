"""Test model (Python backend): returns input i of its config as output i, unchanged.

Shared by the identity_* test models (their 1/model.py links here), so a test can compare what
the router's transforms sent with what it computed locally.
"""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Output i = input i, for every input in the model's config, in order."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.pairs = [(i["name"], o["name"]) for i, o in zip(config["input"], config["output"], strict=True)]

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(out, pb_utils.get_input_tensor_by_name(request, name).as_numpy())
                for name, out in self.pairs
            ])
            for request in requests
        ]
