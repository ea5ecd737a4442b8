"""TailEvents through the SDK: live events, filters, resuming, limits, access, several workers."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import peewee
import pytest

from quartet import storage
from quartet.client import Client, EventTail, QuartetError, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import accounts
from tests.conftest import SECRET, Principal, mint_token
from tests.helpers import OWN_CONNECTION, server_process, serving_pids, wait_for

CATEGORY = "page interaction"
# The seed's event types, whose schemas the server registers: (category, name) -> data.
DATA: dict[tuple[str, str], dict[str, Any]] = {
    (CATEGORY, "pageview"): {"host": "www.ca.com", "path": "/"},
    (CATEGORY, "cta click"): {"host": "www.ca.com", "path": "/", "element": "chat bubble"},
    ("form interaction", "submit"): {
        "host": "www.ca.com",
        "path": "/",
        "form": {"first_name": "John", "last_name": "Doe"},
    },
}


def sent(session: str = "", name: str = "pageview", category: str = CATEGORY) -> pb.Event:
    return event(
        session_id=session or str(uuid.uuid4()),
        category=category,
        name=name,
        occurred_at="2021-01-01 09:15:27",
        data=DATA[category, name],
    )


def received(tail: EventTail, count: int, within: float = 10.0) -> list[pb.Event]:
    """The next count events of the tail, failing after `within` seconds."""
    found: list[pb.Event] = []
    timer = threading.Timer(within, tail.close)
    timer.start()
    try:
        for message in tail:
            found.append(message)
            if len(found) == count:
                break
    finally:
        timer.cancel()
    assert len(found) == count, f"{len(found)} of {count} events within {within} s"
    return found


def ids(messages: list[pb.Event]) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def app(client: Client, target: str) -> Iterator[Client]:
    """A client sending with an application's API key."""
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        yield sender


def test_a_tail_receives_the_events_stored_after_it_started(app: Client, client: Client) -> None:
    session = str(uuid.uuid4())
    before = sent(session)
    app.events.send(before)
    with client.events.tail(session_id=session) as tail:
        started = time.monotonic()
        one = sent(session)
        app.events.send(one)
        batch = [sent(session) for _ in range(3)]
        app.events.send_batch(batch)
        app.events.stream(sent(session) for _ in range(2))
        found = received(tail, 6)
        assert time.monotonic() - started < 5
    assert ids(found)[:4] == ids([one, *batch])
    assert before.id not in ids(found)
    assert found[0].application_id and found[0].receive_time.seconds and found[0].data["path"]


def test_a_tail_follows_its_filter_only(app: Client, client: Client) -> None:
    session = str(uuid.uuid4())
    with (
        client.events.tail(category=CATEGORY, name="cta click") as clicks,
        client.events.tail(session_id=session, category="form interaction") as by_session,
    ):
        app.events.send_batch(
            [
                sent(),
                sent(session, name="cta click"),
                sent(session, "submit", "form interaction"),
                sent(name="submit", category="form interaction"),
                sent(name="cta click"),
            ]
        )
        assert [m.name for m in received(clicks, 2)] == ["cta click", "cta click"]
        [mine] = received(by_session, 1)
        assert (mine.session_id, mine.category) == (session, "form interaction")


def test_a_tail_resumes_after_an_event_missing_and_repeating_none(
    app: Client, client: Client
) -> None:
    session = str(uuid.uuid4())
    first = [sent(session) for _ in range(5)]
    with client.events.tail(session_id=session) as tail:
        app.events.send_batch(first)
        found = received(tail, 2)
    assert ids(found) == ids(first[:2])
    later = [sent(session) for _ in range(3)]
    app.events.send_batch(later)
    with client.events.tail(session_id=session, after_event_id=found[-1].id) as resumed:
        assert ids(received(resumed, 6)) == ids(first[2:] + later)


def test_a_tail_pages_a_long_backlog_in_store_order(app: Client, client: Client) -> None:
    session = str(uuid.uuid4())
    anchor = sent(session)
    app.events.send(anchor)
    backlog = [sent(session) for _ in range(1200)]  # more than one message of the stream
    app.events.stream(backlog)
    with client.events.tail(session_id=session, after_event_id=anchor.id) as tail:
        assert ids(received(tail, 1200)) == ids(backlog)


def test_a_tail_ends_quietly_at_its_timeout(client: Client) -> None:
    started = time.monotonic()
    assert list(client.events.tail(category=CATEGORY, timeout=1.0)) == []
    assert 0.9 < time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({}, "session_id"),
        ({"name": "pageview", "session_id": str(uuid.uuid4())}, "name"),
        ({"session_id": "not a uuid"}, "session_id"),
        ({"category": CATEGORY, "after_event_id": "nope"}, "after_event_id"),
        ({"category": CATEGORY, "application_id": -1}, "application_id"),
    ],
)
def test_a_tail_without_a_valid_filter_is_refused(
    client: Client, request_: dict[str, Any], field: str
) -> None:
    with pytest.raises(QuartetError) as caught:
        client.events.tail(**request_)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in caught.value.field_violations]


def test_resuming_after_an_unknown_event_is_not_found(client: Client) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(QuartetError) as caught:
        client.events.tail(category=CATEGORY, after_event_id=missing)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_only_callers_who_may_list_events_may_tail_them(
    app: Client, sign_in: Any, anonymous: Client
) -> None:
    user: Principal = sign_in("user")
    for caller, code in [
        (user.client, grpc.StatusCode.PERMISSION_DENIED),
        (app, grpc.StatusCode.PERMISSION_DENIED),
        (anonymous, grpc.StatusCode.UNAUTHENTICATED),
    ]:
        with pytest.raises(QuartetError) as caught:
            caller.events.tail(category=CATEGORY)
        assert caught.value.code == code
    analyst: Principal = sign_in("analyst")
    with analyst.client.events.tail(category=CATEGORY, timeout=0.5) as tail:
        assert list(tail) == []


def test_tails_per_caller_are_bounded(settings: Settings) -> None:
    with running_server(dataclasses.replace(settings, max_streams_per_caller=2)) as target:
        admin = signed_in_admin(target, storage.base.db.obj)
        with (
            Client(target, token=admin) as first,
            first.events.tail(category=CATEGORY),
            first.events.tail(category=CATEGORY),
        ):
            with pytest.raises(QuartetError) as caught:
                first.events.tail(category=CATEGORY)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.metadata == {"budget": "streams_per_caller", "limit": "2"}
        with Client(target, token=admin) as again, again.events.tail(category=CATEGORY):
            pass  # the closed tails gave their places back


def signed_in_admin(target: str, database: peewee.Database) -> str:
    """An access token for a new admin account, made in the database."""
    with database.connection_context():
        account = accounts.create_account(f"{uuid.uuid4()}@example.com", None, "admin")
    return mint_token(account.id, "admin")


def test_a_tail_receives_events_every_worker_stores(database_url: str) -> None:
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": database_url}
    with server_process("--workers", "2", env=env) as server:
        database = storage.open_database(database_url)
        storage.bind(database)
        admin = signed_in_admin(server.address, database)
        storage.close(database)
        with Client(server.address, token=admin) as client:
            key = client.auth.create_application("web").api_key
            session = str(uuid.uuid4())
            sent_ids: list[str] = []
            with client.events.tail(session_id=session) as tail:
                # Fresh connections, which the kernel spreads over the workers, until both
                # stored some of the events: whichever serves the tail, the other stored some.
                while len(serving_pids(server.log, "SendEvent")) < 2 and len(sent_ids) < 200:
                    with Client(server.address, token=key, options=OWN_CONNECTION) as app:
                        message = sent(session)
                        app.events.send(message)
                        sent_ids.append(message.id)
                assert ids(received(tail, len(sent_ids))) == sent_ids
        wait_for(
            lambda: len(serving_pids(server.log, "SendEvent")) == 2, "SendEvent on both workers", 5
        )
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
