"""Running quartet for real: worker processes, metrics, limits, and what the logs never show."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from quartet.client import Client, QuartetError, event
from quartet.server import metrics
from quartet.server.settings import Settings, cgroup_cpu_limit, cpu_count
from quartet.server.testing import running_server
from tests.conftest import SECRET, Principal, mint_token
from tests.helpers import (
    Background,
    records,
    server_process,
    serving_pids,
    table_locked,
    wait_for,
)

ENV_SECRET = {"QUARTET_SECRET": SECRET}
FIELDS: dict[str, Any] = {
    "session_id": "e2085be5-9137-4e4e-80b5-f1ffddc25423",
    "category": "page interaction",
    "name": "pageview",
    "data": {"host": "h", "path": "/"},
    "occurred_at": "2021-01-01 00:00:00",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_share_the_port_after_one_migration(tmp_path: Path) -> None:
    env = {**os.environ, **ENV_SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process("--workers", "2", env=env) as server:
        for _ in range(40):  # new connections: the kernel spreads them over the workers
            with Client(server.address) as client:
                assert client.health.check()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    lines = records(server.log)
    serving = serving_pids(server.log)
    assert len(serving) == 2 and server.process.pid not in serving
    assert sum("applied migrations" in str(r["message"]) for r in lines) == 1
    assert not any(alive(int(str(pid))) for pid in serving)


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    env = {**os.environ, **ENV_SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process("--workers", "2", env=env) as server:
        with Client(server.address) as client:
            assert client.health.check()
        wait_for(lambda: serving_pids(server.log), "access-log line")
        (worker,) = serving_pids(server.log)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        wait_for(lambda: not alive(worker), "end of the worker", 10)


def test_metrics_count_every_call_across_workers(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **ENV_SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    admin = ["create-admin", "ops@example.com"]
    subprocess.run(
        [sys.executable, "-m", "quartet.server", *admin],
        env={**env, "QUARTET_ADMIN_PASSWORD": "correct horse"},
        check=True,
        capture_output=True,
    )
    with server_process("--workers", "2", "--metrics-port", str(port), env=env) as server:
        for _ in range(5):
            with Client(server.address) as client:
                client.login("ops@example.com", "correct horse")
                client.scores.create(1)
                with pytest.raises(QuartetError):
                    client.scores.get(999)
                key = client.auth.create_application(f"app{time.monotonic_ns()}").api_key
            with Client(server.address, token=key) as app:
                app.events.send_batch([event(**FIELDS), event(**{**FIELDS, "session_id": "x"})])
        samples: dict[str, float] = {}

        def sample(name: str, **labels: str) -> float:
            wanted = [f'{k}="{v}"' for k, v in labels.items()]
            return sum(
                value
                for key, value in samples.items()
                if key.startswith(name + "{") and all(w in key for w in wanted)
            )

        # Each worker publishes its calls in bulk, at most PUBLISH_SECONDS after they end.
        deadline = time.monotonic() + metrics.PUBLISH_SECONDS + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
            samples = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            methods = ("Login", "CreateScore", "GetScore", "SendEvents")
            ended = [sample("grpc_server_handled_total", grpc_method=m) for m in methods]
            if ended == [5, 5, 5, 5] or time.monotonic() > deadline:
                break
            time.sleep(0.1)

    score = {"grpc_service": "quartet.score.v1.ScoreService"}
    assert sample("grpc_server_started_total", grpc_method="CreateScore", **score) == 5
    assert (
        sample("grpc_server_handled_total", grpc_method="CreateScore", grpc_code="OK", **score) == 5
    )
    assert (
        sample("grpc_server_handled_total", grpc_method="GetScore", grpc_code="NOT_FOUND", **score)
        == 5
    )
    assert sample("grpc_server_handling_seconds_count", grpc_method="CreateScore", **score) == 5
    assert sample("grpc_server_in_flight", grpc_method="CreateScore", **score) == 0
    # The histogram as Histogram.observe would have filled it: every call in a bucket, the
    # cumulative count at +Inf, and a sum of positive seconds.
    create = {"grpc_method": "CreateScore", **score}
    assert sample("grpc_server_handling_seconds_bucket", le="+Inf", **create) == 5
    assert 0 < sample("grpc_server_handling_seconds_bucket", le="10.0", **create) <= 5
    assert 0 < sample("grpc_server_handling_seconds_sum", **create) < 50
    outcomes = {o: sample("quartet_events_total", outcome=o) for o in ("stored", "rejected")}
    outcomes["duplicate"] = sample("quartet_events_total", outcome="duplicate")
    assert outcomes == {"stored": 5, "rejected": 5, "duplicate": 0}, text
    assert sample("quartet_event_rejections_total", reason="FIELD_INVALID") == 5


def test_concurrent_call_cap_answers_resource_exhausted_wave_after_wave(
    settings: Settings, admin: Principal
) -> None:
    # grpcio before the fix for https://github.com/grpc/grpc/issues/41531 enforced the cap only
    # for the first wave of calls; this checks several.
    capped = dataclasses.replace(settings, max_concurrent_rpcs=2)
    token = mint_token(admin.id, "admin")
    with running_server(capped) as target, Client(target, token=token) as client:
        for _wave in range(3):
            with table_locked(settings.database_url, "score"):
                held = [Background(lambda: client.scores.create(1, timeout=30)) for _ in range(2)]
                for call in held:
                    call.start()
                time.sleep(0.5)  # both calls are now waiting for the lock, using up the cap
                with pytest.raises(QuartetError) as caught:
                    client.scores.create(2, timeout=5)
                assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in held:
                call.join_result()


def test_oversized_messages_are_refused(settings: Settings, admin: Principal) -> None:
    small = dataclasses.replace(settings, max_message_bytes=64 * 1024)
    with (
        running_server(small) as target,
        Client(target, token=mint_token(admin.id, "admin")) as client,
    ):
        with pytest.raises(QuartetError) as caught:
            client.events.create_type("big", "one", {"description": "x" * 100_000})
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_logs_never_show_passwords_or_tokens(
    anonymous: Client, caplog: pytest.LogCaptureFixture
) -> None:
    password = "correct horse battery staple"
    with caplog.at_level(logging.DEBUG):
        tokens = anonymous.auth.create_account("peter@example.com", password).tokens
        anonymous.login("peter@example.com", password)
        anonymous.auth.current_account()
        with pytest.raises(QuartetError):
            anonymous.auth.login("peter@example.com", "wrong password!")
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    for secret in (password, "wrong password!", tokens.access_token, tokens.refresh_token):
        assert secret not in text
    assert "account:1" in text  # the caller is identified, by id


def test_the_default_worker_count_follows_a_containers_cpu_limit(tmp_path: Path) -> None:
    """A pod limited to 1.5 CPUs gets 2 workers, whatever the node's core count; the tightest
    quota on the way to the root counts, and "max" is no limit."""
    membership = tmp_path / "cgroup"
    membership.write_text("0::/kubepods/pod1/container\n")
    root = tmp_path / "fs"
    container = root / "kubepods" / "pod1" / "container"
    container.mkdir(parents=True)
    (container / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, membership) is None
    (root / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    (root / "kubepods" / "cpu.max").write_text("800000 100000\n")
    assert cgroup_cpu_limit(root, membership) == 2
    (container / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_limit(root, membership) == 1
    assert cgroup_cpu_limit(root, tmp_path / "no-such-file") is None
    # This machine's own answer is never more than the cores the process may run on.
    assert 1 <= cpu_count() <= len(os.sched_getaffinity(0))
