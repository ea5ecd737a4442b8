"""The SQLite checkpointer's own process: copies the write-ahead log into the database.

`WalCheckpointer` (quartet.storage.database) runs this file as a script, `python -I
checkpointer.py DATABASE INTERVAL RESTART_PAGES`, until it closes the script's stdin. Standard
library only, so that it starts in milliseconds and holds a few MB.

Why a process: a checkpoint fsyncs the log and the database (milliseconds), then writes into the
memory mapping of `<database>-shm`. Should the files become read-only meanwhile (immutable, a
read-only remount), that write is SIGBUS, which no check made before the checkpoint can rule out.
Here it costs this process, which WalCheckpointer starts again, instead of a worker and its calls.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import sys
import threading
from urllib.parse import quote

# How long a connection waits for SQLite's write lock: every connection, the workers' too
# (quartet.storage.database imports it from here, which it can: this file needs nothing else).
BUSY_TIMEOUT_MS = 10_000
# How long a RESTART checkpoint, which holds every writer, waits for readers (milliseconds).
RESTART_WAIT_MS = 50


def main(argv: list[str]) -> None:
    path, interval, restart_pages = argv[0], float(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: the worker stops this
    stop = threading.Event()
    threading.Thread(target=_wait_for_eof, args=(stop,), daemon=True).start()
    try:
        # mode=rw: never create a database where there is none (the file was deleted).
        connection = sqlite3.connect(
            f"file:{quote(os.path.abspath(path))}?mode=rw",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        _log("WARNING", f"the checkpointer cannot open {path}: {exc}")
        sys.exit(1)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    print("ready", flush=True)
    seen: tuple[int, int] | None = None
    while True:
        stopping = stop.wait(interval)
        stamp = _log_stamp(path)
        if stamp is not None and stamp != seen:
            try:
                if checkpoint(connection, path, restart_pages):
                    seen = stamp  # else another process was checkpointing: try again
            except (OSError, sqlite3.Error) as exc:  # tried again once the log changes
                seen = stamp
                _log("WARNING", f"cannot checkpoint the SQLite log: {exc}")
        if stopping:
            break
    if _writable(path):  # else closing could checkpoint into read-only files: let exit drop it
        connection.close()
    sys.stdout.flush()
    os._exit(0)


def checkpoint(connection: sqlite3.Connection, path: str, restart_pages: int) -> bool:
    """A PASSIVE checkpoint (and a RESTART one once the log holds restart_pages pages); whether
    it copied all that it could."""
    _check_writable(path)
    busy, logged, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if busy or logged < restart_pages:
        return not busy
    # Writers wait meanwhile, so a reader that keeps the log from restarting (RESTART waits for
    # readers) may hold them up for RESTART_WAIT_MS, not the busy timeout.
    connection.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
    try:
        with open(f"{path}.writelock", "a") as writers:  # what every quartet writer queues on
            fcntl.flock(writers, fcntl.LOCK_EX)
            _check_writable(path)
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return not busy


def writable_or_missing(path: str) -> bool:
    """Whether path can be written or does not exist (SQLite creates its -wal and -shm files
    when it needs them). W_OK fails for an immutable file and on a read-only file system, even
    as root, and for a missing file: one that appears between the two looks (the -shm the first
    connection creates) is looked at again, not taken for a file that cannot be written."""
    for _ in range(3):
        if os.access(path, os.W_OK) or not os.path.lexists(path):
            return True
    return False


def _writable(path: str) -> bool:
    """Whether the database, its log, its shared memory and its directory can be written."""
    paths = [path, f"{path}-wal", f"{path}-shm", os.path.dirname(os.path.abspath(path))]
    return all(writable_or_missing(p) for p in paths)


def _check_writable(path: str) -> None:
    if not _writable(path):
        raise OSError(f"the SQLite database files of {path} cannot be written")


def _log_stamp(path: str) -> tuple[int, int] | None:
    """The write-ahead log's size and modification time (None if there is none)."""
    try:
        found = os.stat(f"{path}-wal")
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


def _wait_for_eof(stop: threading.Event) -> None:
    """Stop once stdin closes: WalCheckpointer closed it, or its process died."""
    sys.stdin.buffer.read()
    stop.set()


def _log(level: str, message: str) -> None:
    """One JSON line on stderr, which WalCheckpointer logs as its own."""
    print(json.dumps({"level": level, "message": message}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
