"""A worker that dies is replaced, the others keep serving, and only a crash loop stops the server.

These run the real `quartet server serve` (a supervisor and its workers) as a subprocess and kill
its workers with SIGKILL, as the kernel's OOM killer or an operator would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2

from quartet import storage
from quartet.client import Client, QuartetError, event
from quartet.storage import accounts
from tests.conftest import SECRET, mint_token
from tests.helpers import OWN_CONNECTION, records, server_process, serving_pids, wait_for

FIELDS = {
    "session_id": "e2085be5-9137-4e4e-80b5-f1ffddc25423",
    "category": "page interaction",
    "name": "pageview",
    "data": {"host": "h", "path": "/"},
    "occurred_at": "2021-01-01 00:00:00",
}
SENDERS = 4
SENDS_PER_CONNECTION = 10  # then a fresh connection, which the kernel may give to any worker
SQLITE_PENDING_BYTE = 0x40000000  # the offset of the byte SQLite locks before a write


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of pid, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, parent = fields[0], int(fields[1])
        if parent == pid and state != "Z":
            found.add(int(stat.parent.name))
    return found


@dataclasses.dataclass
class Senders:
    """Threads sending events one by one, each over a fresh connection every few sends."""

    address: str
    api_key: str
    acknowledged: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            with Client(self.address, token=self.api_key, options=OWN_CONNECTION) as client:
                for _ in range(SENDS_PER_CONNECTION):
                    message = event(**FIELDS)  # type: ignore[arg-type]
                    try:
                        client.events.send(message)
                    except QuartetError as exc:
                        self.failed.append((message.id, str(exc)))
                    else:
                        self.acknowledged.append(message.id)


@contextlib.contextmanager
def sending(address: str, api_key: str) -> Iterator[Senders]:
    senders = Senders(address, api_key)
    threads = [threading.Thread(target=senders.run, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    try:
        yield senders
    finally:
        senders.stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a sender hangs"


def api_key_for(address: str, database_url: str) -> str:
    """An application's API key, created by an admin made directly in the database."""
    database = storage.open_database(database_url)
    storage.bind(database)
    with database.connection_context():
        admin = accounts.create_account("ops@example.com", None, "admin")
    storage.close(database)
    with Client(address, token=mint_token(admin.id, "admin")) as client:
        return client.auth.create_application("load").api_key


def stored_counts(database_url: str) -> dict[str, int]:
    """How many rows the event table holds per event id."""
    database = storage.open_database(database_url)
    with database.connection_context():
        cursor = database.execute_sql("SELECT id, COUNT(*) FROM event GROUP BY id")  # type: ignore[no-untyped-call]
        counts = {str(event_id): int(count) for event_id, count in cursor.fetchall()}
    storage.close(database)
    return counts


def restarts_metric(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("quartet_worker_restarts_total")
    )


def test_a_killed_worker_is_replaced_and_no_acknowledged_event_is_lost(
    database_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": database_url}
    args = ("--workers", "2", "--metrics-port", str(metrics_port))
    with server_process(*args, env=env) as server:
        supervisor = server.process.pid
        workers = children(supervisor)
        key = api_key_for(server.address, database_url)
        with sending(server.address, key) as senders:
            wait_for(lambda: len(serving_pids(server.log)) == 2, "call on each worker")
            wait_for(lambda: len(senders.acknowledged) >= 200, "200 acknowledged events")
            victim = min(serving_pids(server.log))
            assert victim in workers
            core = os.sched_getaffinity(victim)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: victim not in children(supervisor), "reaped worker")
            wait_for(
                lambda: (
                    len(children(supervisor)) == len(workers) or server.process.poll() is not None
                ),
                "replacement",
            )
            assert server.process.poll() is None, "the supervisor stopped"
            (replacement,) = children(supervisor) - workers
            assert os.sched_getaffinity(replacement) == core
            # The kernel gives some of the senders' fresh connections to the replacement.
            wait_for(lambda: replacement in serving_pids(server.log), "call on the replacement")
            serving = time.monotonic() - killed
            acknowledged_at_recovery = len(senders.acknowledged)
            wait_for(
                lambda: len(senders.acknowledged) >= acknowledged_at_recovery + 200,
                "200 more acknowledged events",
            )
        print(
            f"kill to replacement serving: {serving:.2f} s; "
            f"{len(senders.acknowledged)} acknowledged; errors seen: {senders.failed}"
        )
        for _ in range(10):  # fresh connections, over both workers
            with Client(server.address, token=key, options=OWN_CONNECTION) as client:
                assert client.health.check()
                client.events.send(event(**FIELDS))  # type: ignore[arg-type]
        assert restarts_metric(metrics_port) == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    lines = [str(r["message"]) for r in records(server.log) if r["level"] == "ERROR"]
    assert any(
        f"pid {victim}" in line and "SIGKILL" in line and f"pid {replacement}" in line
        for line in lines
    ), lines
    counts = stored_counts(database_url)
    assert [i for i in senders.acknowledged if counts.get(i) != 1] == []
    assert [i for i, count in counts.items() if count != 1] == []
    assert not set(senders.acknowledged) & {i for i, _ in senders.failed}


def test_a_crash_loop_stops_the_server(tmp_path: Path) -> None:
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process("--workers", "2", env=env) as server:
        supervisor = server.process.pid
        killed: list[int] = []
        for death in range(1, 7):  # one more than the 5 deaths a minute tolerated
            wait_for(lambda: bool(children(supervisor) - set(killed)), "worker to kill")
            assert server.process.poll() is None, f"the supervisor stopped after {death - 1}"
            victim = min(children(supervisor) - set(killed))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            if death < 6:
                wait_for(lambda: killed[-1] not in children(supervisor), "reaped worker")
                assert server.process.poll() is None, f"the supervisor stopped after {death}"
        assert server.process.wait(timeout=60) != 0
        wait_for(lambda: not children(supervisor), "workers gone")
    messages = [str(r["message"]) for r in records(server.log) if r["level"] == "ERROR"]
    assert any("crash loop" in m for m in messages), messages


@contextlib.contextmanager
def start_up_held(database_url: str) -> Iterator[None]:
    """Make a worker starting now wait in its first database read (of the event types) until the
    block ends. PostgreSQL: an exclusive lock on the event_type table. SQLite: the lock on the
    file's "pending byte" that a writer about to take the whole file holds, which a new reader
    waits for (up to the busy timeout, 10 s) before it may read; connections already reading
    are not affected. See https://www.sqlite.org/lockingv3.html."""
    if database_url.startswith("sqlite"):
        with open(urlsplit(database_url).path[1:], "r+b") as file:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SQLITE_PENDING_BYTE)
            try:
                yield
            finally:
                fcntl.lockf(file, fcntl.LOCK_UN, 1, SQLITE_PENDING_BYTE)
        return
    pg = psycopg2.connect(database_url)
    try:
        with pg.cursor() as cursor:
            cursor.execute("LOCK TABLE event_type IN ACCESS EXCLUSIVE MODE")
            yield
        pg.rollback()
    finally:
        pg.close()


def test_a_stop_while_a_replacement_starts_is_graceful(database_url: str) -> None:
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": database_url}
    with server_process("--workers", "2", env=env) as server:
        supervisor = server.process.pid
        workers = children(supervisor)
        with start_up_held(database_url):  # replacements cannot finish starting
            os.kill(min(workers), signal.SIGKILL)
            wait_for(lambda: bool(children(supervisor) - workers), "replacement")
            (first,) = children(supervisor) - workers
            os.kill(first, signal.SIGKILL)  # dying before it serves is a death like any other
            wait_for(lambda: bool(children(supervisor) - workers - {first}), "replacement")
            (replacement,) = children(supervisor) - workers - {first}
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "shutting down" in "".join(server.log), "shutting down")
        assert server.process.wait(timeout=60) == 0
        assert not children(supervisor)
    messages = [str(r["message"]) for r in records(server.log)]
    death = f"(pid {first}) was killed by SIGKILL while starting; replaced by pid {replacement}"
    assert any(death in m for m in messages), messages
    stopping = next(i for i, m in enumerate(messages) if "shutting down" in m)
    assert not any(f"(pid {replacement}) is serving" in m for m in messages[:stopping]), messages
    assert not any("replaced by" in m for m in messages[stopping:]), messages


def test_a_killed_metrics_server_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process("--workers", "1", "--metrics-port", str(port), env=env) as server:
        supervisor = server.process.pid
        with Client(server.address) as client:
            assert client.health.check()
        wait_for(lambda: bool(serving_pids(server.log)), "call")
        (metrics_server,) = children(supervisor) - serving_pids(server.log)
        os.kill(metrics_server, signal.SIGKILL)
        wait_for(
            lambda: metrics_server not in children(supervisor) and len(children(supervisor)) == 2,
            "replacement",
        )
        (replacement,) = children(supervisor) - serving_pids(server.log)
        wait_for(lambda: f"(pid {replacement}) is serving" in "".join(server.log), "serving")
        assert restarts_metric(port) == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0


def test_replacements_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process("--workers", "2", "--metrics-port", str(port), env=env) as server:
        supervisor = server.process.pid
        first = children(supervisor)
        for pid in first:  # the workers and the metrics server
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(children(supervisor) - first) == 3, "replacements")
        replacements = children(supervisor) - first
        server.process.kill()
        server.process.wait()
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in replacements), "exit")


def test_a_replacement_worker_never_creates_a_deleted_database(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    database_url = f"sqlite:///{path}"
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": database_url}
    with server_process("--workers", "2", env=env) as server:
        supervisor = server.process.pid
        workers = children(supervisor)
        key = api_key_for(server.address, database_url)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        victim, survivor = sorted(workers)
        wait_for(
            lambda: any(
                r["pid"] == survivor and str(r["message"]).startswith("database unavailable, NOT")
                for r in records(server.log)
            ),
            "survivor NOT_SERVING",
        )
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: bool(children(supervisor) - workers), "replacement")
        (replacement,) = children(supervisor) - workers
        wait_for(lambda: f"(pid {replacement}) is serving" in "".join(server.log), "serving")
        answers = set()
        for _ in range(40):  # fresh connections, until some reach the replacement
            with Client(server.address, token=key, options=OWN_CONNECTION) as client:
                assert not client.health.check()  # NOT_SERVING on every worker
                try:
                    client.events.send(event(**FIELDS), timeout=10)  # type: ignore[arg-type]
                except QuartetError as exc:
                    answers.add((exc.code.name, exc.reason))
                else:
                    answers.add(("OK", ""))
            if replacement in serving_pids(server.log):
                break
        wait_for(lambda: replacement in serving_pids(server.log), "call on the replacement", 5)
        # Before, the replacement made an empty database at the path: "no such table", INTERNAL.
        assert answers == {("UNAVAILABLE", "DATABASE_UNAVAILABLE")}, answers
        assert not path.exists()
    errors = [r for r in records(server.log) if r["level"] == "ERROR" and r["pid"] == replacement]
    assert [r["message"] for r in errors] == [
        f"the SQLite database file {path} does not exist: refusing every call rather than "
        "creating an empty database in its place; restore the file (from a backup) and "
        "restart the server"
    ]
