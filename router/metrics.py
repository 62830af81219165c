"""Prometheus metrics, declared once; labels are bounded (model, version, method, backend, code).

A call whose model is not registered is counted with model="" so that clients cannot grow the
label set by inventing names.

The per-call series are kept by two small collectors instead of prometheus_client's Counter and
Histogram: those take a lock and walk every bucket in Python on each observation, which showed up
as several percent of the router's CPU per call in the benchmark suite (`make bench`). Observations happen
on the event-loop thread only; the scrape thread reads a copy taken under the GIL.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import REGISTRY, Gauge
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Latency buckets in seconds: 250 us .. 30 s.
BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)


class FastCounter(Collector):
    """A labelled counter: `inc(label_values)` is a dict update."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Adds amount to the series of these label values."""
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self._values.items()):
            family.add_metric(list(labels), value)
        yield family


class FastHistogram(Collector):
    """A labelled histogram: `observe(label_values, v)` is a bisect and two list updates."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = tuple(buckets)
        # per series: one count per bucket (by upper bound, then +Inf), then the sum
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Records one observation in the series of these label values."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.bounds) + 2)
        series[bisect.bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self._series.items()):
            series = list(series)
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, float("inf")), series[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(labels), buckets, sum_value=series[-1])
        yield family


class GaugeSource(Protocol):
    """Something that reports gauge samples when scraped."""

    def gauge_samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """(label values, value) pairs, read from the scrape thread."""
        ...


class SourcedGauge(Collector):
    """A labelled gauge whose samples come from live objects (held weakly) at scrape time;
    label sets reported by several sources show the lowest value."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._sources: weakref.WeakSet[GaugeSource] = weakref.WeakSet()

    def add_source(self, source: GaugeSource) -> None:
        """Reports source's samples until it is dropped or removed."""
        self._sources.add(source)

    def remove_source(self, source: GaugeSource) -> None:
        """Stops reporting source's samples."""
        self._sources.discard(source)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        samples: dict[tuple[str, ...], float] = {}
        for source in list(self._sources):
            for labels, value in source.gauge_samples():
                # one series per label set: the lowest value of the sources reporting it
                samples[labels] = min(value, samples.get(labels, value))
        for labels, value in samples.items():
            family.add_metric(list(labels), value)
        yield family


REQUESTS = FastCounter(
    "tensorgate_requests",
    "Calls answered by the router, by model, version, API method and gRPC status code.",
    ["model", "version", "method", "code"],
)
REQUEST_LATENCY = FastHistogram(
    "tensorgate_request_duration_seconds",
    "Time from a call's arrival to its answer, by model, version and API method.",
    ["model", "version", "method"],
    BUCKETS,
)
BACKEND_LATENCY = FastHistogram(
    "tensorgate_backend_request_duration_seconds",
    "Time of the backend call alone, by model, version and backend kind.",
    ["model", "version", "backend"],
    BUCKETS,
)
BATCH_ROWS = FastHistogram(
    "tensorgate_batch_rows",
    "Rows in each backend call made by router-side batching, by model and version.",
    ["model", "version"],
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_WAIT = FastHistogram(
    "tensorgate_batch_queue_wait_seconds",
    "Time calls waited in the batching queue, by model and version.",
    ["model", "version"],
    BUCKETS,
)
BATCHES = FastCounter(
    "tensorgate_batches",
    "Backend calls made by router-side batching, by model, version and trigger (size, delay).",
    ["model", "version", "trigger"],
)
SHADOW_REQUESTS = FastCounter(
    "tensorgate_shadow_requests",
    "Calls mirrored to a shadow version by a traffic policy, by model, shadow version and "
    "result: match or differ (its outputs against the primary's), error, or dropped (too many "
    "shadow calls in flight).",
    ["model", "version", "result"],
)
# Endpoint labels are host:port values of registered bindings: bounded by the registry.
ENDPOINT_REQUESTS = FastCounter(
    "tensorgate_endpoint_requests",
    "Backend calls sent to each endpoint, by backend kind, endpoint and status code (retries included).",
    ["backend", "endpoint", "code"],
)
ENDPOINT_RETRIES = FastCounter(
    "tensorgate_endpoint_retries",
    "Calls retried on another endpoint after an endpoint answered UNAVAILABLE, by backend kind "
    "and the endpoint that failed.",
    ["backend", "endpoint"],
)
ENDPOINT_RETRIES_DENIED = FastCounter(
    "tensorgate_endpoint_retries_denied",
    "UNAVAILABLE calls not retried because the binding's retry budget was spent, by backend kind.",
    ["backend"],
)
ENDPOINT_EJECTIONS = FastCounter(
    "tensorgate_endpoint_ejections",
    "Endpoints taken out of balancing, by backend kind, endpoint and reason (failures: "
    "consecutive UNAVAILABLE answers; health: a failed health check).",
    ["backend", "endpoint", "reason"],
)
ENDPOINT_ADMITTED = SourcedGauge(
    "tensorgate_endpoint_admitted",
    "1 when the endpoint takes calls for the backend model, 0 while ejected or failing its "
    "health check (in any binding that has it).",
    ["backend", "endpoint", "model"],
)
for _collector in (
    REQUESTS,
    REQUEST_LATENCY,
    BACKEND_LATENCY,
    BATCH_ROWS,
    QUEUE_WAIT,
    BATCHES,
    ENDPOINT_REQUESTS,
    ENDPOINT_RETRIES,
    ENDPOINT_RETRIES_DENIED,
    ENDPOINT_EJECTIONS,
    ENDPOINT_ADMITTED,
    SHADOW_REQUESTS,
):
    REGISTRY.register(_collector)

INFLIGHT = Gauge(
    "tensorgate_inflight_requests",
    "Calls being served right now.",
)


def observe_call(model: str, version: str, method: str, code: str, seconds: float) -> None:
    """Counts one answered call and its latency."""
    REQUESTS.inc((model, version, method, code))
    REQUEST_LATENCY.observe((model, version, method), seconds)


def observe_backend(model: str, version: str, backend: str, seconds: float) -> None:
    """Records the latency of one backend call."""
    BACKEND_LATENCY.observe((model, version, backend), seconds)


def observe_batch(model: str, version: str, rows: int, trigger: str, waits: list[float]) -> None:
    """Records one batched backend call: its rows, trigger and each member's queue wait."""
    BATCH_ROWS.observe((model, version), rows)
    BATCHES.inc((model, version, trigger))
    for wait in waits:
        QUEUE_WAIT.observe((model, version), wait)


def observe_shadow(model: str, version: str, result: str) -> None:
    """Counts one shadow call by its result (match, differ, error, dropped)."""
    SHADOW_REQUESTS.inc((model, version, result))
