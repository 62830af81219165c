"""router.registry: registration parsing, the SQLite store, and the reloading in-memory view."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from router.errors import AlreadyExists, InvalidInput, ModelNotFound
from router.registry import (
    ModelVersion,
    Registry,
    RegistryStore,
    TensorSpec,
    parse_record,
    parse_registration,
    version_key,
)


def entry(name: str = "simple", version: Any = "1", **extra: Any) -> dict[str, Any]:
    """One registration mapping, as a YAML file would give it."""
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "backend": {"kind": "triton", "endpoints": ["localhost:8001"]},
    }
    data.update(extra)
    return data


def records(*pairs: tuple[str, str]) -> list:
    return [parse_record(entry(n, v), "test") for n, v in pairs]


# --- parse_registration ---------------------------------------------------------------------------


def test_parse_models_mapping() -> None:
    got = parse_registration({"models": [entry("a"), entry("b", "7")]}, "reg.yaml")
    assert [(r.name, r.version) for r in got] == [("a", "1"), ("b", "7")]
    assert got[0].backend.kind == "triton"
    assert list(got[0].backend.endpoints) == ["localhost:8001"]


def test_parse_list_and_single_mapping() -> None:
    assert [r.name for r in parse_registration([entry("a"), entry("b")], "s")] == ["a", "b"]
    single = parse_registration(entry("solo", "3"), "s")
    assert [(r.name, r.version) for r in single] == [("solo", "3")]


def test_parse_full_entry() -> None:
    data = entry(
        "img",
        "2",
        description="a classifier",
        max_batch_size=8,
        inputs=[{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 3]}],
        outputs=[{"name": "OUTPUT0", "datatype": "BYTES", "shape": [1]}],
    )
    data["backend"].update(model="img_backend", version="5")
    (r,) = parse_registration(data, "s")
    mv = ModelVersion.from_record(r)
    assert mv.name == "img" and mv.version == "2"
    assert mv.backend_model == "img_backend" and mv.backend_version == "5"
    assert mv.max_batch_size == 8
    assert mv.inputs == (TensorSpec("INPUT0", "FP32", (-1, 3)),)
    assert mv.outputs == (TensorSpec("OUTPUT0", "BYTES", (1,)),)
    assert mv.input_map == {"INPUT0": mv.inputs[0]}
    assert mv.output_names == frozenset({"OUTPUT0"})
    assert mv.has_metadata
    assert r.description == "a classifier"


def test_backend_model_defaults_to_name() -> None:
    mv = ModelVersion.from_record(parse_record(entry("simple"), "s"))
    assert mv.backend_model == "simple"
    assert mv.backend_version == ""
    assert not mv.has_metadata


def test_numeric_version_becomes_string() -> None:
    (r,) = parse_registration(entry("m", 2), "s")
    assert r.version == "2"
    (r,) = parse_registration({k: v for k, v in entry("m").items() if k != "version"}, "s")
    assert r.version == "1"  # the default


def test_rejects_unknown_field() -> None:
    with pytest.raises(InvalidInput, match=r"^reg\.yaml: models\[1\]: .*colour") as e:
        parse_registration({"models": [entry("a"), entry("b", colour="red")]}, "reg.yaml")
    assert "colour" in e.value.message
    with pytest.raises(InvalidInput, match="endpiont"):
        parse_registration({"name": "a", "backend": {"kind": "triton", "endpiont": "x:1"}}, "s")


def test_rejects_unknown_top_level_keys() -> None:
    with pytest.raises(InvalidInput, match=r"^s: unknown top-level keys \['extra'\]$"):
        parse_registration({"models": [entry()], "extra": 1}, "s")


def test_rejects_empty() -> None:
    with pytest.raises(InvalidInput, match=r"^s: no models in it$"):
        parse_registration({"models": []}, "s")
    with pytest.raises(InvalidInput, match=r"^s: no models in it$"):
        parse_registration([], "s")


def test_rejects_non_mapping_entry() -> None:
    with pytest.raises(InvalidInput, match=r"^s: models\[0\]: a model entry must be a mapping, got str$"):
        parse_registration(["simple"], "s")


@pytest.mark.parametrize(
    "endpoint", ["nohostport", "host:", ":8001", "host:0", "host:65536", "host:port", "a b:1", "h:123456"]
)
def test_rejects_bad_endpoint(endpoint: str) -> None:
    data = entry()
    data["backend"]["endpoints"] = ["ok:1", endpoint]
    message = rf"^model simple:1: backend endpoint '{endpoint}' is not host:port$"
    with pytest.raises(InvalidInput, match=message):
        parse_registration(data, "s")


@pytest.mark.parametrize("endpoint", ["localhost:8001", "10.0.0.1:1", "[::1]:65535", "triton-0.svc_x:8001"])
def test_accepts_good_endpoints(endpoint: str) -> None:
    data = entry()
    data["backend"]["endpoints"] = [endpoint]
    assert list(parse_registration(data, "s")[0].backend.endpoints) == [endpoint]


def test_rejects_no_endpoints() -> None:
    data = entry()
    data["backend"]["endpoints"] = []
    with pytest.raises(InvalidInput, match=r"backend\.endpoints needs at least one host:port"):
        parse_registration(data, "s")


def test_rejects_unknown_backend_kind() -> None:
    data = entry()
    data["backend"]["kind"] = "onnxruntime"
    message = r"^model simple:1: backend\.kind 'onnxruntime' is not one of triton, torchserve$"
    with pytest.raises(InvalidInput, match=message):
        parse_registration(data, "s")


def test_rejects_duplicates() -> None:
    with pytest.raises(InvalidInput, match=r"^reg: registers a:2 more than once$"):
        parse_registration([entry("a", 2), entry("b", 2), entry("a", "2")], "reg")


def test_same_name_other_version_is_fine() -> None:
    assert len(parse_registration([entry("a", 1), entry("a", 2)], "reg")) == 2


def test_rejects_inputs_without_outputs() -> None:
    data = entry(inputs=[{"name": "X", "datatype": "FP32", "shape": [1]}])
    with pytest.raises(InvalidInput, match=r"^model simple:1: give both inputs and outputs, or neither"):
        parse_registration(data, "s")
    data = entry(outputs=[{"name": "Y", "datatype": "FP32", "shape": [1]}])
    with pytest.raises(InvalidInput, match="give both inputs and outputs"):
        parse_registration(data, "s")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "X", "datatype": "FLOAT", "shape": [1]}, r"input X: unknown datatype 'FLOAT'"),
        ({"name": "X", "datatype": "FP32", "shape": [-2]}, r"input X shape \[-2\]"),
        ({"datatype": "FP32", "shape": [1]}, r"inputs entry without a name"),
    ],
)
def test_rejects_bad_tensor_spec(spec: dict, message: str) -> None:
    out = [{"name": "Y", "datatype": "FP32", "shape": [1]}]
    with pytest.raises(InvalidInput, match=message):
        parse_registration(entry(inputs=[spec], outputs=out), "s")


def test_rejects_repeated_tensor_name() -> None:
    spec = {"name": "X", "datatype": "FP32", "shape": [1]}
    with pytest.raises(InvalidInput, match=r"inputs names 'X' twice"):
        parse_registration(entry(inputs=[spec, spec], outputs=[spec]), "s")


@pytest.mark.parametrize(("name", "version"), [("", "1"), ("bad name", "1"), ("-x", "1"), ("ok", "v/1")])
def test_rejects_bad_names(name: str, version: str) -> None:
    with pytest.raises(InvalidInput, match="must match"):
        parse_registration(entry(name, version), "s")


def test_rejects_negative_max_batch_size() -> None:
    with pytest.raises(InvalidInput, match="max_batch_size must be >= 0"):
        parse_registration(entry(max_batch_size=-1), "s")


def test_rejects_created_at() -> None:
    with pytest.raises(InvalidInput, match=r"^s: models\[0\]: created_at is set by the registry$"):
        parse_registration(entry(created_at="2024-01-01T00:00:00Z"), "s")


# --- RegistryStore --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    s = RegistryStore(tmp_path / "sub" / "registry.db")
    yield s
    s.close()


def test_version_key_orders_numeric_after_names() -> None:
    assert sorted(["10", "2", "beta", "1", "alpha"], key=version_key) == ["alpha", "beta", "1", "2", "10"]


def test_put_records_remove(store: RegistryStore) -> None:
    assert store.records() == []
    stored = store.put(records(("a", "1"), ("b", "1")))
    assert [(r.name, r.version) for r in stored] == [("a", "1"), ("b", "1")]
    assert all(r.HasField("created_at") and r.created_at.seconds > 0 for r in stored)
    got = store.records()
    assert got == stored
    assert [r.name for r in store.records("b")] == ["b"]
    assert store.records("nope") == []
    removed = store.remove("a", "1")
    assert [(r.name, r.version) for r in removed] == [("a", "1")]
    assert [(r.name, r.version) for r in store.records()] == [("b", "1")]


def test_put_does_not_change_its_argument(store: RegistryStore) -> None:
    (rec,) = records(("a", "1"))
    store.put([rec])
    assert not rec.HasField("created_at")


def test_put_replaces_by_default(store: RegistryStore) -> None:
    store.put(records(("a", "1")))
    rec = parse_record(entry("a", "1", description="new"), "t")
    store.put([rec])
    (got,) = store.records()
    assert got.description == "new"


def test_put_without_replace_rejects_existing(store: RegistryStore) -> None:
    store.put(records(("a", "1")))
    with pytest.raises(AlreadyExists, match=r"^model a:1 is registered already$"):
        store.put(records(("b", "1"), ("a", "1")), replace=False)
    # the whole transaction rolled back: b was not stored either
    assert [(r.name, r.version) for r in store.records()] == [("a", "1")]


def test_put_validates(store: RegistryStore) -> None:
    (good,) = records(("a", "1"))
    bad = parse_record(entry("b", "1"), "t")
    bad.backend.endpoints[0] = "nohostport"
    with pytest.raises(InvalidInput, match="is not host:port"):
        store.put([good, bad])
    assert store.records() == []


def test_remove_all_versions(store: RegistryStore) -> None:
    store.put(records(("a", "1"), ("a", "2"), ("b", "1")))
    assert [r.version for r in store.remove("a")] == ["1", "2"]
    assert [(r.name, r.version) for r in store.records()] == [("b", "1")]


def test_remove_missing(store: RegistryStore) -> None:
    store.put(records(("a", "1")))
    with pytest.raises(ModelNotFound, match=r"^model a:9 is not registered$"):
        store.remove("a", "9")
    with pytest.raises(ModelNotFound, match=r"^model zzz is not registered$"):
        store.remove("zzz")
    assert len(store.records()) == 1


def test_records_sorted_by_name_then_numeric_version(store: RegistryStore) -> None:
    store.put(records(("b", "10"), ("a", "2"), ("b", "2"), ("a", "10"), ("b", "1"), ("a", "beta")))
    assert [(r.name, r.version) for r in store.records()] == [
        ("a", "beta"), ("a", "2"), ("a", "10"), ("b", "1"), ("b", "2"), ("b", "10"),
    ]
    assert [r.version for r in store.records("b")] == ["1", "2", "10"]


def test_persists_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    first = RegistryStore(path)
    stored = first.put(records(("a", "1"), ("a", "2")))
    first.close()
    second = RegistryStore(path)
    try:
        assert second.records() == stored
        second.remove("a", "1")
    finally:
        second.close()
    third = RegistryStore(path)
    try:
        assert [(r.name, r.version) for r in third.records()] == [("a", "2")]
    finally:
        third.close()


def test_unusable_database_path(tmp_path: Path) -> None:
    path = tmp_path / "dir.db"
    path.mkdir()
    with pytest.raises(InvalidInput, match=rf"^registry database {path}: "):
        RegistryStore(path)


# --- Registry -------------------------------------------------------------------------------------


def test_resolve(store: RegistryStore) -> None:
    store.put(records(("m", "1"), ("m", "10"), ("m", "2"), ("n", "beta")))
    reg = Registry(store)
    reg.load()
    assert reg.resolve("m").version == "10"  # numeric, not "2" as strings would say
    assert reg.resolve("m", "2").version == "2"
    assert reg.resolve("m", "1").name == "m"
    assert reg.resolve("n").version == "beta"
    assert reg.versions("m") == ["1", "2", "10"]
    assert reg.versions("zzz") == []
    assert [(mv.name, mv.version) for mv in reg.all()] == [
        ("m", "1"), ("m", "2"), ("m", "10"), ("n", "beta"),
    ]


def test_resolve_unknown(store: RegistryStore) -> None:
    store.put(records(("m", "1"), ("m", "10"), ("m", "2")))
    reg = Registry(store)
    reg.load()
    with pytest.raises(ModelNotFound, match=r"^model 'zzz' is not registered$"):
        reg.resolve("zzz")
    with pytest.raises(ModelNotFound, match=r"^model 'zzz' is not registered$"):
        reg.resolve("zzz", "1")
    with pytest.raises(ModelNotFound, match=r"^model m has no version '3' \(has: 1, 2, 10\)$"):
        reg.resolve("m", "3")


def test_resolve_before_load_knows_nothing(store: RegistryStore) -> None:
    store.put(records(("m", "1")))
    with pytest.raises(ModelNotFound):
        Registry(store).resolve("m")


def test_load_skips_invalid_records(store: RegistryStore, tmp_path: Path) -> None:
    store.put(records(("good", "1")))
    (bad,) = records(("bad", "1"))
    bad.backend.kind = "nope"
    db = sqlite3.connect(tmp_path / "sub" / "registry.db")
    with db:
        db.execute("INSERT INTO model_versions VALUES (?, ?, ?)", ("bad", "1", bad.SerializeToString()))
    db.close()
    reg = Registry(store)
    reg.load()
    assert [mv.name for mv in reg.all()] == ["good"]
    with pytest.raises(ModelNotFound):
        reg.resolve("bad")


def test_changed_after_another_store_commits(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    server_store, cli_store = RegistryStore(path), RegistryStore(path)
    try:
        reg = Registry(server_store)
        assert reg.changed()  # never loaded
        reg.load()
        assert not reg.changed()
        assert not reg.changed()  # asking does not change the answer

        cli_store.put(records(("m", "1")))
        assert reg.changed()
        with pytest.raises(ModelNotFound):
            reg.resolve("m")  # the view is stale until load()
        reg.load()
        assert not reg.changed()
        assert reg.resolve("m").version == "1"

        cli_store.put(records(("m", "2")))
        assert reg.changed()
        reg.load()
        assert not reg.changed()
        assert reg.resolve("m").version == "2"

        cli_store.remove("m", "2")
        assert reg.changed()
        reg.load()
        assert not reg.changed()
        assert reg.versions("m") == ["1"]
    finally:
        server_store.close()
        cli_store.close()


def test_reload_keeps_unchanged_model_versions(tmp_path: Path) -> None:
    """A registry change rebuilds only the records that changed (transforms are not rebuilt)."""
    store = RegistryStore(tmp_path / "r.db")
    store.put([parse_record(entry("a"), "a"), parse_record(entry("b"), "b")])
    reg = Registry(store)
    reg.load()
    a, b = reg.resolve("a"), reg.resolve("b")
    store.put([parse_record(entry("b"), "b")])  # b re-registered: a new record (created_at)
    reg.load()
    assert reg.resolve("a") is a
    assert reg.resolve("b") is not b and reg.resolve("b").name == "b"
