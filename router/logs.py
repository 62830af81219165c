"""Logging set-up: every line carries the request id of the call it belongs to."""

from __future__ import annotations

import logging

from router import context


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = context.request_id()
        return True


# One line per call when log.access is on; its level is set by setup().
access = logging.getLogger("tensorgate.access")


def setup(level: str, access_log: bool = False) -> None:
    """Configures the root logger (time, level, logger, request id, message) and the access log."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access.setLevel(logging.INFO if access_log else logging.WARNING)
