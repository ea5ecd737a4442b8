"""Benchmark the HTTP port: native gRPC GetScore with the HTTP port off and on (it must not slow
gRPC down), and GetScore over Connect (JSON, HTTP/1.1 keep-alive and HTTP/2) against native gRPC
on the same server, in the same run.

Usage: .venv/bin/python scripts/bench_http.py [--seconds 10] [--workers 1]
Needs h2load (Debian's nghttp2-client). Prints a Markdown table with each row's ratio to native
gRPC with the HTTP port off; docs/performance.md records the figures and the command.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
from pathlib import Path

import benchlib
import httpx

from quartet.client import Client
from quartet.score.v1 import score_service_pb2 as pb

GET_SCORE = "/quartet.score.v1.ScoreService/GetScore"


def main() -> None:
    args = benchlib.arguments(__doc__.splitlines()[0]).parse_args()
    if not benchlib.have_h2load():
        raise SystemExit("bench_http.py needs h2load: apt-get install -y nghttp2-client")
    benchlib.announce(args.seconds)
    workers = benchlib.worker_counts(args.workers)[0]
    with benchlib.fresh_database("sqlite", "") as url:
        token = benchlib.admin_token(url)
        flags = ("--workers", str(workers))
        with benchlib.quartet_server(url, *flags) as target, Client(target, token=token) as client:
            score = client.scores.create(41)
            request = pb.GetScoreRequest(id=score.id).SerializeToString()
            off, _ = benchlib.load(
                "gRPC, HTTP port off", target, GET_SCORE, request, seconds=args.seconds, token=token
            )
        port = _free_port()
        with benchlib.quartet_server(url, *flags, "--http-port", str(port)) as target:
            on, _ = benchlib.load(
                "gRPC, HTTP port on", target, GET_SCORE, request, seconds=args.seconds, token=token
            )
            body = json.dumps({"id": score.id}).encode()
            base = f"http://127.0.0.1:{port}"
            h1 = _connect("Connect JSON, HTTP/1.1", base, body, token, args.seconds, h1=True)
            h2 = _connect("Connect JSON, HTTP/2 (h2c)", base, body, token, args.seconds, h1=False)
    benchlib.print_table(benchlib.compared(off, [on, h1, h2]))


def _connect(
    label: str, base: str, body: bytes, token: str, seconds: float, *, h1: bool
) -> benchlib.Result:
    reply = httpx.post(
        base + GET_SCORE,
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    reply.raise_for_status()
    reply_bytes = len(reply.content)
    """h2load POSTing a Connect unary JSON request: 10 connections, kept alive; over HTTP/2 5
    streams each (as the gRPC rows), over HTTP/1.1 one request at a time each."""
    with tempfile.TemporaryDirectory() as tmp:
        request, log = Path(tmp) / "request.json", Path(tmp) / "log.tsv"
        request.write_bytes(body)
        command = [
            "h2load", *(["--h1"] if h1 else []),
            "-H", "content-type: application/json", "-H", f"authorization: Bearer {token}",
            "-d", str(request), "-c", "10", "-m", "1" if h1 else "5", "-t", "1",
            "-D", str(round(seconds)), "--log-file", str(log), base + GET_SCORE,
        ]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows = [row.split("\t") for row in log.read_text().splitlines() if row]
    done = int(benchlib._field(output, r"requests: \d+ total, \d+ started, (\d+) done"))
    elapsed = float(benchlib._field(output, r"finished in ([\d.]+)s"))
    data = int(benchlib._field(output, r"traffic: .*?\((\d+)\) data"))
    if h1:
        # h2load records status 0 for Hypercorn's HTTP/1.1 replies (their status line has no
        # reason phrase), so good calls are counted from the reply bytes seen (h2load's data
        # bytes are the bodies, without their chunk framing).
        errors = done - min(done, data // reply_bytes)
    else:
        errors = sum(1 for row in rows if row[1] != "200")
    latencies = [int(row[2]) / 1000 for row in rows]
    return benchlib.Result(label, "h2load", done, elapsed, errors, latencies)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
