"""The call being served: its request id, its metadata and the model version it resolved to.

One ContextVar, set by the front when a call starts (each gRPC call runs in its own task, so
its context dies with it); the dataplane fills in model and version, logging reads the id.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A 32-hex-digit id: random per process, then a counter (cheaper than uuid4 per call)."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


@dataclass(slots=True)
class CallContext:
    """What the router knows about the call in progress."""

    request_id: str
    model: str = ""
    version: str = ""
    # The call's metadata as the front has it, looked up lazily by header(): gRPC's
    # invocation metadata (key, value) pairs, or the HTTP request's headers dict; names are
    # lower-case in both.
    metadata: Mapping[str, str] | Iterable[tuple[str, Any]] | None = None

    def header(self, name: str) -> str | None:
        """The value of a metadata entry / request header (lower-case name); None when absent."""
        md = self.metadata
        if md is None:
            return None
        if isinstance(md, Mapping):
            return md.get(name)
        for key, value in md:
            if key == name:
                return value if isinstance(value, str) else None
        return None


current: ContextVar[CallContext | None] = ContextVar("tensorgate_call", default=None)


def request_id() -> str:
    """The id of the call in progress, or "-" outside a call."""
    call = current.get()
    return call.request_id if call is not None else "-"
