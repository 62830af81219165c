"""Test model: sleep SECONDS, echo it as SLEPT, and notice client cancellation."""

import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

_STEP = 0.01


def _note_cancelled():
    """Append a line to $TENSORGATE_CANCEL_LOG, if set, so tests can see the cancellation."""
    path = os.environ.get("TENSORGATE_CANCEL_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write("cancelled\n")


class TritonPythonModel:
    """SLEPT = SECONDS after sleeping that long; an error response if cancelled meanwhile."""

    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()
            deadline = time.monotonic() + float(seconds.reshape(-1)[0])
            cancelled = request.is_cancelled()
            while not cancelled and time.monotonic() < deadline:
                time.sleep(min(_STEP, max(0.0, deadline - time.monotonic())))
                cancelled = request.is_cancelled()
            if cancelled:
                _note_cancelled()
                code = getattr(pb_utils.TritonError, "CANCELLED", None)
                error = (
                    pb_utils.TritonError("cancelled")
                    if code is None
                    else pb_utils.TritonError("cancelled", code)
                )
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("SLEPT", seconds.astype(np.float32)),
                        ]
                    )
                )
        return responses
