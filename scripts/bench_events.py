"""Benchmark EventService sends (one event, a batch, a stream) beside a bare grpcio server.

Usage: .venv/bin/python scripts/bench_events.py [--seconds 10] [--postgres URL] [--batch 500]
    [--tails N [--tail-category C]] [--methods SendEvents,...]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs). With --tails,
each scenario runs with N tails open (TailEvents, as an admin), each following every event sent
("page interaction") and the table says when the slowest had them all, or, with
--tail-category, another category (tails that only watch).

Every event is a valid "page interaction/pageview" without an id, so each call stores new rows.
Failures are counted from the rows stored, since h2load cannot see gRPC status codes: a call
counts as failed unless all its events reached the database.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import benchlib

from quartet.client import Client
from quartet.events.v1 import event_service_pb2 as pb
from quartet.storage.events import Event

SERVICE = "/quartet.events.v1.EventService/"
STREAM_MESSAGES = 10  # messages per streamed call, each holding one batch


def main() -> None:
    parser = benchlib.arguments(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500, help="events per batch or message")
    parser.add_argument("--tails", type=int, default=0, help="tails open during each scenario")
    parser.add_argument(
        "--tail-category",
        default=benchlib.pageview().category,
        help="the category the tails follow (default: that of every event sent; another one "
        "measures tails that only watch)",
    )
    parser.add_argument(
        "--methods", default="SendEvent,SendEvents,StreamEvents", help="the methods to measure"
    )
    args = parser.parse_args()
    benchlib.announce(args.seconds)
    single = pb.SendEventRequest(event=benchlib.pageview()).SerializeToString()
    with benchlib.bare_server() as target:
        bare, _ = benchlib.load(
            "bare grpcio, empty reply", target, SERVICE + "SendEvent", single, seconds=args.seconds
        )
    results = [bare]
    for name in benchlib.backends(args.postgres):
        for workers in benchlib.worker_counts(args.workers):
            with benchlib.fresh_database(name, args.postgres) as url:
                tails = (args.tails, args.tail_category)
                results += scenarios(
                    name, url, args.seconds, args.batch, workers, tails, args.methods
                )
    benchlib.print_table(results, bare)


def scenarios(
    backend: str,
    url: str,
    seconds: float,
    batch: int,
    workers: int,
    tails: tuple[int, str],
    methods: str,
) -> list[benchlib.Result]:
    key = benchlib.application_key(url)
    admin = benchlib.admin_token(url)
    batch_request = pb.SendEventsRequest(events=[benchlib.pageview()] * batch).SerializeToString()
    stream_message = pb.StreamEventsRequest(
        events=[benchlib.pageview()] * batch
    ).SerializeToString()
    # Single events come from many small senders (50 calls in flight); batches and streams
    # from a few bulk senders (8 calls in flight), as they would in production. Each bulk
    # sender has a connection of its own: the kernel hands each connection to one worker, so
    # 4 connections left a worker idle one run in eight, and one with a single sender half
    # the time (2 workers, 8 connections: one run in 128).
    cases = [
        (
            "SendEvent",
            pb.SendEventRequest(event=benchlib.pageview()).SerializeToString(),
            1,
            1,
            (10, 5),
        ),
        ("SendEvents", batch_request, batch, 1, (8, 1)),
        ("StreamEvents", stream_message, batch * STREAM_MESSAGES, STREAM_MESSAGES, (8, 1)),
    ]
    results = []
    with benchlib.quartet_server(url, "--workers", str(workers)) as target:
        for method, request, per_call, messages, concurrency in cases:
            if method not in methods.split(","):
                continue
            before = benchlib.count_rows(url, Event)
            with following(target, admin, *tails) as tailing:
                result, _ = benchlib.load(
                    f"{method} ({per_call} per call), {backend}, {workers} worker(s)",
                    target,
                    SERVICE + method,
                    request,
                    seconds=seconds,
                    token=key,
                    messages=messages,
                    concurrency=concurrency,
                )
                stored = benchlib.count_rows(url, Event) - before
                if tails[0]:
                    result.label += f", {tails[0]} tails: {tailing.caught_up(stored, tails[1])}"
            result.items_per_call = per_call
            # h2load cuts calls off at the end that the server may still complete.
            result.errors = max(0, result.calls - stored // per_call)
            results.append(result)
    return results


class Tailing:
    """What each open tail has received."""

    def __init__(self, tails: int) -> None:
        self.received = [0] * tails

    def caught_up(self, stored: int, category: str) -> str:
        """How long after the load the slowest tail had every stored event (or how many it
        had after 30 s); for tails of another category, that they received none."""
        if category != benchlib.pageview().category:
            return f"following {category!r}, received {sum(self.received)} events"
        start = time.monotonic()
        while min(self.received, default=stored) < stored and time.monotonic() - start < 30:
            time.sleep(0.01)
        if min(self.received, default=stored) < stored:
            return f"only {min(self.received)} of {stored} events after 30 s"
        return f"all {stored} events {time.monotonic() - start:.2f} s after the load"


@contextlib.contextmanager
def following(target: str, token: str, tails: int, category: str) -> Iterator[Tailing]:
    """Open `tails` tails of every event sent (each on a connection of its own, so that they
    spread over the workers), counting what each receives; close them on exit."""
    tailing = Tailing(tails)
    clients = [
        Client(target, token=token, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(tails)
    ]
    opened = [c.events.tail(category=category) for c in clients]

    def consume(index: int) -> None:
        for _ in opened[index]:
            tailing.received[index] += 1

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(tails)]
    for thread in threads:
        thread.start()
    try:
        yield tailing
    finally:
        for tail, client in zip(opened, clients, strict=True):
            tail.close()
            client.close()
        for thread in threads:
            thread.join()


if __name__ == "__main__":
    main()
