"""The log cannot be flooded: repeated warnings of one kind are rate-limited."""

from __future__ import annotations

import logging

from quartet.server import logs
from quartet.server.logs import RepeatFilter


def _record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("quartet.test", level, __file__, 1, msg, args, None)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_kind_passes_then_the_rest_is_counted_not_logged() -> None:
    limiter = RepeatFilter(burst=3, interval=10, clock=Clock())
    passed = [limiter.filter(_record("database unavailable: %s", n)) for n in range(50)]
    assert passed == [True] * 3 + [False] * 47
    # Another kind has a budget of its own, and informational records always pass.
    assert limiter.filter(_record("another warning"))
    assert all(limiter.filter(_record("call", level=logging.INFO)) for _ in range(50))


def test_the_next_window_says_how_many_were_dropped() -> None:
    clock = Clock()
    limiter = RepeatFilter(burst=1, interval=10, clock=clock)
    assert limiter.filter(_record("disk full"))
    assert not limiter.filter(_record("disk full"))
    clock.now = 9.9
    assert not limiter.filter(_record("disk full"))
    clock.now = 10.0
    record = _record("disk full")
    assert limiter.filter(record)
    assert getattr(record, "suppressed", None) == 2


def test_the_server_log_handler_rate_limits() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", "json")
        assert any(isinstance(f, RepeatFilter) for h in root.handlers for f in h.filters)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
