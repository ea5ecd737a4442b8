"""Prometheus metrics: every call (started, handled by code, latency, in flight), and domain counts.

Names and labels follow go-grpc-prometheus, which dashboards for gRPC servers expect. With
several worker processes, prometheus_client's multiprocess mode aggregates them: the supervisor
sets PROMETHEUS_MULTIPROC_DIR before this module is imported and serves the sum.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALL_LABELS = ("grpc_service", "grpc_method", "grpc_type")

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
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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
