"""Tell every quartet process (each worker of each replica) that rows it caches have changed.

Each process caches event types, API keys and accounts; a change made through one process must
reach the caches of all the others within a second, not when their entries expire. A change is
announced by `notify(topic, key)` inside the transaction that makes it, so that an announcement is
sent exactly when the change commits (and never for a change rolled back):

- PostgreSQL: `pg_notify` on the channel CHANNEL, which the server delivers at commit to every
  connection that LISTENs on it. Each process holds one such connection (ChangeListener), which
  learns the topic and the key (an API key id, an account id).
- SQLite (one host, several worker processes): a row per topic in `change_counter`, incremented.
  Each process reads the counters every POLL_SECONDS (one SELECT of three rows) and treats a topic
  whose counter moved as changed throughout (the key is not kept).

A listener that could not listen for a while (its connection dropped, the database was
unavailable) reports every topic as changed once it listens again: whatever changed meanwhile was
missed. The caches' own expiry stays, as the bound should the listener stay down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sqlite3
import threading
from collections.abc import Callable
from urllib.parse import quote

import peewee
import psycopg2
import psycopg2.extensions

from quartet.storage.base import BaseModel, db
from quartet.storage.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

EVENT_TYPES = "event_types"
API_KEYS = "api_keys"
ACCOUNTS = "accounts"
TOPICS = (EVENT_TYPES, API_KEYS, ACCOUNTS)

# The PostgreSQL channel; a notification's payload is "<topic>:<key>".
CHANNEL = "quartet_changes"
# How often SQLite's counters are read: a change is seen within this (plus a cache reload).
POLL_SECONDS = 0.2
# How long a listener waits before it tries again to connect or read, after a failure.
RETRY_SECONDS = 1.0
# A LISTEN connection that received nothing for this long is asked a `SELECT 1`, so that one
# silently cut (a network partition, a proxy's idle timeout) is noticed and replaced; TCP
# keepalives alone would take minutes.
IDLE_CHECK_SECONDS = 15.0

# What a listener reports: the topic, and the key changed, or None for "anything of this topic".
OnChange = Callable[[str, str | None], None]


class ChangeCounter(BaseModel):
    """How many changes of a topic were committed (SQLite's announcements; unused on
    PostgreSQL)."""

    topic = peewee.CharField(max_length=32, primary_key=True)
    value = peewee.BigIntegerField(default=0)


def notify(topic: str, key: object = "") -> None:
    """Announce a change of topic (the row `key`), sent when the current transaction commits.

    Call it inside the `db.atomic()` block that makes the change: outside a transaction the
    announcement could reach other processes before the change is visible to them.
    """
    if topic not in TOPICS:
        raise ValueError(f"unknown change topic {topic!r}")
    database = db.obj
    if not database.in_transaction():
        raise RuntimeError("notify() must run inside the transaction that makes the change")
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic}:{key}"))  # type: ignore[no-untyped-call]
        return
    # An upsert: the rows need not exist (a database emptied by hand, or by tests).
    ChangeCounter.insert(topic=topic, value=1).on_conflict(
        conflict_target=[ChangeCounter.topic],
        update={ChangeCounter.value: ChangeCounter.value + 1},
    ).execute()


def _parse(payload: str) -> tuple[str, str | None] | None:
    topic, _, key = payload.partition(":")
    if topic not in TOPICS:
        return None
    return topic, key or None


class ChangeListener:
    """Calls on_change(topic, key) for every change announced by any process, from a thread of
    its own (so on_change must hand the work to whoever owns the caches). Every topic is reported
    changed (key None) when it starts listening, and again whenever it listens again after a
    failure."""

    def __init__(
        self,
        database: peewee.Database,
        on_change: OnChange,
        *,
        poll_seconds: float = POLL_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._database = database
        self._on_change = on_change
        self._poll_seconds = poll_seconds
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        # Written to by close(), so that a listener waiting in select() wakes at once.
        self._wake_read, self._wake_write = os.pipe()
        postgres = isinstance(database, peewee.PostgresqlDatabase)
        self._thread = threading.Thread(
            target=self._listen if postgres else self._poll, name="quartet-changes", daemon=True
        )
        self._failing = False  # the last attempt failed (logged once, not on every retry)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _everything(self) -> None:
        for topic in TOPICS:
            self._on_change(topic, None)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "cannot follow changes made by other processes (caches fall back on their "
                "expiry; retrying every %g s): %s",
                self._retry_seconds,
                exc,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("following changes made by other processes again")
        self._everything()

    def _poll(self) -> None:
        """SQLite: read the counters every poll_seconds; report the topics whose counter moved.

        Through a read-only connection of its own, not the pool's: a connection SQLite opens
        while the files cannot be written (a storage fault) is read-only for good, and one
        given back to the pool would later fail every write handed it. The files are checked
        before each read, as the pool's connections check them (a read writes to -shm)."""
        seen: dict[str, int] | None = None
        connection: sqlite3.Connection | None = None
        path = os.path.abspath(self._database.database)
        while not self._stop.is_set():
            try:
                self._database.check_files(writing=False)  # type: ignore[attr-defined]
                if connection is None:
                    connection = sqlite3.connect(
                        f"file:{quote(path)}?mode=ro",
                        uri=True,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                rows = connection.execute("SELECT topic, value FROM change_counter").fetchall()
                counters = {str(topic): int(value) for topic, value in rows}
            except (sqlite3.Error, DatabaseUnavailable) as exc:
                if connection is not None:
                    connection.close()
                    connection = None
                self._failed(exc)
                seen = None
                self._stop.wait(self._retry_seconds)
                continue
            if seen is None:
                self._recovered()
            else:
                for topic in TOPICS:
                    if counters.get(topic, 0) != seen.get(topic, 0):
                        self._on_change(topic, None)
            seen = counters
            self._stop.wait(self._poll_seconds)
        if connection is not None:
            connection.close()

    def _listen(self) -> None:
        """PostgreSQL: LISTEN on one connection of its own, reconnecting after any failure."""
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                self._recovered()
                self._receive(connection)
            except (psycopg2.Error, OSError) as exc:
                self._failed(exc)
                self._stop.wait(self._retry_seconds)
            finally:
                if connection is not None:
                    with contextlib.suppress(psycopg2.Error):
                        connection.close()

    def _connect(self) -> psycopg2.extensions.connection:
        params = {
            "connect_timeout": 5,
            "application_name": "quartet-changes",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            **self._database.connect_params,  # the URL's own settings win
        }
        connection: psycopg2.extensions.connection = psycopg2.connect(
            dbname=self._database.database, **params
        )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        return connection

    def _receive(self, connection: psycopg2.extensions.connection) -> None:
        """Report notifications until close() or a failure (which raises)."""
        while not self._stop.is_set():
            ready, _, _ = select.select(
                [connection.fileno(), self._wake_read], [], [], IDLE_CHECK_SECONDS
            )
            if self._stop.is_set():
                return
            if not ready:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")  # raises if the connection is dead
            connection.poll()
            while connection.notifies:
                parsed = _parse(connection.notifies.pop(0).payload)
                if parsed is not None:
                    self._on_change(*parsed)
