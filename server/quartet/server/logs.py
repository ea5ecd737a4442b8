"""Logging: JSON lines for machines, key=value text for a terminal."""

from __future__ import annotations

import datetime
import logging
import sys
import threading
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
# A record's own attributes come first in its __dict__, so the fields are found after them
# without testing every attribute (the access log writes a line per call: this is a hot path).
_OWN = len(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr: JSON lines, or text when fmt is "text" (or "auto" on a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(RepeatFilter())
    # No line shows the caller's source position, thread or process name: not looking them up
    # is the logging module's documented optimisation, and a third of an access line's cost.
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (those passed with `extra=`)."""
    return {k: v for k, v in islice(vars(record).items(), _OWN, None) if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **fields(record),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()

    def _time(self, created: float) -> str:
        """ISO 8601 in UTC to the microsecond, as datetime.isoformat() writes it; the date and
        second are formatted once per second rather than once per line."""
        second = int(created)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._second, self._prefix = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((created - second) * 1e6):06d}+00:00"


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`, for people."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={v}" for k, v in fields(record).items())
        text = f"{time} {record.levelname:<7} {record.name} {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


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
