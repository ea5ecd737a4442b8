"""Benchmark the event writer's transaction (events.store, 500 events) against another commit.

Usage: .venv/bin/python scripts/bench_event_store.py [--base main] [--batches 300] [--rounds 3]
    [--postgres URL]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs.)

What a change of the events table costs, without gRPC, validation or a load generator in the way:
each round stores the same number of batches of time-ordered events into a fresh database, once
with the code of --base (extracted with `git archive` and put first on PYTHONPATH) and once with
this checkout's, one after the other, and prints µs per event (the fastest and the median batch)
and their ratio. On a shared machine the medians drift between runs; the ratios within a round
are what to compare.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500


def main() -> None:
    parser = benchlib.arguments(__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the commit to compare with")
    parser.add_argument("--batches", type=int, default=300, help="transactions per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # a child process: measure on this URL
    args = parser.parse_args()
    if args.run:
        print(json.dumps(measure(args.run, args.batches)))
        return
    with tempfile.TemporaryDirectory() as base:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        print(f"| backend | round | {args.base} min / median µs | this min / median µs | ratio |")
        print("|---|---:|---:|---:|---:|")
        for name in benchlib.backends(args.postgres):
            for round_ in range(1, args.rounds + 1):
                figures = [run(code, name, args) for code in (Path(base), ROOT)]
                (base_min, base_median), (min_, median) = figures
                print(
                    f"| {name} | {round_} | {base_min:.1f} / {base_median:.1f} |"
                    f" {min_:.1f} / {median:.1f} | {median / base_median:.2f} |",
                    flush=True,
                )


def run(code: Path, backend: str, args: argparse.Namespace) -> tuple[float, float]:
    """(fastest, median) µs per event of the code at `code`, on a fresh database."""
    path = os.pathsep.join(str(code / part) for part in ("client", "server", "storage"))
    with benchlib.fresh_database(backend, args.postgres) as url:
        found = subprocess.run(
            [sys.executable, __file__, "--run", url, "--batches", str(args.batches)],
            env={**os.environ, "PYTHONPATH": path},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    fastest, median = json.loads(found)
    return float(fastest), float(median)


def measure(url: str, batches: int) -> tuple[float, float]:
    from quartet import storage
    from quartet.server.events.validation import new_event_id
    from quartet.storage import events
    from quartet.storage.base import utcnow

    database = storage.open_database(url)
    storage.migrate(database)
    storage.bind(database)
    now = utcnow()
    data = '{"host": "example.com", "path": "/pricing"}'
    times = []
    with database.connection_context():
        for _ in range(batches):
            batch = [
                events.NewEvent(new_event_id(), 1, new_event_id(), "page interaction", "pageview",
                                data, now, 1)
                for _ in range(BATCH)
            ]  # fmt: skip
            start = time.perf_counter()
            with database.atomic():
                events.store(batch, [], now)
            times.append((time.perf_counter() - start) / BATCH * 1e6)
    storage.close(database)
    times.sort()
    return times[0], times[len(times) // 2]


if __name__ == "__main__":
    main()
