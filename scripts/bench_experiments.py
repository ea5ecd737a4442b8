"""Benchmark the experiment import and report on SQLite and PostgreSQL, beside DuckDB.

Generates a data set with the seed's quirks (a blank first line, `,` + tab separators, headers,
`;`-separated compound ids, no final newline), imports it over gRPC into a `quartet server serve`
process, reads the whole report page by page, and prints rows/s, the report's time and the server's
peak memory (VmHWM). DuckDB computes the same report from the same files in the same run, and the
two reports are compared.

Usage: .venv/bin/python scripts/bench_experiments.py [--users 100000] [--experiments 1000000]
       [--compounds 1000] [--postgres URL]
(--postgres defaults to $QUARTET_BENCH_POSTGRES_URL: the benchmark creates and drops a scratch
database on that server; without it only SQLite runs). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import random
import tempfile
import time
from pathlib import Path

import benchlib
import duckdb

from quartet.client import Client

FILE_NAMES = ("users.csv", "compounds.csv", "user_experiments.csv")


@dataclasses.dataclass
class Figures:
    label: str
    import_seconds: float
    report_seconds: float
    idle_mib: float = float("nan")
    peak_mib: float = float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--experiments", type=int, default=1_000_000)
    parser.add_argument("--compounds", type=int, default=1_000)
    parser.add_argument("--postgres", default=os.environ.get("QUARTET_BENCH_POSTGRES_URL", ""))
    args = parser.parse_args()
    benchlib.secret()  # the servers started below sign their tokens with it
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        generate(data, args.users, args.compounds, args.experiments)
        size = sum((data / name).stat().st_size for name in FILE_NAMES) / 2**20
        print(
            f"data set: {args.users:,} users, {args.compounds:,} compounds, "
            f"{args.experiments:,} experiments, {size:,.1f} MiB, generated in "
            f"{time.perf_counter() - started:.1f} s; {benchlib.cpu_count()} cores"
        )
        expected, duck = duckdb_report(data)
        results = [duck]
        for backend in benchlib.backends(args.postgres):
            name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend]
            with benchlib.fresh_database(backend, args.postgres) as url:
                figures, got = run_quartet(name, url, data)
            if not same_report(got, expected):
                raise SystemExit(f"{name}'s report differs from DuckDB's")
            results.append(figures)
    print_table(results, args.experiments)


def same_report(got: Report, expected: Report) -> bool:
    """Equal rows, and averages equal to rounding: engines divide in different orders."""
    return got[2] == expected[2] and all(
        math.isclose(a, b, rel_tol=1e-12) for a, b in zip(got[:2], expected[:2], strict=True)
    )


def generate(folder: Path, users: int, compounds: int, experiments: int) -> None:
    """The seed's layout and quirks at scale; about a tenth of the users run no experiment."""
    folder.mkdir()
    rng = random.Random(3)
    first = datetime.date(2023, 1, 1)
    with open(folder / "users.csv", "w", newline="\n") as out:
        out.write("\nuser_id,\tname,\temail,\tsignup_date")
        for n in range(1, users + 1):
            day = first + datetime.timedelta(days=n % 365)
            out.write(f"\n{n},\tUser {n},\tuser{n}@example.com,\t{day.isoformat()}")
    with open(folder / "compounds.csv", "w", newline="\n") as out:
        out.write("compound_id,\tcompound_name,\tcompound_structure")
        for n in range(1, compounds + 1):
            out.write(f"\n{n},\tCompound {n},\tC{n % 40 + 1}H{n % 60 + 2}N{n % 5}O{n % 3}")
    active = max(1, users * 9 // 10)
    with open(folder / "user_experiments.csv", "w", newline="\n") as out:
        out.write("experiment_id,\tuser_id,\texperiment_compound_ids,\texperiment_run_time")
        for n in range(1, experiments + 1):
            used = ";".join(str(rng.randint(1, compounds)) for _ in range(rng.randint(1, 4)))
            out.write(f"\n{n},\t{rng.randint(1, active)},\t{used},\t{rng.randint(1, 120)}")


Report = tuple[float, float, list[tuple[int, int, int | None]]]


def duckdb_report(folder: Path) -> tuple[Report, Figures]:
    """The same report computed by DuckDB straight from the files, and how long it took.

    The generated files list experiments in id order, so id order is file order here.
    """

    def source(name: str, columns: list[str], skip: int = 0) -> str:
        return (
            f"read_csv('{folder / name}', delim=',', header=true, skip={skip}, "
            f"all_varchar=true, names={columns!r})"
        )

    sql = f"""
    WITH users AS (
      SELECT CAST(trim(user_id, E' \\t') AS BIGINT) AS id
      FROM {source("users.csv", ["user_id", "name", "email", "signup_date"], skip=1)}
    ), experiments AS (
      SELECT CAST(trim(experiment_id, E' \\t') AS BIGINT) AS id,
             CAST(trim(user_id, E' \\t') AS BIGINT) AS user_id,
             string_split(trim(compound_ids, E' \\t'), ';') AS ids
      FROM {source("user_experiments.csv", ["experiment_id", "user_id", "compound_ids", "t"])}
    ), links AS (
      SELECT user_id, id, CAST(UNNEST(ids) AS BIGINT) AS compound_id,
             generate_subscripts(ids, 1) AS position
      FROM experiments
    ), uses AS (
      SELECT user_id, compound_id, COUNT(*) AS uses, MIN(id * 1000 + position) AS first_seen
      FROM links GROUP BY user_id, compound_id
    ), ranked AS (
      SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY uses DESC, first_seen) AS rank
      FROM uses
    ), counts AS (
      SELECT user_id, COUNT(*) AS n FROM experiments GROUP BY user_id
    )
    SELECT u.id, COALESCE(c.n, 0), r.compound_id
    FROM users u
    LEFT JOIN counts c ON c.user_id = u.id
    LEFT JOIN ranked r ON r.user_id = u.id AND r.rank = 1
    ORDER BY u.id
    """
    started = time.perf_counter()
    relation = duckdb.sql(sql)
    if relation is None:
        raise RuntimeError("DuckDB gave no result")
    rows = [(int(a), int(b), None if c is None else int(c)) for a, b, c in relation.fetchall()]
    seconds = time.perf_counter() - started
    total = sum(n for _, n, _ in rows)
    active = sum(1 for _, n, _ in rows if n)
    report = (total / len(rows) if rows else 0.0, total / active if active else 0.0, rows)
    return report, Figures("DuckDB, from the files", 0.0, seconds)


def run_quartet(label: str, url: str, folder: Path) -> tuple[Figures, Report]:
    token = benchlib.admin_token(url)
    # One worker, whose memory is the server's: an import runs in one worker anyway.
    with (
        benchlib.quartet_process(url, "--workers", "1") as (target, supervisor),
        Client(target, token=token) as c,
    ):
        (pid,) = benchlib.children(supervisor)
        idle = benchlib.peak_memory_mib(pid)
        started = time.perf_counter()
        c.experiments.import_directory(folder)
        imported = time.perf_counter() - started
        started = time.perf_counter()
        totals = c.experiments.get_report()
        rows = [
            (
                r.user_id,
                r.experiment_count,
                r.favourite_compound.id if r.HasField("favourite_compound") else None,
            )
            for r in c.experiments.iter_user_reports(page_size=1000)
        ]
        reported = time.perf_counter() - started
        figures = Figures(
            f"quartet, {label}", imported, reported, idle, benchlib.peak_memory_mib(pid)
        )
    report = (
        totals.average_experiments_per_user,
        totals.average_experiments_per_active_user,
        rows,
    )
    return figures, report


def print_table(results: list[Figures], experiments: int) -> None:
    print()
    print("| run | import s | experiments/s | report s | server idle MiB | server peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        imported = f"{r.import_seconds:.2f}" if r.import_seconds else "-"
        rate = f"{experiments / r.import_seconds:,.0f}" if r.import_seconds else "-"
        idle = "-" if math.isnan(r.idle_mib) else f"{r.idle_mib:.0f}"
        peak = "-" if math.isnan(r.peak_mib) else f"{r.peak_mib:.0f}"
        print(f"| {r.label} | {imported} | {rate} | {r.report_seconds:.2f} | {idle} | {peak} |")
    print()
    print("DuckDB reads the files and computes the whole report in one query ('report s').")


if __name__ == "__main__":
    main()
