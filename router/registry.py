"""The model registry: routable model versions, persisted in SQLite, watched for changes.

A model version is a name, a version, a backend binding (kind, endpoints, the backend's model
name and version) and its input/output tensor metadata. The store is shared by the server and
the CLI; the server reloads when another process commits (`PRAGMA data_version`), so changes
take effect without a restart and survive one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tensorgate.v1 import registry_pb2, tensor_pb2

from router import traffic, wire
from router.batching import BatchPolicy
from router.context import CallContext
from router.errors import AlreadyExists, InvalidInput, ModelNotFound
from router.tensors import ITEM_SIZES, check_datatype
from transforms.base import Transform, TransformLimits
from transforms.base import build as build_transform
from transforms.outputs import Classify, build_postprocess

log = logging.getLogger(__name__)

BACKEND_KINDS = ("triton", "torchserve")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):[0-9]{1,5}$")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def fixed_dims(self) -> tuple[tuple[int, int], ...]:
        """(axis, size) of every dimension that is not -1, for fast shape checks."""
        return self._derived[0]

    @property
    def itemsize(self) -> int:
        """Bytes per element; 0 for BYTES (variable length)."""
        return self._derived[1]

    @functools.cached_property
    def _derived(self) -> tuple[tuple[tuple[int, int], ...], int]:
        fixed = tuple((i, d) for i, d in enumerate(self.shape) if d != -1)
        return fixed, ITEM_SIZES.get(self.datatype, 0)


@dataclass(frozen=True)
class ModelVersion:
    """A routable model version, immutable once loaded; built from its registry record."""

    name: str
    version: str
    backend_kind: str
    endpoints: tuple[str, ...]
    backend_model: str
    backend_version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    record: registry_pb2.ModelVersion = field(compare=False, repr=False)
    input_map: Mapping[str, TensorSpec] = field(compare=False, repr=False, default_factory=dict)
    output_names: frozenset[str] = field(compare=False, repr=False, default=frozenset())
    # The input specs by payload kind (image, text, table).
    transforms: Mapping[str, Transform] = field(compare=False, repr=False, default_factory=dict)
    # The output specs (classify), in registration order.
    postprocess: tuple[Classify, ...] = field(compare=False, repr=False, default=())
    # Router-side dynamic batching, when the registration asks for it.
    batching: BatchPolicy | None = field(compare=False, repr=False, default=None)
    # Admission control: (max calls at the backend, max waiting); 0 takes the setting.
    admission: tuple[int, int] = field(compare=False, repr=False, default=(0, 0))

    @functools.cached_property
    def request_rename(self) -> bytes:
        """Wire bytes that rename a ModelInferRequest to the backend's model (and version)."""
        return wire.rename(self.backend_model, self.backend_version)

    @functools.cached_property
    def response_rename(self) -> bytes:
        """Wire bytes that rename a ModelInferResponse to this tensorgate model and version."""
        return wire.rename(self.name, self.version)

    @property
    def has_metadata(self) -> bool:
        """True when the input/output tensors are known."""
        return bool(self.inputs)

    @classmethod
    def from_record(
        cls, record: registry_pb2.ModelVersion, limits: TransformLimits | None = None
    ) -> ModelVersion:
        """Builds the routable view of a validated registry record (its transforms enforce
        `limits`, the defaults when None)."""
        validate_record(record)

        def specs(items: Iterable[tensor_pb2.TensorSpec]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        inputs, outputs = specs(record.inputs), specs(record.outputs)
        transforms = build_transforms(record, limits)
        if inputs:
            _check_transform_outputs(record, transforms, {t.name: t for t in inputs})
        output_names = frozenset(t.name for t in outputs)
        postprocess = _build_postprocess(record, output_names)
        batching = _batch_policy(record)
        return cls(
            name=record.name,
            version=record.version,
            backend_kind=record.backend.kind,
            endpoints=tuple(record.backend.endpoints),
            backend_model=record.backend.model or record.name,
            backend_version=record.backend.version,
            inputs=inputs,
            outputs=outputs,
            max_batch_size=record.max_batch_size,
            record=record,
            input_map={t.name: t for t in inputs},
            output_names=output_names,
            transforms=transforms,
            postprocess=postprocess,
            batching=batching,
            admission=(record.admission.max_inflight, record.admission.max_queued),
        )


def _plain(value: Any) -> Any:
    """A Struct value as plain Python, whole numbers as int (Struct keeps every number a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_transforms(
    record: registry_pb2.ModelVersion, limits: TransformLimits | None = None
) -> dict[str, Transform]:
    """The record's input specs as transforms by kind; InvalidInput names the bad spec."""
    out: dict[str, Transform] = {}
    for i, struct in enumerate(record.transforms):
        spec = _plain(json_format.MessageToDict(struct))
        where = f"model {record.name}:{record.version}: transforms[{i}]"
        try:
            transform = build_transform(spec, limits)
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e.message}") from None
        if transform.kind in out:
            raise InvalidInput(f"{where}: a second {transform.kind} spec; give one per kind")
        out[transform.kind] = transform
    return out


def _batch_policy(record: registry_pb2.ModelVersion) -> BatchPolicy | None:
    """The record's batching block as a policy; InvalidInput names what is wrong."""
    if not record.HasField("batching"):
        return None
    b = record.batching
    where = f"model {record.name}:{record.version}: batching"
    if record.max_batch_size == 0 and record.inputs:
        raise InvalidInput(f"{where}: the model does not batch (max_batch_size 0)")
    if record.max_batch_size and b.max_batch_size > record.max_batch_size:
        raise InvalidInput(
            f"{where}.max_batch_size {b.max_batch_size} exceeds the model's {record.max_batch_size}"
        )
    try:
        defaults = {"max_queue_depth": b.max_queue_depth, "max_inflight_batches": b.max_inflight_batches}
        return BatchPolicy(
            max_batch_size=b.max_batch_size,
            max_queue_delay_us=b.max_queue_delay_us,
            preferred_sizes=tuple(b.preferred_sizes),
            **{k: v for k, v in defaults.items() if v},  # unset: the policy's own default
        )
    except ValueError as e:
        raise InvalidInput(f"{where}: {e}") from None


def _build_postprocess(
    record: registry_pb2.ModelVersion, output_names: frozenset[str]
) -> tuple[Classify, ...]:
    """The record's output specs; each must name an output the model has (when known)."""
    where = f"model {record.name}:{record.version}"
    try:
        specs = build_postprocess([_plain(json_format.MessageToDict(s)) for s in record.postprocess])
    except InvalidInput as e:
        raise InvalidInput(f"{where}: {e.message}") from None
    for spec in specs:
        if output_names and spec.output not in output_names:
            raise InvalidInput(
                f"{where}: a classify spec names output {spec.output!r}, which the model does "
                f"not have (outputs: {', '.join(sorted(output_names))})"
            )
    return tuple(specs)


def _check_transform_outputs(
    record: registry_pb2.ModelVersion,
    transforms: Mapping[str, Transform],
    inputs: Mapping[str, TensorSpec],
) -> None:
    """Each transform must produce existing inputs of the model, with their datatypes."""
    where = f"model {record.name}:{record.version}"
    for kind, transform in transforms.items():
        for name, info in transform.outputs().items():
            spec = inputs.get(name)
            if spec is None:
                raise InvalidInput(
                    f"{where}: the {kind} spec produces {name!r}, which is not an input of the "
                    f"model (inputs: {', '.join(inputs)})"
                )
            if info.datatype != spec.datatype:
                raise InvalidInput(
                    f"{where}: the {kind} spec produces {name!r} as {info.datatype}, the model "
                    f"takes {spec.datatype}"
                )


def validate_record(record: registry_pb2.ModelVersion) -> None:
    """Raises InvalidInput naming the field when a registration cannot be routed."""
    where = f"model {record.name or '<unnamed>'}"
    if not _NAME.match(record.name):
        raise InvalidInput(f"{where}: name must match {_NAME.pattern}")
    if not _NAME.match(record.version):
        raise InvalidInput(f"{where}: version {record.version!r} must match {_NAME.pattern}")
    where = f"model {record.name}:{record.version}"
    b = record.backend
    if b.kind not in BACKEND_KINDS:
        raise InvalidInput(
            f"{where}: backend.kind {b.kind!r} is not one of {', '.join(BACKEND_KINDS)}"
        )
    if not b.endpoints:
        raise InvalidInput(f"{where}: backend.endpoints needs at least one host:port")
    for ep in b.endpoints:
        # torchserve: host:port[/management port] (adapters/torchserve.py; default port + 1)
        address, _, management = ep.partition("/") if b.kind == "torchserve" else (ep, "", "")
        ports = [address.rsplit(":", 1)[-1], *([management] if management else [])]
        if not _ENDPOINT.match(address) or not all(p.isdigit() and 0 < int(p) < 65536 for p in ports):
            form = "host:port or host:port/management_port" if b.kind == "torchserve" else "host:port"
            raise InvalidInput(f"{where}: backend endpoint {ep!r} is not {form}")
    if record.max_batch_size < 0:
        raise InvalidInput(f"{where}: max_batch_size must be >= 0")
    for key in ("max_inflight", "max_queued"):
        if getattr(record.admission, key) < 0:
            raise InvalidInput(f"{where}: admission.{key} must be >= 0 (0 takes the setting)")
    for kind, specs in (("inputs", record.inputs), ("outputs", record.outputs)):
        seen = set()
        for spec in specs:
            if not spec.name:
                raise InvalidInput(f"{where}: {kind} entry without a name")
            if spec.name in seen:
                raise InvalidInput(f"{where}: {kind} names {spec.name!r} twice")
            seen.add(spec.name)
            check_datatype(f"{where}: {kind[:-1]} {spec.name}", spec.datatype)
            if any(d < -1 for d in spec.shape):
                raise InvalidInput(f"{where}: {kind[:-1]} {spec.name} shape {list(spec.shape)}")
    if bool(record.inputs) != bool(record.outputs):
        raise InvalidInput(f"{where}: give both inputs and outputs, or neither (read from backend)")


def parse_record(data: Any, source: str) -> registry_pb2.ModelVersion:
    """Parses one registration mapping (YAML or JSON form of ModelVersion) into a record."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a model entry must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if isinstance(data.get("version"), int | float):
        data["version"] = str(data["version"])
    data.setdefault("version", "1")
    record = registry_pb2.ModelVersion()
    try:
        json_format.ParseDict(data, record)
    except json_format.ParseError as e:
        raise InvalidInput(f"{source}: {e}") from None
    if record.HasField("created_at"):
        raise InvalidInput(f"{source}: created_at is set by the registry")
    validate_record(record)
    return record


def parse_registration(data: Any, source: str) -> list[registry_pb2.ModelVersion]:
    """Parses a registration document: `{models: [...]}`, a list, or one model mapping."""
    return parse_registration_file(data, source)[0]


def parse_registration_file(
    data: Any, source: str
) -> tuple[list[registry_pb2.ModelVersion], list[registry_pb2.TrafficPolicy]]:
    """Parses a registration document: `{models: [...], traffic: [...]}`, a list of models, or
    one model mapping; the model versions and the traffic policies in it."""
    policies: list[registry_pb2.TrafficPolicy] = []
    if isinstance(data, dict) and ("models" in data or "traffic" in data):
        extra = set(data) - {"models", "traffic"}
        if extra:
            raise InvalidInput(f"{source}: unknown top-level keys {sorted(extra)}")
        entries_traffic = data.get("traffic") or []
        if not isinstance(entries_traffic, list):
            raise InvalidInput(f"{source}: traffic must be a list of policies")
        policies = [
            traffic.parse_policy(e, f"{source}: traffic[{i}]") for i, e in enumerate(entries_traffic)
        ]
        names = [p.model for p in policies]
        twice = {n for n in names if names.count(n) > 1}
        if twice:
            raise InvalidInput(f"{source}: traffic gives {', '.join(sorted(twice))} more than once")
        data = data.get("models") or []
    entries = data if isinstance(data, list) else [data]
    if not entries and not policies:
        raise InvalidInput(f"{source}: no models in it")
    records = [parse_record(e, f"{source}: models[{i}]") for i, e in enumerate(entries)]
    keys = [(r.name, r.version) for r in records]
    dupes = {f"{n}:{v}" for n, v in keys if keys.count((n, v)) > 1}
    if dupes:
        raise InvalidInput(f"{source}: registers {', '.join(sorted(dupes))} more than once")
    return records, policies


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key that orders numeric versions numerically, after non-numeric ones."""
    return (1, int(version)) if version.isdigit() else (0, version)


class RegistryStore:
    """SQLite persistence of registry records; safe to share between threads."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS model_versions (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (name, version)
    )
    """

    TRAFFIC_SCHEMA = (
        """
        CREATE TABLE IF NOT EXISTS traffic_policies (
            model TEXT PRIMARY KEY,
            policy BLOB NOT NULL
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS traffic_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT NOT NULL,
            time_ns INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            policy BLOB NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS traffic_history_model ON traffic_history (model, id)",
    )

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(self.SCHEMA)
            for statement in self.TRAFFIC_SCHEMA:
                self._db.execute(statement)
            self._db.commit()
        except sqlite3.Error as e:
            raise InvalidInput(f"registry database {path}: {e}") from None

    def close(self) -> None:
        """Closes the database connection."""
        with self._lock:
            self._db.close()

    def data_version(self) -> int:
        """A number that changes whenever another connection commits a change."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def records(self, name: str = "") -> list[registry_pb2.ModelVersion]:
        """All records, or those of one model name, ordered by name then version."""
        with self._lock:
            if name:
                rows = self._db.execute(
                    "SELECT record FROM model_versions WHERE name = ?", (name,)
                ).fetchall()
            else:
                rows = self._db.execute("SELECT record FROM model_versions").fetchall()
        records = [registry_pb2.ModelVersion.FromString(r[0]) for r in rows]
        return sorted(records, key=lambda r: (r.name, version_key(r.version)))

    def put(
        self, records: Iterable[registry_pb2.ModelVersion], replace: bool = True
    ) -> list[registry_pb2.ModelVersion]:
        """Inserts (or replaces) records in one transaction; stamps created_at."""
        stored = []
        with self._lock:
            try:
                with self._db:
                    for record in records:
                        validate_record(record)
                        out = registry_pb2.ModelVersion()
                        out.CopyFrom(record)
                        out.created_at.FromNanoseconds(time.time_ns())
                        verb = "INSERT OR REPLACE" if replace else "INSERT"
                        self._db.execute(
                            f"{verb} INTO model_versions (name, version, record) VALUES (?, ?, ?)",
                            (out.name, out.version, out.SerializeToString()),
                        )
                        stored.append(out)
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"model {record.name}:{record.version} is registered already"
                ) from None
        return stored

    def remove(
        self, name: str, version: str = "", actor: str = ""
    ) -> list[registry_pb2.ModelVersion]:
        """Removes one version, or all versions of name; ModelNotFound when nothing matched.

        A version the model's traffic policy names is not removed (InvalidInput: change the
        policy first); removing every version removes the policy too (a `remove` change in
        its history, by `actor`).
        """
        with self._transaction():
            records = [r for r in self._records(name) if not version or r.version == version]
            if not records:
                what = f"{name}:{version}" if version else name
                raise ModelNotFound(f"model {what} is not registered")
            policy = self._policy(name)
            if version:
                if policy is not None:
                    uses = _policy_uses(policy, version)
                    if uses:
                        raise InvalidInput(
                            f"model {name}:{version} is the {' and '.join(uses)} of the model's "
                            f"traffic policy; change the policy first (tensorgate models traffic "
                            f"{name} ...) or remove the whole model"
                        )
                self._db.execute(
                    "DELETE FROM model_versions WHERE name = ? AND version = ?", (name, version)
                )
            else:
                self._db.execute("DELETE FROM model_versions WHERE name = ?", (name,))
                if policy is not None:
                    self._write_policy(registry_pb2.TrafficPolicy(model=name), actor, "remove")
        return records

    # -- traffic policies ------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so that what it reads stays
        true until it commits, also against other processes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    def _records(self, name: str) -> list[registry_pb2.ModelVersion]:
        rows = self._db.execute("SELECT record FROM model_versions WHERE name = ?", (name,)).fetchall()
        records = [registry_pb2.ModelVersion.FromString(r[0]) for r in rows]
        return sorted(records, key=lambda r: version_key(r.version))

    def _versions(self, name: str) -> list[str]:
        rows = self._db.execute("SELECT version FROM model_versions WHERE name = ?", (name,)).fetchall()
        return sorted((r[0] for r in rows), key=version_key)

    def _policy(self, model: str) -> registry_pb2.TrafficPolicy | None:
        row = self._db.execute(
            "SELECT policy FROM traffic_policies WHERE model = ?", (model,)
        ).fetchone()
        return None if row is None else registry_pb2.TrafficPolicy.FromString(row[0])

    def _write_policy(self, policy: registry_pb2.TrafficPolicy, actor: str, action: str) -> None:
        """Stores a policy (none when it is empty) and its history row; inside a transaction."""
        if traffic.is_empty(policy):
            self._db.execute("DELETE FROM traffic_policies WHERE model = ?", (policy.model,))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO traffic_policies (model, policy) VALUES (?, ?)",
                (policy.model, policy.SerializeToString()),
            )
        self._db.execute(
            "INSERT INTO traffic_history (model, time_ns, actor, action, policy) VALUES (?, ?, ?, ?, ?)",
            (policy.model, time.time_ns(), actor or "unknown", action, policy.SerializeToString()),
        )

    def policies(self) -> dict[str, registry_pb2.TrafficPolicy]:
        """Every stored traffic policy, by model name."""
        with self._lock:
            rows = self._db.execute("SELECT model, policy FROM traffic_policies").fetchall()
        return {m: registry_pb2.TrafficPolicy.FromString(p) for m, p in rows}

    def policy(self, model: str) -> registry_pb2.TrafficPolicy:
        """A model's traffic policy; an empty one (only the model set) when it has none."""
        with self._lock:
            policy = self._policy(model)
        return policy if policy is not None else registry_pb2.TrafficPolicy(model=model)

    def change_policy(
        self,
        model: str,
        change: Callable[[registry_pb2.TrafficPolicy], registry_pb2.TrafficPolicy],
        actor: str,
        action: str,
    ) -> registry_pb2.TrafficPolicy:
        """Applies `change` to a model's current policy, validates the result against the
        registered versions and stores it with its history row, all in one transaction."""
        with self._transaction():
            versions = self._versions(model)
            if not versions:
                raise ModelNotFound(f"model {model!r} is not registered")
            current = self._policy(model) or registry_pb2.TrafficPolicy(model=model)
            new = change(current)
            new.model = model
            if not traffic.is_empty(new):
                new = traffic.validate(new, versions)
            self._write_policy(new, actor, action)
        return new

    def set_policy(self, policy: registry_pb2.TrafficPolicy, actor: str) -> registry_pb2.TrafficPolicy:
        """Replaces a model's policy (an empty one clears it)."""
        action = "clear" if traffic.is_empty(policy) else "set"
        return self.change_policy(policy.model, lambda _: policy, actor, action)

    def promote(self, model: str, version: str, actor: str) -> registry_pb2.TrafficPolicy:
        """Makes `version` the default and clears split, sticky key and shadow (a fallback that
        is not the promoted version stays)."""

        def change(current: registry_pb2.TrafficPolicy) -> registry_pb2.TrafficPolicy:
            if not version:
                raise InvalidInput(f"promote model {model}: version is required")
            new = registry_pb2.TrafficPolicy(model=model, default_version=version)
            if current.fallback_version != version:
                new.fallback_version = current.fallback_version
            return new

        return self.change_policy(model, change, actor, "promote")

    def rollback(self, model: str, actor: str) -> registry_pb2.TrafficPolicy:
        """Restores the policy the model had before its last change (none when the last change
        was its first)."""

        def change(current: registry_pb2.TrafficPolicy) -> registry_pb2.TrafficPolicy:
            rows = self._db.execute(
                "SELECT policy FROM traffic_history WHERE model = ? ORDER BY id DESC LIMIT 2",
                (model,),
            ).fetchall()
            if not rows:
                raise InvalidInput(f"model {model} has no traffic policy change to roll back")
            if len(rows) == 1:
                return registry_pb2.TrafficPolicy(model=model)
            return registry_pb2.TrafficPolicy.FromString(rows[1][0])

        return self.change_policy(model, change, actor, "rollback")

    def history(self, model: str) -> list[registry_pb2.TrafficChange]:
        """Every change of a model's policy, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT time_ns, actor, action, policy FROM traffic_history WHERE model = ? ORDER BY id",
                (model,),
            ).fetchall()
        changes = []
        for time_ns, actor, action, policy in rows:
            change = registry_pb2.TrafficChange(
                actor=actor, action=action, policy=registry_pb2.TrafficPolicy.FromString(policy)
            )
            change.time.FromNanoseconds(time_ns)
            changes.append(change)
        return changes


def _policy_uses(policy: registry_pb2.TrafficPolicy, version: str) -> list[str]:
    """The fields of a policy that name a version."""
    uses = []
    if policy.default_version == version:
        uses.append("default_version")
    if any(w.version == version for w in policy.split):
        uses.append("split")
    if policy.HasField("shadow") and policy.shadow.version == version:
        uses.append("shadow.version")
    if policy.fallback_version == version:
        uses.append("fallback_version")
    return uses


class Registry:
    """The server's in-memory view of the store, reloaded when the store changes."""

    def __init__(self, store: RegistryStore, limits: TransformLimits | None = None) -> None:
        self.store = store
        self.limits = limits
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._defaults: dict[str, ModelVersion] = {}
        self._seen_version = -1
        # Bumped by every load(); caches of resolved model versions compare it.
        self.generation = 0
        # The model versions of the last load, by their record's bytes.
        self._built: dict[bytes, ModelVersion] = {}
        # Traffic policies that decide per call (split, shadow, fallback), by model name.
        self.policies: dict[str, traffic.Policy] = {}

    def load(self) -> None:
        """Reads every record from the store (skipping, with a log line, any invalid one)."""
        self._seen_version = self.store.data_version()
        models: dict[str, dict[str, ModelVersion]] = {}
        built: dict[bytes, ModelVersion] = {}
        for record in self.store.records():
            # An unchanged record keeps its ModelVersion: its transforms (tokenizers, ...) are
            # not built again on every registry change.
            key = record.SerializeToString(deterministic=True)
            mv = self._built.get(key)
            if mv is None:
                try:
                    mv = ModelVersion.from_record(record, self.limits)
                except InvalidInput as e:
                    log.error("registry: skipping %s:%s: %s", record.name, record.version, e)
                    continue
            built[key] = mv
            models.setdefault(mv.name, {})[mv.version] = mv
        defaults = {
            name: versions[max(versions, key=version_key)] for name, versions in models.items()
        }
        policies: dict[str, traffic.Policy] = {}
        for name, record in self.store.policies().items():
            if name not in models:
                continue
            try:
                policy = traffic.Policy.build(record, sorted(models[name], key=version_key))
            except (InvalidInput, ModelNotFound) as e:
                log.error("registry: ignoring the traffic policy of %s: %s", name, e)
                continue
            defaults[name] = models[name][policy.default]
            if policy.routes_each_call:
                policies[name] = policy
        self._models, self._defaults, self._built = models, defaults, built
        self.policies = policies
        self.generation += 1

    def changed(self) -> bool:
        """True when another process committed to the store since the last load."""
        return self.store.data_version() != self._seen_version

    async def watch(self, interval_s: float) -> None:
        """Reloads whenever the store changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await asyncio.to_thread(self.changed):
                    await asyncio.to_thread(self.load)
                    log.info("registry reloaded: %d models", len(self._models))
            except Exception:
                log.exception("registry reload failed; keeping the previous view")

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The model version to serve; the default (highest) version when version is empty."""
        if version:
            mv = self._models.get(name, {}).get(version)
            if mv is None:
                if name in self._models:
                    known = ", ".join(sorted(self._models[name], key=version_key))
                    raise ModelNotFound(f"model {name} has no version {version!r} (has: {known})")
                raise ModelNotFound(f"model {name!r} is not registered")
            return mv
        mv = self._defaults.get(name)
        if mv is None:
            raise ModelNotFound(f"model {name!r} is not registered")
        return mv

    def route(self, name: str, call: CallContext | None) -> tuple[ModelVersion, traffic.Policy | None]:
        """The version for a call that names none, by the model's traffic policy when it has
        one that decides per call, and that policy (None: the default version, no policy)."""
        policy = self.policies.get(name)
        if policy is None:
            return self.resolve(name), None
        return self.resolve(name, policy.choose(call)), policy

    def all(self) -> list[ModelVersion]:
        """Every routable model version, by name then version."""
        return [
            self._models[n][v]
            for n in sorted(self._models)
            for v in sorted(self._models[n], key=version_key)
        ]

    def versions(self, name: str) -> list[str]:
        """The registered versions of name, oldest first."""
        return sorted(self._models.get(name, {}), key=version_key)
