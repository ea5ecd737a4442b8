"""Replies a client does not read: a byte budget per page, and per worker for replies in flight.

The stalled client speaks HTTP/2 itself (no grpcio: it cannot be told not to read), announcing a
receive window of 0 so that the server can send it nothing, and never reads again.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quartet.client import Client, QuartetError, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.server.settings import Settings
from quartet.server.testing import running_server

EVENT_BYTES = 60_000  # each event's data: near the default 64 KiB limit per event
EVENTS = 200  # about 12 MB in all
PAGE_BYTES = 1024 * 1024
REPLY_BYTES = 4 * PAGE_BYTES
LIST_EVENTS = "/quartet.events.v1.EventService/ListEvents"


@pytest.fixture
def target(settings: Settings) -> Iterator[str]:
    limited = dataclasses.replace(
        settings,
        unknown_event_types="accept",
        max_page_bytes=PAGE_BYTES,
        max_reply_bytes=REPLY_BYTES,
    )
    with running_server(limited) as address:
        yield address


@pytest.fixture
def stored(client: Client, target: str) -> list[str]:
    """The ids of EVENTS large events, stored in batches."""
    key = client.auth.create_application("big").api_key
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    sent = [
        event(
            session_id="5f0c6f8e-3f7e-4c55-9d2a-5b8e4f0b9a10",
            category="bulk",
            name="blob",
            data={"blob": f"{n:05d}" + "x" * EVENT_BYTES},
            occurred_at=start + datetime.timedelta(seconds=n),
        )
        for n in range(EVENTS)
    ]
    with Client(target, token=key) as app:
        for first in range(0, EVENTS, 50):
            app.events.send_batch(sent[first : first + 50])
    return [message.id for message in sent]


def test_a_page_stops_at_its_byte_budget_and_the_next_continues(
    client: Client, stored: list[str]
) -> None:
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = client.events.list(page_size=1000, page_token=token)
        assert page.ByteSize() <= PAGE_BYTES
        seen += [e.id for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == stored  # each once, in order
    assert pages >= EVENTS * EVENT_BYTES // PAGE_BYTES


def _integer(value: int, prefix_bits: int = 7) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) whose first byte's other bits are zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    encoded = [limit]
    value -= limit
    while value >= 128:
        encoded.append(value % 128 + 128)
        value //= 128
    encoded.append(value)
    return bytes(encoded)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)


class StalledClient:
    """One HTTP/2 connection asking for a gRPC call's reply with a receive window of 0, so that
    the server holds the reply, and never reading it."""

    def __init__(
        self, address: str, path: str, request: bytes, metadata: tuple[tuple[str, str], ...]
    ):
        host, port = address.rsplit(":", 1)
        self.socket = socket.create_connection((host, int(port)))
        headers = b"".join(
            b"\x00" + _integer(len(name)) + name.encode() + _integer(len(value)) + value.encode()
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            )
        )
        message = b"\x00" + struct.pack(">I", len(request)) + request
        settings = struct.pack(">HI", 0x4, 0)  # SETTINGS_INITIAL_WINDOW_SIZE = 0
        self.socket.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(0x4, 0, 0, settings)
            + settings
            + _frame(0x1, 0x4, 1, headers)
            + headers  # HEADERS, END_HEADERS
            + _frame(0x0, 0x1, 1, message)
            + message  # DATA, END_STREAM
        )
        self.socket.recv(9)  # the server's SETTINGS frame has begun: acknowledge it
        self.socket.sendall(_frame(0x4, 0x1, 0, b""))

    def close(self) -> None:
        self.socket.close()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def reply_budget_full(client: Client) -> bool:
    try:
        client.events.list(page_size=1000)
    except QuartetError as error:
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return True
    return False


def test_unread_replies_are_bounded_and_their_memory_returns(
    client: Client, target: str, stored: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    request = pb.ListEventsRequest(page_size=1000).SerializeToString()
    client.events.list(page_size=1000)  # the first call's one-time allocations
    before = rss_bytes()
    stalled = [StalledClient(target, LIST_EVENTS, request, client.metadata) for _ in range(20)]
    try:
        # The replies are built and held: once the budget is full, the next call is refused.
        wait_for(lambda: reply_budget_full(client))
        with pytest.raises(grpc.RpcError) as caught:
            event_service_pb2_grpc.EventServiceStub(client.channel).ListEvents(
                pb.ListEventsRequest(page_size=1000), metadata=client.metadata
            )
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, info.metadata["budget"]) == ("LIMIT_EXCEEDED", "reply_bytes")
        # A write's reply is never refused: its work is done, and a new key's secret only there.
        assert client.auth.create_application("while full").api_key
        held = rss_bytes() - before
    finally:
        for connection in stalled:
            connection.close()
    # The clients went away: their replies are given back, and so is the memory.
    wait_for(lambda: not reply_budget_full(client))
    # Near where it started (what the heap keeps varies by some 20 MiB from run to run); left
    # to glibc, it would stay some 75 MiB above.
    wait_for(lambda: rss_bytes() - before < 40 * 1024 * 1024, timeout=30)
    # A client going away with its reply unread is no error of the server's.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Twenty whole replies (12 MB each) would hold some 500 MB; pages and budget bound it.
    assert held < 128 * 1024 * 1024
