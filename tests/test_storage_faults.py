"""Storage faults under a running server: read-only files, a full disk, a deleted database file,
and what an outage writes to the log. None may kill a worker, answer INTERNAL, keep half a write,
or lose an acknowledged one; the server recovers by itself once the fault clears."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import psycopg2
import pytest

from quartet import storage
from quartet.client import Client, QuartetError, event
from quartet.events.v1.event_service_pb2 import Event
from quartet.server.auth.passwords import hash_password
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import accounts
from tests.conftest import SECRET, mint_token
from tests.helpers import database_unreachable, server_process

SCORES = "quartet.score.v1.ScoreService"
REGIONS = "quartet.regions.v1.RegionService"
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
PASSWORD = "correct horse battery"


def sqlite_database(template: Path, directory: Path) -> tuple[Path, str]:
    """A migrated SQLite database in directory, and an admin's access token for it (and a user
    who can log in with PASSWORD)."""
    directory.mkdir(exist_ok=True)
    path = directory / "quartet.db"
    shutil.copyfile(template, path)
    database = storage.open_database(f"sqlite:///{path}")
    storage.bind(database)  # the server binds its own when it starts
    with database.connection_context():
        admin = accounts.create_account("admin@example.com", None, "admin")
        accounts.create_account("user@example.com", hash_password(PASSWORD), "user")
    storage.close(database)
    return path, mint_token(admin.id, "admin")


def submits(count: int, size: int = 0) -> list[Event]:
    """count form submissions of about size bytes each."""
    now = datetime.datetime.now(datetime.UTC)
    return [
        event(
            session_id=uuid.uuid4(),
            category="form interaction",
            name="submit",
            occurred_at=now,
            data={"host": "example.com", "path": "/", "form": {"text": "x" * size}},
        )
        for _ in range(count)
    ]


def outcome(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except QuartetError as error:
        return error.code, error.reason
    return grpc.StatusCode.OK, ""


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Poll condition until it holds; the seconds that took (fails after timeout)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "the condition never held"
        time.sleep(0.05)
    return time.monotonic() - start


def serving(client: Client, service: str = "") -> bool:
    return client.health.check(service, timeout=5)


@dataclasses.dataclass
class WriteLoad:
    """Threads sending events and creating scores until stopped, counting what they got."""

    target: str
    token: str
    api_key: str
    outcomes: Counter[tuple[grpc.StatusCode, str]] = dataclasses.field(default_factory=Counter)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    @contextlib.contextmanager
    def running(self) -> Iterator[WriteLoad]:
        senders = [
            (self.api_key, self._send_events),
            (self.api_key, self._send_events),
            (self.token, self._create_scores),
        ]
        threads = [threading.Thread(target=self._send, args=s, daemon=True) for s in senders]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(30)

    def _send(self, token: str, sends: Callable[[Client], object]) -> None:
        with Client(self.target, token=token) as client:
            while not self._stop.is_set():
                self.outcomes[outcome(lambda: sends(client))] += 1
                time.sleep(0.005)

    @staticmethod
    def _send_events(client: Client) -> object:
        return client.events.send_batch(submits(20), timeout=5)

    @staticmethod
    def _create_scores(client: Client) -> object:
        return client.scores.create(1, timeout=5)


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """chattr +i paths (in that order), as an operator or a failing disk could; -i on exit."""
    try:
        subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, reversed(paths))], check=True)


def test_read_only_database_files_refuse_writes_and_recover(
    migrated_sqlite_template: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "data"
    path, token = sqlite_database(migrated_sqlite_template, directory)
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), directory]
    env = {**os.environ, "QUARTET_SECRET": SECRET, "PYTHONFAULTHANDLER": "1"}
    args = ("--database-url", f"sqlite:///{path}", "--workers", "2")
    with server_process(*args, env=env) as server, Client(server.address, token=token) as client:
        api_key = client.auth.create_application("load").api_key
        load = WriteLoad(server.address, token, api_key)
        with load.running():
            wait_for(lambda: load.outcomes[(grpc.StatusCode.OK, "")] > 20, timeout=30)
            with immutable(files):
                # SQLite writes into the memory mapping of -shm on every write: on an immutable
                # file that used to be SIGBUS, and the whole server went down with the worker.
                wait_for(lambda: not serving(client, SCORES), timeout=10)
                assert not serving(client)
                assert outcome(lambda: client.scores.create(2, timeout=10)) == UNAVAILABLE
                assert outcome(lambda: client.auth.create_application("x")) == UNAVAILABLE
                assert client.regions.list_provinces(timeout=10)  # answered from memory
                assert serving(client, REGIONS)
                time.sleep(2)  # the writers keep trying against the read-only files
                during = load.outcomes.copy()
            cleared = time.monotonic()
            wait_for(lambda: serving(client, SCORES), timeout=10)
            recovered = time.monotonic() - cleared
            assert client.scores.create(3, timeout=10).value == 4
            written = load.outcomes[(grpc.StatusCode.OK, "")]
            wait_for(lambda: load.outcomes[(grpc.StatusCode.OK, "")] > written + 20, timeout=30)
        assert server.process.poll() is None, "the server died"
    print(f"health SERVING {recovered:.2f} s after the files became writable again")
    assert recovered < 5  # ~1 s on an idle machine (one probe interval)
    assert set(load.outcomes) == {(grpc.StatusCode.OK, ""), UNAVAILABLE}, load.outcomes
    assert during[UNAVAILABLE] > 0
    log = "".join(server.log)
    assert "exited unexpectedly" not in log and "Bus error" not in log, log[-3000:]
    assert '"level": "ERROR"' not in log


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs of 8 MiB (mounted for the test, unmounted after)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Fill directory's file system to the last page; the file that holds it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        with contextlib.suppress(OSError):  # ENOSPC
            while True:
                out.write(b"\0" * 4096)
    return filler


def event_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM event").fetchone()[0])


def full_disk_writes(client: Client, sender: Client, path: Path) -> list[tuple[Any, str]]:
    """Writes of every kind against a disk that cannot take them: what each answered. Small
    writes may still fit in the log's allocated pages; a batch of 2 MB cannot."""
    before = event_count(path)
    answers = [
        outcome(lambda: sender.events.send_batch(submits(200, 10_000), timeout=10)),
        outcome(lambda: client.scores.create(1, timeout=10)),
        outcome(lambda: client.auth.create_application("web", timeout=10)),
        outcome(lambda: client.auth.login("user@example.com", PASSWORD)),
    ]
    assert event_count(path) == before  # nothing of the failed batch was kept
    return answers


def test_a_full_disk_is_unavailable_and_recovers(
    migrated_sqlite_template: Path, tiny_disk: Path
) -> None:
    path, token = sqlite_database(migrated_sqlite_template, tiny_disk)
    settings = Settings(database_url=f"sqlite:///{path}", grace_seconds=0, secret=SECRET)
    with running_server(settings) as target, Client(target, token=token) as client:
        with Client(target, token=client.auth.create_application("app").api_key) as sender:
            sender.events.send_batch(submits(10))
            filler = fill(tiny_disk)
            answers = full_disk_writes(client, sender, path)
            # Before, the failed COMMIT's ROLLBACK ("no transaction is active") made it INTERNAL.
            assert answers[0] == UNAVAILABLE, answers
            assert set(answers) <= {(grpc.StatusCode.OK, ""), UNAVAILABLE}, answers
            filler.unlink()
            sender.events.send_batch(submits(200, 10_000), timeout=10)
            assert client.scores.create(5).value == 6
    assert event_count(path) == 210


def test_a_file_size_limit_is_unavailable_and_recovers(
    migrated_sqlite_template: Path, tmp_path: Path
) -> None:
    path, token = sqlite_database(migrated_sqlite_template, tmp_path / "data")
    env = {**os.environ, "QUARTET_SECRET": SECRET}
    args = ("--database-url", f"sqlite:///{path}", "--workers", "1")
    with server_process(*args, env=env) as server, Client(server.address, token=token) as client:
        with Client(server.address, token=client.auth.create_application("a").api_key) as sender:
            sender.events.send_batch(submits(10))
            workers = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
            (worker,) = map(int, workers.read_text().split())
            limit = resource.prlimit(worker, resource.RLIMIT_FSIZE)
            # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead.
            resource.prlimit(worker, resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
            try:
                answers = full_disk_writes(client, sender, path)
            finally:
                resource.prlimit(worker, resource.RLIMIT_FSIZE, limit)
            assert answers[0] == UNAVAILABLE, answers
            assert set(answers) <= {(grpc.StatusCode.OK, ""), UNAVAILABLE}, answers
            sender.events.send_batch(submits(200, 10_000), timeout=10)
        assert server.process.poll() is None
    assert event_count(path) == 210
    assert '"level": "ERROR"' not in "".join(server.log)


def test_a_deleted_database_file_refuses_writes_instead_of_losing_them(
    migrated_sqlite_template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, token = sqlite_database(migrated_sqlite_template, tmp_path / "data")
    settings = Settings(database_url=f"sqlite:///{path}", grace_seconds=0, secret=SECRET)
    with running_server(settings) as target, Client(target, token=token) as client:
        with Client(target, token=client.auth.create_application("app").api_key) as sender:
            sender.events.send_batch(submits(10))
            assert serving(client, SCORES)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink()
            with caplog.at_level(logging.WARNING):
                answers = [outcome(lambda: sender.events.send(submits(1)[0])) for _ in range(30)]
                answers.append(outcome(lambda: client.scores.create(1)))
                wait_for(lambda: not serving(client, SCORES), timeout=10)
            assert set(answers) == {UNAVAILABLE}, answers  # none acknowledged, then lost
            assert not serving(client)
            assert serving(client, REGIONS)
    assert not path.exists()  # and no empty database made in its place
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"the SQLite database file {path} was deleted or replaced while the server had it open: "
        "refusing every call rather than losing writes or opening an empty database; restore "
        "the file (from a backup) and restart the server"
    ]


def test_an_outage_logs_one_warning_line_per_failure_without_tracebacks(
    target: str, client: Client, database_url: str, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        sender.events.send_batch(submits(1))  # the key is cached now: sends reach the writer
        with caplog.at_level(logging.WARNING), database_unreachable(database_url, db):
            for _ in range(3):
                assert outcome(lambda: sender.events.send_batch(submits(5))) == UNAVAILABLE
            assert outcome(lambda: client.scores.create(1)) == UNAVAILABLE
        sender.events.send_batch(submits(5))
    failed = [r for r in caplog.records if r.name == "quartet.storage.writer"]
    # The SDK tried each batch more than once (sends are safe to repeat); one line per attempt.
    assert len(failed) >= 3
    assert {r.levelno for r in failed} == {logging.WARNING}
    assert all("the database is unavailable" in r.getMessage() for r in failed)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def test_health_follows_the_database_within_seconds(
    client: Client, database_url: str, db: Any
) -> None:
    assert serving(client, SCORES)
    with database_unreachable(database_url, db):
        assert outcome(lambda: client.scores.create(1)) == UNAVAILABLE
        # A failed call has the next probe (within a second) write to the database.
        wait_for(lambda: not serving(client, SCORES), timeout=5)
        assert not serving(client)
        assert serving(client, REGIONS)
    # While unhealthy the probe runs every second, so the server is back about as fast.
    wait_for(lambda: serving(client, SCORES), timeout=5)
    assert client.scores.create(2).value == 3


def checkpointers() -> list[int]:
    """The pids of this process's SQLite checkpointer children."""
    found = []
    pids = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            pids += (task / "children").read_text().split()
    for pid in pids:
        with contextlib.suppress(OSError):
            if "checkpointer.py" in Path(f"/proc/{pid}/cmdline").read_text():
                found.append(int(pid))
    return found


def test_a_checkpointer_that_dies_is_replaced(
    migrated_sqlite_template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, token = sqlite_database(migrated_sqlite_template, tmp_path / "data")
    settings = Settings(database_url=f"sqlite:///{path}", grace_seconds=0, secret=SECRET)
    with running_server(settings) as target, Client(target, token=token) as client:
        (first,) = checkpointers()
        with caplog.at_level(logging.WARNING):
            os.kill(first, signal.SIGBUS)  # what a checkpoint into read-only files gets
            wait_for(lambda: checkpointers() not in ([], [first]), timeout=10)
        assert "the SQLite checkpointer process exited (signal SIGBUS); starting another" in [
            r.getMessage() for r in caplog.records
        ]
        with Client(target, token=client.auth.create_application("app").api_key) as sender:
            sender.events.send_batch(submits(100))
        # The new one copies the log into the database file, as the first did.
        copy = tmp_path / "copy.db"

        def copied() -> int:
            shutil.copyfile(path, copy)  # the database file alone, without its log
            try:
                with contextlib.closing(sqlite3.connect(copy)) as connection:
                    return int(connection.execute("SELECT COUNT(*) FROM event").fetchone()[0])
            except sqlite3.DatabaseError:  # copied in the middle of a checkpoint
                return 0

        wait_for(lambda: copied() == 100, timeout=10)
    assert checkpointers() == []  # stopped with the server


@contextlib.contextmanager
def writes_refused(database_url: str, db: Any) -> Iterator[None]:
    """Make the database refuse writes but not reads: PostgreSQL's default_transaction_read_only
    (as a standby would), SQLite's database file and log made immutable (not its -shm)."""
    if database_url.startswith("sqlite"):
        path = Path(urlsplit(database_url).path[1:])
        with immutable([path, Path(f"{path}-wal")]):
            yield
        return
    name = urlsplit(database_url).path[1:]
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        db.close_idle()  # the setting holds for connections made from now on
        try:
            yield
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            db.close_idle()
    finally:
        admin.close()


def test_a_database_that_takes_no_writes_refuses_them_and_serves_reads(
    client: Client, database_url: str, db: Any
) -> None:
    client.scores.create(1)
    with writes_refused(database_url, db):
        # Before: INTERNAL on both (PostgreSQL's 25006 was not taken for unavailability, and
        # SQLite's failed COMMIT was hidden by its ROLLBACK), and health stayed SERVING.
        assert outcome(lambda: client.scores.create(2)) == UNAVAILABLE
        assert [s.value for s in client.scores.iter()] == [2]  # reads are served
        wait_for(lambda: not serving(client, SCORES), timeout=5)
        assert serving(client, REGIONS)
    wait_for(lambda: serving(client, SCORES), timeout=5)
    assert client.scores.create(3).value == 4


def descriptors(path: Path) -> int:
    """How many file descriptors this process holds on path. SQLite connections each hold one on
    the database's -wal (once they read), closed when the connection closes."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd) == str(path)
    return count


def hold_connections(database: Any, count: int) -> None:
    """Have count threads read at once through database, so that its pool keeps that many."""
    barrier = threading.Barrier(count)

    def read() -> None:
        with database.connection_context():
            database.execute_sql("SELECT COUNT(*) FROM event").fetchall()
            barrier.wait(30)

    threads = [threading.Thread(target=read) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_connections_set_aside_during_a_fault_are_closed_once_it_clears(
    migrated_sqlite_template: Path, tmp_path: Path
) -> None:
    path, token = sqlite_database(migrated_sqlite_template, tmp_path / "data")
    log = Path(f"{path}-wal")
    settings = Settings(database_url=f"sqlite:///{path}", grace_seconds=0, secret=SECRET)
    with running_server(settings) as target, Client(target, token=token) as client:
        database = storage.base.db.obj  # the server's, in this process
        hold_connections(database, 6)
        held = descriptors(log)
        assert held >= 6
        with immutable([path, log]):  # -shm stays writable: reads go on
            # Closing one now could checkpoint into the read-only files: they are set aside.
            database.close_idle()
            assert descriptors(log) == held
            cap = 32  # database.MAX_SET_ASIDE
            for _ in range(cap // 6 + 2):  # more than the cap
                hold_connections(database, 6)
                database.close_idle()
            assert descriptors(log) <= cap + 6, "the set-aside connections are not capped"
            assert database.set_aside == database.MAX_SET_ASIDE == cap
            wait_for(lambda: not serving(client, SCORES), timeout=10)
        cleared = time.monotonic()
        # The health probe closes them within a second of the files being writable again.
        wait_for(lambda: descriptors(log) <= 2, timeout=10)
        closed = time.monotonic() - cleared
        assert database.set_aside == 0
        wait_for(lambda: serving(client, SCORES), timeout=10)
        assert client.scores.create(1).value == 2
    print(f"set-aside connections closed {closed:.2f} s after the files became writable")


def test_a_file_created_between_the_checks_looks_is_not_taken_for_one_that_cannot_be_written(
    migrated_sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check looks twice (can it be written? does it exist?). SQLite's first connection
    creates -shm: created between the two looks, it was reported as a file that cannot be written,
    and a server once started unavailable for it (CI, test_a_decodable_request_is_still_served)."""
    path, _ = sqlite_database(migrated_sqlite_template, tmp_path / "data")
    shm = Path(f"{path}-shm")
    shm.unlink(missing_ok=True)
    database = storage.open_database(f"sqlite:///{path}")
    looks = 0
    access = os.access

    def access_then_create(target: str, mode: int) -> bool:
        """access(), then the file created right after it looked, as another thread would."""
        nonlocal looks
        answer = access(target, mode)
        if target == str(shm) and not shm.exists():
            looks += 1
            shm.touch()
        return answer

    monkeypatch.setattr(os, "access", access_then_create)
    storage.check_files(database)
    assert looks == 1  # the check met the race
    monkeypatch.undo()
    with immutable([shm]):  # and a file that cannot be written still is one
        with pytest.raises(storage.DatabaseUnavailable, match="-shm cannot be written"):
            storage.check_files(database)
    storage.close(database)
