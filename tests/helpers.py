"""Small helpers shared by several test modules."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import peewee
import psycopg2
from playhouse.schema_diff import SchemaDiff, diff_models

from quartet.server import services
from quartet.storage import events


@contextlib.contextmanager
def table_locked(database_url: str, table: str) -> Iterator[None]:
    """Hold a lock that makes every write to `table` wait, from another connection.

    SQLite has one writer at a time, so its write lock covers every table; PostgreSQL gets an
    exclusive lock on the one table.
    """
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(urlsplit(database_url).path[1:], isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    pg = psycopg2.connect(database_url)
    try:
        with pg.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
        pg.rollback()
    finally:
        pg.close()


@contextlib.contextmanager
def database_unreachable(database_url: str, database: peewee.Database) -> Iterator[None]:
    """Make the server's database unusable, as an outage would, and bring it back afterwards.

    PostgreSQL: the database stops accepting connections and every open one is terminated (the
    server's pooled connections die under it, and new ones are refused). SQLite: the pooled
    connections are closed, and the file is moved away with a directory put in its place, so that
    opening it fails. Call it between calls: connections in use are not touched.
    """
    if database_url.startswith("sqlite"):
        path = Path(urlsplit(database_url).path[1:])
        files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]
        database.close_idle()  # type: ignore[attr-defined]
        moved = [(f, f.with_name(f.name + ".away")) for f in files if f.exists()]
        for original, away in moved:
            original.rename(away)
        path.mkdir()
        try:
            yield
        finally:
            database.close_idle()  # type: ignore[attr-defined]
            path.rmdir()
            for original, away in moved:
                away.rename(original)
        return
    name = urlsplit(database_url).path[1:]
    admin = psycopg2.connect(urlunsplit(urlsplit(database_url)._replace(path="/postgres")))
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            try:
                yield
            finally:
                cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        admin.close()


class Background(threading.Thread):
    """Run a call in a thread and keep its result or exception for join_result()."""

    def __init__(self, target: object) -> None:
        super().__init__(daemon=True)
        self._call = target
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()  # type: ignore[operator]
        except BaseException as exc:
            self.error = exc

    def join_result(self, timeout: float = 30) -> object:
        self.join(timeout)
        assert not self.is_alive(), "the background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


SERVE = [sys.executable, "-m", "quartet.server", "serve", "--log-format", "json"]


@dataclasses.dataclass
class ServerProcess:
    """A `quartet server serve` subprocess: its Popen, its address, and its log lines so far."""

    process: subprocess.Popen[str]
    address: str
    log: list[str]


@contextlib.contextmanager
def server_process(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start `quartet server serve --port 0 ARGS...`, wait until it listens, kill it on exit.

    Its stderr is read continuously (so that a full pipe never blocks the server) into `log`.
    """
    process = subprocess.Popen(
        [*SERVE, "--port", "0", *args], stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stderr is not None
    log: list[str] = []
    address = ""
    for line in process.stderr:
        log.append(line)
        if "listening on" in line:
            address = line.split("listening on ")[1].split(" ")[0]
            break
    drain = threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True)
    drain.start()
    try:
        assert address, "the server exited before listening:\n" + "".join(log)
        yield ServerProcess(process, address, log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        drain.join()
        process.stderr.close()


# The `quartet` command as installed (a console script beside the interpreter): run it as a user
# would. Missing, it fails the tests that use it.
QUARTET = [str(Path(sys.executable).parent / "quartet")]
# Channels to one target otherwise share one connection, and so one worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def run_on_terminal(command: list[str], env: dict[str, str]) -> tuple[str, str]:
    """Run command with its stderr on a pseudo-terminal (where progress is drawn) and stdout on a
    pipe; (stdout, what the terminal showed)."""
    import os
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", **env},
    )
    os.close(follower)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    stdout, _ = process.communicate(timeout=60)
    os.close(leader)
    return stdout, shown.decode(errors="replace")


def schema_drift(database: peewee.Database) -> SchemaDiff:
    """How the models differ from the database's schema, beyond what is meant: event_ids is
    PostgreSQL's alone (events.EventId), and there Peewee reads no index of the partitioned
    `event`, whose indexes are checked here instead (its primary key holds the partition key,
    and the unique index on id is event_ids' primary key)."""
    diff = diff_models(database, services.MODELS)
    if not isinstance(database, peewee.PostgresqlDatabase):
        assert diff.create_tables == [events.EventId]
        return diff._replace(create_tables=[])
    cursor = database.execute_sql(  # type: ignore[no-untyped-call]
        "SELECT ARRAY(SELECT pg_get_indexdef(indexrelid, k + 1, true)"
        " FROM generate_subscripts(indkey, 1) AS k ORDER BY k), indisunique"
        " FROM pg_index WHERE indrelid = 'event'::regclass"
    )
    found = {(tuple(columns), unique) for columns, unique in cursor.fetchall()}
    declared = {(index.columns, index.unique) for index in diff.add_indexes}
    assert {index.table for index in diff.add_indexes} == {"event"}
    assert found == declared - {(("id",), True)} | {(("seq", "occur_time"), True)}
    return diff._replace(add_indexes=[])


def records(log: list[str]) -> list[dict[str, object]]:
    """The JSON lines of a server process's log."""
    return [json.loads(line) for line in list(log) if line.startswith("{")]


def serving_pids(log: list[str], method: str | None = None) -> set[int]:
    """The processes that logged a call they handled (of `method`, e.g. "SendEvent", if named):
    the workers. (A worker writes its access-log lines in blocks, within 20 ms of each call:
    wait_for them.)"""
    return {
        int(str(r["pid"]))
        for r in records(log)
        if r["logger"] == "quartet.access"
        and (method is None or str(r["method"]).endswith(f"/{method}"))
    }


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60.0) -> float:
    """Poll condition() until true; the seconds it took, or fail naming what never happened."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"no {what} within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start
