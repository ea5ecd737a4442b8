"""Benchmark ScoreService (create, get, list) beside a bare grpcio server, on SQLite and PostgreSQL.

Usage: .venv/bin/python scripts/bench_score.py [--seconds 10] [--postgres URL]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs).
Prints a Markdown table; docs/performance.md records the figures and the command.
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
from quartet.client import Client
from quartet.score.v1 import score_service_pb2, score_service_pb2_grpc
from quartet.storage import scores

SERVICE = "/quartet.score.v1.ScoreService/"
CREATE = score_service_pb2.CreateScoreRequest(input_value=41).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--postgres", default=os.environ.get("QUARTET_BENCH_POSTGRES_URL", ""))
    args = parser.parse_args()
    tool = "h2load" if benchlib.have_h2load() else "python (install nghttp2-client for h2load)"
    print(f"load generator: {tool}; {args.seconds:g} s per scenario; {benchlib.cpu_count()} cores")

    with benchlib.bare_server() as target:
        baseline = load("bare grpcio, empty reply", target, "CreateScore", CREATE, args.seconds)[0]
    results = [baseline]
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", benchlib.sqlite_url(Path(tmp)))]
        if args.postgres:
            backends.append(("postgresql", args.postgres))
        for name, url in backends:
            results += scenarios(name, url, args.seconds)
    benchlib.print_table(results, baseline)


def scenarios(backend: str, url: str, seconds: float) -> list[benchlib.Result]:
    with benchlib.quartet_server(url) as target, Client(target) as client:
        before = count_scores(url)
        create, _ = load(f"CreateScore, {backend}", target, "CreateScore", CREATE, seconds)
        # h2load cuts calls off at the end that the server may still complete: more rows than
        # completed calls is fine, fewer means failed calls.
        create.errors = max(0, create.calls - (count_scores(url) - before))

        one = client.scores.create(1)
        get_request = score_service_pb2.GetScoreRequest(id=one.id).SerializeToString()
        get, data = load(f"GetScore, {backend}", target, "GetScore", get_request, seconds)
        get.errors = failed_calls(get, data, client.scores.get(one.id).SerializeToString())

        page_request = score_service_pb2.ListScoresRequest(page_size=20).SerializeToString()
        listed, data = load(
            f"ListScores (20), {backend}", target, "ListScores", page_request, seconds
        )
        listed.errors = failed_calls(
            listed, data, client.scores.list(page_size=20).SerializeToString()
        )
        return [create, get, listed]


def load(
    label: str, target: str, method: str, request: bytes, seconds: float
) -> tuple[benchlib.Result, int]:
    if benchlib.have_h2load():
        return benchlib.h2load(label, target, SERVICE + method, request, seconds=seconds)
    maker = {"CreateScore": _create, "GetScore": _get, "ListScores": _list}[method]
    result = benchlib.python_load(label, target, maker, seconds=seconds)
    return result, -1


def failed_calls(result: benchlib.Result, data_bytes: int, reply: bytes) -> int:
    """Calls without a full reply: h2load counts a gRPC error as a success, bytes do not lie."""
    if data_bytes < 0:  # the Python client counted its failures itself
        return result.errors
    return result.calls - data_bytes // len(benchlib.frame(reply))


def count_scores(url: str) -> int:
    database = storage.open_database(url)
    storage.bind(database)
    try:
        with database.connection_context():
            return int(scores.Score.select().count())
    finally:
        storage.close(database)


# Fallback load (no h2load): module-level so that worker processes can import them.
def _create(channel: grpc.aio.Channel) -> Callable[[int], object]:
    stub = score_service_pb2_grpc.ScoreServiceStub(channel)
    return lambda n: stub.CreateScore(score_service_pb2.CreateScoreRequest(input_value=n))


def _get(channel: grpc.aio.Channel) -> Callable[[int], object]:
    stub = score_service_pb2_grpc.ScoreServiceStub(channel)
    return lambda n: stub.GetScore(score_service_pb2.GetScoreRequest(id=1))


def _list(channel: grpc.aio.Channel) -> Callable[[int], object]:
    stub = score_service_pb2_grpc.ScoreServiceStub(channel)
    return lambda n: stub.ListScores(score_service_pb2.ListScoresRequest(page_size=20))


if __name__ == "__main__":
    main()
