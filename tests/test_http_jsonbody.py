"""JSON bodies: the nesting limit counts only real brackets, and errors say where."""

from __future__ import annotations

import json

import pytest

from router.errors import InvalidInput
from router.http.jsonbody import check_depth, load


@pytest.mark.parametrize("depth", [1, 3, 8, 9, 40])
def test_depth_is_measured_exactly(depth: int) -> None:
    doc = json.dumps(json.loads("[" * depth + "]" * depth)).encode()
    doc = b'{"pad": [' + b"[], " * 20 + b'0], "x": ' + doc + b"}"  # many shallow brackets
    if depth + 1 > 8:
        with pytest.raises(InvalidInput, match=f"nests {depth + 1} levels deep; http.max_json_depth=8"):
            check_depth(doc, 8)
    else:
        check_depth(doc, 8)


def test_brackets_inside_strings_do_not_count() -> None:
    tricky = ["[[[[[[[[[[", 'a\\"[[[[[[[[[[[', "\\\\", "{{{{{{{{{{{{", '"]]]]"']
    doc = json.dumps({"s": tricky, "t": [[["x"]]]}).encode()
    assert doc.count(b"[") + doc.count(b"{") > 30
    check_depth(doc, 4)  # real depth: {, [, [, [ = 4
    with pytest.raises(InvalidInput, match="nests 4 levels"):
        check_depth(doc, 3)


def test_load_names_the_problem() -> None:
    with pytest.raises(
        InvalidInput,
        match="malformed JSON body: Expecting property name enclosed in double quotes at line 2 column 6",
    ):
        load(b'{"a":\n  1, ]', 8)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load(b'{"a": "\xff"}', 8)
    assert load(memoryview(b'{"a": [1, 2]}'), 8) == {"a": [1, 2]}
