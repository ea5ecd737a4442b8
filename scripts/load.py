"""Load-test quartet, one scenario per important call: ghz when installed, h2load otherwise.

Usage:
  .venv/bin/python scripts/load.py [--duration 60s] [--scenario NAME ...]
      [--database-url URL] [--workers N] [--max-memory-growth-mb 64]
      starts its own server (SQLite in a temporary directory unless --database-url), with its
      metrics port, credentials minted in its database and a seeded session;
  .venv/bin/python scripts/load.py --target HOST:PORT --admin-token T --api-key K
      [--metrics-url http://HOST:9464/metrics]
      loads a running server (h2load needs the metrics URL to count gRPC failures).

The scenarios are ghz configuration files in scripts/load/ (server reflection, no .proto needed;
per-request template data such as {{newUUID}}). ghz exits 0 even when calls fail, so the script
reads its JSON report (statusCodeDistribution). h2load repeats one request body and sees HTTP
status only: templates are rendered once per run ({{newUUID}} fields, which are idempotency
keys, are sent empty so the server assigns one per call), and failures are counted from the
server's own metrics. Prints calls/s, p50/p90/p99 and non-OK calls per scenario, and exits 1
if any call failed or, for a server it started, if a worker's memory grew more than allowed.
Calls that h2load cuts off when its time is up are the tool's doing and not counted (ghz is told
to wait for them instead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from quartet.client import Client, event
from quartet.server import metrics

SCENARIOS = Path(__file__).parent / "load"
# Which credential each scenario's call needs.
CREDENTIALS = {
    "create_score": "admin",
    "send_event": "application",
    "send_events": "application",
    "lookup_fsa": "admin",
    "list_session_events": "admin",
}
SEEDED_SESSION = "5e55b0a2-1d1f-4a6b-9d3c-0a7e2b9c4f10"  # list_session_events.json reads it


@dataclass
class Outcome:
    scenario: str
    tool: str
    calls: int
    seconds: float
    p50: float
    p90: float
    p99: float
    codes: Counter[str] = field(default_factory=Counter)
    server_ok: int | None = None  # OK calls by the server's own metrics, when it has them

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s", help="per scenario, e.g. 60s")
    parser.add_argument("--scenario", action="append", choices=sorted(CREDENTIALS))
    parser.add_argument("--target", help="a running server; otherwise one is started")
    parser.add_argument("--admin-token", default=os.environ.get("QUARTET_ADMIN_TOKEN", ""))
    parser.add_argument("--api-key", default=os.environ.get("QUARTET_API_KEY", ""))
    parser.add_argument("--metrics-url", default="")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--workers", type=int, default=benchlib.cpu_count())
    parser.add_argument("--max-memory-growth-mb", type=float, default=64)
    parser.add_argument("--tool", choices=("auto", "ghz", "h2load"), default="auto")
    args = parser.parse_args()
    tool = args.tool if args.tool != "auto" else ("ghz" if shutil.which("ghz") else "h2load")
    if tool == "h2load" and not benchlib.have_h2load():
        sys.exit("neither ghz nor h2load is installed (apt-get install nghttp2-client)")
    scenarios = args.scenario or sorted(CREDENTIALS)
    seconds = _seconds(args.duration)
    print(f"tool: {tool}; {args.duration} per scenario; {benchlib.cpu_count()} cores")
    if args.target:
        if tool == "h2load" and not args.metrics_url:
            sys.exit("h2load cannot see gRPC status codes: give --metrics-url to count failures")
        credentials = {"admin": args.admin_token, "application": args.api_key}
        seed(args.target, credentials)
        outcomes = run_all(
            scenarios, tool, args.target, credentials, seconds, args.workers, args.metrics_url
        )
        growth: dict[int, float] = {}
    else:
        outcomes, growth = run_local(args, scenarios, tool, seconds)
    report(outcomes, growth)
    too_much = {pid: mb for pid, mb in growth.items() if mb > args.max_memory_growth_mb}
    if any(o.failed for o in outcomes) or too_much:
        sys.exit(1)


def run_local(
    args: argparse.Namespace, scenarios: list[str], tool: str, seconds: float
) -> tuple[list[Outcome], dict[int, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or benchlib.sqlite_url(Path(tmp))
        credentials = {
            "admin": benchlib.admin_token(url),
            "application": benchlib.application_key(url),
        }
        metrics_port = _free_port()
        options = ("--workers", str(args.workers), "--metrics-port", str(metrics_port))
        with benchlib.quartet_process(url, *options) as (target, supervisor):
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            seed(target, credentials)
            workers = benchlib.children(supervisor)
            # A short warm-up fills caches and pools, so that what follows measures growth.
            run_all(
                scenarios, tool, target, credentials, min(seconds, 5), args.workers, metrics_url
            )
            before = {pid: _rss_mb(pid) for pid in workers}
            outcomes = run_all(
                scenarios, tool, target, credentials, seconds, args.workers, metrics_url
            )
            growth = {pid: _rss_mb(pid) - before[pid] for pid in workers}
    return outcomes, growth


def seed(target: str, credentials: dict[str, str]) -> None:
    """Events in the session that list_session_events reads."""
    with Client(target, token=credentials["application"]) as client:
        client.events.send_batch(
            [
                event(
                    session_id=SEEDED_SESSION,
                    category="page interaction",
                    name="pageview",
                    data={"host": "www.ca.com", "path": f"/{n}"},
                    occurred_at=f"2021-01-01 09:{n // 60:02d}:{n % 60:02d}",
                )
                for n in range(200)
            ]
        )


def run_all(
    scenarios: list[str],
    tool: str,
    target: str,
    credentials: dict[str, str],
    seconds: float,
    workers: int,
    metrics_url: str,
) -> list[Outcome]:
    outcomes = []
    for name in scenarios:
        config = json.loads((SCENARIOS / f"{name}.json").read_text())
        token = credentials[CREDENTIALS[name]]
        run = run_ghz if tool == "ghz" else run_h2load
        outcomes.append(run(name, config, target, token, seconds, workers, metrics_url))
    return outcomes


def run_ghz(
    name: str,
    config: dict[str, Any],
    target: str,
    token: str,
    seconds: float,
    workers: int,
    metrics_url: str,
) -> Outcome:
    config = {
        **config,
        "host": target,
        "insecure": True,
        "duration": f"{seconds:g}s",
        # ghz sends everything over one connection by default; the kernel spreads connections,
        # not calls, over the workers (by a hash, so give it several per worker).
        "connections": connections_for(workers),
        # Let calls in flight at the end finish instead of cancelling them (which ghz would
        # report as failures that are the tool's, not the server's).
        "duration-stop": "wait",
        "metadata": {"authorization": f"Bearer {token}"},
        "format": "json",
    }
    service, _, short = config["call"].rpartition(".")
    before = handled(metrics_url, service, short) if metrics_url else Counter[str]()
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(config, file)
        file.flush()
        result = subprocess.run(["ghz", "--config", file.name], capture_output=True, text=True)
    if not result.stdout.strip():
        raise RuntimeError(f"ghz failed: {result.stderr}")
    summary = json.loads(result.stdout)
    latency = {int(p["percentage"]): p["latency"] / 1e6 for p in summary["latencyDistribution"]}
    return Outcome(
        name,
        "ghz",
        int(summary["count"]),
        summary["total"] / 1e9,
        latency.get(50, math.nan),
        latency.get(90, math.nan),
        latency.get(99, math.nan),
        Counter(summary.get("statusCodeDistribution", {})),
        (handled(metrics_url, service, short) - before)["OK"] if metrics_url else None,
    )


def run_h2load(
    name: str,
    config: dict[str, Any],
    target: str,
    token: str,
    seconds: float,
    workers: int,
    metrics_url: str,
) -> Outcome:
    method = config["call"]
    service, _, short = method.rpartition(".")
    request = _request(target, method, render_once(config["data"]))
    connections = connections_for(workers)
    streams = max(1, math.ceil(int(config.get("concurrency", 50)) / connections))
    before = handled(metrics_url, service, short)
    result, _ = benchlib.h2load(
        name,
        target,
        f"/{service}/{short}",
        request,
        seconds=seconds,
        connections=connections,
        streams=streams,
        headers=[f"authorization: Bearer {token}"],
    )
    time.sleep(0.5)  # let calls cut off at the end finish, so that the server counts them
    codes = handled(metrics_url, service, short) - before
    # h2load resets the calls in flight when its time is up; the server sees them CANCELLED.
    # Those (at most one per stream) are the tool's doing, not failures.
    codes["CANCELLED"] -= min(codes["CANCELLED"], connections * streams)
    codes += Counter()  # drop the zero count
    return Outcome(
        name,
        "h2load",
        result.calls,
        result.seconds,
        result.percentile(50),
        result.percentile(90),
        result.percentile(99),
        codes,
        codes["OK"],
    )


def connections_for(workers: int) -> int:
    return 4 * workers


def render_once(data: Any) -> Any:
    """ghz template data for a fixed h2load body: see the module docstring."""
    text = json.dumps(data)
    text = text.replace('"{{newUUID}}"', '""')
    text = text.replace("{{.UUID}}", str(uuid.uuid4()))
    text = text.replace("{{.Timestamp}}", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    text = text.replace("{{.RequestNumber}}", "0")
    if "{{" in text:
        raise ValueError(f"template not supported by the h2load fallback: {text}")
    return json.loads(text)


def _request(target: str, method: str, data: Any) -> bytes:
    """data (protobuf JSON) as the serialized request of method, typed through reflection."""
    with grpc.insecure_channel(target) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service, _, short = method.rpartition(".")
        descriptor = pool.FindServiceByName(service).methods_by_name[short].input_type
        message = message_factory.GetMessageClass(descriptor)()
        json_format.ParseDict(data, message)
        return message.SerializeToString()


def handled(metrics_url: str, service: str, method: str) -> Counter[str]:
    """The server's count of completed calls of one method, by status code, once every call
    ended so far is published (workers publish theirs in bulk, PUBLISH_SECONDS after)."""
    time.sleep(metrics.PUBLISH_SECONDS + 0.2)
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    codes: Counter[str] = Counter()
    pattern = re.compile(r"^grpc_server_handled_total\{(.*)\} ([0-9.e+]+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if (
            match
            and f'grpc_service="{service}"' in match[1]
            and f'grpc_method="{method}"' in match[1]
        ):
            code = re.search(r'grpc_code="(\w+)"', match[1])
            if code:
                codes[code[1]] += int(float(match[2]))
    return codes


def report(outcomes: list[Outcome], growth: dict[int, float]) -> None:
    print()
    # "server OK" is the server's own count (its Prometheus metrics) of the calls it answered OK.
    print("| scenario | tool | calls | server OK | calls/s | p50 ms | p90 ms | p99 ms | non-OK |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for o in outcomes:
        rate = o.calls / o.seconds if o.seconds else 0
        failures = ", ".join(f"{c} {n}" for c, n in o.codes.items() if c != "OK") or "0"
        server_ok = "-" if o.server_ok is None else f"{o.server_ok:,}"
        print(
            f"| {o.scenario} | {o.tool} | {o.calls:,} | {server_ok} | {rate:,.0f} | {o.p50:.1f} "
            f"| {o.p90:.1f} | {o.p99:.1f} | {failures} |"
        )
    if growth:
        print()
        print(
            "worker memory growth during the run (RSS, MiB): "
            + ", ".join(f"{pid}: {mb:+.1f}" for pid, mb in growth.items())
        )


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    if not match:
        raise SystemExit(f"--duration {duration!r}: use e.g. 500ms, 10s or 2m")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024  # type: ignore[index]


if __name__ == "__main__":
    main()
