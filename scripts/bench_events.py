"""Benchmark EventService sends (one event, a batch, a stream) beside a bare grpcio server.

Usage: .venv/bin/python scripts/bench_events.py [--seconds 10] [--postgres URL] [--batch 500]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs).

Every event is a valid "page interaction/pageview" without an id, so each call stores new rows.
Failures are counted from the rows stored, since h2load cannot see gRPC status codes: a call
counts as failed unless all its events reached the database.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import benchlib
import grpc

from quartet import storage
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.server.auth.tokens import new_api_key
from quartet.storage import applications, events

SERVICE = "/quartet.events.v1.EventService/"
STREAM_MESSAGES = 10  # messages per streamed call, each holding one batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=500, help="events per batch or message")
    parser.add_argument("--postgres", default=os.environ.get("QUARTET_BENCH_POSTGRES_URL", ""))
    args = parser.parse_args()
    tool = "h2load" if benchlib.have_h2load() else "python (install nghttp2-client for h2load)"
    print(f"load generator: {tool}; {args.seconds:g} s per scenario; {benchlib.cpu_count()} cores")

    single = pb.SendEventRequest(event=pageview()).SerializeToString()
    with benchlib.bare_server() as target:
        baseline = load("bare grpcio, empty reply", target, "SendEvent", single, args.seconds, "")
    results = [baseline]
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", benchlib.sqlite_url(Path(tmp)))]
        if args.postgres:
            backends.append(("postgresql", args.postgres))
        for name, url in backends:
            results += scenarios(name, url, args.seconds, args.batch)
    benchlib.print_table(results, baseline)


def pageview() -> pb.Event:
    message = pb.Event(
        session_id="e2085be5-9137-4e4e-80b5-f1ffddc25423",
        category="page interaction",
        name="pageview",
    )
    message.data.update({"host": "www.ca.com", "path": "/"})
    message.occur_time.FromJsonString("2021-01-01T09:15:27.243860Z")
    return message


def scenarios(backend: str, url: str, seconds: float, batch: int) -> list[benchlib.Result]:
    key = application_key(url)
    batch_request = pb.SendEventsRequest(events=[pageview()] * batch).SerializeToString()
    stream_message = pb.StreamEventsRequest(events=[pageview()] * batch).SerializeToString()
    # Single events come from many small senders (50 calls in flight); batches and streams
    # from a few bulk senders (8 calls in flight), as they would in production.
    cases = [
        ("SendEvent", pb.SendEventRequest(event=pageview()).SerializeToString(), 1, 1, (10, 5)),
        ("SendEvents", batch_request, batch, 1, (4, 2)),
        ("StreamEvents", stream_message, batch * STREAM_MESSAGES, STREAM_MESSAGES, (4, 2)),
    ]
    results = []
    with benchlib.quartet_server(url) as target:
        for method, request, per_call, messages, concurrency in cases:
            before = count_events(url)
            label = f"{method} ({per_call} per call), {backend}"
            result = load(label, target, method, request, seconds, key, messages, concurrency)
            stored = count_events(url) - before
            result.items_per_call = per_call
            # h2load cuts calls off at the end that the server may still complete.
            result.errors = max(0, result.calls - stored // per_call)
            results.append(result)
    return results


def application_key(url: str) -> str:
    """Register a benchmark application straight in the database; its API key."""
    full_key, key_id, secret_hash = new_api_key()
    database = storage.open_database(url)
    storage.migrate(database)
    storage.bind(database)
    with database.connection_context():
        applications.create_application(f"bench-{key_id}", key_id, secret_hash)
    storage.close(database)
    return full_key


def count_events(url: str) -> int:
    database = storage.open_database(url)
    storage.bind(database)
    try:
        with database.connection_context():
            return int(events.Event.select().count())
    finally:
        storage.close(database)


def load(
    label: str,
    target: str,
    method: str,
    request: bytes,
    seconds: float,
    key: str,
    messages: int = 1,
    concurrency: tuple[int, int] = (10, 5),
) -> benchlib.Result:
    connections, streams = concurrency
    if benchlib.have_h2load():
        body = benchlib.frame(request) * messages
        headers = [f"authorization: Bearer {key}"] if key else []
        result, _ = benchlib.h2load(
            label,
            target,
            SERVICE + method,
            body,
            seconds=seconds,
            connections=connections,
            streams=streams,
            headers=headers,
            framed=True,
        )
        return result
    caller = _Caller(method, key, request, messages)
    return benchlib.python_load(
        label, target, caller, seconds=seconds, concurrency=connections * streams
    )


class _Caller:
    """Fallback load (no h2load): makes the call in the worker processes (so it pickles)."""

    def __init__(self, method: str, key: str, request: bytes, messages: int) -> None:
        self.method, self.key, self.request, self.messages = method, key, request, messages

    def __call__(self, channel: grpc.aio.Channel) -> Callable[[int], object]:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        metadata = (("authorization", f"Bearer {self.key}"),)
        if self.method == "StreamEvents":
            message = pb.StreamEventsRequest.FromString(self.request)
            return lambda n: stub.StreamEvents(iter([message] * self.messages), metadata=metadata)
        if self.method == "SendEvents":
            batch = pb.SendEventsRequest.FromString(self.request)
            return lambda n: stub.SendEvents(batch, metadata=metadata)
        single = pb.SendEventRequest.FromString(self.request)
        return lambda n: stub.SendEvent(single, metadata=metadata)


if __name__ == "__main__":
    main()
