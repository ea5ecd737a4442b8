"""Logging: JSON lines for machines, key=value text for a terminal."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from itertools import islice
from typing import Any, NamedTuple, Protocol, TextIO

import orjson

logger = logging.getLogger(__name__)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
# A record's own attributes come first in its __dict__, so the fields are found after them
# without testing every attribute (the access log writes a line per call: this is a hot path).
_OWN = len(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr: JSON lines, or text when fmt is "text" (or "auto" on a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    formatter = JsonFormatter() if json_lines else TextFormatter()
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter())
    # No line shows the caller's source position, thread or process name: not looking them up
    # is the logging module's documented optimisation, and a third of an access line's cost.
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access.write_to(sys.stderr, formatter)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (those passed with `extra=`)."""
    return {k: v for k, v in islice(vars(record).items(), _OWN, None) if k not in _STANDARD}


class LineParts(NamedTuple):
    """What a line shows, whether it comes from a `logging` record or from the access log."""

    created: float  # seconds since the epoch
    level: str
    logger: str
    pid: int | None
    message: str
    fields: dict[str, Any]


class LineFormatter(Protocol):
    """What the access log needs of a formatter: a line from its parts, as for a record."""

    def line(self, parts: LineParts) -> str: ...


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second = (-1, "")  # one tuple: the access log and logging's threads share it

    def format(self, record: logging.LogRecord) -> str:
        extra = fields(record)
        if record.exc_info:
            extra["error"] = self.formatException(record.exc_info)
        message = record.getMessage()
        return self.line(
            LineParts(record.created, record.levelname, record.name, record.process, message, extra)
        )

    def line(self, parts: LineParts) -> str:
        line: dict[str, Any] = {
            "time": self._time(parts.created),
            "level": parts.level,
            "logger": parts.logger,
            "pid": parts.pid,
            "message": parts.message,
        }
        line.update(parts.fields)
        return orjson.dumps(line, default=str).decode()

    def _time(self, created: float) -> str:
        """ISO 8601 in UTC to the microsecond, as datetime.isoformat() writes it; the date and
        second are formatted once per second rather than once per line."""
        second = int(created)
        cached, prefix = self._second
        if second != cached:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, prefix)
        return f"{prefix}.{int((created - second) * 1e6):06d}+00:00"


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`, for people."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        text = self.line(
            LineParts(record.created, record.levelname, record.name, None, message, fields(record))
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text

    def line(self, parts: LineParts) -> str:
        time = datetime.datetime.fromtimestamp(parts.created).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={v}" for k, v in parts.fields.items())
        return f"{time} {parts.level:<7} {parts.logger} {parts.message} {extra}".rstrip()


class RepeatFilter(logging.Filter):
    """Let through at most `burst` warnings (and worse) of one kind per `interval` seconds.

    An outage fails every call at once, and a hostile client can make every call fail: one line
    per failure would flood the log and the disk. A kind is the logger and the message's template
    (not its arguments), so "database unavailable: <any reason>" is one kind. The first record let
    through after some were dropped says how many, as the field `suppressed`. Informational records
    (the access log) always pass: their volume follows the call rate, which the server bounds.
    """

    MAX_KINDS = 1_000  # templates are few; a bound all the same, so memory cannot grow

    def __init__(
        self, burst: int = 5, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[str, int, str], list[float | int]] = {}  # [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            window = self._kinds.get(kind)
            if window is None or now - window[0] >= self.interval:
                dropped = int(window[2]) if window else 0
                if len(self._kinds) >= self.MAX_KINDS:
                    self._kinds.clear()
                self._kinds[kind] = [now, 1, 0]
                if dropped:
                    record.suppressed = dropped
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False


ACCESS = logging.getLogger("quartet.access")


class AccessLog:
    """The access log: one informational line per call, as the `quartet.access` logger would
    write it, but built without `logging`'s machinery and written in blocks, as Envoy's and
    nginx's (`buffer=`, `flush=`) access logs are: going through `logging` and writing each line
    on its own cost a small call a sixth of its throughput (docs/performance.md). A line is
    written at most `FLUSH_SECONDS` after its call ended (while the event loop runs), sooner
    when a block would pass `BLOCK_BYTES`, and when the server stops; a worker killed outright
    loses at most that much. A block is at most what the kernel writes to a pipe in one piece,
    so that workers sharing stderr never interleave inside each other's lines.

    Until `write_to` gives it a stream (as `configure` does for a server), each line is a
    `logging` record of `quartet.access` with the fields as attributes, for whoever embeds the
    server (tests read them with pytest's caplog). Either way the line is written only while
    the `quartet.access` logger is enabled for INFO.
    """

    FLUSH_SECONDS = 0.02
    BLOCK_BYTES = select.PIPE_BUF

    def __init__(self) -> None:
        self._stream: TextIO | None = None
        self._formatter: LineFormatter | None = None
        self._lock = threading.Lock()  # lines may come from several event loops' threads
        self._lines: list[str] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None  # the pending flush
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()

    def write_to(self, stream: TextIO, formatter: LineFormatter) -> None:
        self.flush()
        self._stream, self._formatter = stream, formatter

    def write_to_logging(self) -> None:
        """Go back to a `logging` record per line, as before `write_to`."""
        self.flush()
        self._stream = self._formatter = None

    def call(self, **fields: Any) -> None:
        """Log one call's fields (method, code, duration_ms, peer, caller)."""
        if not ACCESS.isEnabledFor(logging.INFO):
            return
        formatter = self._formatter
        if formatter is None:
            ACCESS.info("call", extra=fields)
            return
        try:
            parts = LineParts(time.time(), "INFO", ACCESS.name, self._pid, "call", fields)
            line = formatter.line(parts)
        except Exception:  # a field that does not format: never fail a call for its log line
            logger.warning("an access-log line could not be formatted", exc_info=True)
            return
        full = None
        with self._lock:
            if self._bytes + len(line) >= self.BLOCK_BYTES:
                full = self._take()
            self._lines.append(line)
            self._bytes += len(line) + 1
        if full:
            self._write(full)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: nothing would flush it later
            self.flush()
            return
        if self._timer is None or self._timer_loop is not loop:
            self._timer, self._timer_loop = loop.call_later(self.FLUSH_SECONDS, self.flush), loop

    def flush(self) -> None:
        """Write the lines logged so far, in one block."""
        self._timer = None
        with self._lock:
            block = self._take()
        if block:
            self._write(block)

    def _take(self) -> str:
        block = "".join(f"{line}\n" for line in self._lines)
        self._lines.clear()
        self._bytes = 0
        return block

    def _write(self, block: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(block)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or broken: never fail a call for its log
            pass

    def forked(self) -> None:
        """In a new child process: its own pid, no lines of the parent's, no parent's timer."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._lines.clear()
        self._bytes = 0
        self._timer = self._timer_loop = None


access = AccessLog()
os.register_at_fork(after_in_child=access.forked)
