"""Prometheus metrics: every call (started, handled by code, latency, in flight), and domain counts.

Names and labels follow go-grpc-prometheus, which dashboards for gRPC servers expect. With
several worker processes, prometheus_client's multiprocess mode aggregates them: the supervisor
sets PROMETHEUS_MULTIPROC_DIR before this module is imported and serves the sum.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

CALL_LABELS = ("grpc_service", "grpc_method", "grpc_type")
SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
# The per-call series are counted in memory and published at most this long after a call: in
# multiprocess mode each published value costs 5-12 µs (a lock, a pid check, an mmap write), and
# a call changes five, as much as the rest of a small call's own work. A scrape may lag by this.
PUBLISH_SECONDS = 1.0

started = Counter("grpc_server_started_total", "Calls started on the server.", CALL_LABELS)
handled = Counter(
    "grpc_server_handled_total",
    "Calls completed on the server, by status code.",
    (*CALL_LABELS, "grpc_code"),
)
handling_seconds = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of a call to its completion.",
    CALL_LABELS,
    buckets=SECONDS_BUCKETS,
)
in_flight = Gauge(
    "grpc_server_in_flight",
    "Calls being handled right now.",
    CALL_LABELS,
    multiprocess_mode="livesum",
)

events = Counter(
    "quartet_events_total", "Events sent, by outcome: stored, duplicate or rejected.", ("outcome",)
)
event_rejections = Counter(
    "quartet_event_rejections_total",
    "Reasons events were rejected for (an event may have several).",
    ("reason",),
)
import_rows = Counter(
    "quartet_import_rows_total", "Rows stored by experiment imports, by file.", ("file",)
)
worker_restarts = Counter(
    "quartet_worker_restarts",
    "Child processes (workers, the metrics server) the supervisor replaced after they died.",
)


class CallMetrics:
    """One method's per-call series (started, handled by code, latency, in flight), counted in
    memory and published PUBLISH_SECONDS after the first call since they last were."""

    def __init__(self, service: str, method: str, kind: str) -> None:
        self._labels = (service, method, kind)
        self._started = 0
        self._in_flight = 0
        self._handled: collections.Counter[str] = collections.Counter()
        # Calls per latency bucket (the last: above every bound), and their seconds in all.
        self._buckets = [0] * (len(SECONDS_BUCKETS) + 1)
        self._seconds = 0.0
        self._handled_series: dict[str, Any] = {}

    def start(self) -> None:
        self._started += 1
        self._in_flight += 1
        _waiting.add(self)

    def finish(self, code: str, seconds: float) -> None:
        self._in_flight -= 1
        self._handled[code] += 1
        self._buckets[bisect.bisect_left(SECONDS_BUCKETS, seconds)] += 1
        self._seconds += seconds
        _waiting.add(self)

    def publish(self) -> None:
        labels = self._labels
        if self._started:
            started.labels(*labels).inc(self._started)
        if self._in_flight:
            in_flight.labels(*labels).inc(self._in_flight)
        for code, count in self._handled.items():
            series = self._handled_series.get(code)
            if series is None:
                series = self._handled_series[code] = handled.labels(*labels, code)
            series.inc(count)
        if any(self._buckets):
            # What Histogram.observe does, once per bucket instead of once per call. Its
            # attributes are private, but stable since prometheus-client 0.1, and the metrics
            # test reads the published histogram back.
            histogram = handling_seconds.labels(*labels)
            histogram._sum.inc(self._seconds)
            for bucket, count in zip(histogram._buckets, self._buckets, strict=True):
                if count:
                    bucket.inc(count)
        self._started = self._in_flight = 0
        self._handled.clear()
        self._buckets = [0] * len(self._buckets)
        self._seconds = 0.0


class _Waiting:
    """The methods with calls not yet published, and the event loop whose timer will publish
    them (a server started after one whose loop ended with its timer pending, as in tests, sets
    a timer on its own loop)."""

    def __init__(self) -> None:
        self._methods: set[CallMetrics] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, method: CallMetrics) -> None:
        self._methods.add(method)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            loop.call_later(PUBLISH_SECONDS, self.publish)

    def publish(self) -> None:
        self._loop = None
        methods, self._methods = self._methods, set()
        for method in methods:
            method.publish()


_waiting = _Waiting()


def publish() -> None:
    """Publish every call counted and not yet published (at shutdown; a timer does it else)."""
    _waiting.publish()
