"""Benchmark ExportEvents and ReplayRejectedEvents on large data, beside a bare grpcio stream.

Usage: .venv/bin/python scripts/bench_export.py [--events 1000000] [--rejected 100000]
    [--postgres URL]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs).

Export: --events pageviews are written straight into a new database (spread over 30 days), then
one quartet worker exports them all through the SDK, as NDJSON (read and dropped, then written
to a file with `export_to`) and as Event messages. Its baseline is a bare grpc.aio server
streaming the same number of bytes, in messages of the same size, to the same kind of client:
what gRPC alone costs for the transfer. The worker's resident memory is read before and at the
end of the exports (VmHWM, its peak), to show that an export holds a chunk, not the table.

Replay: --rejected events of a type with no schema are kept as rejected (straight into the
database), the type is registered, and ReplayRejectedEvents stores them all; then the same
number of new events is sent with StreamEvents, the baseline: both check and store each event
once. A second replay, which stores nothing, measures the idempotent pass.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib
import grpc

from quartet.client import Client
from quartet.events.v1 import event_service_pb2 as pb
from quartet.storage import events
from quartet.storage.base import db, utcnow
from quartet.storage.events import NewEvent, Rejection

START = datetime.datetime(2021, 1, 1)
WRITE_BATCH = 20_000
DATA = '{"host":"www.ca.com","path":"/products/42"}'


def main() -> None:
    parser = benchlib.arguments(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to export")
    parser.add_argument("--rejected", type=int, default=100_000, help="rejected events to replay")
    parser.add_argument("--parts", default="export,replay", help="what to measure")
    args = parser.parse_args()
    print(f"{benchlib.cpu_count()} cores; {args.events:,} events, {args.rejected:,} rejected")
    print(
        "| database | what | events | seconds | events/s | events/CPU s | MB/s | baseline | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for backend in benchlib.backends(args.postgres):
        if "export" in args.parts:
            with benchlib.fresh_database(backend, args.postgres) as url:
                exports(backend, url, args.events)
        if "replay" in args.parts:
            with benchlib.fresh_database(backend, args.postgres) as url:
                replays(backend, url, args.rejected)


def row(
    backend: str,
    what: str,
    count: int,
    seconds: float,
    size: int,
    base: str,
    ratio: float,
    cpu: float = 0.0,
) -> None:
    """A row of the table; `cpu`, the server worker's CPU seconds for it (user and system)."""
    rate = count / seconds
    per_cpu = f"{count / cpu:,.0f}" if cpu else "-"
    print(
        f"| {backend} | {what} | {count:,} | {seconds:.1f} | {rate:,.0f} | {per_cpu} | "
        f"{size / seconds / 1e6:,.0f} | {base} | {ratio:.2f} |"
    )


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process pid has used so far: what a figure costs the
    server, whatever else the shared machine was running meanwhile."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exports(backend: str, url: str, count: int) -> None:
    token = benchlib.admin_token(url)
    started = time.monotonic()
    populate(url, count)
    print(f"<!-- {backend}: {count:,} events written in {time.monotonic() - started:.0f} s -->")
    with benchlib.quartet_process(url, "--workers", "1") as (target, pid):
        [worker] = benchlib.children(pid)
        before = benchlib.peak_memory_mib(worker)
        with Client(target, token=token) as client:
            cpu = cpu_seconds(worker)
            ndjson, size, exported = timed(lambda: client.events.export())
            cpu, used = cpu_seconds(worker), cpu_seconds(worker) - cpu
            assert exported == count, f"exported {exported} of {count}"
            messages = -(-size // (2 * 1024 * 1024))
            bare = bare_stream_seconds(size, messages)
            row(backend, "ExportEvents, NDJSON", count, ndjson, size, "bare stream, same bytes",
                bare / ndjson, used)  # fmt: skip
            with tempfile.TemporaryDirectory() as directory:
                path = Path(directory) / "events.ndjson"
                began = time.monotonic()
                written = client.events.export_to(path, resume=False)
                took = time.monotonic() - began
                cpu, used = cpu_seconds(worker), cpu_seconds(worker) - cpu
                assert written == count and path.stat().st_size == size
            row(backend, "export_to a file", count, took, size, "bare stream, same bytes",
                bare / took, used)  # fmt: skip
            seconds, typed, exported = timed(lambda: client.events.export(format="events"))
            cpu, used = cpu_seconds(worker), cpu_seconds(worker) - cpu
            assert exported == count
            row(backend, "ExportEvents, Event messages", count, seconds, typed, "NDJSON export",
                ndjson / seconds, used)  # fmt: skip
        peak = benchlib.peak_memory_mib(worker)
    print(f"<!-- {backend}: worker resident memory {before:.0f} MiB at start, peak {peak:.0f} MiB "
          f"after exporting {count:,} events three times -->")  # fmt: skip


def timed(export: Callable[[], Iterator[pb.ExportEventsResponse]]) -> tuple[float, int, int]:
    """(seconds, bytes, events) of consuming the export that export() starts."""
    began = time.monotonic()
    size = exported = 0
    for response in export():
        size += len(response.ndjson) or response.ByteSize()
        exported += response.event_count
    return time.monotonic() - began, size, exported


def populate(url: str, count: int) -> None:
    """count pageviews over 30 days, written straight into the database in big transactions."""
    step = datetime.timedelta(days=30) / count
    with benchlib._database(url):
        for first in range(0, count, WRITE_BATCH):
            batch = [
                NewEvent(
                    id=str(uuid.UUID(int=n + 1, version=4)),
                    application_id=1,
                    session_id=str(uuid.UUID(int=n % 10_000 + 1, version=4)),
                    category="page interaction",
                    name="pageview",
                    data=DATA,
                    occur_time=START + n * step,
                    schema_version=1,
                )
                for n in range(first, min(count, first + WRITE_BATCH))
            ]
            with db.atomic():
                events.store(batch, [], utcnow())


# A bare grpc.aio server streaming `messages` messages of the same bytes, `size` in all.
_BARE_STREAM = """
import asyncio, sys, grpc
size, messages = int(sys.argv[1]), int(sys.argv[2])
chunk = b"x" * (size // messages)
async def handler(request, context):
    for _ in range(messages):
        yield chunk
class Any(grpc.GenericRpcHandler):
    def service(self, details):
        return grpc.unary_stream_rpc_method_handler(handler)
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([Any()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def bare_stream_seconds(size: int, messages: int) -> float:
    """How long a bare grpc.aio server takes to stream size bytes in messages messages."""
    with bare_stream(size, messages) as target, grpc.insecure_channel(target) as channel:
        call: Any = channel.unary_stream("/bare/Stream")
        began = time.monotonic()
        received = sum(len(m) for m in call(b""))
        seconds = time.monotonic() - began
    assert received >= size - messages, (received, size)
    return seconds


@contextlib.contextmanager
def bare_stream(size: int, messages: int) -> Iterator[str]:
    command = [sys.executable, "-c", _BARE_STREAM, str(size), str(messages)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield f"127.0.0.1:{process.stdout.readline().strip()}"
    finally:
        process.terminate()
        process.wait(30)


def replays(backend: str, url: str, count: int) -> None:
    token = benchlib.admin_token(url)
    key = benchlib.application_key(url)
    keep_rejected(url, count)
    with (
        benchlib.quartet_process(url, "--workers", "1") as (target, pid),
        Client(target, token=token) as client,
    ):
        [worker] = benchlib.children(pid)
        client.events.create_type("video", "play", {"type": "object"})
        cpu, began = cpu_seconds(worker), time.monotonic()
        [*_, done] = client.events.replay_rejected()
        replayed, first_cpu = time.monotonic() - began, cpu_seconds(worker) - cpu
        assert done.stored_count == count, done
        cpu, began = cpu_seconds(worker), time.monotonic()
        [*_, again] = client.events.replay_rejected()
        repeated, again_cpu = time.monotonic() - began, cpu_seconds(worker) - cpu
        assert again.already_stored_count == count, again
        with Client(target, token=key) as app:
            cpu, began = cpu_seconds(worker), time.monotonic()
            sent = app.events.stream((play(n) for n in range(count)), timeout=3600)
            streamed, stream_cpu = time.monotonic() - began, cpu_seconds(worker) - cpu
            assert sent.stored_count == count, sent
    size = count * len(DATA)
    row(backend, "ReplayRejectedEvents", count, replayed, size, "StreamEvents",
        streamed / replayed, first_cpu)  # fmt: skip
    row(backend, "replay again (stores nothing)", count, repeated, size, "StreamEvents",
        streamed / repeated, again_cpu)  # fmt: skip
    row(backend, "StreamEvents, the same events", count, streamed, size, "-", 1.0, stream_cpu)


def play(n: int) -> pb.Event:
    message = pb.Event(
        session_id=str(uuid.UUID(int=n % 10_000 + 1, version=4)),
        category="video",
        name="play",
        occur_time=pb.Event().occur_time,
    )
    message.data.update(json.loads(DATA))
    message.occur_time.FromDatetime(START + datetime.timedelta(seconds=n))
    return message


def keep_rejected(url: str, count: int) -> None:
    """count video/play events (no schema yet) kept as rejected, straight into the database."""
    unknown = [{"field": "name", "reason": "EVENT_TYPE_UNKNOWN", "description": "no schema"}]
    with benchlib._database(url):
        for first in range(0, count, WRITE_BATCH):
            batch = []
            for n in range(first, min(count, first + WRITE_BATCH)):
                message = play(n)
                message.id = str(uuid.UUID(int=n + 1, version=4))
                sent = json.dumps(
                    {"id": message.id, "sessionId": message.session_id, "category": "video",
                     "name": "play", "data": json.loads(DATA),
                     "occurTime": message.occur_time.ToJsonString()}
                )  # fmt: skip
                batch.append(Rejection(1, sent, unknown, message.ByteSize()))
            with db.atomic():
                events.store([], batch, utcnow())


if __name__ == "__main__":
    main()
