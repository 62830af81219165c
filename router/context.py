"""The call being served: its request id, its metadata and the model version it resolved to.

One ContextVar, set by the front when a call starts (each gRPC call runs in its own task, so
its context dies with it); the dataplane fills in model and version, logging reads the id.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# The metadata key / HTTP header both fronts read a client's request id from and answer it in.
REQUEST_ID_KEY = "x-request-id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A 32-hex-digit id: random per process, then a counter (cheaper than uuid4 per call)."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


def request_id_for(client_value: object) -> str:
    """A call's request id: the client's own when it is sane (1-128 of A-Za-z0-9._:-), else new."""
    if isinstance(client_value, str) and _CLIENT_ID.match(client_value):
        return client_value
    return new_request_id()


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
