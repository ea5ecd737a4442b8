"""Benchmark ScoreService (create, get, list) beside a bare grpcio server, on SQLite and PostgreSQL.

Usage: .venv/bin/python scripts/bench_score.py [--seconds 10] [--postgres URL] [--workers 1,2]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL; without it only SQLite runs).
Prints a Markdown table; docs/performance.md records the figures and the command.
"""

from __future__ import annotations

import benchlib

from quartet.client import Client
from quartet.score.v1 import score_service_pb2 as pb
from quartet.storage.scores import Score

SERVICE = "/quartet.score.v1.ScoreService/"


def main() -> None:
    args = benchlib.arguments(__doc__.splitlines()[0]).parse_args()
    benchlib.announce(args.seconds)
    create = pb.CreateScoreRequest(input_value=41).SerializeToString()
    results = []
    for name in benchlib.backends(args.postgres):
        for workers in benchlib.worker_counts(args.workers):
            bare = benchlib.measure_bare(
                workers, SERVICE + "CreateScore", create, seconds=args.seconds
            )
            with benchlib.fresh_database(name, args.postgres) as url:
                rows = scenarios(f"{name}, {workers} worker(s)", url, args.seconds, workers)
            results += benchlib.compared(bare, rows)
    benchlib.print_table(results)


def scenarios(backend: str, url: str, seconds: float, workers: int) -> list[benchlib.Result]:
    token = benchlib.admin_token(url)
    with (
        benchlib.quartet_server(url, "--workers", str(workers)) as target,
        Client(target, token=token) as client,
    ):

        def measure(method: str, request: bytes) -> tuple[benchlib.Result, int]:
            label = f"{method}, {backend}"
            return benchlib.load(
                label, target, SERVICE + method, request, seconds=seconds, token=token
            )

        before = benchlib.count_rows(url, Score)
        create, _ = measure(
            "CreateScore", pb.CreateScoreRequest(input_value=41).SerializeToString()
        )
        # h2load cuts calls off at the end that the server may still complete: more rows than
        # completed calls is fine, fewer means failed calls.
        create.errors = max(0, create.calls - (benchlib.count_rows(url, Score) - before))

        one = client.scores.create(1)
        get, data = measure("GetScore", pb.GetScoreRequest(id=one.id).SerializeToString())
        get.errors = benchlib.failed_calls(get, data, client.scores.get(one.id).SerializeToString())

        page = pb.ListScoresRequest(page_size=20).SerializeToString()
        listed, data = measure("ListScores", page)
        reply = client.scores.list(page_size=20).SerializeToString()
        listed.errors = benchlib.failed_calls(listed, data, reply)
        return [create, get, listed]


if __name__ == "__main__":
    main()
