"""The log cannot be flooded: repeated warnings of one kind are rate-limited; the access log
is written in blocks, each line as a record would be."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import select

import pytest

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
        logs.access.write_to_logging()


class Writes(io.StringIO):
    """A text stream that records each write, as the log's pipe would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[str] = []

    def write(self, text: str) -> int:
        self.blocks.append(text)
        return len(text)


@pytest.fixture(autouse=True)
def access_enabled(caplog: pytest.LogCaptureFixture) -> None:
    """The access logger enabled for INFO, as `logs.configure` leaves it in a server."""
    caplog.set_level(logging.INFO, logger="quartet.access")


CALL = {
    "method": "/quartet.score.v1.ScoreService/GetScore",
    "code": "OK",
    "duration_ms": 0.25,
    "peer": "ipv4:127.0.0.1:5000",
    "caller": "account:1",
}


def test_access_lines_are_written_in_blocks_and_read_as_records_would() -> None:
    log, stream = logs.AccessLog(), Writes()
    log.write_to(stream, logs.JsonFormatter())

    async def calls() -> None:
        for _ in range(3):
            log.call(**CALL)
        assert stream.blocks == []  # not one write per line
        await asyncio.sleep(logs.AccessLog.FLUSH_SECONDS * 2)

    asyncio.run(calls())
    assert len(stream.blocks) == 1
    lines = [json.loads(line) for line in stream.blocks[0].splitlines()]
    assert len(lines) == 3
    # The same line the logging handler writes for such a record, but for the time.
    record = logging.LogRecord("quartet.access", logging.INFO, "", 0, "call", None, None)
    record.__dict__.update(CALL)
    expected = json.loads(logs.JsonFormatter().format(record))
    assert {**lines[0], "time": None} == {**expected, "time": None}
    assert lines[0]["pid"] == os.getpid()


def test_a_burst_of_access_lines_is_written_in_blocks_a_pipe_keeps_whole() -> None:
    log, stream = logs.AccessLog(), Writes()
    log.write_to(stream, logs.TextFormatter())

    async def burst() -> None:
        for _ in range(100):
            log.call(**CALL)
        # Written without waiting, each block whole lines and small enough that workers sharing
        # a pipe never interleave inside one (the kernel writes up to PIPE_BUF bytes whole).
        assert len(stream.blocks) > 1
        assert all(len(block.encode()) <= select.PIPE_BUF for block in stream.blocks)

    asyncio.run(burst())
    log.flush()  # the last lines, as a stopping server writes them
    text = "".join(stream.blocks)
    assert text.count("\n") == 100 and all(block.endswith("\n") for block in stream.blocks)
    assert " INFO    quartet.access call method=/quartet.score" in text


def test_access_lines_outside_an_event_loop_and_at_warning_level() -> None:
    log, stream = logs.AccessLog(), Writes()
    log.write_to(stream, logs.JsonFormatter())
    log.call(**CALL)  # no loop would flush it later: written at once
    assert len(stream.blocks) == 1
    access = logging.getLogger("quartet.access")
    level = access.level
    access.setLevel(logging.WARNING)
    try:
        log.call(**CALL)
    finally:
        access.setLevel(level)
    log.flush()
    assert len(stream.blocks) == 1


def test_a_flush_left_pending_on_a_finished_event_loop_does_not_strand_later_lines() -> None:
    log, stream = logs.AccessLog(), Writes()
    log.write_to(stream, logs.JsonFormatter())

    async def one_call() -> None:
        log.call(**CALL)

    asyncio.run(one_call())  # its loop ends before the flush comes due
    asyncio.run(one_call())
    log.flush()  # what the first loop's timer would have done
    lines = "".join(stream.blocks).splitlines()
    assert len(lines) == 2

    async def later_call() -> None:
        log.call(**CALL)
        await asyncio.sleep(logs.AccessLog.FLUSH_SECONDS * 2)
        assert len("".join(stream.blocks).splitlines()) == 3  # flushed on this loop's own timer

    asyncio.run(later_call())


def test_access_lines_are_records_until_a_stream_is_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logs.AccessLog()
    with caplog.at_level(logging.INFO, logger="quartet.access"):
        log.call(**CALL)
    (record,) = caplog.records
    assert (record.name, record.getMessage(), record.method) == (  # type: ignore[attr-defined]
        "quartet.access",
        "call",
        CALL["method"],
    )
