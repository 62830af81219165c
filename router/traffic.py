"""Version traffic policies: which version of a model name serves a call that names none.

A policy (tensorgate.v1.TrafficPolicy) has a default version, an optional weighted split
(a canary), an optional sticky key (a metadata entry / header whose value always lands on the
same version of the split), an optional shadow (a fraction of calls also goes to a candidate
version, whose answers are compared and discarded) and an optional fallback version (called
once when every endpoint of the chosen version is unavailable). A call that names a version
bypasses the policy.

`validate` checks a policy against the model's registered versions (errors name the field);
`Policy` is its routable form, built by the registry on each load.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tensorgate.v1 import registry_pb2

from router.context import CallContext
from router.errors import InvalidInput, ModelNotFound

_HEADER = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,127}$")
ACTIONS = ("set", "clear", "promote", "rollback", "remove")


def stable_unit(value: str) -> float:
    """A value's place in [0, 1), the same in every process and across restarts (blake2b)."""
    digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_empty(policy: registry_pb2.TrafficPolicy) -> bool:
    """True when a policy sets nothing but its model (the model has no policy)."""
    return not (
        policy.default_version
        or policy.split
        or policy.sticky_key
        or policy.HasField("shadow")
        or policy.fallback_version
    )


def default_of(policy: registry_pb2.TrafficPolicy, versions: Sequence[str]) -> str:
    """The version a policy serves when nothing splits: its default_version, else the highest
    of `versions` (ordered oldest first)."""
    return policy.default_version or (versions[-1] if versions else "")


def validate(policy: registry_pb2.TrafficPolicy, versions: Sequence[str]) -> registry_pb2.TrafficPolicy:
    """A checked copy of a policy for a model with `versions` (oldest first): sticky_key in
    lower case, a shadow with fraction 0 and no version dropped. InvalidInput names the field."""
    from router.registry import _NAME  # the registry imports this module

    out = registry_pb2.TrafficPolicy()
    out.CopyFrom(policy)
    where = f"traffic policy of model {policy.model or '<unnamed>'}"
    if not _NAME.match(policy.model):
        raise InvalidInput(f"{where}: model must match {_NAME.pattern}")
    if not versions:
        raise ModelNotFound(f"model {policy.model!r} is not registered")
    known = ", ".join(versions)

    def check_version(name: str, version: str) -> None:
        if version not in versions:
            raise InvalidInput(f"{where}: {name} {version!r} is not a registered version (has: {known})")

    if out.default_version:
        check_version("default_version", out.default_version)
    seen: set[str] = set()
    for i, w in enumerate(out.split):
        check_version(f"split[{i}].version", w.version)
        if w.version in seen:
            raise InvalidInput(f"{where}: split[{i}].version {w.version!r} appears twice")
        seen.add(w.version)
        if not (math.isfinite(w.weight) and w.weight > 0):
            raise InvalidInput(f"{where}: split[{i}].weight must be a number > 0, got {w.weight}")
    if len(out.split) == 1:
        raise InvalidInput(
            f"{where}: split has one version; give two or more, or set default_version instead"
        )
    out.sticky_key = out.sticky_key.lower()
    if out.sticky_key:
        if not _HEADER.match(out.sticky_key):
            raise InvalidInput(
                f"{where}: sticky_key {policy.sticky_key!r} is not a header name ({_HEADER.pattern})"
            )
        if not out.split:
            raise InvalidInput(f"{where}: sticky_key needs a split to stick to")
    primary = {w.version for w in out.split} or {default_of(out, versions)}
    if out.HasField("shadow"):
        s = out.shadow
        if not (0.0 <= s.fraction <= 1.0):
            raise InvalidInput(f"{where}: shadow.fraction must be in [0, 1], got {s.fraction}")
        if not s.version and s.fraction == 0:
            out.ClearField("shadow")
        else:
            check_version("shadow.version", s.version)
            if primary == {s.version}:
                raise InvalidInput(
                    f"{where}: shadow.version {s.version!r} is the version every call goes to already"
                )
    if out.fallback_version:
        check_version("fallback_version", out.fallback_version)
        if primary == {out.fallback_version}:
            raise InvalidInput(
                f"{where}: fallback_version {out.fallback_version!r} is the version every call "
                "goes to already"
            )
    return out


@dataclass(frozen=True)
class Policy:
    """The routable form of a validated policy; the registry keeps one per model that has a
    split, a shadow or a fallback (a plain default_version only changes the default)."""

    model: str
    default: str
    versions: tuple[str, ...] = ()
    # cumulative normalised weights of `versions`, the last one 1.0
    bounds: tuple[float, ...] = ()
    sticky_key: str = ""
    shadow_version: str = ""
    shadow_fraction: float = 0.0
    fallback: str = ""
    record: registry_pb2.TrafficPolicy = field(
        compare=False, repr=False, default_factory=registry_pb2.TrafficPolicy
    )

    @classmethod
    def build(cls, policy: registry_pb2.TrafficPolicy, versions: Sequence[str]) -> Policy:
        """The routable policy of a policy record valid for `versions` (oldest first)."""
        checked = validate(policy, versions)
        total = sum(w.weight for w in checked.split)
        bounds, running = [], 0.0
        for w in checked.split:
            running += w.weight
            bounds.append(running / total)
        if bounds:
            bounds[-1] = 1.0
        return cls(
            model=checked.model,
            default=default_of(checked, versions),
            versions=tuple(w.version for w in checked.split),
            bounds=tuple(bounds),
            sticky_key=checked.sticky_key,
            shadow_version=checked.shadow.version if checked.shadow.fraction > 0 else "",
            shadow_fraction=checked.shadow.fraction,
            fallback=checked.fallback_version,
            record=checked,
        )

    @property
    def routes_each_call(self) -> bool:
        """True when the policy decides per call (split, shadow or fallback)."""
        return bool(self.versions or self.shadow_version or self.fallback)

    def choose(self, call: CallContext | None) -> str:
        """The version for one call: by the sticky key's value when the call carries it, else
        at random by weight; the default version when nothing splits."""
        if not self.versions:
            return self.default
        key = call.header(self.sticky_key) if self.sticky_key and call is not None else None
        u = stable_unit(key) if key is not None else random.random()
        return self.versions[min(bisect.bisect_right(self.bounds, u), len(self.versions) - 1)]

    def shadow_for(self, version: str) -> str:
        """The version to mirror this call to (chosen at random by the fraction), or ""."""
        if not self.shadow_version or version == self.shadow_version:
            return ""
        if self.shadow_fraction < 1.0 and random.random() >= self.shadow_fraction:
            return ""
        return self.shadow_version

    def fallback_for(self, version: str) -> str:
        """The version to call when `version` is unavailable, or ""."""
        return self.fallback if self.fallback != version else ""


def summary(policy: registry_pb2.TrafficPolicy) -> str:
    """One line describing a policy, for the CLI: `default 2, split 1=90 2=10, ...`."""
    if is_empty(policy):
        return "none (highest version)"
    parts = []
    if policy.default_version:
        parts.append(f"default {policy.default_version}")
    if policy.split:
        parts.append("split " + " ".join(f"{w.version}={w.weight:g}" for w in policy.split))
    if policy.sticky_key:
        parts.append(f"sticky on {policy.sticky_key}")
    if policy.HasField("shadow"):
        parts.append(f"shadow {policy.shadow.version}={policy.shadow.fraction:g}")
    if policy.fallback_version:
        parts.append(f"fallback {policy.fallback_version}")
    return ", ".join(parts)


def parse_policy(data: Any, source: str) -> registry_pb2.TrafficPolicy:
    """A policy from its YAML form: {model, default_version, split: {version: weight},
    sticky_key, shadow: {version, fraction}, fallback_version}."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a traffic entry must be a mapping, got {type(data).__name__}")
    known = {"model", "default_version", "split", "sticky_key", "shadow", "fallback_version"}
    extra = set(data) - known
    if extra:
        raise InvalidInput(f"{source}: unknown keys {sorted(extra)} (known: {', '.join(sorted(known))})")
    policy = registry_pb2.TrafficPolicy()
    for key in ("model", "default_version", "sticky_key", "fallback_version"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise InvalidInput(f"{source}: {key} must be a string, got {value!r}")
        setattr(policy, key, str(value))
    if not policy.model:
        raise InvalidInput(f"{source}: model is required")
    split = data.get("split")
    if split is not None:
        if not isinstance(split, dict):
            raise InvalidInput(f"{source}: split must map versions to weights, e.g. {{'1': 90, '2': 10}}")
        for version, weight in split.items():
            if not isinstance(weight, int | float) or isinstance(weight, bool):
                raise InvalidInput(f"{source}: split weight of version {version} must be a number")
            policy.split.add(version=str(version), weight=float(weight))
    shadow = data.get("shadow")
    if shadow is not None:
        if not isinstance(shadow, dict) or set(shadow) - {"version", "fraction"}:
            raise InvalidInput(f"{source}: shadow must be {{version: V, fraction: F}}")
        fraction = shadow.get("fraction", 0)
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            raise InvalidInput(f"{source}: shadow.fraction must be a number in [0, 1]")
        policy.shadow.version = str(shadow.get("version", ""))
        policy.shadow.fraction = float(fraction)
    return policy
