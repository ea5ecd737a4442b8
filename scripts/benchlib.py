"""Shared benchmark machinery: servers in their own processes, load generators, and reporting.

Each benchmark compares quartet with a bare grpcio server measured in the same run, because on a
shared 2-core machine absolute figures drift 15-30% between runs while ratios hold. The load comes
from h2load (Debian's nghttp2-client) when it is installed: it costs about 26 µs per call, so it
leaves the cores to the server. Otherwise a Python grpc.aio client drives the load; it costs about
190 µs per call and caps what can be measured near 4,500 calls/s on this machine. The tool is
printed beside each figure.

h2load sees HTTP status only, never grpc-status, so a failed call looks like a success to it.
Benchmarks therefore count failures from the server's side: rows stored, or response bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import peewee
import psycopg2

from quartet import storage
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.auth import TokenIssuer
from quartet.server.auth.tokens import new_api_key
from quartet.server.workers import pinned_cores
from quartet.storage import accounts, applications
from quartet.storage.base import utcnow

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Result:
    """What one load run measured."""

    label: str
    tool: str
    calls: int
    seconds: float
    errors: int
    latencies_ms: list[float]
    items_per_call: int = 1
    # The bare server measured in the same configuration (processes, pinning) in the same run:
    # the row's ratio is to it.
    bare: Result | None = None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def print_table(results: Sequence[Result]) -> None:
    """Print results as a Markdown table, with each rate as a share of its own configuration's
    bare server (as many processes, pinned the same way, measured in the same run)."""
    print()
    print("| scenario | tool | calls/s | items/s | p50 ms | p99 ms | errors | vs bare |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{r.rate / r.bare.rate:.2f}" if r.bare and r.bare.rate else "-"
        print(
            f"| {r.label} | {r.tool} | {r.rate:,.0f} | {r.rate * r.items_per_call:,.0f} "
            f"| {r.percentile(50):.1f} | {r.percentile(99):.1f} | {r.errors} | {ratio} |"
        )
    print()


def compared(bare: Result, results: Sequence[Result]) -> list[Result]:
    """bare, then results, each given bare as its baseline."""
    for result in results:
        result.bare = bare
    return [bare, *results]


# --- servers ---------------------------------------------------------------------------------


# One process of the bare server: an async handler (as quartet's are: a plain function would run
# in the event loop's thread pool, a hop quartet does not make) answering every unary call with
# an empty message, on a port it shares with SO_REUSEPORT, pinned to a core if one is given.
_BARE = """
import asyncio, os, sys, grpc
port, cpu = int(sys.argv[1]), sys.argv[2]
if cpu != "-":
    os.sched_setaffinity(0, {int(cpu)})
async def handler(request, context):
    return b""
class Any(grpc.GenericRpcHandler):
    def service(self, details):
        return grpc.unary_unary_rpc_method_handler(handler)
async def main():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers([Any()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


@contextlib.contextmanager
def bare_server(workers: int = 1) -> Iterator[str]:
    """A bare grpc.aio server configured as `quartet-server serve --workers N` is: N processes
    sharing the port with SO_REUSEPORT, each pinned to its core when there is one per core. It
    answers every unary call with an empty message: the cost of gRPC itself, the floor under
    every quartet call."""
    with socket.socket() as probe:  # a free port, as quartet's supervisor claims one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with contextlib.ExitStack() as stack:
        for cpu in pinned_cores(workers):
            command = [sys.executable, "-c", _BARE, str(port), "-" if cpu is None else str(cpu)]
            stack.enter_context(_process(command, ready=lambda line: line.strip() == "ready"))
        yield f"127.0.0.1:{port}"


def bare_label(workers: int) -> str:
    pinned = ", each pinned to its core" if pinned_cores(workers)[0] is not None else ""
    return f"bare grpc.aio, empty reply, {workers} process(es){pinned}"


def measure_bare(workers: int, method: str, request: bytes, *, seconds: float) -> Result:
    """The bare server in `workers`' configuration, driven as quartet is (same method path,
    request and concurrency): the baseline of that configuration's rows."""
    with bare_server(workers) as target:
        result, data = load(bare_label(workers), target, method, request, seconds=seconds)
    result.errors = failed_calls(result, data, b"")
    return result


@contextlib.contextmanager
def quartet_server(database_url: str, *args: str) -> Iterator[str]:
    """`quartet server serve` in its own process, as deployed (access log on, to a file)."""
    with quartet_process(database_url, *args) as (target, _):
        yield target


@contextlib.contextmanager
def quartet_process(database_url: str, *args: str) -> Iterator[tuple[str, int]]:
    """Like quartet_server, also giving the supervisor's pid."""
    command = [
        sys.executable, "-m", "quartet.server", "serve", "--port", "0",
        "--database-url", database_url, "--log-format", "json", *args,
    ]  # fmt: skip
    with _process(command, ready=lambda line: "listening on" in line) as (line, pid):
        yield line.split("listening on ")[1].split(" ")[0], pid


def children(pid: int) -> list[int]:
    """The child processes of pid (a supervisor's workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def peak_memory_mib(pid: int) -> float:
    """The most memory the process has had resident so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


@contextlib.contextmanager
def _process(command: list[str], ready: Callable[[str], bool]) -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        assert process.stdout is not None
        drain: threading.Thread | None = None
        try:
            for line in process.stdout:
                if ready(line):
                    break
            else:
                raise RuntimeError(f"{command[:4]} exited before it was ready")
            # Keep draining its output so that a full pipe never slows the server down.
            drain = threading.Thread(target=shutil.copyfileobj, args=(process.stdout, log))
            drain.start()
            yield line, process.pid
        finally:
            process.terminate()
            process.wait(30)
            if drain is not None:
                drain.join()  # the pipe has closed; finish before the log file does


# --- credentials and counts, straight in the database ---------------------------------------


def secret() -> str:
    """The token secret, shared with the server subprocesses through the environment."""
    return os.environ.setdefault("QUARTET_SECRET", "benchmark-" + "s" * 40)


def admin_token(url: str) -> str:
    """Migrate url, add an admin account, and return an access token for it."""
    with _database(url):
        admin = accounts.create_account(f"bench-{time.monotonic_ns()}@example.com", None, "admin")
    issuer = TokenIssuer(secret(), datetime.timedelta(hours=2), datetime.timedelta(hours=2))
    return issuer.access(admin.id, "admin", utcnow()).token


def application_key(url: str) -> str:
    """Migrate url, register an application, and return its API key."""
    full_key, key_id, secret_hash = new_api_key()
    with _database(url):
        applications.create_application(f"bench-{key_id}", key_id, secret_hash)
    return full_key


def count_rows(url: str, model: type[peewee.Model]) -> int:
    with _database(url):
        return int(model.select().count())


@contextlib.contextmanager
def _database(url: str) -> Iterator[None]:
    database = storage.open_database(url)
    storage.migrate(database)
    storage.bind(database)
    try:
        with database.connection_context():
            yield
    finally:
        storage.close(database)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'bench.db'}"


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --seconds, --postgres, --workers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10, help="per scenario")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("QUARTET_BENCH_POSTGRES_URL", ""),
        help="also measure on PostgreSQL, in scratch databases made through this URL "
        "($QUARTET_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--workers", default=f"1,{cpu_count()}", help="worker counts to measure, e.g. 1,2"
    )
    return parser


def backends(postgres: str) -> list[str]:
    """The backends to measure: SQLite, and PostgreSQL if a server URL is given."""
    return ["sqlite", "postgresql"] if postgres else ["sqlite"]


@contextlib.contextmanager
def fresh_database(backend: str, postgres: str) -> Iterator[str]:
    """The URL of a new, empty database of backend, removed afterwards: every configuration is
    measured from the same start (inserts slow down as a table and its indexes grow)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield sqlite_url(Path(directory))
        return
    name = f"quartet_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(postgres)._replace(path=f"/{name}"))
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def announce(seconds: float) -> None:
    tool = "h2load" if have_h2load() else "python (install nghttp2-client for h2load)"
    print(f"load generator: {tool}; {seconds:g} s per scenario; {cpu_count()} cores")


def worker_counts(text: str) -> list[int]:
    """--workers "1,2" -> [1, 2]: the server configurations to measure in one run."""
    return [int(part) for part in text.split(",") if part.strip()]


# --- load: h2load -----------------------------------------------------------------------------


def have_h2load() -> bool:
    return shutil.which("h2load") is not None


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(
    label: str,
    target: str,
    method: str,
    request: bytes,
    *,
    seconds: float = 10,
    connections: int = 10,
    streams: int = 5,
    headers: Sequence[str] = (),
    framed: bool = False,
) -> tuple[Result, int]:
    """Drive one method with h2load; return the result and the response data bytes seen.

    `request` is one serialized message, or (framed=True) a body of framed messages, which is
    how h2load drives a client-streaming method: every call sends the same messages.

    `errors` is left at 0: h2load cannot see gRPC failures, so the caller derives them (from rows
    stored, or from the response bytes against the expected framed size).
    """
    with tempfile.TemporaryDirectory() as tmp:
        body, log = Path(tmp) / "request.bin", Path(tmp) / "log.tsv"
        body.write_bytes(request if framed else frame(request))
        command = [
            "h2load", "-H", "content-type: application/grpc", "-H", "te: trailers",
            *(arg for header in headers for arg in ("-H", header)),
            "-d", str(body), "-c", str(connections), "-m", str(streams), "-t", "1",
            "-D", str(round(seconds)), "--log-file", str(log), f"http://{target}/{method.lstrip('/')}",
        ]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        latencies = [int(row.split("\t")[2]) / 1000 for row in log.read_text().splitlines() if row]
    done = int(_field(output, r"requests: \d+ total, \d+ started, (\d+) done"))
    data = int(_field(output, r"traffic: .*?\((\d+)\) data"))
    elapsed = float(_field(output, r"finished in ([\d.]+)s"))
    return Result(label, "h2load", done, elapsed, 0, latencies), data


def _field(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"unexpected h2load output:\n{text}")
    return match.group(1)


def load(
    label: str,
    target: str,
    method: str,
    request: bytes,
    *,
    seconds: float,
    token: str = "",
    messages: int = 1,
    concurrency: tuple[int, int] = (10, 5),
) -> tuple[Result, int]:
    """Drive `method` with the serialized `request` (sent `messages` times per call, for a client
    stream) from h2load, or the Python client without it; the result and the response bytes
    (-1 when the Python client counted failures itself)."""
    connections, streams = concurrency
    if have_h2load():
        return h2load(
            label,
            target,
            method,
            frame(request) * messages,
            seconds=seconds,
            connections=connections,
            streams=streams,
            headers=[f"authorization: Bearer {token}"] if token else [],
            framed=True,
        )
    caller = RawCaller(method, request, token, messages if messages > 1 else 0)
    return python_load(
        label, target, caller, seconds=seconds, concurrency=connections * streams
    ), -1


def failed_calls(result: Result, data_bytes: int, reply: bytes) -> int:
    """Calls without their full reply: h2load counts a gRPC error as a success, bytes do not."""
    if data_bytes < 0:  # the Python client counted its failures itself
        return result.errors
    return max(0, result.calls - data_bytes // len(frame(reply)))


class RawCaller:
    """Calls a method with ready-serialized bytes (picklable, for the load processes)."""

    def __init__(self, method: str, request: bytes, token: str, stream_messages: int) -> None:
        self.method, self.request, self.token = method, request, token
        self.stream_messages = stream_messages

    def __call__(self, channel: grpc.aio.Channel) -> Callable[[int], object]:
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        if self.stream_messages:
            stream: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
                self.method
            )
            body = [self.request] * self.stream_messages
            return lambda n: stream(iter(body), metadata=metadata)
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(self.method)
        return lambda n: unary(self.request, metadata=metadata)


# --- load: a Python grpc.aio client in several processes ----------------------------------------


def python_load(
    label: str,
    target: str,
    make_call: Callable[[grpc.aio.Channel], Callable[[int], object]],
    *,
    seconds: float = 10,
    concurrency: int = 50,
    processes: int = 2,
    items_per_call: int = 1,
) -> Result:
    """Drive calls from `processes` processes with `concurrency` callers in all.

    make_call(channel) returns an async function of a sequence number that makes one call (it runs
    in the worker processes, so it must be a module-level function).
    """
    per_process = max(1, concurrency // processes)
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(
            _load_worker, [(target, make_call, seconds, per_process, i) for i in range(processes)]
        )
    calls = sum(p[0] for p in parts)
    errors = sum(p[1] for p in parts)
    latencies = [x for p in parts for x in p[2]]
    elapsed = max(p[3] for p in parts)
    return Result(label, "python", calls, elapsed, errors, latencies, items_per_call)


def _load_worker(
    target: str,
    make_call: Callable[[grpc.aio.Channel], Callable[[int], object]],
    seconds: float,
    concurrency: int,
    worker: int,
) -> tuple[int, int, list[float], float]:
    return asyncio.run(_load(target, make_call, seconds, concurrency, worker))


async def _load(
    target: str,
    make_call: Callable[[grpc.aio.Channel], Callable[[int], object]],
    seconds: float,
    concurrency: int,
    worker: int,
) -> tuple[int, int, list[float], float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(worker * 10**9, (worker + 1) * 10**9))
    async with grpc.aio.insecure_channel(target) as channel:
        call = make_call(channel)
        start = time.perf_counter()
        stop = start + seconds

        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                began = time.perf_counter()
                try:
                    await call(next(counter))  # type: ignore[misc]
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) + errors, errors, latencies, elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pageview() -> pb.Event:
    """The seed's example pageview event, as every event benchmark sends it."""
    message = pb.Event(
        session_id="e2085be5-9137-4e4e-80b5-f1ffddc25423",
        category="page interaction",
        name="pageview",
    )
    message.data.update({"host": "www.ca.com", "path": "/"})
    message.occur_time.FromJsonString("2021-01-01T09:15:27.243860Z")
    return message
