"""Calls the example `simple` model through tensorgate with Triton's own gRPC client, unchanged.

Usage: python examples/simple_client.py [--url 127.0.0.1:8500]
"""

import argparse

import numpy as np
import tritonclient.grpc as grpcclient

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="127.0.0.1:8500", help="router (or Triton) gRPC address")
args = parser.parse_args()

client = grpcclient.InferenceServerClient(url=args.url)
input0 = np.arange(16, dtype=np.int32).reshape(1, 16)
input1 = np.ones((1, 16), dtype=np.int32)
inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
          grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
inputs[0].set_data_from_numpy(input0)
inputs[1].set_data_from_numpy(input1)
outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]

result = client.infer(model_name="simple", inputs=inputs, outputs=outputs)
sum_, diff = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
print("INPUT0 ", input0[0])
print("INPUT1 ", input1[0])
print("OUTPUT0", sum_[0], "(INPUT0 + INPUT1)")
print("OUTPUT1", diff[0], "(INPUT0 - INPUT1)")
assert (sum_ == input0 + input1).all() and (diff == input0 - input1).all()
print("PASS: simple via", args.url)
