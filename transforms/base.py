"""The interface every payload transform implements, and the registry of kinds by name.

A transform turns a batch of payload items of one kind (encoded images, strings, table rows)
into the named numpy tensors a model version expects, following a declarative spec from the
registration YAML. Transforms know nothing of gRPC or the router's fronts: the dataplane builds
them from specs, runs them off the event loop, and sends their tensors as raw bytes.

Errors are `router.errors.InvalidInput` naming the item (`items[3]`) and the rule broken;
a bad item never affects the other items' results or other requests.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from router.errors import InvalidInput

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransformLimits:
    """Named limits on what one request may ask a transform to do (defaults are settings)."""

    max_image_bytes: int = 20 * MiB  # one encoded image
    max_image_pixels: int = 40_000_000  # width x height after decoding headers (bombs)
    max_text_bytes: int = 64 * 1024  # one UTF-8 string
    max_table_rows: int = 10_000  # table rows in one request
    max_table_columns: int = 1_000  # table columns in one request


@dataclass(frozen=True)
class TensorInfo:
    """A tensor a transform produces: datatype (Open Inference Protocol name) and the shape of
    the whole batch, -1 where it depends on the request (the batch axis, padded lengths)."""

    datatype: str
    shape: tuple[int, ...]


class Transform(abc.ABC):
    """Turns a batch of payload items of one kind into named tensors."""

    kind: ClassVar[str]

    def __init__(self, spec: Mapping[str, Any], limits: TransformLimits | None = None) -> None:
        """Validates the spec; InvalidInput names the offending key (`spec.resize.size`)."""
        self.spec = dict(spec)
        self.limits = limits or TransformLimits()

    @abc.abstractmethod
    def outputs(self) -> dict[str, TensorInfo]:
        """The tensors this transform produces, by input name of the model."""

    @abc.abstractmethod
    def transform(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """The tensors for a batch of items, batch axis first, in item order.

        Items are `bytes` for images, `str` for text, and for tables either `bytes` (CSV with a
        header line) or a mapping of column name to value (one record). Raises InvalidInput
        naming `items[i]` and the rule.
        """

    def transform_rows(self, items: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[int]]:
        """transform(), and how many batch rows each item became (one each, unless a kind's
        items can hold several, like CSV tables)."""
        return self.transform(items), [1] * len(items)


def item_error(index: int, error: InvalidInput) -> InvalidInput:
    """The same error, prefixed with the item it belongs to."""
    return InvalidInput(f"items[{index}]: {error.message}")


def spec_error(key: str, message: str) -> InvalidInput:
    """An invalid spec value, naming its key."""
    return InvalidInput(f"spec.{key}: {message}")


KINDS: dict[str, type[Transform]] = {}


def register(cls: type[Transform]) -> type[Transform]:
    """Class decorator: makes a transform available by its `kind` name."""
    KINDS[cls.kind] = cls
    return cls


def build(spec: Mapping[str, Any], limits: TransformLimits | None = None) -> Transform:
    """The transform a spec asks for (`kind: image|text|table`)."""
    kind = spec.get("kind")
    factory: Callable[..., Transform] | None = KINDS.get(str(kind))
    if factory is None:
        raise spec_error("kind", f"{kind!r} is not one of {', '.join(sorted(KINDS)) or 'none'}")
    return factory({k: v for k, v in spec.items() if k != "kind"}, limits)
