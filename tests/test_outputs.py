"""Output specs (transforms/outputs.py): classify -> top classes per row, labels, thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.errors import InvalidInput
from transforms.outputs import Classify, build_postprocess

SCORES = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], np.float32)


def test_top_k_per_row_best_first_with_labels() -> None:
    classes = Classify({"output": "P", "top_k": 2, "labels": ["a", "b", "c"]}).apply(SCORES)
    got = [(c.row, c.index, c.label) for c in classes]
    assert got == [(0, 1, "b"), (0, 2, "c"), (1, 0, "a"), (1, 2, "c")]
    assert classes[0].score == pytest.approx(0.7)


def test_default_is_argmax_without_labels_and_one_dim_input_is_one_row() -> None:
    (only,) = Classify({"output": "P"}).apply(np.array([0.2, 0.3, 0.5], np.float32))
    assert (only.row, only.index, only.label) == (0, 2, "")


def test_softmax_turns_logits_into_probabilities() -> None:
    logits = np.array([[1.0, 2.0, 3.0]])
    classes = Classify({"output": "L", "softmax": True, "top_k": 3}).apply(logits)
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert [c.index for c in classes] == [2, 1, 0]
    assert [c.score for c in classes] == pytest.approx(sorted(expected, reverse=True))
    assert sum(c.score for c in classes) == pytest.approx(1.0)


def test_threshold_leaves_out_low_scores_and_top_k_caps_at_the_class_count() -> None:
    classes = Classify({"output": "P", "top_k": 10, "threshold": 0.3}).apply(SCORES)
    assert [(c.row, c.index) for c in classes] == [(0, 1), (1, 0), (1, 2)]


def test_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n\nbird\n")
    (best,) = Classify({"output": "P", "labels_file": str(path)}).apply(SCORES[:1])
    assert best.label == "dog"


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({}, "spec.output"),
        ({"output": "P", "top_k": 0}, "spec.top_k"),
        ({"output": "P", "softmax": "yes"}, "spec.softmax"),
        ({"output": "P", "labels": "a,b"}, "spec.labels"),
        ({"output": "P", "labels": ["a"], "labels_file": "x"}, "spec.labels"),
        ({"output": "P", "labels_file": "/no/such/file"}, "spec.labels_file"),
        ({"output": "P", "threshold": "high"}, "spec.threshold"),
        ({"output": "P", "colour": 1}, "spec.colour"),
    ],
)
def test_spec_errors_name_the_key(spec: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidInput, match=key.replace(".", r"\.")):
        Classify(spec)


def test_build_postprocess_names_the_entry_and_kind() -> None:
    assert build_postprocess([{"kind": "classify", "output": "P"}])[0].output == "P"
    with pytest.raises(InvalidInput, match=r"postprocess\[1\]: spec.kind: 'topk'"):
        build_postprocess([{"kind": "classify", "output": "P"}, {"kind": "topk"}])
    with pytest.raises(InvalidInput, match=r"postprocess\[0\]: spec.output"):
        build_postprocess([{"kind": "classify"}])


def test_shape_and_label_count_mismatches_are_errors() -> None:
    with pytest.raises(InvalidInput, match="3 classes but the spec has 2 labels"):
        Classify({"output": "P", "labels": ["a", "b"]}).apply(SCORES)
    with pytest.raises(InvalidInput, match="cannot be classified"):
        Classify({"output": "P"}).apply(np.zeros((2, 2, 2)))
