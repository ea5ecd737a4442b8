"""Benchmark two quartet replicas over one database: how soon a key revoked on one is refused by
the other, and the throughput of two replicas against one with as many worker processes.

Usage: .venv/bin/python scripts/bench_replicas.py [--seconds 10] [--postgres URL] [--tries 20]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs).

(a) Revocation: replica A revokes a key that replica B has just accepted (so B holds it in its
cache); B is then called without pause until it refuses the key. The time from the revocation's
reply to the first refusal, median and maximum over --tries keys.

(b) Throughput: one replica with 2 workers against two replicas with 1 worker each (the same
worker processes in all), GetScore and SendEvent driven by h2load: one h2load of 10 connections
for one replica, one of 5 connections at each replica for two. Prints Markdown tables;
docs/performance.md and docs/operations.md record the figures and the command.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import benchlib
import grpc

from quartet.client import Client, QuartetError
from quartet.events.v1 import event_service_pb2 as events_pb
from quartet.score.v1 import score_service_pb2 as score_pb
from quartet.storage.events import Event

SCORE = "/quartet.score.v1.ScoreService/"
EVENTS = "/quartet.events.v1.EventService/"
POLL_LIMIT_SECONDS = 30.0


def main() -> None:
    parser = benchlib.arguments(__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20, help="keys revoked per database")
    args = parser.parse_args()
    benchlib.announce(args.seconds)
    print("\n| database | revoked on A → refused on B: median | max | tries |")
    print("|---|---:|---:|---:|")
    for name in benchlib.backends(args.postgres):
        with benchlib.fresh_database(name, args.postgres) as url:
            delays = revocation_delays(url, args.tries)
        print(
            f"| {name} | {statistics.median(delays) * 1000:.0f} ms "
            f"| {max(delays) * 1000:.0f} ms | {len(delays)} |"
        )
    results = []
    for name in benchlib.backends(args.postgres):
        for replicas, workers in ((1, 2), (2, 1)):
            with benchlib.fresh_database(name, args.postgres) as url:
                results += throughput(name, url, replicas, workers, args.seconds)
    benchlib.print_table(results)
    print("| database | method | two replicas ÷ one |")
    print("|---|---|---:|")
    for one, two in zip(results[0::4] + results[1::4], results[2::4] + results[3::4], strict=True):
        database, method = one.label.split(", ")[1], one.label.split(", ")[0]
        print(f"| {database} | {method} | {two.rate / one.rate:.2f} |")


@contextlib.contextmanager
def servers(url: str, count: int, workers: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(benchlib.quartet_server(url, "--workers", str(workers)))
            for _ in range(count)
        ]


def revocation_delays(url: str, tries: int) -> list[float]:
    token = benchlib.admin_token(url)  # before the servers start: it sets the shared secret
    delays = []
    with servers(url, 2, 1) as (a, b), Client(a, token=token) as on_a:
        for number in range(tries):
            created = on_a.auth.create_application(f"bench-{number}")
            with Client(b, token=created.api_key) as sender:
                sender.events.send(benchlib.pageview())  # cached on B as valid
                on_a.auth.revoke_api_key(created.application.api_keys[0].id)
                revoked = time.monotonic()
                delays.append(_until_refused(lambda: sender.events.send(benchlib.pageview())))
                delays[-1] -= revoked
    return delays


def _until_refused(call: Callable[[], object]) -> float:
    """Call until the call is refused as UNAUTHENTICATED; the monotonic time it first was."""
    start = time.monotonic()
    while time.monotonic() - start < POLL_LIMIT_SECONDS:
        try:
            call()
        except QuartetError as exc:
            if exc.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
            return time.monotonic()
    raise RuntimeError(f"the revoked key was still accepted after {POLL_LIMIT_SECONDS} s")


def throughput(
    backend: str, url: str, replicas: int, workers: int, seconds: float
) -> list[benchlib.Result]:
    token = benchlib.admin_token(url)
    key = benchlib.application_key(url)
    setup = f"{backend}, {replicas} replica(s) x {workers} worker(s)"
    with servers(url, replicas, workers) as targets:
        with Client(targets[0], token=token) as client:
            one = client.scores.create(1)
            reply = client.scores.get(one.id).SerializeToString()
        get, data = _spread(
            f"GetScore, {setup}",
            targets,
            SCORE + "GetScore",
            score_pb.GetScoreRequest(id=one.id).SerializeToString(),
            token,
            seconds,
        )
        get.errors = benchlib.failed_calls(get, data, reply)
        before = benchlib.count_rows(url, Event)
        send, _ = _spread(
            f"SendEvent, {setup}",
            targets,
            EVENTS + "SendEvent",
            events_pb.SendEventRequest(event=benchlib.pageview()).SerializeToString(),
            key,
            seconds,
        )
        # h2load cuts calls off at the end that the server may still complete.
        send.errors = max(0, send.calls - (benchlib.count_rows(url, Event) - before))
    return [get, send]


def _spread(
    label: str, targets: list[str], method: str, request: bytes, token: str, seconds: float
) -> tuple[benchlib.Result, int]:
    """One h2load per target at once, 10 connections of 5 streams in all; their sum."""
    found: list[tuple[benchlib.Result, int]] = []
    lock = threading.Lock()

    def drive(target: str) -> None:
        result = benchlib.h2load(
            label,
            target,
            method,
            request,
            seconds=seconds,
            connections=10 // len(targets),
            headers=[f"authorization: Bearer {token}"],
        )
        with lock:
            found.append(result)

    threads = [threading.Thread(target=drive, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [result for result, _ in found]
    total = benchlib.Result(
        label,
        "h2load",
        sum(r.calls for r in results),
        max(r.seconds for r in results),
        0,
        [latency for r in results for latency in r.latencies_ms],
    )
    return total, sum(data for _, data in found)


if __name__ == "__main__":
    main()
