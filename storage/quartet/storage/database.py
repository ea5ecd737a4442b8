"""Open the database named by a URL: SQLite (the default) or PostgreSQL, both pooled."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

import peewee
import psycopg2
import psycopg2.extensions
from playhouse.db_url import parse
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from quartet.storage.base import db
from quartet.storage.checkpointer import BUSY_TIMEOUT_MS, writable_or_missing
from quartet.storage.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

DEFAULT_SQLITE_PATH = (
    Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    / "quartet"
    / "quartet.db"
)

# WAL lets readers run beside the one writer; the busy timeout makes a writer wait for the lock
# instead of failing. synchronous=NORMAL in WAL mode cannot corrupt the database, and a committed
# transaction survives a crash of the process (kill -9); only an OS crash or power loss can lose the
# last commits. PostgreSQL is the choice when that matters too. Checkpointing the WAL every
# 10,000 pages (about 40 MB) instead of SQLite's 1,000 means ten times fewer checkpoints, each
# with its fsync. The server checkpoints beside its writers instead (WalCheckpointer).
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": BUSY_TIMEOUT_MS,
    "foreign_keys": 1,
    "synchronous": "normal",
    "cache_size": -8_000,  # 8 MB per pooled connection (SQLite's default is 2 MB)
    "wal_autocheckpoint": 10_000,
}


# Untyped, as PooledSqliteDatabase is to mypy: peewee's hints lack the _connect overridden below.
_PeeweeSqlite: Any = peewee.SqliteDatabase


class _SqliteConnections(_PeeweeSqlite):  # type: ignore[misc]
    """Opens SQLite's connections: those of a database that may not create its file, and every
    one after the first, with `mode=rw`, so that SQLite fails (SQLITE_CANTOPEN) instead of
    creating an empty database where the file is missing. Peewee's pool opens its connections
    through this class's `_connect` (it comes after the pool in _SqliteDatabase's MRO)."""

    _may_create = True

    def _connect(self) -> sqlite3.Connection:
        if self._may_create:
            conn: sqlite3.Connection = super()._connect()
            return conn
        uri = f"file:{quote(os.path.abspath(self.database))}?mode=rw"
        conn = sqlite3.connect(
            uri, timeout=self._timeout, isolation_level=None, uri=True, **self.connect_params
        )
        try:
            self._add_conn_hooks(conn)
        except Exception:
            conn.close()
            raise
        return conn


class _SqliteDatabase(PooledSqliteDatabase, _SqliteConnections):  # type: ignore[misc]
    """Pooled SQLite whose write transactions queue on an flock() of `<database>.writelock`.

    SQLite admits one writer at a time; a writer that finds the lock taken sleeps and retries
    (busy_timeout), in steps of up to 100 ms, which wastes most of the time when several worker
    processes write all the time. Waiting on a file lock instead wakes the next writer as soon
    as the lock is released, in this process or another. Write transactions BEGIN IMMEDIATE and
    hold the file lock exactly while they hold SQLite's write lock; a transaction begun DEFERRED
    (reads, or writes to temporary tables only, as an import's staging does) takes neither.

    Before SQLite touches the files, their state is checked (`check_files`): SQLite maps
    `<database>-shm` into memory and writes to it on every write and most reads, and a write to
    the mapping of a file that cannot be written (immutable, a read-only remount) is not an error
    SQLite could report but SIGBUS, which kills the process. And a database file deleted or
    replaced under the server would take every later write with it, while a new connection
    would create an empty database in its place: only a database opened with `create=True` (to
    migrate it) may create its file, and only with its first connection.
    """

    # At most this many connections are set aside (see _close_raw). Past that, the oldest is
    # closed anyway: while the newer ones stay open it cannot be this process's last connection
    # to the database, and only the last one checkpoints on closing (it alone gets the exclusive
    # lock that takes), so that close writes nothing into the files (checked: their sizes and
    # times stay the same). The health probe closes the rest within a second of recovery.
    MAX_SET_ASIDE = 32

    def __init__(self, database: str, *, create: bool = True, **kwargs: object) -> None:
        super().__init__(database, **kwargs)
        self._may_create = create
        self._lock_path = f"{database}.writelock"
        self._held = threading.local()  # the lock file of this thread's open transaction
        self._log_path = f"{database}-wal"
        self._shm_path = f"{database}-shm"
        self._directory = os.path.dirname(os.path.abspath(database))
        self._background_checkpoints = False
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file first opened
        self._lost = False  # the path stopped naming that file (logged once)
        self._missing = False  # the file was missing when first opened (logged once)
        self._set_aside: list[sqlite3.Connection] = []  # oldest first: see _close_raw

    def _connect(self) -> sqlite3.Connection:
        """Check the files, then hand out a pooled connection (or open one)."""
        self.check_files(writing=False)
        try:
            conn: sqlite3.Connection = super()._connect()
        except sqlite3.OperationalError:
            if not self._may_create and not os.path.lexists(self.database):
                self._refuse_missing()  # deleted between the check and the open
            raise
        if self._identity is None:
            found = os.stat(self.database)
            self._identity = (found.st_dev, found.st_ino)
            self._may_create = False  # from now on a missing file is a lost one
        return conn

    def cursor(self, named_cursor: object = None) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = super().cursor(named_cursor)
        if not cursor.connection.in_transaction:
            # The statement begins a read of its own, which may write its mark into -shm: check
            # right before it, not only when the connection was handed out.
            self.check_files(writing=False)
        return cursor

    def _close_raw(self, conn: sqlite3.Connection) -> None:
        """Close conn, unless the files cannot be written: the last connection to close
        checkpoints the log into them, through -shm (SIGBUS). Such a connection is set aside,
        unused, and closed once the files can be written again (close_set_aside), or when the
        process exits, which releases its locks without writing."""
        with self._pool_lock:
            try:
                self.check_files(writing=True)
            except DatabaseUnavailable:
                self._set_aside.append(conn)
                if len(self._set_aside) > self.MAX_SET_ASIDE:
                    self._close_quietly(self._set_aside.pop(0))  # see MAX_SET_ASIDE
                return
            super()._close_raw(conn)
            self._close_set_aside()

    def close_set_aside(self) -> None:
        """Close the connections set aside during a fault, if the files can be written now."""
        with self._pool_lock:
            if self._set_aside:
                with contextlib.suppress(DatabaseUnavailable):
                    self.check_files(writing=True)
                    self._close_set_aside()

    @property
    def set_aside(self) -> int:
        """How many connections are set aside, waiting for the files to be writable."""
        return len(self._set_aside)

    def _close_set_aside(self) -> None:
        set_aside, self._set_aside = self._set_aside, []
        for conn in set_aside:
            self._close_quietly(conn)

    @staticmethod
    def _close_quietly(conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        except sqlite3.Error as exc:  # the files failed again meanwhile: dropped all the same
            logger.warning("cannot close an SQLite connection set aside: %s", exc)

    def begin(self, lock_type: str | None = None) -> None:
        if (lock_type or "").upper() == "DEFERRED":  # a read, or temporary tables only
            super().begin(lock_type)
            return
        self.check_files(writing=True)
        lock = self._lock_writers()
        try:
            super().begin(lock_type)
        except BaseException:
            lock.close()
            raise
        self._held.lock = lock

    def commit(self) -> None:
        if getattr(self._held, "lock", None) is not None:
            # Again: files made read-only while the transaction ran must fail it here, not in
            # the shared memory that COMMIT writes. (The rollback that follows releases the lock.)
            self.check_files(writing=True)
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            # SQLite rolls a transaction back by itself when its COMMIT fails for want of disk
            # (an I/O error, a full disk, a file too large): a ROLLBACK then fails with "no
            # transaction is active" and would hide why the COMMIT failed.
            if not self.is_closed() and self.connection().in_transaction:
                super().rollback()
        finally:
            self._release()

    def check_files(self, *, writing: bool) -> None:
        """Raise DatabaseUnavailable unless the path still names the file first opened and
        SQLite may write its shared memory (and, if writing, the database, its log and its
        directory). A few stat() and access() calls: microseconds."""
        self._check_identity()
        paths = [self._shm_path]
        if writing:
            paths += [self.database, self._log_path, self._directory]
        for path in paths:
            if not writable_or_missing(path):
                raise DatabaseUnavailable(f"the SQLite database file {path} cannot be written")

    def _check_identity(self) -> None:
        if self._identity is None:
            if not self._may_create and not os.path.lexists(self.database):
                self._refuse_missing()
            return
        try:
            found = os.stat(self.database)
            same = (found.st_dev, found.st_ino) == self._identity
        except FileNotFoundError:
            same = False
        if same:
            if self._lost:
                self._lost = False
                logger.warning("the SQLite database file %s is back", self.database)
            return
        if not self._lost:
            self._lost = True
            logger.error(
                "the SQLite database file %s was deleted or replaced while the server had it "
                "open: refusing every call rather than losing writes or opening an empty "
                "database; restore the file (from a backup) and restart the server",
                self.database,
            )
        raise DatabaseUnavailable(f"the SQLite database file {self.database} is gone")

    def _refuse_missing(self) -> None:
        if not self._missing:
            self._missing = True
            logger.error(
                "the SQLite database file %s does not exist: refusing every call rather than "
                "creating an empty database in its place; restore the file (from a backup) and "
                "restart the server",
                self.database,
            )
        raise DatabaseUnavailable(f"the SQLite database file {self.database} does not exist")

    def checkpoint_in_background(self, on: bool) -> None:
        """Whether connections leave checkpoints to a WalCheckpointer (from the next one made:
        the idle ones are closed)."""
        self._background_checkpoints = on
        self.close_idle()

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        super()._set_pragmas(conn)
        if self._background_checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint = 0")

    def _lock_writers(self) -> IO[str]:
        lock = open(self._lock_path, "a")  # closing it releases the lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except BaseException:
            lock.close()
            raise
        return lock

    def _release(self) -> None:
        lock = getattr(self._held, "lock", None)
        if lock is not None:
            self._held.lock = None
            lock.close()


class _PostgresqlDatabase(PooledPostgresqlDatabase):  # type: ignore[misc]
    """Pooled PostgreSQL that asks the server whether a pooled connection still works only when
    it has been idle for a while.

    Peewee's pool sends `SELECT 1` every time it hands a connection out: one more round trip per
    transaction, a fifth of the event writer's time under load. A connection given back less
    than FRESH seconds ago is handed out unchecked (if its last transaction ended); should the
    server have gone away meanwhile, its first statement fails as UNAVAILABLE, and the broken
    connection is dropped when it comes back.
    """

    FRESH = 1.0

    def __init__(self, database: str, **kwargs: object) -> None:
        super().__init__(database, **kwargs)
        self._returned: dict[int, float] = {}  # connection key -> when it was given back

    def _is_closed(self, conn: Any) -> bool:
        returned = self._returned.pop(self.conn_key(conn), None)
        if (
            returned is not None
            and time.monotonic() - returned < self.FRESH
            and not conn.closed
            and conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        ):
            return False
        return bool(super()._is_closed(conn))

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        if not close_conn:
            self._returned[self.conn_key(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _close_raw(self, conn: Any) -> None:
        self._returned.pop(self.conn_key(conn), None)
        super()._close_raw(conn)


class WalCheckpointer:
    """Copies an SQLite database's write-ahead log back into the database, from a process of its
    own (`quartet/storage/checkpointer.py`).

    SQLite's automatic checkpoint runs at the end of the COMMIT that fills the log past its
    threshold: SQLite's own write lock is free by then, but the flock above is held until the
    commit returns, so every other writer waited while one copied the log and waited for its
    fsyncs; batch inserts spent a third of their time there. So the connections of a database
    given a WalCheckpointer do not checkpoint as they commit; instead, every `interval` seconds
    in which the log changed (by a commit of any process), a PASSIVE checkpoint copies it beside
    the writers. That cannot copy the frames the writers keep appending, so once the log holds
    `restart_pages` pages the writers are also made to wait for a RESTART checkpoint, which copies
    the little left and has the next writer start the log from its beginning.

    The checkpoints run in a child process because one that finds the files made read-only
    after its fsyncs dies of SIGBUS (see checkpointer.py): a thread would take the worker with
    it. A child that dies is started again a second later. A database that is not SQLite needs
    none of this: nothing starts.
    """

    def __init__(
        self, database: peewee.Database, *, interval: float = 0.2, restart_pages: int = 10_000
    ) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()  # between close() and starting a child
        self._child: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        if isinstance(database, _SqliteDatabase):
            script = Path(__file__).with_name("checkpointer.py")
            # -I: the standard library alone, whatever the environment says.
            command = [sys.executable, "-I", str(script), database.database]
            command += [str(interval), str(restart_pages)]
            database.checkpoint_in_background(True)
            started = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(database, command, started),
                name="quartet-checkpoint",
                daemon=True,
            )
            self._thread.start()
            started.wait(30)  # checkpoints run from now on

    def close(self) -> None:
        """Stop the child after a last checkpoint."""
        with self._lock:
            self._stop.set()
            if self._child is not None and self._child.stdin is not None:
                self._child.stdin.close()  # its cue to finish
        if self._thread is not None:
            self._thread.join()

    def _run(self, database: _SqliteDatabase, command: list[str], started: threading.Event) -> None:
        try:
            while True:
                if not os.path.lexists(database.database):
                    # Deleted: the database refuses every call and logs why; a child could only
                    # fail to open it (mode=rw), once a second. Wait for the file instead.
                    started.set()
                    if self._stop.wait(1.0):
                        return
                    continue
                with self._lock:
                    if self._stop.is_set():
                        return
                    child = self._child = subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                with child:  # closes the pipes and waits
                    assert child.stdout is not None and child.stderr is not None
                    child.stdout.readline()  # "ready", or nothing if it failed to start
                    started.set()
                    for line in child.stderr:
                        _relay(line)
                code = child.returncode
                if self._stop.is_set():
                    return
                logger.warning(
                    "the SQLite checkpointer process exited (%s); starting another",
                    f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}",
                )
                self._stop.wait(1.0)
        finally:
            started.set()
            database.checkpoint_in_background(False)


def _relay(line: bytes) -> None:
    """Log a line the checkpointer process wrote: its JSON records, or anything else as is."""
    try:
        record = json.loads(line)
        level, message = logging.getLevelName(record["level"]), str(record["message"])
    except (ValueError, KeyError, TypeError):
        level, message = logging.WARNING, line.decode(errors="replace").rstrip()
    logger.log(level if isinstance(level, int) else logging.WARNING, "%s", message)


# SQLite's primary result codes that mean the database cannot be used right now, not that a
# statement was wrong: locked past the busy timeout, made read-only, an I/O error, a full disk,
# a file that cannot be opened, a broken lock protocol.
_SQLITE_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}
# PostgreSQL SQLSTATEs (or their classes) of the same kind: connection exceptions (08),
# insufficient resources such as too many connections or a full disk (53), the server shutting
# down, crashing or starting up (57P01-57P03), and a server that takes no writes (25006: a hot
# standby, or default_transaction_read_only).
_POSTGRES_UNAVAILABLE = ("08", "53", "57P01", "57P02", "57P03", "25006")


def unavailable(exc: BaseException) -> bool:
    """Whether exc means the database could not be reached or used (it is down, restarting,
    unreachable, out of connections or disk, its file cannot be opened, or it stayed locked),
    rather than that a query was wrong or a row broke a constraint.

    Only driver errors count: peewee's own errors (an unbound model, say) are programming errors,
    and so are an IntegrityError, a missing table or a syntax error on any backend.
    """
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, peewee.PeeweeException):
        driver = getattr(exc, "orig", None)
        if driver is None:
            return False
        exc = driver
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    if isinstance(exc, psycopg2.InterfaceError):  # "connection already closed"
        return True
    if isinstance(exc, psycopg2.Error) and exc.pgcode is not None:
        return exc.pgcode.startswith(_POSTGRES_UNAVAILABLE)  # 25006 is an InternalError
    # No SQLSTATE: libpq failed to connect, or lost the connection ("server closed the
    # connection unexpectedly"); the server never answered the statement.
    return isinstance(exc, psycopg2.OperationalError) or type(exc) is psycopg2.DatabaseError


def probe_writes(database: peewee.Database) -> None:
    """Write to database and commit, or raise: what health checks ask, since a database that
    still answers reads may take no writes (read-only files, a full disk, a standby server).

    SQLite rewrites its header's user_version with the value it holds (one page in the log).
    PostgreSQL assigns a transaction id, which a standby refuses and whose commit needs the WAL,
    and says whether the transaction is read-only (default_transaction_read_only).
    """
    with database.connection_context(), database.atomic():
        if isinstance(database, _SqliteDatabase):
            cursor = database.execute_sql("PRAGMA user_version")
            database.execute_sql(f"PRAGMA user_version = {int(cursor.fetchone()[0])}")
            return
        cursor = database.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT txid_current(), current_setting('transaction_read_only')"
        )
        if cursor.fetchone()[1] == "on":
            raise DatabaseUnavailable("the PostgreSQL database takes no writes (read-only)")


def reads_never_block(database: peewee.Database) -> bool:
    """Whether a read on database never waits for another connection: SQLite in WAL mode, where
    readers see the last commit without any lock the writer holds (PostgreSQL reads wait for
    the network, and may wait for a lock)."""
    return isinstance(database, _SqliteDatabase)


def check_files(database: peewee.Database) -> None:
    """Raise DatabaseUnavailable if an SQLite database's files cannot take a write now, or its
    path no longer names the file opened (microseconds, no connection); a no-op on PostgreSQL.
    Once they can, close the connections set aside while they could not."""
    if isinstance(database, _SqliteDatabase):
        database.check_files(writing=True)
        database.close_set_aside()


def default_database_url() -> str:
    """The URL used when none is configured: an SQLite file in the user's data directory."""
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def open_database(url: str, *, max_connections: int = 20, create: bool = True) -> peewee.Database:
    """Open (lazily: no connection is made yet) the database named by url.

    `sqlite:///relative/path` and `sqlite:////absolute/path` give SQLite with WAL, a busy timeout
    and foreign keys; the file's directory is created, and the file by the first connection if
    `create` (to migrate it). Without `create`, as in a server's workers, whose supervisor made
    and migrated it, a missing file is DatabaseUnavailable (and one ERROR line), never a new
    empty database. `postgresql://user:password@host:port/name` (or `postgres://`) gives a
    PostgreSQL connection pool. Query parameters go to the driver.
    """
    scheme = urlsplit(url).scheme
    params = parse(url, unquote_password=True, unquote_user=True)
    name = params.pop("database", "")
    if scheme == "sqlite":
        if not name or name == ":memory:":
            raise ValueError(
                f"{redacted(url)!r} names no database file; an in-memory SQLite database would "
                "be a different, empty database on every connection. Use sqlite:///path/to.db."
            )
        Path(name).expanduser().parent.mkdir(parents=True, exist_ok=True)
        database: peewee.Database = _SqliteDatabase(
            str(Path(name).expanduser()),
            create=create,
            pragmas=SQLITE_PRAGMAS,
            max_connections=max_connections,
            timeout=30,
            autoconnect=False,
            check_same_thread=False,  # pooled connections move between threads
            # Transactions are only opened to write. Taking the write lock at BEGIN makes a writer
            # wait (busy_timeout) for another one; a deferred BEGIN that read first would instead
            # fail at once with SQLITE_BUSY when its snapshot went stale.
            lock_type="IMMEDIATE",
            **params,
        )
        return database
    if scheme in ("postgresql", "postgres"):
        if not name:
            raise ValueError(f"{redacted(url)!r} names no database: postgresql://host/name")
        database = _PostgresqlDatabase(
            name,
            max_connections=max_connections,
            stale_timeout=300,
            timeout=30,
            autoconnect=False,
            **params,
        )
        return database
    raise ValueError(
        f"unsupported database URL {redacted(url)!r}: use sqlite:///path or postgresql://host/name"
    )


def close(database: peewee.Database) -> None:
    """Close every pooled connection of database (those of all threads)."""
    database.close_all()  # type: ignore[attr-defined]


def bind(database: peewee.Database) -> None:
    """Point every model at database (one database per process)."""
    db.initialize(database)


def redacted(url: str) -> str:
    """url with its password masked, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
