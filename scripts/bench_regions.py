"""Benchmark RegionService FSA lookups beside a bare grpcio server, measured in the same run.

Usage: .venv/bin/python scripts/bench_regions.py [--seconds 10] [--workers 1,2]

Also measured: quartet's own health check, which goes through the same interceptor (access log,
metrics) but needs no credentials, so that the table shows where a lookup's cost goes: gRPC
itself (bare), quartet's per-call machinery (health), then authentication and the lookup.
Lookups are answered from memory, so the database does not matter and only SQLite is used.
Calls carry an application's API key, as a website's backend would send them.

h2load cannot see gRPC status codes, so failures are counted from the response bytes: a call
counts as failed unless its full expected reply arrived.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import benchlib
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from quartet.client import Client
from quartet.regions.v1 import region_service_pb2 as pb
from quartet.storage.regions import packaged

SERVICE = "/quartet.regions.v1.RegionService/"
HEALTH = "/grpc.health.v1.Health/Check"
BATCH = 100  # FSAs per BatchLookupFsas call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--workers", default=f"1,{benchlib.cpu_count()}", help="worker counts to measure, e.g. 1,2"
    )
    args = parser.parse_args()
    tool = "h2load" if benchlib.have_h2load() else "python (install nghttp2-client for h2load)"
    print(f"load generator: {tool}; {args.seconds:g} s per scenario; {benchlib.cpu_count()} cores")

    lookup = pb.LookupFsaRequest(fsa="K1A").SerializeToString()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        url = benchlib.sqlite_url(Path(tmp))
        key = benchlib.application_key(url)  # migrating also loads the regions
        for workers in benchlib.worker_counts(args.workers):
            bare = benchlib.measure_bare(
                workers, SERVICE + "LookupFsa", lookup, seconds=args.seconds
            )
            results += benchlib.compared(bare, scenarios(url, key, args.seconds, workers))
    benchlib.print_table(results)


def scenarios(url: str, key: str, seconds: float, workers: int) -> list[benchlib.Result]:
    label = f"{workers} worker(s)"
    results = []
    with (
        benchlib.quartet_server(url, "--workers", str(workers)) as target,
        Client(target, token=key) as client,
    ):
        health, data = benchlib.load(
            f"Health/Check, no credentials, {label}", target, HEALTH, b"", seconds=seconds
        )
        serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        health.errors = benchlib.failed_calls(health, data, serving.SerializeToString())
        results.append(health)
        for name, request, reply, per_call in cases(client):
            method = "BatchLookupFsas" if per_call > 1 else "LookupFsa"
            result, data = benchlib.load(
                f"{name}, {label}",
                target,
                SERVICE + method,
                request.SerializeToString(),
                seconds=seconds,
                token=key,
            )
            result.items_per_call = per_call
            result.errors = benchlib.failed_calls(result, data, reply.SerializeToString())
            results.append(result)
    return results


def cases(client: Client) -> list[tuple[str, Message, Message, int]]:
    """(label, request, the expected reply, FSAs per call) for each lookup scenario."""
    single = [("K1A", "1 region"), ("N0B", "7 regions"), ("k1a 0b1", "a postal code")]
    batch = sorted(packaged().fsa_provinces)[:BATCH]
    return [
        *(
            (
                f"LookupFsa {fsa!r} ({what})",
                pb.LookupFsaRequest(fsa=fsa),
                client.regions.lookup_fsa(fsa),
                1,
            )
            for fsa, what in single
        ),
        (
            f"BatchLookupFsas ({BATCH})",
            pb.BatchLookupFsasRequest(fsas=batch),
            pb.BatchLookupFsasResponse(results=client.regions.lookup_fsas(batch)),
            BATCH,
        ),
    ]


if __name__ == "__main__":
    main()
