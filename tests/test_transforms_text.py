"""Text transform: token tensors equal the tokenizers library's own encode_batch; BYTES mode; errors.

The tokenizer is a small BERT-like WordPiece trained here on an in-test corpus (no downloads).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from router.errors import InvalidInput
from transforms.base import KINDS, TensorInfo, TransformLimits, build
from transforms.text import TextTransform

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model-serving router sits in front of an inference server.",
    "Café crème brûlée, naïve résumé, Ångström and façade.",
    "東京は日本の首都です。北京は中国の首都です。",
    "Emoji too: 🎉 party 😀 smile 🚀 launch.",
    "Tokens, padding, truncation and attention masks.",
] * 10
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

ASCII = "The quick brown fox jumps over the lazy dog."
ACCENTS = "Café crème brûlée, naïve résumé!"
CJK = "東京は日本の首都です"
EMOJI = "party 🎉 and 😀 and unseen 🦄"
LONG = " ".join([ASCII] * 20)  # far more than 16 tokens
BATCH = [ASCII, ACCENTS, CJK, EMOJI, "", LONG, "x"]


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT-like WordPiece tokenizer.json trained on CORPUS, in a session temp folder."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIALS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path


def reference(
    path: Path,
    texts: list[str],
    max_length: int = 16,
    truncation: bool = True,
    padding: str = "max_length",
    pad_id: int | None = None,
) -> dict[str, np.ndarray]:
    """The library's own encode_batch for the same settings, as int64 arrays."""
    tok = Tokenizer.from_file(str(path))
    if truncation:
        tok.enable_truncation(max_length)
    pad = tok.token_to_id("[PAD]") if pad_id is None else pad_id
    tok.enable_padding(pad_id=pad, pad_token="[PAD]", length=max_length if padding == "max_length" else None)
    encodings = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def check_outputs(transform: TextTransform, out: dict[str, np.ndarray]) -> None:
    """outputs() names the produced arrays, with their datatypes and shapes (-1 matching anything)."""
    infos = transform.outputs()
    assert set(infos) == set(out)
    for name, info in infos.items():
        array = out[name]
        assert info.datatype == {"int64": "INT64", "int32": "INT32", "object": "BYTES"}[str(array.dtype)]
        assert len(info.shape) == array.ndim
        assert all(want in (-1, got) for want, got in zip(info.shape, array.shape, strict=True))


def text(path: Path, **spec: Any) -> TextTransform:
    """A text transform in tokens mode on the test tokenizer."""
    return TextTransform({"tokenizer": str(path), **spec})


def assert_error(match: str, spec: dict[str, Any], limits: TransformLimits | None = None) -> None:
    """Building the transform fails with InvalidInput containing `match`."""
    with pytest.raises(InvalidInput) as info:
        TextTransform(spec, limits)
    assert match in info.value.message, info.value.message


# --- tokens mode: equal to the library ---------------------------------------------------------


def test_registered_as_text(tokenizer_path: Path) -> None:
    assert KINDS["text"] is TextTransform
    transform = build({"kind": "text", "tokenizer": str(tokenizer_path)})
    assert isinstance(transform, TextTransform)


def test_defaults_match_encode_batch(tokenizer_path: Path) -> None:
    transform = text(tokenizer_path)
    texts = [ASCII, ACCENTS, CJK, EMOJI]
    out = transform.transform(texts)
    want = reference(tokenizer_path, texts, max_length=128)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, array in want.items():
        assert out[name].dtype == np.int64
        assert out[name].shape == (4, 128)
        np.testing.assert_array_equal(out[name], array)
    assert transform.outputs() == {
        name: TensorInfo("INT64", (-1, 128)) for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    check_outputs(transform, out)


@pytest.mark.parametrize("item", [ASCII, ACCENTS, CJK, EMOJI, "", LONG], ids=repr)
def test_single_items_match_encode_batch(tokenizer_path: Path, item: str) -> None:
    out = text(tokenizer_path, max_length=16).transform([item])
    want = reference(tokenizer_path, [item])
    for name, array in want.items():
        np.testing.assert_array_equal(out[name], array)


def test_non_ascii_is_tokenized_not_unknown(tokenizer_path: Path) -> None:
    """Accents are stripped by the normalizer and CJK/emoji are in the vocab: few [UNK]."""
    tok = Tokenizer.from_file(str(tokenizer_path))
    unk = tok.token_to_id("[UNK]")
    ids = text(tokenizer_path, max_length=32).transform([ACCENTS, CJK])["input_ids"]
    assert tok.token_to_id("cafe") in ids[0]
    assert unk not in ids[1]


def test_empty_string_is_special_tokens_only(tokenizer_path: Path) -> None:
    tok = Tokenizer.from_file(str(tokenizer_path))
    out = text(tokenizer_path, max_length=8).transform([""])
    cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert out["input_ids"].tolist() == [[cls_id, sep_id] + [pad_id] * 6]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]


def test_long_text_is_truncated(tokenizer_path: Path) -> None:
    out = text(tokenizer_path, max_length=16).transform([LONG])
    tok = Tokenizer.from_file(str(tokenizer_path))
    assert out["input_ids"].shape == (1, 16)
    assert out["attention_mask"].tolist() == [[1] * 16]
    assert out["input_ids"][0, -1] == tok.token_to_id("[SEP]")
    assert len(tok.encode(LONG).ids) > 16


@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_batch_of_different_lengths(tokenizer_path: Path, padding: str) -> None:
    transform = text(tokenizer_path, max_length=16, padding=padding)
    out = transform.transform(BATCH)
    want = reference(tokenizer_path, BATCH, padding=padding)
    for name, array in want.items():
        np.testing.assert_array_equal(out[name], array)
    assert out["input_ids"].shape == (len(BATCH), 16)  # LONG fills max_length either way
    check_outputs(transform, out)


def test_longest_padding_pads_to_the_batch(tokenizer_path: Path) -> None:
    transform = text(tokenizer_path, max_length=64, padding="longest")
    texts = ["x", ASCII, ""]
    out = transform.transform(texts)
    want = reference(tokenizer_path, texts, max_length=64, padding="longest")
    longest = len(Tokenizer.from_file(str(tokenizer_path)).encode(ASCII).ids)
    assert out["input_ids"].shape == (3, longest) and longest < 64
    for name, array in want.items():
        np.testing.assert_array_equal(out[name], array)
    assert transform.outputs()["input_ids"] == TensorInfo("INT64", (-1, -1))
    check_outputs(transform, out)


def test_int32(tokenizer_path: Path) -> None:
    transform = text(tokenizer_path, max_length=16, dtype="int32")
    out = transform.transform(BATCH)
    want = reference(tokenizer_path, BATCH)
    for name, array in want.items():
        assert out[name].dtype == np.int32
        np.testing.assert_array_equal(out[name], array)
    assert {info.datatype for info in transform.outputs().values()} == {"INT32"}
    check_outputs(transform, out)


def test_subset_of_outputs_renamed(tokenizer_path: Path) -> None:
    transform = text(tokenizer_path, max_length=16, outputs={"input_ids": "ids", "attention_mask": "mask"})
    out = transform.transform(BATCH)
    want = reference(tokenizer_path, BATCH)
    assert set(out) == {"ids", "mask"}
    np.testing.assert_array_equal(out["ids"], want["input_ids"])
    np.testing.assert_array_equal(out["mask"], want["attention_mask"])
    assert transform.outputs() == {
        "ids": TensorInfo("INT64", (-1, 16)),
        "mask": TensorInfo("INT64", (-1, 16)),
    }
    check_outputs(transform, out)


def test_pair_type_ids_from_template(tokenizer_path: Path) -> None:
    """The fixture's post-processor gives type id 1 to the second sequence of a pair (sanity)."""
    encoding = Tokenizer.from_file(str(tokenizer_path)).encode("a", "b")
    assert encoding.type_ids == [0, 0, 0, 1, 1]


def test_explicit_pad_id(tokenizer_path: Path) -> None:
    mask_id = Tokenizer.from_file(str(tokenizer_path)).token_to_id("[MASK]")
    out = text(tokenizer_path, max_length=16, pad_id=mask_id).transform(BATCH)
    want = reference(tokenizer_path, BATCH, pad_id=mask_id)
    np.testing.assert_array_equal(out["input_ids"], want["input_ids"])
    assert out["input_ids"][4, -1] == mask_id


def test_pad_id_from_the_files_padding(tokenizer_path: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_file(str(tokenizer_path))
    mask_id = tok.token_to_id("[MASK]")
    tok.enable_padding(pad_id=mask_id, pad_token="[MASK]", length=3)  # length is overridden
    path = tmp_path / "padded.json"
    tok.save(str(path))
    transform = text(path, max_length=8)
    assert transform.pad_id == mask_id
    out = transform.transform(["", ASCII])
    assert out["input_ids"].shape == (2, 8)
    assert out["input_ids"][0].tolist()[2:] == [mask_id] * 6


def test_pad_id_zero_without_pad_token(tokenizer_path: Path, tmp_path: Path) -> None:
    data = json.loads(tokenizer_path.read_text())
    vocab = data["model"]["vocab"]
    vocab["[PADDING]"] = vocab.pop("[PAD]")
    for token in data["added_tokens"]:
        if token["content"] == "[PAD]":
            token["content"] = "[PADDING]"
    path = tmp_path / "no-pad.json"
    path.write_text(json.dumps(data))
    assert Tokenizer.from_file(str(path)).token_to_id("[PAD]") is None
    assert text(path).pad_id == 0


def test_empty_batch(tokenizer_path: Path) -> None:
    out = text(tokenizer_path, max_length=16).transform([])
    assert out["input_ids"].shape == (0, 16)
    out = text(tokenizer_path, max_length=16, padding="longest").transform([])
    assert out["input_ids"].shape == (0, 0)


def test_truncation_false_within_max_length(tokenizer_path: Path) -> None:
    texts = [ASCII, "", CJK]
    out = text(tokenizer_path, max_length=32, truncation=False).transform(texts)
    want = reference(tokenizer_path, texts, max_length=32, truncation=False)
    for name, array in want.items():
        np.testing.assert_array_equal(out[name], array)


def test_threads_share_a_transform(tokenizer_path: Path) -> None:
    """transform() only reads the tokenizer: concurrent calls give the same results as serial ones."""
    transforms = {p: text(tokenizer_path, max_length=16, padding=p) for p in ("max_length", "longest")}
    batches = [BATCH[i:] for i in range(len(BATCH))] * 8
    jobs = [(p, b) for b in batches for p in transforms]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: transforms[job[0]].transform(job[1]), jobs))
    for (padding, batch), out in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(
            out["input_ids"], reference(tokenizer_path, batch, padding=padding)["input_ids"]
        )


# --- item errors --------------------------------------------------------------------------------


def test_text_over_max_text_bytes(tokenizer_path: Path) -> None:
    transform = TextTransform({"tokenizer": str(tokenizer_path)}, TransformLimits(max_text_bytes=20))
    assert transform.transform(["é" * 10])["input_ids"].shape == (1, 128)  # 20 bytes: at the limit
    with pytest.raises(InvalidInput) as info:
        transform.transform(["ok", "é" * 11])
    assert info.value.message == "items[1]: text of 22 bytes exceeds limits.max_text_bytes=20"


def test_default_limit_counts_utf8_bytes(tokenizer_path: Path) -> None:
    transform = text(tokenizer_path)
    with pytest.raises(InvalidInput, match=r"^items\[0\]: text of 65540 bytes exceeds"):
        transform.transform(["🎉" * 16385])  # 16385 characters, 65540 bytes


def test_truncation_false_too_long(tokenizer_path: Path) -> None:
    count = len(Tokenizer.from_file(str(tokenizer_path)).encode(LONG).ids)
    for padding in ("max_length", "longest"):
        transform = text(tokenizer_path, max_length=16, truncation=False, padding=padding)
        with pytest.raises(InvalidInput) as info:
            transform.transform(["short", LONG])
        assert info.value.message.startswith(f"items[1]: text is {count} tokens")
        assert "spec.max_length=16" in info.value.message


@pytest.mark.parametrize("mode", ["tokens", "bytes"])
def test_not_a_string(tokenizer_path: Path, mode: str) -> None:
    spec: dict[str, Any] = {"tokenizer": str(tokenizer_path)} if mode == "tokens" else {"input": "text"}
    transform = TextTransform({"mode": mode, **spec})
    with pytest.raises(InvalidInput, match=r"^items\[1\]: expected a string, got bytes"):
        transform.transform(["fine", b"bytes"])
    with pytest.raises(InvalidInput, match=r"^items\[0\]: text is not valid Unicode"):
        transform.transform(["a\ud800b"])


# --- spec errors --------------------------------------------------------------------------------


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "tokenizer.json")
    assert_error(f"spec.tokenizer: cannot load a tokenizer from {missing!r}", {"tokenizer": missing})


def test_invalid_tokenizer_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    assert_error(f"spec.tokenizer: cannot load a tokenizer from {str(bad)!r}", {"tokenizer": str(bad)})


def test_tokenizer_key_required() -> None:
    assert_error("spec.tokenizer: must be the path", {})
    assert_error("spec.tokenizer: must be the path", {"tokenizer": 3})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("padding", "left", "spec.padding: 'left' is not one of max_length, longest"),
        ("padding", True, "spec.padding:"),
        ("max_length", 0, "spec.max_length: must be an integer > 0"),
        ("max_length", -3, "spec.max_length:"),
        ("max_length", "128", "spec.max_length:"),
        ("max_length", True, "spec.max_length:"),
        ("max_length", 2, "spec.max_length: 2 leaves no room for text after the tokenizer's 2 special"),
        ("truncation", "yes", "spec.truncation: must be true or false"),
        ("dtype", "float32", "spec.dtype: 'float32' is not one of int64, int32"),
        ("pad_id", -1, "spec.pad_id: must be a token id in [0, "),
        ("pad_id", 10**6, "spec.pad_id:"),
        ("pad_id", False, "spec.pad_id:"),
        ("outputs", {}, "spec.outputs: must be a non-empty mapping"),
        ("outputs", ["input_ids"], "spec.outputs: must be a non-empty mapping"),
        ("outputs", {"position_ids": "pos"}, "spec.outputs.position_ids: unknown tensor"),
        ("outputs", {"input_ids": ""}, "spec.outputs.input_ids: must be a model input name"),
        ("outputs", {"input_ids": "x", "attention_mask": "x"}, "spec.outputs.attention_mask: input name 'x'"),
        ("mode", "chars", "spec.mode: 'chars' is not one of tokens, bytes"),
        ("tokeniser", "x", "spec.tokeniser: unknown key for mode tokens"),
        ("input", "text", "spec.input: unknown key for mode tokens"),
    ],
)
def test_bad_spec(tokenizer_path: Path, key: str, value: Any, match: str) -> None:
    assert_error(match, {"tokenizer": str(tokenizer_path), key: value})


def test_bad_bytes_spec(tokenizer_path: Path) -> None:
    assert_error("spec.input: must be the name", {"mode": "bytes"})
    assert_error(
        "spec.tokenizer: unknown key for mode bytes", {"mode": "bytes", "input": "t", "tokenizer": "x"}
    )
    assert_error(
        "spec.max_length: unknown key for mode bytes", {"mode": "bytes", "input": "t", "max_length": 8}
    )


def test_build_names_unknown_kind() -> None:
    with pytest.raises(InvalidInput, match=r"spec\.kind: 'txt' is not one of .*text"):
        build({"kind": "txt"})


# --- bytes mode ---------------------------------------------------------------------------------


def test_bytes_mode() -> None:
    transform = TextTransform({"mode": "bytes", "input": "TEXT"})
    texts = [ASCII, ACCENTS, CJK, EMOJI, ""]
    out = transform.transform(texts)
    assert set(out) == {"TEXT"}
    array = out["TEXT"]
    assert array.dtype == object and array.shape == (5, 1)
    assert [row[0] for row in array] == [t.encode("utf-8") for t in texts]
    assert all(type(row[0]) is bytes for row in array)
    assert array[2, 0].decode("utf-8") == CJK
    assert transform.outputs() == {"TEXT": TensorInfo("BYTES", (-1, 1))}
    check_outputs(transform, out)
    assert transform.transform([])["TEXT"].shape == (0, 1)


def test_bytes_mode_limit() -> None:
    transform = TextTransform({"mode": "bytes", "input": "TEXT"}, TransformLimits(max_text_bytes=4))
    assert transform.transform(["😀"])["TEXT"][0, 0] == "😀".encode()
    with pytest.raises(InvalidInput, match=r"^items\[1\]: text of 5 bytes exceeds limits.max_text_bytes=4$"):
        transform.transform(["😀", "a😀"])
