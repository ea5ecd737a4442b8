"""Benchmark signed-in calls while anonymous watches and idle streams are held open.

Usage: .venv/bin/python scripts/bench_exposure.py [--seconds 10] [--workers 1] [--postgres URL]
    [--watches 2000] [--streams 200] [--concurrency 4]

Each configuration is measured twice on the same server: with nothing else open, then while
another process holds `--watches` Health/Watch streams without credentials (100 per connection,
the per-connection cap) and `--streams` idle StreamEvents calls with one application's key. The
anonymous-stream and per-caller budgets are raised so that all of them are admitted: the worst a
deployment could allow, and what filled gRPC's one shared call limit before each kind of call had
a budget of its own. The signed-in calls are ListProvinces (answered from memory) and SendEvent
(a durable write), `--concurrency` calls in flight; errors are any status but OK.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
from multiprocessing.synchronize import Event as EventType

import benchlib
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.regions.v1 import region_service_pb2

PER_CONNECTION = 100  # the server's default QUARTET_MAX_STREAMS_PER_CONNECTION
METHODS = {
    "ListProvinces": (
        "/quartet.regions.v1.RegionService/ListProvinces",
        region_service_pb2.ListProvincesRequest().SerializeToString(),
    ),
    "SendEvent": ("/quartet.events.v1.EventService/SendEvent", b""),  # set in main()
}


def main() -> None:
    parser = benchlib.arguments(__doc__.splitlines()[0])
    parser.set_defaults(workers="1")
    parser.add_argument("--watches", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="signed-in calls in flight")
    args = parser.parse_args()
    benchlib.announce(args.seconds)
    # Admit every stream (each worker gets all of them in the worst case of the kernel's spread).
    os.environ["QUARTET_MAX_ANONYMOUS_STREAMS"] = str(args.watches)
    os.environ["QUARTET_MAX_STREAMS_PER_CALLER"] = str(args.streams)
    os.environ["QUARTET_MAX_STREAMS"] = str(max(args.streams, 1000))
    method, _ = METHODS["SendEvent"]
    METHODS["SendEvent"] = (
        method,
        pb.SendEventRequest(event=benchlib.pageview()).SerializeToString(),
    )
    results = []
    for backend in benchlib.backends(args.postgres):
        for workers in benchlib.worker_counts(args.workers):
            with benchlib.fresh_database(backend, args.postgres) as url:
                results += scenarios(backend, url, workers, args)
    benchlib.print_table(results)


def scenarios(
    backend: str, url: str, workers: int, args: argparse.Namespace
) -> list[benchlib.Result]:
    key = benchlib.application_key(url)
    results = []
    with benchlib.quartet_server(url, "--workers", str(workers)) as target:
        for held in ("nothing else open", "streams held open"):
            holder = None
            if held != "nothing else open":
                holder = StreamHolder(target, key, args.watches, args.streams)
                print(f"{backend}, {workers} worker(s): {holder.report}")
            for name, (method, request) in METHODS.items():
                label = f"{name}, {backend}, {workers} worker(s), {held}"
                caller = benchlib.RawCaller(method, request, key, 0)
                results.append(
                    benchlib.python_load(
                        label, target, caller, seconds=args.seconds, concurrency=args.concurrency
                    )
                )
            if holder is not None:
                holder.close()
    return results


class StreamHolder:
    """Another process holding anonymous Health/Watch streams and idle StreamEvents calls open
    until closed; `report` says how many were admitted."""

    def __init__(self, target: str, key: str, watches: int, streams: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._reports: multiprocessing.Queue[str] = context.Queue()
        self._process = context.Process(
            target=_hold, args=(target, key, watches, streams, self._reports, self._stop)
        )
        self._process.start()
        self.report = self._reports.get(timeout=300)

    def close(self) -> None:
        self._stop.set()
        self._process.join(60)


def _hold(
    target: str,
    key: str,
    watches: int,
    streams: int,
    reports: multiprocessing.Queue[str],
    stop: EventType,
) -> None:
    asyncio.run(_hold_async(target, key, watches, streams, reports, stop))


async def _hold_async(
    target: str,
    key: str,
    watches: int,
    streams: int,
    reports: multiprocessing.Queue[str],
    stop: EventType,
) -> None:
    # One connection per PER_CONNECTION calls: channels with distinct options share none.
    connections = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-(watches + streams) // PER_CONNECTION))
    ]
    health = [health_pb2_grpc.HealthStub(c) for c in connections]
    events = [event_service_pb2_grpc.EventServiceStub(c) for c in connections]
    watch_calls = []
    admitted = 0
    refused: collections.Counter[str] = collections.Counter()
    # A connection's calls at a time: gRPC cancels calls beyond 1,000 waiting to be taken up
    # (grpc.server.max_pending_requests), which a burst of 2,000 reaches.
    for first in range(0, watches, PER_CONNECTION):
        stub = health[first // PER_CONNECTION]
        wave = [
            stub.Watch(health_pb2.HealthCheckRequest())
            for _ in range(min(PER_CONNECTION, watches - first))
        ]
        for call in wave:
            try:
                await call.read()  # the first status: the stream is open
                admitted += 1
            except grpc.aio.AioRpcError as error:
                refused[f"{error.code().name}: {error.details()}"] += 1
        watch_calls += wave
    metadata = (("authorization", f"Bearer {key}"),)
    stream_calls = [
        events[(watches + n) // PER_CONNECTION].StreamEvents(metadata=metadata)
        for n in range(streams)
    ]
    await asyncio.sleep(2)  # time to be authenticated and admitted, or refused
    ended = sum(call.done() for call in stream_calls)
    reports.put(
        f"{admitted} watches open (refused: {dict(refused) or 'none'}), "
        f"{streams - ended} StreamEvents open ({ended} ended)"
    )
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for call in (*watch_calls, *stream_calls):
        call.cancel()
    for connection in connections:
        await connection.close()


if __name__ == "__main__":
    main()
