"""Logging set-up: every line carries the request id of the call it belongs to."""

from __future__ import annotations

import logging
from contextvars import ContextVar

# The id of the call being served (set by the fronts); "-" outside a call.
request_id: ContextVar[str] = ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def setup(level: str) -> None:
    """Configures the root logger: time, level, logger, request id, message."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
