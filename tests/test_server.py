"""The server process: port conflicts, graceful shutdown, deadlines, errors and the access log."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quartet import storage
from quartet.client import Client, QuartetError
from quartet.server.app import PortInUse, build_server
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import accounts
from tests.conftest import SECRET, Principal, mint_token
from tests.helpers import SERVE, Background, database_unreachable, server_process, table_locked


def test_port_in_use_is_refused_not_shared(settings: Settings, target: str) -> None:
    port = int(target.rsplit(":", 1)[1])

    async def second_server() -> None:
        build_server(Settings(port=port), storage.open_database(settings.database_url))

    # With grpc's defaults a second server would silently share the port and half the traffic.
    with pytest.raises(PortInUse, match=f"cannot listen on 127.0.0.1:{port}"):
        asyncio.run(second_server())


def test_command_exits_with_a_clear_message_when_the_port_is_taken(
    target: str, tmp_path: Path
) -> None:
    port = target.rsplit(":", 1)[1]
    result = subprocess.run(
        [*SERVE, "--port", port, "--database-url", f"sqlite:///{tmp_path}/other.db"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_sigterm_reports_not_serving_and_finishes_in_flight_calls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/quartet.db"
    env = {**os.environ, "QUARTET_ADMIN_PASSWORD": "correct horse", "QUARTET_SECRET": SECRET}
    admin = [sys.executable, "-m", "quartet.server", "create-admin", "ops@example.com"]
    subprocess.run([*admin, "--database-url", url], env=env, check=True, capture_output=True)
    with server_process("--database-url", url, "--grace-seconds", "20", env=env) as server:
        with Client(server.address) as client:
            client.login("ops@example.com", "correct horse")
            watch = health_pb2_grpc.HealthStub(client.channel).Watch(
                health_pb2.HealthCheckRequest(service="quartet.score.v1.ScoreService")
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            with table_locked(url, "score"):
                in_flight = Background(lambda: client.scores.create(41, timeout=30))
                in_flight.start()
                time.sleep(0.5)  # the call is now waiting for the write lock
                server.process.send_signal(signal.SIGTERM)
                assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
                assert server.process.poll() is None  # still finishing the call
            score: Any = in_flight.join_result()
            assert score.value == 42
        assert server.process.wait(timeout=20) == 0
    stored = sqlite3.connect(tmp_path / "quartet.db").execute("SELECT value FROM score").fetchall()
    assert stored == [(42.0,)]


def test_call_whose_deadline_passed_in_the_queue_does_no_database_work(
    settings: Settings, admin: Principal
) -> None:
    settings = dataclasses.replace(settings, db_threads=1)
    token = mint_token(admin.id, "admin")
    with running_server(settings) as target, Client(target, token=token) as one_thread:
        with table_locked(settings.database_url, "score"):
            first = Background(lambda: one_thread.scores.create(1, timeout=30))
            first.start()
            time.sleep(0.3)  # the only database thread is now blocked on the lock
            with pytest.raises(QuartetError) as caught:
                one_thread.scores.create(2, timeout=0.3)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        first.join_result()
        time.sleep(0.2)  # let the queued call reach its database thread
        assert [s.input_value for s in one_thread.scores.iter()] == [1]


def test_every_call_logs_one_line(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="quartet.access"):
        client.scores.create(1)
        with pytest.raises(QuartetError):
            client.scores.get(404)
    lines = [r for r in caplog.records if r.name == "quartet.access"]
    assert [(r.method, r.code) for r in lines] == [  # type: ignore[attr-defined]
        ("/quartet.score.v1.ScoreService/CreateScore", "OK"),
        ("/quartet.score.v1.ScoreService/GetScore", "NOT_FOUND"),
    ]
    admin = client.auth.current_account()
    assert {r.caller for r in lines} == {f"account:{admin.id}"}  # type: ignore[attr-defined]
    for record in lines:
        assert record.duration_ms >= 0  # type: ignore[attr-defined]
        assert record.peer.startswith("ipv4:127.0.0.1:")  # type: ignore[attr-defined]


def test_server_failure_is_internal_without_leaking_details(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=empty_database_url, grace_seconds=0, secret=SECRET)
    with running_server(settings) as target, Client(target) as client:
        database = storage.base.db.obj
        with database.connection_context():
            admin = accounts.create_account("admin@example.com", None, "admin")
            database.execute_sql("DROP TABLE score")
        client.set_token(mint_token(admin.id, "admin"))
        with caplog.at_level(logging.ERROR), pytest.raises(QuartetError) as caught:
            client.scores.list()
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert caught.value.reason == "INTERNAL_ERROR"
    assert "score" not in caught.value.message  # the table name stays in the log
    assert any(r.exc_info for r in caplog.records if "ListScores" in r.getMessage())


def test_json_log_lines(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process(env=env) as server:
        server.process.terminate()
        assert server.process.wait(timeout=20) == 0
    started = next(line for line in server.log if "listening on" in line)
    record = json.loads(started)
    assert record["level"] == "INFO" and record["logger"] == "quartet.server"
    assert record["message"].startswith("quartet listening on 127.0.0.1:")


def test_an_unreachable_database_is_unavailable_not_internal(
    client: Client, database_url: str, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client.scores.create(1)
    with caplog.at_level(logging.INFO), database_unreachable(database_url, db):
        for call in (client.scores.list, lambda: client.auth.create_application("web")):
            with pytest.raises(QuartetError) as caught:
                call()
            error = caught.value
            assert (error.code, error.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            ), error
            assert "retry" in error.message
    access = [(r.method, r.code) for r in caplog.records if r.name == "quartet.access"]  # type: ignore[attr-defined]
    # A read is safe to repeat, so the SDK's retry policy tried it again; CreateApplication not.
    listed = access.count(("/quartet.score.v1.ScoreService/ListScores", "UNAVAILABLE"))
    assert listed > 1, access
    assert access.count(("/quartet.auth.v1.AuthService/CreateApplication", "UNAVAILABLE")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    # Once the database is back, so is the service.
    assert [s.value for s in client.scores.iter()] == [2]


def driver_errors(database_url: str, tmp_path: Path) -> dict[str, BaseException]:
    """Real errors of database_url's driver, as peewee raises them, by what caused them."""
    found: dict[str, BaseException] = {}
    database = storage.open_database(database_url)

    def catch(name: str, *statements: str) -> None:
        try:
            for statement in statements:
                database.execute_sql(statement)  # type: ignore[no-untyped-call]
        except Exception as exc:
            found[name] = exc

    account = (
        "INSERT INTO account (email, role, create_time) "
        "VALUES ('a@example.com', 'user', '2021-01-01 00:00:00')"
    )
    with database.connection_context():
        catch("missing table", "SELECT * FROM no_such_table")
        catch("syntax error", "SELEKT 1")
        catch("duplicate key", account, account)
    if database_url.startswith("sqlite"):
        unopenable = storage.open_database(f"sqlite:///{tmp_path}")  # a directory
        try:
            unopenable.connect()
        except Exception as exc:
            found["file cannot be opened"] = exc
    else:
        with database.connection_context():
            catch("connection terminated", "SELECT pg_terminate_backend(pg_backend_pid())")
            catch("connection already closed", "SELECT 1")
    storage.close(database)
    return found


def test_only_connection_failures_count_as_unavailable(database_url: str, tmp_path: Path) -> None:
    found = driver_errors(database_url, tmp_path)
    if database_url.startswith("sqlite"):
        failures = {"file cannot be opened"}
    else:
        failures = {"connection terminated", "connection already closed"}
    assert found.keys() == {"missing table", "syntax error", "duplicate key", *failures}, found
    assert {name for name, exc in found.items() if storage.unavailable(exc)} == failures
    assert not storage.unavailable(peewee.InterfaceError("Query must be bound to a database"))
    assert not storage.unavailable(ValueError("not a database error at all"))
