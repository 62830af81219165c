"""Traffic policies without a server: validation, the per-call choice, the store's history."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest
from tensorgate.v1 import registry_pb2

from router import traffic
from router.context import CallContext
from router.errors import InvalidInput, ModelNotFound
from router.registry import Registry, RegistryStore, parse_registration_file
from tests.conftest import REPO


def record(name: str, version: str) -> registry_pb2.ModelVersion:
    r = registry_pb2.ModelVersion(name=name, version=version)
    r.backend.kind = "triton"
    r.backend.endpoints.append("127.0.0.1:1")
    r.inputs.add(name="IN", datatype="INT32", shape=[-1, 4])
    r.outputs.add(name="OUT", datatype="INT32", shape=[-1, 4])
    r.max_batch_size = 8
    return r


def policy(**fields: object) -> registry_pb2.TrafficPolicy:
    split = fields.pop("split", {})
    shadow = fields.pop("shadow", None)
    p = registry_pb2.TrafficPolicy(model="m", **fields)  # type: ignore[arg-type]
    for version, weight in split.items():  # type: ignore[attr-defined]
        p.split.add(version=version, weight=weight)
    if shadow is not None:
        p.shadow.version, p.shadow.fraction = shadow  # type: ignore[misc]
    return p


@pytest.fixture
def store(tmp_path: Path) -> RegistryStore:
    s = RegistryStore(tmp_path / "r.db")
    s.put([record("m", "1"), record("m", "2"), record("m", "3")])
    return s


@pytest.mark.parametrize(
    "bad, field",
    [
        (policy(default_version="9"), "default_version '9' is not a registered version (has: 1, 2, 3)"),
        (policy(split={"1": 90, "9": 10}), "split[1].version '9'"),
        (policy(split={"1": 90, "2": 0}), "split[1].weight must be a number > 0"),
        (policy(split={"1": 90, "2": float("nan")}), "split[1].weight"),
        (policy(split={"1": 90}), "split has one version"),
        (policy(split={"1": 1, "2": 1}, sticky_key="bad header"), "sticky_key 'bad header'"),
        (policy(sticky_key="x-user"), "sticky_key needs a split"),
        (policy(shadow=("2", 1.5)), "shadow.fraction must be in [0, 1]"),
        (policy(shadow=("9", 0.5)), "shadow.version '9'"),
        (policy(default_version="2", shadow=("2", 0.5)), "shadow.version '2' is the version every call"),
        (policy(shadow=("3", 0.5)), "shadow.version '3' is the version every call"),  # 3 = highest
        (policy(fallback_version="9"), "fallback_version '9'"),
        (policy(default_version="1", fallback_version="1"), "fallback_version '1' is the version"),
    ],
)
def test_invalid_policies_are_refused_naming_the_field(bad: registry_pb2.TrafficPolicy, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        traffic.validate(bad, ["1", "2", "3"])
    assert field in info.value.message and "traffic policy of model m" in info.value.message


def test_a_policy_of_an_unregistered_model_is_not_found() -> None:
    with pytest.raises(ModelNotFound):
        traffic.validate(policy(default_version="1"), [])


def test_weighted_choice_follows_the_weights() -> None:
    p = traffic.Policy.build(policy(split={"1": 90, "2": 10}), ["1", "2"])
    counts = collections.Counter(p.choose(None) for _ in range(20000))
    assert abs(counts["2"] / 20000 - 0.10) < 0.015
    assert set(counts) == {"1", "2"}
    # weights are relative: 9/1 is the same split as 90/10
    assert traffic.Policy.build(policy(split={"1": 9, "2": 1}), ["1", "2"]).bounds == p.bounds


def test_sticky_choice_is_stable_and_spread_by_weight() -> None:
    p = traffic.Policy.build(policy(split={"1": 50, "2": 50}, sticky_key="X-User"), ["1", "2"])
    assert p.sticky_key == "x-user"
    chosen = {}
    for i in range(2000):
        call = CallContext("r", metadata=(("x-user", f"user-{i}"),))
        chosen[i] = p.choose(call)
        for _ in range(3):
            assert p.choose(call) == chosen[i]
        # the same key as an HTTP header dict lands on the same version
        assert p.choose(CallContext("r", metadata={"x-user": f"user-{i}"})) == chosen[i]
    share = sum(v == "2" for v in chosen.values()) / len(chosen)
    assert 0.45 < share < 0.55
    # stable across processes (blake2b, not hash()): a fixed value keeps its place
    assert traffic.stable_unit("user-1") == pytest.approx(
        int.from_bytes(__import__("hashlib").blake2b(b"user-1", digest_size=8).digest(), "big") / 2**64
    )


def test_shadow_and_fallback_choices() -> None:
    p = traffic.Policy.build(
        policy(default_version="1", shadow=("2", 0.25), fallback_version="3"), ["1", "2", "3"]
    )
    assert p.routes_each_call and p.choose(None) == "1"
    shadowed = sum(p.shadow_for("1") == "2" for _ in range(20000)) / 20000
    assert abs(shadowed - 0.25) < 0.02
    assert p.shadow_for("2") == ""  # a call served by the shadow version is not mirrored to itself
    assert p.fallback_for("1") == "3" and p.fallback_for("3") == ""
    plain = traffic.Policy.build(policy(default_version="2"), ["1", "2", "3"])
    assert not plain.routes_each_call


def test_store_keeps_every_change_with_time_actor_and_action(store: RegistryStore) -> None:
    store.set_policy(policy(split={"1": 90, "2": 10}), "alice")
    store.promote("m", "2", "bob")
    store.rollback("m", "carol")
    store.set_policy(registry_pb2.TrafficPolicy(model="m"), "dave")
    changes = store.history("m")
    assert [(c.actor, c.action) for c in changes] == [
        ("alice", "set"),
        ("bob", "promote"),
        ("carol", "rollback"),
        ("dave", "clear"),
    ]
    assert all(c.time.seconds > 0 for c in changes)
    assert [w.version for w in changes[0].policy.split] == ["1", "2"]
    assert changes[1].policy.default_version == "2" and not changes[1].policy.split
    assert changes[2].policy == changes[0].policy  # rollback restored the split
    assert traffic.is_empty(store.policy("m"))


def test_promote_clears_split_and_shadow_and_keeps_the_fallback(store: RegistryStore) -> None:
    store.set_policy(
        policy(split={"1": 90, "2": 10}, sticky_key="x-user", shadow=("3", 0.1), fallback_version="1"), "a"
    )
    promoted = store.promote("m", "2", "a")
    assert promoted == registry_pb2.TrafficPolicy(model="m", default_version="2", fallback_version="1")
    with pytest.raises(InvalidInput, match="default_version '7'"):
        store.promote("m", "7", "a")
    assert store.policy("m") == promoted  # a refused change leaves the policy and history as they were
    assert len(store.history("m")) == 2


def test_rollback_of_the_first_change_removes_the_policy(store: RegistryStore) -> None:
    with pytest.raises(InvalidInput, match="no traffic policy change to roll back"):
        store.rollback("m", "a")
    store.set_policy(policy(default_version="1"), "a")
    assert traffic.is_empty(store.rollback("m", "a"))


def test_a_version_the_policy_names_cannot_be_removed(store: RegistryStore) -> None:
    store.set_policy(policy(split={"1": 90, "2": 10}, fallback_version="3"), "a")
    with pytest.raises(
        InvalidInput, match=r"model m:3 is the fallback_version of the model's traffic policy"
    ):
        store.remove("m", "3")
    with pytest.raises(InvalidInput, match="m:2 is the split"):
        store.remove("m", "2")
    assert [r.version for r in store.records("m")] == ["1", "2", "3"]
    # removing the whole model removes its policy, recorded in the history
    store.remove("m", actor="eve")
    assert traffic.is_empty(store.policy("m"))
    assert [(c.actor, c.action) for c in store.history("m")][-1] == ("eve", "remove")


def test_registry_load_routes_by_the_policy(store: RegistryStore) -> None:
    registry = Registry(store)
    registry.load()
    assert registry.resolve("m").version == "3" and registry.route("m", None)[1] is None
    store.set_policy(policy(default_version="1"), "a")  # a default only: no per-call policy
    registry.load()
    assert registry.resolve("m").version == "1" and registry.route("m", None) == (registry.resolve("m"), None)
    store.set_policy(policy(split={"1": 1, "2": 3}), "a")
    registry.load()
    mv, p = registry.route("m", None)
    assert p is not None and mv.version in ("1", "2")
    assert registry.resolve("m", "3").version == "3"  # an explicit version is untouched


def test_registration_files_take_traffic_policies() -> None:
    doc = {
        "models": [{"name": "m", "version": 1, "backend": {"kind": "triton", "endpoints": ["h:1"]}}],
        "traffic": [
            {
                "model": "m",
                "default_version": 1,
                "split": {1: 90, "2": 10},
                "sticky_key": "X-User",
                "shadow": {"version": "2", "fraction": 0.1},
                "fallback_version": "1",
            }
        ],
    }
    records, policies = parse_registration_file(doc, "f.yaml")
    assert [r.name for r in records] == ["m"]
    (p,) = policies
    assert p.default_version == "1" and [(w.version, w.weight) for w in p.split] == [("1", 90), ("2", 10)]
    assert (p.shadow.version, p.shadow.fraction, p.sticky_key) == ("2", pytest.approx(0.1), "X-User")
    with pytest.raises(InvalidInput, match=r"f.yaml: traffic\[0\]: unknown keys \['weights'\]"):
        parse_registration_file({"traffic": [{"model": "m", "weights": {}}]}, "f.yaml")
    with pytest.raises(InvalidInput, match=r"traffic\[0\]: split must map versions to weights"):
        parse_registration_file({"traffic": [{"model": "m", "split": [1, 2]}]}, "f.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_cli_traffic_promote_rollback_history(store: RegistryStore) -> None:
    db = str(store.path)
    out = run_cli(
        "models",
        "traffic",
        "m",
        "--split",
        "1=90,2=10",
        "--sticky-key",
        "X-User",
        "--shadow",
        "3=0.05",
        "--registry",
        db,
        "--actor",
        "alice",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "m: split 1=90 2=10, sticky on x-user, shadow 3=0.05"
    # flags change only their parts; "none" clears one
    out = run_cli("models", "traffic", "m", "--shadow", "none", "--fallback", "3", "--registry", db)
    assert out.stdout.strip() == "m: split 1=90 2=10, sticky on x-user, fallback 3", out.stderr
    out = run_cli("models", "promote", "m", "2", "--registry", db, "--actor", "bob")
    assert out.stdout.strip() == "m: default 2, fallback 3", out.stderr
    out = run_cli("models", "rollback", "m", "--registry", db, "--actor", "carol")
    assert out.stdout.strip() == "m: split 1=90 2=10, sticky on x-user, fallback 3", out.stderr
    out = run_cli("models", "traffic", "m", "--split", "1=90,9=10", "--registry", db)
    assert out.returncode == 1 and "split[1].version '9' is not a registered version" in out.stderr
    out = run_cli("models", "history", "m", "--registry", db)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["time", "actor", "action", "policy"]
    assert [line.split()[3:5] for line in lines[1:]] == [
        ["alice", "set"],
        [lines[2].split()[3], "set"],
        ["bob", "promote"],
        ["carol", "rollback"],
    ]
    assert lines[3].endswith("default 2, fallback 3")
    out = run_cli("models", "history", "m", "--json", "--registry", db)
    assert '"action": "promote"' in out.stdout and '"actor": "bob"' in out.stdout
