"""Prometheus metrics, declared once; labels are bounded (model, version, backend, code).

A call whose model is not registered is counted with model="" so that clients cannot grow the
label set by inventing names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets in seconds: 250 us .. 30 s.
_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)

REQUESTS = Counter(
    "tensorgate_requests_total",
    "Calls answered by the router, by model, version, API method and gRPC status code.",
    ["model", "version", "method", "code"],
)
REQUEST_LATENCY = Histogram(
    "tensorgate_request_duration_seconds",
    "Time from a call's arrival to its answer, by model, version and API method.",
    ["model", "version", "method"],
    buckets=_BUCKETS,
)
BACKEND_LATENCY = Histogram(
    "tensorgate_backend_request_duration_seconds",
    "Time of the backend call alone, by model, version and backend kind.",
    ["model", "version", "backend"],
    buckets=_BUCKETS,
)
INFLIGHT = Gauge(
    "tensorgate_inflight_requests",
    "Calls being served right now.",
)
