"""One typed settings object: embedded defaults < YAML file < TENSORGATE_* env vars < flags.

Keys are `section.key` (e.g. `server.grpc_port`); the environment variable for a key is
`TENSORGATE_<SECTION>__<KEY>` in upper case (e.g. `TENSORGATE_SERVER__GRPC_PORT=9000`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transforms.base import TransformLimits

MiB = 1024 * 1024
ENV_PREFIX = "TENSORGATE_"


class ConfigError(ValueError):
    """A settings file, variable or flag is invalid; the message names the key."""


@dataclass
class ServerSettings:
    """Where and how the router listens."""

    host: str = "127.0.0.1"
    grpc_port: int = 8500
    http_port: int = 8501
    metrics_port: int = 8502
    # Largest gRPC message accepted or sent, in bytes (requests and responses).
    max_message_bytes: int = 64 * MiB
    # On SIGTERM: seconds in-flight calls get to finish before the server stops.
    grace_period_s: float = 15.0
    # Calls served at once (health and metadata probes excepted); more get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 1024


@dataclass
class HttpSettings:
    """Limits of the HTTP/JSON edge (served on server.http_port)."""

    # Largest request body, in bytes (after gzip/deflate decoding); larger ones get 413.
    max_body_bytes: int = 64 * MiB
    # Request line and headers of one request, in bytes; more get 431.
    max_header_bytes: int = 64 * 1024
    # Nesting depth of a JSON body (objects and arrays); deeper ones get 400.
    max_json_depth: int = 32
    # Seconds a client has to send a request's line and headers; slower ones get 408.
    header_timeout_s: float = 10.0
    # Seconds a client has to send a request's body once its headers are in; slower get 408.
    body_timeout_s: float = 60.0
    # Seconds an idle keep-alive connection stays open.
    keepalive_timeout_s: float = 60.0
    # Connections open at once; more are answered 503 and closed.
    max_connections: int = 1024


@dataclass
class RegistrySettings:
    """Where registered model versions are kept."""

    # SQLite database file; created on first use.
    path: str = ".tensorgate/registry.db"
    # How often the server looks for changes made by other processes (the CLI), in seconds.
    poll_interval_s: float = 1.0


@dataclass
class BackendSettings:
    """How the router talks to backends."""

    # Timeout of a backend call when the caller sets no deadline, in seconds.
    default_timeout_s: float = 30.0
    # Timeout of metadata and readiness calls, in seconds.
    control_timeout_s: float = 5.0
    # HTTP/2 keepalive ping interval on backend channels, in seconds.
    keepalive_s: float = 30.0
    # Largest message to or from a backend, in bytes.
    max_message_bytes: int = 64 * MiB
    # Seconds between active health checks of each endpoint of a binding (Triton ModelReady,
    # TorchServe Ping + a READY worker).
    health_interval_s: float = 2.0
    # Consecutive UNAVAILABLE failures of an endpoint that eject it (passive outlier ejection).
    eject_after_failures: int = 5
    # First ejection lasts this long, in seconds; each further one without a success in
    # between doubles it, up to eject_max_s.
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0
    # Retries (of UNAVAILABLE, on another endpoint) allowed per call: each call earns this
    # many retry tokens, each retry spends one.
    retry_budget: float = 0.2
    # Most retry tokens a binding saves up (its retry burst); the bucket starts full.
    retry_budget_cap: int = 10


@dataclass
class LimitSettings:
    """Per-request limits."""

    # Items in one tensorgate Predict call.
    max_items: int = 256
    # Tensors in one request.
    max_tensors: int = 64
    # One encoded image, in bytes.
    max_image_bytes: int = 20 * MiB
    # Width x height of one image, read from its header before decoding (decompression bombs).
    max_image_pixels: int = 40_000_000
    # One text item, in UTF-8 bytes.
    max_text_bytes: int = 64 * 1024
    # Table rows, and columns per row, in one request.
    max_table_rows: int = 10_000
    max_table_columns: int = 1_000
    # Calls of one model version at its backend at once, and waiting for a slot; more are
    # refused at once (a registration's `admission` overrides both; batched versions are bounded
    # by their batching queue instead).
    max_inflight_per_version: int = 64
    max_queued_per_version: int = 1024
    # Versions without admission.max_inflight lower their limit while their backend calls show a
    # queue at the backend (slower than twice the fastest recent ones), down to one; calls faster
    # than adaptive_floor_ms on average never lower it (a busy CPU slows fast calls too).
    adaptive_inflight: bool = True
    adaptive_floor_ms: float = 20.0


@dataclass
class LogSettings:
    """Logging."""

    level: str = "INFO"
    # One line per call (method, model, version, status code, time, request id) at INFO.
    access: bool = False


@dataclass
class Settings:
    """Everything the router can be configured with."""

    server: ServerSettings = field(default_factory=ServerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    log: LogSettings = field(default_factory=LogSettings)


def keys() -> list[tuple[str, Any, str]]:
    """Every settings key as (dotted key, default, type name), for docs and `tensorgate config`."""
    defaults = Settings()
    out = []
    for section in dataclasses.fields(Settings):
        sub = getattr(defaults, section.name)
        for f in dataclasses.fields(sub):
            out.append((f"{section.name}.{f.name}", getattr(sub, f.name), str(f.type)))
    return out


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Converts value to the field's type, or raises ConfigError naming the key."""
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if value is None or isinstance(value, dict | list):
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None


def _set(settings: Settings, key: str, value: Any, source: str) -> None:
    """Sets `section.key` on settings, checking the key and the value's type."""
    section_name, _, name = key.partition(".")
    section = getattr(settings, section_name, None)
    if section is None or not dataclasses.is_dataclass(section) or not name:
        raise ConfigError(f"{source}: unknown settings key {key!r} (see `tensorgate config`)")
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        raise ConfigError(f"{source}: unknown settings key {key!r} (see `tensorgate config`)")
    setattr(section, name, _coerce(key, value, fields[name].type))


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Replaces ${VAR} and ${VAR:-default} in text with environment values."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise ConfigError(f"${{{m.group(1)}}} is not set and has no default")
            return m.group(2)
        return value

    return _ENV_REF.sub(sub, text)


def load_yaml(path: str | Path) -> Any:
    """Reads a YAML file with ${VAR:-default} expansion; errors name the file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(expand_env(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None


def load(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Builds Settings from defaults, then the YAML file, then TENSORGATE_* env, then overrides."""
    settings = Settings()
    if path is not None:
        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            for name, value in values.items():
                _set(settings, f"{section}.{name}", value, str(path))
    env = os.environ if environ is None else environ
    for var, value in env.items():
        if var.startswith(ENV_PREFIX) and "__" in var:
            section, _, name = var[len(ENV_PREFIX) :].lower().partition("__")
            _set(settings, f"{section}.{name}", value, f"environment variable {var}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(settings, key, value, "command line")
    validate(settings)
    return settings


def transform_limits(settings: Settings) -> TransformLimits:
    """The limits the payload transforms enforce, from the settings."""
    lim = settings.limits
    return TransformLimits(
        max_image_bytes=lim.max_image_bytes,
        max_image_pixels=lim.max_image_pixels,
        max_text_bytes=lim.max_text_bytes,
        max_table_rows=lim.max_table_rows,
        max_table_columns=lim.max_table_columns,
    )


def validate(settings: Settings) -> None:
    """Rejects values that cannot work, naming the key."""
    s = settings.server
    for key, port in (
        ("grpc_port", s.grpc_port),
        ("http_port", s.http_port),
        ("metrics_port", s.metrics_port),
    ):
        if not 0 <= port <= 65535:
            raise ConfigError(f"server.{key}: {port} is not a port number (0-65535)")
    positive = {
        "server.max_message_bytes": s.max_message_bytes,
        "server.max_concurrent_rpcs": s.max_concurrent_rpcs,
        "http.max_body_bytes": settings.http.max_body_bytes,
        "http.max_header_bytes": settings.http.max_header_bytes,
        "http.max_json_depth": settings.http.max_json_depth,
        "http.header_timeout_s": settings.http.header_timeout_s,
        "http.body_timeout_s": settings.http.body_timeout_s,
        "http.keepalive_timeout_s": settings.http.keepalive_timeout_s,
        "http.max_connections": settings.http.max_connections,
        "registry.poll_interval_s": settings.registry.poll_interval_s,
        "backend.default_timeout_s": settings.backend.default_timeout_s,
        "backend.control_timeout_s": settings.backend.control_timeout_s,
        "backend.keepalive_s": settings.backend.keepalive_s,
        "backend.max_message_bytes": settings.backend.max_message_bytes,
        "backend.health_interval_s": settings.backend.health_interval_s,
        "backend.eject_after_failures": settings.backend.eject_after_failures,
        "backend.eject_base_s": settings.backend.eject_base_s,
        "limits.max_items": settings.limits.max_items,
        "limits.max_tensors": settings.limits.max_tensors,
        "limits.max_image_bytes": settings.limits.max_image_bytes,
        "limits.max_image_pixels": settings.limits.max_image_pixels,
        "limits.max_text_bytes": settings.limits.max_text_bytes,
        "limits.max_table_rows": settings.limits.max_table_rows,
        "limits.max_table_columns": settings.limits.max_table_columns,
        "limits.max_inflight_per_version": settings.limits.max_inflight_per_version,
        "limits.max_queued_per_version": settings.limits.max_queued_per_version,
        "limits.adaptive_floor_ms": settings.limits.adaptive_floor_ms,
    }
    for key, value in positive.items():
        if not value > 0:  # also rejects NaN
            raise ConfigError(f"{key}: must be > 0, got {value}")
    b = settings.backend
    if not b.eject_max_s >= b.eject_base_s:
        raise ConfigError(
            f"backend.eject_max_s: must be >= backend.eject_base_s ({b.eject_base_s}), got {b.eject_max_s}"
        )
    if not 0 <= b.retry_budget <= 1:
        raise ConfigError(f"backend.retry_budget: must be between 0 and 1, got {b.retry_budget}")
    if not b.retry_budget_cap >= 0:
        raise ConfigError(f"backend.retry_budget_cap: must be >= 0, got {b.retry_budget_cap}")
    if not s.grace_period_s >= 0:
        raise ConfigError(f"server.grace_period_s: must be >= 0, got {s.grace_period_s}")
    if settings.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log.level: expected DEBUG, INFO, WARNING or ERROR, got {settings.log.level!r}")
