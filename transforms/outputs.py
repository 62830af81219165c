"""Output specs: how a model's output tensors become answers.

`classify` turns a (rows, classes) score tensor into each row's top classes:

    postprocess:
      - kind: classify
        output: PROBS          # the output tensor
        softmax: false         # apply softmax first (for logits)
        top_k: 3               # classes per row, highest score first (default 1: argmax)
        labels: [cat, dog, ..] # or labels_file: a text file, one label per line
        threshold: 0.1         # optional: leave out classes scoring below it

Outputs without a spec are returned as raw tensors, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import InvalidInput
from transforms.base import spec_error

_KEYS = {"output", "softmax", "top_k", "labels", "labels_file", "threshold"}


@dataclass(frozen=True)
class ClassScore:
    """One class of one row: its index, label ("" without labels) and score."""

    row: int
    index: int
    label: str
    score: float


class Classify:
    """Top-k classes per row of one output tensor."""

    kind = "classify"

    def __init__(self, spec: Mapping[str, Any]) -> None:
        """Validates the spec; InvalidInput names the offending key."""
        unknown = set(spec) - _KEYS
        if unknown:
            expected = ", ".join(sorted(_KEYS))
            raise spec_error(sorted(unknown)[0], f"unknown key (expected some of: {expected})")
        output = spec.get("output")
        if not isinstance(output, str) or not output:
            raise spec_error("output", "the name of the output tensor to classify is required")
        self.output = output
        self.softmax = spec.get("softmax", False)
        if not isinstance(self.softmax, bool):
            raise spec_error("softmax", f"expected true or false, got {self.softmax!r}")
        self.top_k = spec.get("top_k", 1)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise spec_error("top_k", f"expected a whole number >= 1, got {self.top_k!r}")
        threshold = spec.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise spec_error("threshold", f"expected a number, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)
        self.labels = self._labels(spec)

    @staticmethod
    def _labels(spec: Mapping[str, Any]) -> list[str]:
        if "labels" in spec and "labels_file" in spec:
            raise spec_error("labels", "give labels or labels_file, not both")
        if "labels" in spec:
            labels = spec["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str | int) for x in labels):
                raise spec_error("labels", "expected a list of labels")
            return [str(x) for x in labels]
        if "labels_file" in spec:
            path = Path(str(spec["labels_file"]))
            try:
                return [line.strip() for line in path.read_text().splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise spec_error("labels_file", f"cannot read {path}: {e}") from None
        return []

    def apply(self, scores: np.ndarray) -> list[ClassScore]:
        """The top classes of every row of a (rows, classes) tensor, best first per row."""
        if scores.ndim == 1:
            scores = scores.reshape(1, -1)
        if scores.ndim != 2 or scores.dtype.kind not in "fiu":
            raise InvalidInput(
                f"output {self.output!r} of shape {list(scores.shape)} and dtype {scores.dtype} "
                "cannot be classified: expected numbers shaped (rows, classes)"
            )
        classes = scores.shape[1]
        if self.labels and len(self.labels) != classes:
            raise InvalidInput(
                f"output {self.output!r} has {classes} classes but the spec has {len(self.labels)} labels"
            )
        values = scores.astype(np.float64)
        if self.softmax:
            values = np.exp(values - values.max(axis=1, keepdims=True))
            values /= values.sum(axis=1, keepdims=True)
        k = min(self.top_k, classes)
        top = np.argsort(-values, axis=1, kind="stable")[:, :k]
        out = []
        for row, indices in enumerate(top):
            for index in indices:
                score = float(values[row, index])
                if self.threshold is not None and score < self.threshold:
                    continue
                label = self.labels[index] if self.labels else ""
                out.append(ClassScore(row, int(index), label, score))
        return out


def build_postprocess(specs: Sequence[Mapping[str, Any]]) -> list[Classify]:
    """Output specs from the registration; InvalidInput names the bad one."""
    out = []
    for i, spec in enumerate(specs):
        kind = spec.get("kind")
        if kind != Classify.kind:
            raise InvalidInput(f"postprocess[{i}]: spec.kind: {kind!r} is not one of classify")
        try:
            out.append(Classify({k: v for k, v in spec.items() if k != "kind"}))
        except InvalidInput as e:
            raise InvalidInput(f"postprocess[{i}]: {e.message}") from None
    return out
