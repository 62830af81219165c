"""router.config: defaults < YAML file < TENSORGATE_* env < overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from router import config
from router.config import ConfigError, MiB, Settings, load


def _write(tmp_path: Path, text: str, name: str = "tensorgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load(environ={})
    assert s == Settings()
    assert (s.server.host, s.server.grpc_port, s.server.http_port, s.server.metrics_port) == (
        "127.0.0.1", 8500, 8501, 8502,
    )
    assert s.server.max_message_bytes == 64 * MiB
    assert s.server.grace_period_s == 15.0
    assert s.server.max_concurrent_rpcs == 1024
    assert s.registry.path == ".tensorgate/registry.db"
    assert s.registry.poll_interval_s == 1.0
    assert s.backend.default_timeout_s == 30.0
    assert s.backend.control_timeout_s == 5.0
    assert s.backend.keepalive_s == 30.0
    assert s.backend.max_message_bytes == 64 * MiB
    assert (s.limits.max_items, s.limits.max_tensors) == (256, 64)
    assert s.log.level == "INFO"


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "server:\n  grpc_port: 9000\n  host: 0.0.0.0\n  grace_period_s: 2\n"
        "limits:\n  max_items: 8\nlog:\n  level: DEBUG\n",
    )
    s = load(path, environ={})
    assert s.server.grpc_port == 9000
    assert s.server.host == "0.0.0.0"
    assert s.server.grace_period_s == 2.0 and isinstance(s.server.grace_period_s, float)
    assert s.limits.max_items == 8
    assert s.log.level == "DEBUG"
    # untouched keys keep their defaults
    assert s.server.http_port == 8501
    assert s.limits.max_tensors == 64


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(_write(tmp_path, ""), environ={}) == Settings()


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "TENSORGATE_SERVER__GRPC_PORT": "9100",
        "TENSORGATE_BACKEND__DEFAULT_TIMEOUT_S": "2.5",
        "TENSORGATE_REGISTRY__PATH": "/tmp/r.db",
        "TENSORGATE_NOT_A_KEY": "ignored: no double underscore",
        "OTHER__THING": "ignored: no prefix",
    }
    s = load(environ=env)
    assert s.server.grpc_port == 9100
    assert s.backend.default_timeout_s == 2.5
    assert s.registry.path == "/tmp/r.db"


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "server:\n  grpc_port: 9001\n  http_port: 9011\n  metrics_port: 9021\n",
    )
    env = {"TENSORGATE_SERVER__HTTP_PORT": "9012", "TENSORGATE_SERVER__METRICS_PORT": "9022"}
    s = load(path, overrides={"server.metrics_port": 9023, "server.grpc_port": None}, environ=env)
    assert s.server.grpc_port == 9001  # file beats default; a None override is "not given"
    assert s.server.http_port == 9012  # env beats file
    assert s.server.metrics_port == 9023  # override beats env
    assert s.server.max_concurrent_rpcs == 1024  # default


def test_overrides_are_coerced() -> None:
    s = load(overrides={"server.grpc_port": "9300", "backend.keepalive_s": 7}, environ={})
    assert s.server.grpc_port == 9300
    assert s.backend.keepalive_s == 7.0 and isinstance(s.backend.keepalive_s, float)


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "server:\n  grpc_prot: 9000\n")
    with pytest.raises(ConfigError, match=r"server\.grpc_prot") as e:
        load(path, environ={})
    assert str(path) in str(e.value)


def test_unknown_section_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown settings key 'serverr\.grpc_port'"):
        load(_write(tmp_path, "serverr:\n  grpc_port: 1\n"), environ={})


def test_unknown_env_key_names_variable() -> None:
    with pytest.raises(ConfigError, match=r"TENSORGATE_SERVER__GRPC_PROT.*server\.grpc_prot"):
        load(environ={"TENSORGATE_SERVER__GRPC_PROT": "1"})


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"command line: unknown settings key 'limits\.max_bogus'"):
        load(overrides={"limits.max_bogus": 1}, environ={})
    with pytest.raises(ConfigError, match=r"unknown settings key 'server'"):
        load(overrides={"server": 1}, environ={})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("server.grpc_port", "abc", "expected int"),
        ("server.grpc_port", 1.5, "expected int"),
        ("server.grpc_port", True, "expected int"),
        ("limits.max_items", [1], "expected int"),
        ("backend.keepalive_s", "soon", "expected float"),
        ("backend.keepalive_s", False, "expected float"),
        ("server.host", ["a", "b"], "expected str"),
        ("log.level", {"a": 1}, "expected str"),
    ],
)
def test_wrong_type_names_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(overrides={key: value}, environ={})
    assert str(e.value).startswith(f"{key}: {expected}")


def test_wrong_type_in_file_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^server\.max_concurrent_rpcs: expected int, got 'many'$"):
        load(_write(tmp_path, "server:\n  max_concurrent_rpcs: many\n"), environ={})
    with pytest.raises(ConfigError, match=r"^server\.host: expected str, got None$"):
        load(_write(tmp_path, "server:\n  host:\n"), environ={})


def test_integral_float_is_an_int() -> None:
    assert load(overrides={"server.grpc_port": 9000.0}, environ={}).server.grpc_port == 9000


@pytest.mark.parametrize("key", ["server.grpc_port", "server.http_port", "server.metrics_port"])
@pytest.mark.parametrize("port", [-1, 65536, 100000])
def test_bad_port(key: str, port: int) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: {port} is not a port number"):
        load(overrides={key: port}, environ={})


def test_port_bounds_accepted() -> None:
    s = load(overrides={"server.grpc_port": 0, "server.http_port": 65535}, environ={})
    assert (s.server.grpc_port, s.server.http_port) == (0, 65535)


POSITIVE = [
    "server.max_message_bytes",
    "server.max_concurrent_rpcs",
    "registry.poll_interval_s",
    "backend.default_timeout_s",
    "backend.control_timeout_s",
    "backend.keepalive_s",
    "backend.max_message_bytes",
    "limits.max_items",
    "limits.max_tensors",
]


@pytest.mark.parametrize("key", POSITIVE)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_rejected(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: must be > 0, got -?\d"):
        load(overrides={key: value}, environ={})


@pytest.mark.parametrize("key", [k for k in POSITIVE if k.endswith("_s")])
def test_nan_rejected(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: must be > 0, got nan"):
        load(overrides={key: "nan"}, environ={})


def test_grace_period() -> None:
    assert load(overrides={"server.grace_period_s": 0}, environ={}).server.grace_period_s == 0.0
    with pytest.raises(ConfigError, match=r"^server\.grace_period_s: must be >= 0, got -1"):
        load(overrides={"server.grace_period_s": -1}, environ={})
    with pytest.raises(ConfigError, match=r"^server\.grace_period_s: must be >= 0, got nan"):
        load(overrides={"server.grace_period_s": "nan"}, environ={})


def test_log_level() -> None:
    assert load(overrides={"log.level": "warning"}, environ={}).log.level == "warning"
    with pytest.raises(ConfigError, match=r"^log\.level: .*got 'LOUD'"):
        load(environ={"TENSORGATE_LOG__LEVEL": "LOUD"})


def test_file_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections") as e:
        load(path, environ={})
    assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match=r"section 'server' must be a mapping"):
        load(_write(tmp_path, "server: 5\n"), environ={})


def test_load_yaml_expands_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_PORT", "9444")
    monkeypatch.delenv("TG_TEST_UNSET", raising=False)
    path = _write(
        tmp_path,
        "a: ${TG_TEST_PORT}\nb: ${TG_TEST_PORT:-1}\nc: ${TG_TEST_UNSET:-fallback}\nd: x${TG_TEST_UNSET:-}y\n",
    )
    assert config.load_yaml(path) == {"a": 9444, "b": 9444, "c": "fallback", "d": "xy"}


def test_load_expands_env_in_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_PORT", "9555")
    path = _write(tmp_path, "server:\n  grpc_port: ${TG_TEST_PORT:-1}\n  http_port: ${TG_NOPE_X:-9556}\n")
    monkeypatch.delenv("TG_NOPE_X", raising=False)
    s = load(path, environ={})
    assert (s.server.grpc_port, s.server.http_port) == (9555, 9556)


def test_unset_var_without_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TG_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"\$\{TG_TEST_UNSET\} is not set and has no default"):
        config.load_yaml(_write(tmp_path, "a: ${TG_TEST_UNSET}\n"))


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: [1, 2\n", name="broken.yaml")
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        config.load_yaml(path)
    assert str(e.value).startswith(f"{path}: invalid YAML")


def test_missing_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=rf"^cannot read {path}: "):
        load(path, environ={})


def test_keys_lists_every_field() -> None:
    listed = config.keys()
    expected = [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Settings)
        for f in dataclasses.fields(getattr(Settings(), section.name))
    ]
    assert [k for k, _, _ in listed] == expected
    assert len(listed) == 39
    as_dict = {k: (default, kind) for k, default, kind in listed}
    assert as_dict["server.grpc_port"] == (8500, "int")
    assert as_dict["backend.keepalive_s"] == (30.0, "float")
    assert as_dict["log.level"] == ("INFO", "str")
    # every listed key is settable through overrides
    for key, default, _ in listed:
        assert load(overrides={key: default}, environ={}) == Settings()
