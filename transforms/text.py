"""Text payloads: strings tokenized into id tensors, or passed on as BYTES for string models.

Spec (`kind: text`), mode `tokens` (the default)::

    tokenizer: /models/bert/tokenizer.json   # a Hugging Face tokenizer.json, read once, offline
    max_length: 128                           # tokens per row, special tokens included
    truncation: true                          # false: a longer text is an item error
    padding: max_length                       # or `longest` (the longest row of the batch)
    pad_id: 0                                 # default: the file's padding id, else [PAD], else 0
    dtype: int64                              # or int32
    outputs: {input_ids: input_ids, attention_mask: attention_mask, token_type_ids: token_type_ids}

`outputs` maps each tensor to produce (any of the three) to the model input it feeds. Mode
`bytes` takes `input: <model input name>` and sends each string as one UTF-8 BYTES element,
shape (batch, 1).

The tokenizer is configured (truncation, padding) once at construction and never changed
afterwards, so `transform` may run on several executor threads at once; the results are those
of the library's own `encode_batch` with the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from tokenizers import Encoding, Tokenizer

from router.errors import InvalidInput
from transforms.base import TensorInfo, Transform, TransformLimits, item_error, register, spec_error

# Tensor name in `outputs` -> the tokenizers.Encoding attribute holding its rows.
ATTRIBUTES = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
TENSORS = tuple(ATTRIBUTES)
DTYPES: dict[str, tuple[type[np.signedinteger[Any]], str]] = {
    "int64": (np.int64, "INT64"),
    "int32": (np.int32, "INT32"),
}
PADDINGS = ("max_length", "longest")
TOKENS_KEYS = frozenset(
    ["mode", "tokenizer", "max_length", "truncation", "padding", "pad_id", "dtype", "outputs"]
)
BYTES_KEYS = frozenset(["mode", "input"])
MODES: dict[str, frozenset[str]] = {"tokens": TOKENS_KEYS, "bytes": BYTES_KEYS}


def _is_int(value: object) -> bool:
    """Whether a spec value is an integer (YAML `true` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _load_tokenizer(path: object) -> Tokenizer:
    """The tokenizer in a tokenizer.json file; a spec error naming the path if it cannot be read."""
    if not isinstance(path, str) or not path:
        raise spec_error("tokenizer", f"must be the path of a tokenizer.json file, got {path!r}")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the library raises plain Exception for missing and malformed files
        reason = str(e).strip() or type(e).__name__
        raise spec_error("tokenizer", f"cannot load a tokenizer from {path!r}: {reason}") from e


@register
class TextTransform(Transform):
    """Strings -> token id tensors (mode `tokens`) or a BYTES tensor of UTF-8 (mode `bytes`)."""

    kind: ClassVar[str] = "text"

    def __init__(self, spec: Mapping[str, Any], limits: TransformLimits | None = None) -> None:
        """Validates the spec and, in mode `tokens`, loads and configures the tokenizer."""
        super().__init__(spec, limits)
        mode = self.spec.get("mode", "tokens")
        if mode not in MODES:
            raise spec_error("mode", f"{mode!r} is not one of {', '.join(MODES)}")
        self.mode: str = mode
        for key in self.spec:
            if key not in MODES[mode]:
                allowed = ", ".join(sorted(MODES[mode]))
                raise spec_error(str(key), f"unknown key for mode {mode} (expected some of: {allowed})")
        if mode == "bytes":
            name = self.spec.get("input")
            if not isinstance(name, str) or not name:
                raise spec_error("input", f"must be the name of the model's string input, got {name!r}")
            self.input_name: str = name
            return
        self._init_tokens()

    def _init_tokens(self) -> None:
        """Validates the keys of mode `tokens` and configures a tokenizer of this instance's own."""
        spec = self.spec
        max_length = spec.get("max_length", 128)
        if not _is_int(max_length) or max_length <= 0:
            raise spec_error("max_length", f"must be an integer > 0, got {max_length!r}")
        truncation = spec.get("truncation", True)
        if not isinstance(truncation, bool):
            raise spec_error("truncation", f"must be true or false, got {truncation!r}")
        padding = spec.get("padding", "max_length")
        if padding not in PADDINGS:
            raise spec_error("padding", f"{padding!r} is not one of {', '.join(PADDINGS)}")
        dtype = spec.get("dtype", "int64")
        if dtype not in DTYPES:
            raise spec_error("dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
        self.outputs_map: dict[str, str] = self._parse_outputs(
            spec.get("outputs", {name: name for name in TENSORS})
        )
        tokenizer = _load_tokenizer(spec.get("tokenizer"))

        specials = tokenizer.num_special_tokens_to_add(False)
        if max_length <= specials:
            raise spec_error(
                "max_length",
                f"{max_length} leaves no room for text after the tokenizer's {specials} special tokens",
            )
        file_padding: dict[str, Any] | None = tokenizer.padding
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if "pad_id" in spec:
            pad_id = spec["pad_id"]
            if not _is_int(pad_id) or not 0 <= pad_id < vocab_size:
                raise spec_error("pad_id", f"must be a token id in [0, {vocab_size}), got {pad_id!r}")
        elif file_padding is not None:
            pad_id = int(file_padding["pad_id"])
        else:
            pad_id = tokenizer.token_to_id("[PAD]") or 0
        pad_token = tokenizer.id_to_token(pad_id) or "[PAD]"

        # Truncation and padding are set once, here, on this instance's own tokenizer: transform()
        # only reads it, so concurrent calls from executor threads need no lock. Directions
        # (and the truncation strategy) follow the file where it configures them.
        file_truncation: dict[str, Any] | None = tokenizer.truncation
        if truncation:
            kwargs: dict[str, Any] = {}
            if file_truncation is not None:
                kwargs = {"strategy": file_truncation["strategy"], "direction": file_truncation["direction"]}
            tokenizer.enable_truncation(max_length, **kwargs)
        else:
            tokenizer.no_truncation()
        tokenizer.enable_padding(
            direction=file_padding["direction"] if file_padding is not None else "right",
            pad_id=pad_id,
            pad_type_id=int(file_padding["pad_type_id"]) if file_padding is not None else 0,
            pad_token=pad_token,
            length=max_length if padding == "max_length" else None,
        )
        self.tokenizer = tokenizer
        self.max_length: int = max_length
        self.truncation: bool = truncation
        self.padding: str = padding
        self.pad_id: int = pad_id
        self.dtype, self.datatype = DTYPES[dtype]

    @staticmethod
    def _parse_outputs(value: object) -> dict[str, str]:
        """The `outputs` mapping: tensor (input_ids | attention_mask | token_type_ids) -> input name."""
        if not isinstance(value, Mapping) or not value:
            raise spec_error("outputs", f"must be a non-empty mapping of {', '.join(TENSORS)} to input names")
        names: dict[str, str] = {}
        for tensor, name in value.items():
            if tensor not in TENSORS:
                expected = ", ".join(TENSORS)
                raise spec_error(f"outputs.{tensor}", f"unknown tensor (expected some of: {expected})")
            if not isinstance(name, str) or not name:
                raise spec_error(f"outputs.{tensor}", f"must be a model input name, got {name!r}")
            if name in names.values():
                raise spec_error(f"outputs.{tensor}", f"input name {name!r} is used twice")
            names[tensor] = name
        return names

    def outputs(self) -> dict[str, TensorInfo]:
        """The tensors produced: BYTES (-1, 1), or int rows of max_length (-1 for `longest`)."""
        if self.mode == "bytes":
            return {self.input_name: TensorInfo("BYTES", (-1, 1))}
        width = self.max_length if self.padding == "max_length" else -1
        return {name: TensorInfo(self.datatype, (-1, width)) for name in self.outputs_map.values()}

    def _check_items(self, items: Sequence[Any]) -> list[bytes]:
        """The UTF-8 encoding of every item, checking type and limits.max_text_bytes."""
        limit = self.limits.max_text_bytes
        encoded: list[bytes] = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise item_error(i, InvalidInput(f"expected a string, got {type(item).__name__}"))
            try:
                data = item.encode("utf-8")
            except UnicodeEncodeError as e:
                problem = InvalidInput(f"text is not valid Unicode ({e.reason} at index {e.start})")
                raise item_error(i, problem) from e
            if len(data) > limit:
                raise item_error(
                    i, InvalidInput(f"text of {len(data)} bytes exceeds limits.max_text_bytes={limit}")
                )
            encoded.append(data)
        return encoded

    def transform(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """The tensors for a batch of strings, one row per item, in item order."""
        encoded = self._check_items(items)
        if self.mode == "bytes":
            column = np.empty((len(encoded), 1), dtype=object)
            column[:, 0] = encoded
            return {self.input_name: column}
        texts: list[str] = list(items)
        encodings: list[Encoding] = self.tokenizer.encode_batch(texts) if texts else []
        if not self.truncation:
            self._check_lengths(encodings)
        if self.padding == "max_length":
            width = self.max_length
        else:
            width = len(encodings[0]) if encodings else 0
        out: dict[str, np.ndarray] = {}
        for tensor, name in self.outputs_map.items():
            attribute = ATTRIBUTES[tensor]
            array = np.empty((len(encodings), width), dtype=self.dtype)
            for row, enc in enumerate(encodings):
                array[row] = getattr(enc, attribute)
            out[name] = array
        return out

    def _check_lengths(self, encodings: Sequence[Encoding]) -> None:
        """Without truncation: an item error for the first text of more than max_length tokens."""
        for i, enc in enumerate(encodings):
            if len(enc) > self.max_length:
                count = sum(enc.attention_mask)  # the row may be padded to a longer one's length
                if count > self.max_length:
                    raise item_error(
                        i,
                        InvalidInput(
                            f"text is {count} tokens (special tokens included), more than "
                            f"spec.max_length={self.max_length}, and spec.truncation is false"
                        ),
                    )
