"""The router's error hierarchy; transports map these to status codes in one place each.

No transport codes live here: router.grpc.errors and (later) router.http map every class once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class TensorgateError(Exception):
    """Base class of errors whose message is safe to show to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TensorgateError):
    """The request is malformed or does not match the model (names, shapes, datatypes, limits)."""


class ModelNotFound(TensorgateError):
    """No such model or model version is registered."""


class AlreadyExists(TensorgateError):
    """The thing to create exists already."""


class BackendUnavailable(TensorgateError):
    """The backend cannot be reached or is not ready; retrying later may succeed."""


class BackendError(TensorgateError):
    """The backend answered with an error that is not the caller's fault."""


class DeadlineExceeded(TensorgateError):
    """The caller's deadline passed before the answer came."""


class Overloaded(TensorgateError):
    """A queue or in-flight limit is full; the call was refused at once."""


class Unavailable(TensorgateError):
    """The router itself is not taking calls (starting or draining)."""


class Unauthenticated(TensorgateError):
    """The caller did not prove who it is."""


class Unimplemented(TensorgateError):
    """The request asks for something this router does not do (yet)."""


def mapped(error: TensorgateError, table: Mapping[type[TensorgateError], T], default: T) -> T:
    """A front's status for an error: the value of its nearest class in the front's table."""
    for cls in type(error).__mro__:
        value = table.get(cls)
        if value is not None:
            return value
    return default
