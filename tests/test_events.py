"""EventService through the SDK: validation, rejected events, idempotency, queries, durability."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import json_format

from quartet import storage
from quartet.client import Client, EventsNotSent, QuartetError, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.server.auth.tokens import new_api_key
from quartet.server.events.registry import Registry, register_file
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import applications, events
from tests.conftest import SECRET, Principal, mint_token
from tests.helpers import Background, server_process, table_locked

SESSION = "e2085be5-9137-4e4e-80b5-f1ffddc25423"
WHEN = "2021-01-01 09:15:27.243860"  # the challenge's own timestamp format (UTC)
UTC = datetime.UTC


def pageview(**changes: Any) -> pb.Event:
    fields: dict[str, Any] = {
        "session_id": SESSION,
        "category": "page interaction",
        "name": "pageview",
        "data": {"host": "www.ca.com", "path": "/"},
        "occurred_at": WHEN,
    }
    return event(**{**fields, **changes})


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime(2021, 1, 1, 9, 0, tzinfo=UTC) + datetime.timedelta(seconds=seconds)


@pytest.fixture
def app(client: Client, target: str) -> Iterator[Client]:
    """A client sending with an application's API key."""
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        yield sender


def rejected_with(app: Client, message: pb.Event) -> QuartetError:
    with pytest.raises(QuartetError) as caught:
        app.events.send(message)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "EVENT_REJECTED"
    return caught.value


# --- the challenge's three examples --------------------------------------------------------------


SEED_EXAMPLES = [
    ("page interaction", "pageview", {"host": "www.ca.com", "path": "/"}),
    (
        "page interaction",
        "cta click",
        {"host": "www.ca.com", "path": "/", "element": "chat bubble"},
    ),
    (
        "form interaction",
        "submit",
        {"host": "www.ca.com", "path": "/", "form": {"first_name": "John", "last_name": "Doe"}},
    ),
]


@pytest.mark.parametrize(("category", "name", "data"), SEED_EXAMPLES)
def test_seed_examples_are_stored(
    app: Client, client: Client, category: str, name: str, data: dict[str, Any]
) -> None:
    sent = event(session_id=SESSION, category=category, name=name, data=data, occurred_at=WHEN)
    reply = app.events.send(sent)
    assert not reply.duplicate
    stored = client.events.get(sent.id)
    assert stored == reply.event
    assert (stored.session_id, stored.category, stored.name) == (SESSION, category, name)
    assert json_format.MessageToDict(stored.data) == data
    assert stored.occur_time.ToDatetime(UTC) == datetime.datetime(
        2021, 1, 1, 9, 15, 27, 243860, UTC
    )
    assert stored.schema_version == 1
    assert stored.application_id == client.auth.list_applications().applications[0].id
    assert stored.receive_time.ToDatetime(UTC) > stored.occur_time.ToDatetime(UTC)


# --- everything that gets an event rejected, and kept --------------------------------------------

FUTURE = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
INVALID = {
    "missing host": (pageview(data={"path": "/"}), "data.host", "EVENT_PAYLOAD_INVALID"),
    "path not absolute": (
        pageview(data={"host": "h", "path": "home"}),
        "data.path",
        "EVENT_PAYLOAD_INVALID",
    ),
    "unexpected field": (
        pageview(data={"host": "h", "path": "/", "x": 1}),
        "data.x",
        "EVENT_PAYLOAD_INVALID",
    ),
    "wrong type": (pageview(data={"host": 42, "path": "/"}), "data.host", "EVENT_PAYLOAD_INVALID"),
    "no data": (pageview(data=None), "data.host", "EVENT_PAYLOAD_INVALID"),
    "cta without element": (
        pageview(name="cta click", data={"host": "h", "path": "/"}),
        "data.element",
        "EVENT_PAYLOAD_INVALID",
    ),
    "form not an object": (
        event(
            session_id=SESSION,
            category="form interaction",
            name="submit",
            data={"host": "h", "path": "/", "form": "John"},
            occurred_at=WHEN,
        ),
        "data.form",
        "EVENT_PAYLOAD_INVALID",
    ),
    "unknown type": (pageview(category="video", name="play"), "name", "EVENT_TYPE_UNKNOWN"),
    "future time": (pageview(occurred_at=FUTURE), "occur_time", "EVENT_TIME_IN_FUTURE"),
    "session not a UUID": (pageview(session_id="session-1"), "session_id", "FIELD_INVALID"),
    "no session": (pageview(session_id=""), "session_id", "FIELD_INVALID"),
    "no category": (pageview(category=""), "category", "FIELD_INVALID"),
    "name too long": (pageview(name="n" * 101), "name", "FIELD_INVALID"),
    "id not a UUID": (pageview(event_id="abc"), "id", "FIELD_INVALID"),
    "too large": (pageview(data={"host": "h" * 70_000, "path": "/"}), "", "EVENT_TOO_LARGE"),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_events_are_rejected_and_kept(app: Client, client: Client, case: str) -> None:
    message, field, reason = INVALID[case]
    error = rejected_with(app, message)
    assert (f"event.{field}".rstrip("."), reason) in [
        (v.field, v.reason) for v in error.field_violations
    ]
    assert list(client.events.iter()) == []  # nothing stored as an event
    (kept,) = client.events.iter_rejected(reason=reason)
    assert (field, reason) in [(v.field, v.reason) for v in kept.violations]
    assert kept.event.session_id == message.session_id  # the payload as it was sent
    assert kept.size_bytes == message.ByteSize()
    if reason != "EVENT_TOO_LARGE":  # kept whole
        assert kept.event.data == message.data and kept.data_prefix == ""
    assert kept.application_id == client.auth.list_applications().applications[0].id


def test_a_rejected_event_with_data_json_cannot_hold_is_kept_in_part(
    app: Client, client: Client
) -> None:
    message = pageview(occurred_at=FUTURE)
    message.data.update({"ratio": float("nan")})
    rejected_with(app, message)
    (kept,) = client.events.iter_rejected()
    assert not kept.event.HasField("data") and "NaN" in kept.data_prefix
    assert kept.event.occur_time == message.occur_time


def test_a_valid_event_whose_data_json_cannot_hold_is_rejected(app: Client, client: Client) -> None:
    # The form schema admits any number, but JSON has no NaN: storing "NaN" would hand every
    # reader of the data a document no JSON parser has to accept.
    data = {"host": "h", "path": "/", "form": {"ratio": float("nan")}}
    error = rejected_with(app, pageview(category="form interaction", name="submit", data=data))
    assert [(v.field, v.reason) for v in error.field_violations] == [
        ("event.data", "FIELD_INVALID")
    ]
    assert list(client.events.iter()) == []
    (kept,) = client.events.iter_rejected()
    assert "NaN" in kept.data_prefix


def nested(depth: int) -> dict[str, Any]:
    """An object nesting `depth` objects, itself the first."""
    data: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        data = {"next": data}
    return data


def sent_three_ways(app: Client, message: pb.Event) -> list[pb.Violation]:
    """Send message alone, in a batch and in a stream (with a new id each time); the violations
    of each rejection, which every way must agree on."""
    found: list[list[pb.Violation]] = []
    with pytest.raises(QuartetError) as caught:
        app.events.send(message)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "EVENT_REJECTED",
    )
    found.append(
        [
            pb.Violation(field=v.field.removeprefix("event."), reason=v.reason)
            for v in caught.value.field_violations
        ]
    )
    message.id = str(uuid.uuid4())
    (result,) = app.events.send_batch([message]).results
    assert result.status == pb.EVENT_STATUS_REJECTED
    found.append([pb.Violation(field=v.field, reason=v.reason) for v in result.violations])
    message.id = str(uuid.uuid4())
    reply = app.events.stream([message])
    assert (reply.stored_count, reply.rejected_count) == (0, 1)
    found.append(
        [pb.Violation(field=v.field, reason=v.reason) for v in reply.rejected[0].violations]
    )
    assert found[0] == found[1] == found[2]
    return found[0]


def test_data_nesting_too_deep_is_rejected_and_kept_without_it(app: Client, client: Client) -> None:
    """Data nesting 33 objects decoded, but was stored (or, rejected, made every page of
    rejected events holding it undecodable: no client could list them again)."""
    client.events.create_type("deep", "anything", {"type": "object"})
    at_limit = pageview(category="deep", name="anything", data=nested(32))
    assert app.events.send(at_limit).event.data == at_limit.data
    (stored,) = client.events.iter()
    assert stored.data == at_limit.data
    too_deep = pageview(category="deep", name="anything", data=nested(33))
    violations = sent_three_ways(app, too_deep)
    assert [(v.field, v.reason) for v in violations] == [("data", "LIMIT_EXCEEDED")]
    kept = list(client.events.iter_rejected(reason="LIMIT_EXCEEDED"))
    assert len(kept) == 3 and [e.id for e in client.events.iter()] == [at_limit.id]
    for rejected in kept:
        assert not rejected.event.HasField("data")
        assert rejected.data_prefix == json.dumps(nested(33), separators=(",", ":"))
        assert rejected.event.session_id == SESSION and rejected.size_bytes > 0
    # A schema violation beside it is not checked (the schema check would walk all of it).
    deep_and_late = pageview(category="deep", name="anything", data=nested(33))
    deep_and_late.occur_time.FromDatetime(FUTURE)
    reasons = {(v.field, v.reason) for v in sent_three_ways(app, deep_and_late)}
    assert reasons == {("data", "LIMIT_EXCEEDED"), ("occur_time", "EVENT_TIME_IN_FUTURE")}
    # At the limit, a rejection is kept whole, and its listing still decodes.
    late = pageview(category="deep", name="anything", data=nested(32), occurred_at=FUTURE)
    rejected_with(app, late)
    listed = {r.event.id: r for r in client.events.iter_rejected()}
    assert len(listed) == 7 and listed[late.id].event.data == late.data


def raw_call(app: Client, method: str, request: Any) -> Any:
    """Call an EventService method with request's bytes as they are: the SDK cannot build
    messages this deep (protobuf's own copy of them fails), nor can the generated stub."""
    path = f"/quartet.events.v1.EventService/{method}"
    reply = getattr(pb, f"{method}Response").FromString
    if method == "StreamEvents":
        stream = app.channel.stream_unary(path, lambda b: b, reply)
        return stream(iter(m.SerializeToString() for m in request), metadata=app.metadata)
    call = app.channel.unary_unary(path, lambda b: b, reply)
    return call(request.SerializeToString(), metadata=app.metadata, timeout=10)


def test_data_too_deep_to_decode_costs_only_its_event(app: Client, client: Client) -> None:
    """Data nesting 34 objects or more made the whole request undecodable: UNKNOWN (SendEvent,
    SendEvents) or INTERNAL (StreamEvents), nothing kept. Now that event alone is rejected and
    kept, without its data, on all three methods."""
    client.events.create_type("deep", "anything", {"type": "object"})
    depth = 40
    single = pb.SendEventRequest(event=pageview(category="deep", name="anything", data={}))
    single.event.data.update(nested(depth))
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(app, "SendEvent", single)
    error = QuartetError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "EVENT_REJECTED")
    assert [(v.field, v.reason) for v in error.field_violations] == [
        ("event.data", "LIMIT_EXCEEDED")
    ]
    batch = pb.SendEventsRequest(events=[pageview(), pageview(category="deep", name="anything")])
    batch.events[1].data.update(nested(depth))
    results = raw_call(app, "SendEvents", batch).results
    assert [r.status for r in results] == [pb.EVENT_STATUS_STORED, pb.EVENT_STATUS_REJECTED]
    assert [(v.field, v.reason) for v in results[1].violations] == [("data", "LIMIT_EXCEEDED")]
    assert results[1].event_id == batch.events[1].id
    streamed = [
        pb.StreamEventsRequest(events=[pageview()]),
        pb.StreamEventsRequest(events=[pageview(category="deep", name="anything")]),
    ]
    streamed[1].events[0].data.update(nested(depth))
    reply = raw_call(app, "StreamEvents", streamed)
    assert (reply.stored_count, reply.rejected_count) == (1, 1)
    assert [(r.index, r.event_id) for r in reply.rejected] == [(1, streamed[1].events[0].id)]
    stored = {e.id for e in client.events.iter()}
    assert stored == {batch.events[0].id, streamed[0].events[0].id}
    kept = list(client.events.iter_rejected(reason="LIMIT_EXCEEDED"))
    assert {r.event.id for r in kept} == {
        single.event.id,
        batch.events[1].id,
        streamed[1].events[0].id,
    }
    for rejected in kept:
        assert not rejected.event.HasField("data") and rejected.data_prefix == ""
        assert (rejected.event.category, rejected.event.session_id) == ("deep", SESSION)
        assert rejected.size_bytes > 0


def test_the_sdk_sends_data_too_deep_to_decode_for_the_server_to_keep(
    app: Client, client: Client
) -> None:
    """The SDK failed with protobuf's DecodeError before sending (its request constructors
    copy each event by decoding it), so such an event was neither sent nor kept."""
    client.events.create_type("deep", "anything", {"type": "object"})
    message = pageview(category="deep", name="anything", data=nested(40))
    violations = sent_three_ways(app, message)
    assert [(v.field, v.reason) for v in violations] == [("data", "LIMIT_EXCEEDED")]
    assert len(list(client.events.iter_rejected(reason="LIMIT_EXCEEDED"))) == 3


CONTROL_IN_DATA = {
    "NUL in a value": ({"host": "a\u0000b"}, "data.host"),
    "NUL in a key": ({"a\u0000b": "x"}, "data"),
    "NUL deep in a list": ({"form": {"list": ["ok", {"x": "\u0000"}]}}, "data.form.list.1.x"),
    "other control in a value": ({"host": "bell\u0007"}, "data.host"),
    "DEL in a value": ({"host": "del\u007f"}, "data.host"),
    "tab in a key": ({"a\tb": "x"}, "data"),
}


@pytest.mark.parametrize("case", CONTROL_IN_DATA)
def test_control_characters_in_data_are_rejected_and_kept(
    app: Client, client: Client, case: str
) -> None:
    """NUL (which PostgreSQL cannot hold in text or jsonb) and other control characters were
    stored; a value may hold tabs and line breaks, as JSON text does, and nothing else."""
    client.events.create_type("notes", "note", {"type": "object"})
    data, path = CONTROL_IN_DATA[case]
    message = pageview(category="notes", name="note", data=data)
    violations = sent_three_ways(app, message)
    assert [(v.field, v.reason) for v in violations] == [(path, "FIELD_INVALID")]
    assert list(client.events.iter()) == []
    kept = list(client.events.iter_rejected())
    assert len(kept) == 3
    for rejected in kept:
        assert rejected.event.data == message.data and rejected.data_prefix == ""
        (violation,) = rejected.violations
        assert violation.field == path and "control characters" in violation.description


def test_a_payload_full_of_control_characters_lists_ten(app: Client, client: Client) -> None:
    client.events.create_type("notes", "note", {"type": "object"})
    message = pageview(category="notes", name="note", data={f"k{n}": "\u0000" for n in range(500)})
    violations = sent_three_ways(app, message)
    assert len(violations) == 11
    assert violations[-1].field == "data"
    (kept, *_) = client.events.iter_rejected()
    assert kept.violations[-1].description == "holds 490 more control characters"


def test_tabs_and_line_breaks_in_data_values_are_stored(app: Client, client: Client) -> None:
    client.events.create_type("notes", "note", {"type": "object"})
    message = pageview(
        category="notes", name="note", data={"text": "line\r\nnext\tcolumn", "n": [{"k": "\n"}]}
    )
    assert app.events.send(message).event.data == message.data
    assert [e.data for e in client.events.iter()] == [message.data]


def test_ids_the_server_assigns_are_time_ordered_version_7_uuids(app: Client) -> None:
    send = app.channel.unary_unary(
        "/quartet.events.v1.EventService/SendEvents",
        request_serializer=pb.SendEventsRequest.SerializeToString,
        response_deserializer=pb.SendEventsResponse.FromString,
    )
    sent = pageview()
    sent.ClearField("id")
    reply = send(pb.SendEventsRequest(events=[sent] * 300), metadata=app.metadata, timeout=10)
    ids = [result.event_id for result in reply.results]
    assert len(set(ids)) == 300
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 7, uuid.RFC_4122)
    assert ids == sorted(ids)  # time-ordered: the unique index on ids grows at its end


def test_a_too_large_event_is_kept_in_part(
    app: Client, client: Client, db: peewee.Database
) -> None:
    """An event over the size limit is kept without its data, with the start of that and the
    size: a rejection must not take the room the limit protects."""
    data = {"list": [1.5, True, None, {"text": "b" * 1_000_000}]}  # one key: maps have no order
    message = pageview(data=data, name="n" * 5000)
    rejected_with(app, message)
    (kept,) = client.events.iter_rejected(reason="EVENT_TOO_LARGE")
    assert kept.size_bytes == message.ByteSize() > 1_000_000
    assert kept.data_prefix == json.dumps(data, separators=(",", ":"))[:4096]
    assert not kept.event.HasField("data")
    assert (kept.event.id, kept.event.session_id) == (message.id, SESSION)
    assert kept.event.name == "n" * 256 and kept.event.occur_time == message.occur_time
    with db.connection_context():
        (row,) = events.RejectedEvent.select()
        assert len(row.event) + len(row.data_prefix or "") + len(row.violations) < 6000


def without_occur_time() -> pb.Event:
    message = pageview()
    message.ClearField("occur_time")
    return message


def occurring_in_year_10000() -> pb.Event:
    message = pageview()
    message.occur_time.seconds = 253_402_300_800  # past Timestamp's range, which ends in 9999
    return message


def with_bad_nanos() -> pb.Event:
    message = pageview()
    message.occur_time.nanos = -1
    return message


@pytest.mark.parametrize("make", [without_occur_time, occurring_in_year_10000, with_bad_nanos])
def test_missing_or_invalid_occur_time_is_rejected_and_kept(
    app: Client, client: Client, make: Callable[[], pb.Event]
) -> None:
    message = make()
    error = rejected_with(app, message)
    assert ("event.occur_time", "FIELD_INVALID") in [
        (v.field, v.reason) for v in error.field_violations
    ]
    (kept,) = client.events.iter_rejected(reason="FIELD_INVALID")
    assert [(v.field, v.reason) for v in kept.violations] == [("occur_time", "FIELD_INVALID")]
    # JSON cannot hold a timestamp out of range: the event is kept without it.
    assert not kept.event.HasField("occur_time")
    assert (kept.event.id, kept.event.data) == (message.id, message.data)
    assert kept.size_bytes == message.ByteSize()


def test_every_problem_is_reported_at_once(app: Client) -> None:
    error = rejected_with(app, pageview(session_id="x", data={"host": 1}, occurred_at=FUTURE))
    assert {(v.field, v.reason) for v in error.field_violations} == {
        ("event.session_id", "FIELD_INVALID"),
        ("event.occur_time", "EVENT_TIME_IN_FUTURE"),
        ("event.data.host", "EVENT_PAYLOAD_INVALID"),
        ("event.data.path", "EVENT_PAYLOAD_INVALID"),
    }


def test_small_clock_skew_is_tolerated(app: Client) -> None:
    soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=30)
    assert app.events.send(pageview(occurred_at=soon)).event.id


def test_rejected_events_are_filtered_and_paged(app: Client, client: Client, target: str) -> None:
    other = client.auth.create_application("mobile")
    with Client(target, token=other.api_key) as mobile:
        for sender in (app, mobile, app):
            with pytest.raises(QuartetError):
                sender.events.send(pageview(occurred_at=FUTURE))
        with pytest.raises(QuartetError):
            mobile.events.send(pageview(session_id="x"))
    by_reason = list(client.events.iter_rejected(reason="EVENT_TIME_IN_FUTURE", page_size=1))
    assert len(by_reason) == 3
    assert [r.id for r in by_reason] == sorted((r.id for r in by_reason), reverse=True)
    assert len(list(client.events.iter_rejected(application_id=other.application.id))) == 2
    assert len(list(client.events.iter_rejected(reason="FIELD_INVALID"))) == 1
    later = datetime.datetime.now(UTC) + datetime.timedelta(minutes=1)
    assert list(client.events.iter_rejected(rejected_after=later)) == []
    with pytest.raises(QuartetError) as caught:
        client.events.list_rejected(reason="NOT_A_REASON")
    assert [v.field for v in caught.value.field_violations] == ["reason"]


# --- idempotency ---------------------------------------------------------------------------------


def test_resending_an_event_stores_it_once(app: Client, client: Client) -> None:
    message = pageview()
    first = app.events.send(message)
    again = app.events.send(message)
    assert again.duplicate and again.event == first.event
    batch = app.events.send_batch([message, pageview(), message])
    assert [r.status for r in batch.results] == [
        pb.EVENT_STATUS_DUPLICATE,
        pb.EVENT_STATUS_STORED,
        pb.EVENT_STATUS_DUPLICATE,
    ]
    streamed = app.events.stream([message, message])
    assert (streamed.stored_count, streamed.duplicate_count) == (0, 2)
    assert len(list(client.events.iter())) == 2


def test_an_id_another_application_sent_reveals_nothing_of_its_event(
    app: Client, client: Client, target: str
) -> None:
    """Ids are global, but applications may not read events: resending another application's
    event id is a rejection that says nothing of that event, never a duplicate carrying it."""
    original = pageview(data={"host": "secret.example.com", "path": "/private"})
    app.events.send(original)
    other = client.auth.create_application("mobile")
    copy = pageview(event_id=original.id)
    with Client(target, token=other.api_key) as mobile:
        with pytest.raises(QuartetError) as caught:
            mobile.events.send(copy)
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert caught.value.reason == "RESOURCE_ALREADY_EXISTS"
        assert caught.value.resource == ("event", original.id)
        assert [(v.field, v.reason) for v in caught.value.field_violations] == [
            ("event.id", "RESOURCE_ALREADY_EXISTS")
        ]
        assert "secret" not in str(caught.value.status)
        batch = mobile.events.send_batch([copy, pageview()])
        assert [r.status for r in batch.results] == [
            pb.EVENT_STATUS_REJECTED,
            pb.EVENT_STATUS_STORED,
        ]
        assert [(v.field, v.reason) for v in batch.results[0].violations] == [
            ("id", "RESOURCE_ALREADY_EXISTS")
        ]
        streamed = mobile.events.stream([copy])
        assert (streamed.stored_count, streamed.duplicate_count) == (0, 0)
        assert [(r.index, r.event_id) for r in streamed.rejected] == [(0, original.id)]
    assert "secret" not in str(batch) + str(streamed)
    stored = client.events.get(original.id)
    assert stored.data == original.data  # untouched
    kept = list(client.events.iter_rejected(reason="RESOURCE_ALREADY_EXISTS"))
    assert len(kept) == 3
    assert {(k.application_id, k.event.id, k.event.data["host"]) for k in kept} == {
        (other.application.id, original.id, "www.ca.com")
    }
    assert all(k.event.occur_time == original.occur_time and k.size_bytes > 0 for k in kept)
    assert app.events.send(original).duplicate  # the sender's own resend is still a duplicate


def test_a_batch_stores_the_valid_and_keeps_the_rest(app: Client, client: Client) -> None:
    good, bad = pageview(), pageview(occurred_at=FUTURE)
    results = app.events.send_batch([good, bad]).results
    assert [(r.event_id, r.status) for r in results] == [
        (good.id, pb.EVENT_STATUS_STORED),
        (bad.id, pb.EVENT_STATUS_REJECTED),
    ]
    assert [v.reason for v in results[1].violations] == ["EVENT_TIME_IN_FUTURE"]
    assert [e.id for e in client.events.iter()] == [good.id]
    assert len(list(client.events.iter_rejected())) == 1


def test_send_batches_answers_every_event_batch_by_batch(app: Client, client: Client) -> None:
    sent = [pageview() for _ in range(7)]
    sent[5] = pageview(occurred_at=FUTURE)
    batches = list(app.events.send_batches(sent, batch_size=3))
    assert [len(batch) for batch, _ in batches] == [3, 3, 1]
    answered = [(r.event_id, r.status) for _, reply in batches for r in reply.results]
    assert answered == [
        (e.id, pb.EVENT_STATUS_REJECTED if i == 5 else pb.EVENT_STATUS_STORED)
        for i, e in enumerate(sent)
    ]
    assert batches[1][1].results[2].violations[0].reason == "EVENT_TIME_IN_FUTURE"
    again = [r.status for _, reply in app.events.send_batches(sent[:2]) for r in reply.results]
    assert again == [pb.EVENT_STATUS_DUPLICATE] * 2
    with pytest.raises(ValueError):
        next(app.events.send_batches(sent, batch_size=1001))
    assert len(list(client.events.iter())) == 6


def big_event() -> pb.Event:
    """A valid event of almost QUARTET_MAX_EVENT_BYTES (64 KiB): form values have no length cap."""
    data = {"host": "h", "path": "/", "form": {"comment": "c" * 64_000}}
    return pageview(category="form interaction", name="submit", data=data)


# 140 events of 64 KB: more than the default batch limit (8 MiB), less than gRPC's 16 MiB.
@pytest.mark.parametrize(("size", "make"), [(0, pageview), (1001, pageview), (140, big_event)])
def test_batch_size_limits(
    app: Client, client: Client, size: int, make: Callable[[], pb.Event]
) -> None:
    with pytest.raises(QuartetError) as caught:
        app.events.send_batch([make() for _ in range(size)])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["events"]
    if make is big_event:
        assert caught.value.reason == "LIMIT_EXCEEDED"
        assert caught.value.metadata == {"max_batch_bytes": str(8 * 1024 * 1024)}
    assert list(client.events.iter()) == [] and list(client.events.iter_rejected()) == []


def test_streamed_message_size_limits(app: Client, client: Client) -> None:
    """The same limits hold per message of a stream (sent here through the generated stub: the
    SDK's stream() splits its messages to stay under them)."""
    stub = event_service_pb2_grpc.EventServiceStub(app.channel)
    for events_of_second_message in ([pageview() for _ in range(1001)], [big_event()] * 140):
        messages = [
            pb.StreamEventsRequest(events=[pageview()]),
            pb.StreamEventsRequest(events=events_of_second_message),
        ]
        with pytest.raises(grpc.RpcError) as caught:
            stub.StreamEvents(iter(messages), metadata=app.metadata, timeout=30)
        error = QuartetError.from_rpc_error(caught.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in error.field_violations] == ["messages[1].events"]
    assert list(client.events.iter_rejected()) == []


def test_stream_reports_rejections_by_position(app: Client, client: Client) -> None:
    sent = [pageview() for _ in range(25)]
    sent[3] = pageview(occurred_at=FUTURE)
    sent[20] = pageview(category="unknown")
    reply = app.events.stream(sent, batch_size=7)
    assert reply.stored_count == 23 and reply.duplicate_count == 0
    assert [(r.index, r.event_id) for r in reply.rejected] == [(3, sent[3].id), (20, sent[20].id)]
    assert len(list(client.events.iter())) == 23


def test_a_long_stream_counts_everything_and_lists_the_first_rejections(
    app: Client, client: Client
) -> None:
    """10,000 events in 200 messages, written four at a time: every count right, and the reply
    lists the first 1000 of its 1429 rejections."""
    resent = [pageview() for _ in range(100)]
    app.events.send_batch(resent)

    def events() -> Iterator[pb.Event]:
        for n in range(10_000):
            if n % 7 == 0:
                yield pageview(category="unknown")
            elif n % 100 == 1:
                yield resent[n // 100]
            else:
                yield pageview()

    reply = app.events.stream(events(), batch_size=50, timeout=120)
    rejected = [n for n in range(10_000) if n % 7 == 0]
    duplicates = sum(1 for n in range(10_000) if n % 100 == 1 and n % 7)
    assert reply.duplicate_count == duplicates == 86
    assert reply.stored_count == 10_000 - 1429 - duplicates
    assert reply.rejected_count == len(rejected) == 1429
    assert [r.index for r in reply.rejected] == rejected[:1000]
    assert count(client) == 100 + reply.stored_count
    assert len(list(client.events.iter_rejected(page_size=1000))) == 1429


def test_an_empty_stream_message_leaves_the_writer_working(app: Client, client: Client) -> None:
    # The contract allows a message without events; the writer thread used to die on one (an
    # UnboundLocalError), and every later send of that server process waited for ever.
    stream = app.channel.stream_unary(
        "/quartet.events.v1.EventService/StreamEvents",
        request_serializer=pb.StreamEventsRequest.SerializeToString,
        response_deserializer=pb.StreamEventsResponse.FromString,
    )
    reply = stream(iter([pb.StreamEventsRequest()]), timeout=5, metadata=app.metadata)
    assert reply.stored_count == 0 and not reply.rejected
    assert not app.events.send(pageview(), timeout=5).duplicate
    assert len(list(client.events.iter())) == 1


# --- concurrency and order -----------------------------------------------------------------------


def test_concurrent_senders_on_one_session(client: Client, target: str) -> None:
    created = [client.auth.create_application(name) for name in ("web", "mobile")]
    sent: list[list[str]] = [[], []]

    def send(index: int) -> None:
        with Client(target, token=created[index].api_key) as sender:
            for n in range(60):
                message = pageview(occurred_at=at(n))
                if n % 3:
                    sender.events.send(message)
                else:
                    sender.events.send_batch([message])
                sent[index].append(message.id)

    threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = list(client.events.iter(session_id=SESSION, page_size=37))
    assert sorted(e.id for e in listed) == sorted(sent[0] + sent[1])
    times = [e.occur_time.ToDatetime(UTC) for e in listed]
    assert times == sorted(times)
    assert {e.application_id for e in listed} == {c.application.id for c in created}


def test_order_is_occurrence_time_then_arrival(app: Client, client: Client) -> None:
    late, early = pageview(occurred_at=at(10)), pageview(occurred_at=at(5))
    same = [pageview(occurred_at=at(7)) for _ in range(3)]
    for message in (late, early, *same):
        app.events.send(message)
    listed = [e.id for e in client.events.iter(session_id=SESSION)]
    assert listed == [early.id, *(m.id for m in same), late.id]
    newest = [e.id for e in client.events.iter(session_id=SESSION, newest_first=True, page_size=2)]
    assert newest == list(reversed(listed))


def test_a_batch_is_stored_in_the_order_sent(app: Client, client: Client) -> None:
    """Events of a batch arrive together: with equal occurrence times they are listed in the
    order sent (not that of their ids), and a second copy in the batch is a duplicate."""
    ids = sorted((str(uuid.uuid4()) for _ in range(5)), reverse=True)
    batch = [pageview(event_id=event_id) for event_id in ids]
    reply = app.events.send_batch([*batch, batch[1]])
    assert [r.status for r in reply.results] == [pb.EVENT_STATUS_STORED] * 5 + [
        pb.EVENT_STATUS_DUPLICATE
    ]
    assert [e.id for e in client.events.iter(session_id=SESSION)] == ids


def test_text_comes_back_exactly_as_sent(app: Client, client: Client) -> None:
    """Backslashes, what PostgreSQL's COPY would read as NULL or a tab, and characters beyond
    ASCII are stored and listed unchanged, in data and in the type's category and name."""
    tricky = "\\N \\t \\\\ tab\tnewline\n é 😀 \u2028"
    category, name = "back\\slash \\N", "é \\t 😀"
    client.events.create_type(category, name, {"type": "object"})
    sent = [
        pageview(data={"host": tricky, "path": "/\\N"}),
        pageview(category=category, name=name, data={"text": tricky}),
    ]
    assert {r.status for r in app.events.send_batch(sent).results} == {pb.EVENT_STATUS_STORED}
    stored = {e.id: e for e in client.events.iter(session_id=SESSION)}
    for message in sent:
        found = stored[message.id]
        assert (found.category, found.name) == (message.category, message.name)
        assert json_format.MessageToDict(found.data) == json_format.MessageToDict(message.data)


# --- queries -------------------------------------------------------------------------------------


@pytest.fixture
def history(app: Client, client: Client, target: str) -> dict[str, Any]:
    """30 events: 2 sessions x (pageviews, cta clicks) over 30 seconds; 5 from a second app."""
    other = str(uuid.uuid4())
    messages = []
    for n in range(25):
        name = "pageview" if n % 2 else "cta click"
        data = {"host": "h", "path": "/"} | ({} if n % 2 else {"element": "button"})
        messages.append(
            event(
                session_id=SESSION if n < 20 else other,
                category="page interaction",
                name=name,
                data=data,
                occurred_at=at(n),
            )
        )
    app.events.send_batch(messages)
    mobile = client.auth.create_application("mobile")
    with Client(target, token=mobile.api_key) as sender:
        sender.events.send_batch(
            [pageview(occurred_at=at(100 + n), session_id=other) for n in range(5)]
        )
    return {"other": other, "mobile": mobile.application.id}


def count(client: Client, **filters: Any) -> int:
    return len(list(client.events.iter(**filters)))


def test_every_filter(client: Client, history: dict[str, Any]) -> None:
    assert count(client) == 30
    assert count(client, session_id=SESSION) == 20
    assert count(client, session_id=history["other"]) == 10
    assert count(client, category="page interaction") == 30
    assert count(client, category="page interaction", name="cta click") == 13
    assert count(client, category="form interaction") == 0
    assert count(client, application_id=history["mobile"]) == 5
    assert count(client, occurred_after=at(10), occurred_before=at(20)) == 10
    assert count(client, occurred_before=at(0)) == 0
    assert (
        count(
            client,
            session_id=SESSION,
            category="page interaction",
            name="pageview",
            occurred_after=at(10),
        )
        == 5
    )


def test_pages_walk_everything_once(client: Client, history: dict[str, Any]) -> None:
    first = client.events.list(page_size=10)
    ids = [e.id for e in first.events]
    token = first.next_page_token
    while token:
        page = client.events.list(page_size=10, page_token=token)
        ids += [e.id for e in page.events]
        token = page.next_page_token
    assert len(ids) == len(set(ids)) == 30
    with pytest.raises(QuartetError) as caught:
        client.events.list(page_size=10, page_token=first.next_page_token, category="x")
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"session_id": "not-a-uuid"}, "session_id"),
        ({"name": "pageview"}, "name"),
        ({"application_id": -1}, "application_id"),
        ({"page_size": -5}, "page_size"),
    ],
)
def test_invalid_filters(client: Client, filters: dict[str, Any], field: str) -> None:
    with pytest.raises(QuartetError) as caught:
        client.events.list(**filters)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [field]


def test_get_unknown_or_malformed_event(client: Client) -> None:
    with pytest.raises(QuartetError) as missing:
        client.events.get(str(uuid.uuid4()))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(QuartetError) as malformed:
        client.events.get("42")
    assert malformed.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"session_id": SESSION},
        {"category": "page interaction"},
        {"category": "page interaction", "name": "pageview"},
        {"occur_time_start": at(0), "occur_time_end": at(60)},
        {"session_id": SESSION, "occur_time_start": at(0), "newest_first": True},
        {"category": "page interaction", "name": "pageview", "occur_time_end": at(60)},
        {"after": (at(5).replace(tzinfo=None), 10)},
    ],
    ids=str,
)
def test_every_event_query_is_served_by_an_index(
    db: peewee.Database, filters: dict[str, Any]
) -> None:
    """No full scan and no sort for any filter combination, so queries stay fast at millions of
    rows. PostgreSQL is told to avoid sequential scans, so that it uses an index whenever one fits
    even on these tiny tables."""
    assert_served_by_an_index(db, events.events_query(**filters).limit(50))


def assert_served_by_an_index(db: peewee.Database, query: peewee.ModelSelect[Any]) -> str:
    """The query's plan, having checked that it reads an index and sorts nothing."""
    sql, params = query.sql()
    with db.connection_context():
        if isinstance(db, peewee.PostgresqlDatabase):
            # Large tables get ordered index scans; on tiny ones the planner needs telling.
            db.execute_sql("SET enable_seqscan = off")  # type: ignore[no-untyped-call]
            db.execute_sql("SET enable_bitmapscan = off")  # type: ignore[no-untyped-call]
            plan = " ".join(row[0] for row in db.execute_sql(f"EXPLAIN {sql}", params))  # type: ignore[no-untyped-call]
            db.execute_sql("RESET ALL")  # type: ignore[no-untyped-call]
            assert "Seq Scan" not in plan and "Sort" not in plan, plan
        else:
            rows = db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)  # type: ignore[no-untyped-call]
            plan = " ".join(row[-1] for row in rows)
            assert "USING" in plan and "TEMP B-TREE" not in plan, plan
            assert not plan.startswith("SCAN ") or "INDEX" in plan.split(" SEARCH")[0], plan
    return plan


@pytest.mark.parametrize(
    "filters",
    [
        {"reason": "EVENT_TIME_IN_FUTURE"},
        {"reason": "EVENT_TIME_IN_FUTURE", "reject_time_start": at(0)},
        {"reason": "FIELD_INVALID", "after": (at(5).replace(tzinfo=None), 10)},
        {"reason": "FIELD_INVALID", "application_id": 3, "reject_time_end": at(60)},
    ],
    ids=str,
)
def test_every_rejected_event_query_by_reason_is_served_by_an_index(
    db: peewee.Database, filters: dict[str, Any]
) -> None:
    """The reason filter reads that reason's rows of rejected_event_reason, newest first, and
    looks each rejected event up by its key: no full scan, no sort (as for events, above)."""
    plan = assert_served_by_an_index(db, events.rejected_query(**filters).limit(50))
    if isinstance(db, peewee.PostgresqlDatabase):
        assert "rejected_event_reason_pkey" in plan and "(reason = " in plan, plan
    else:  # not an ordered scan of every rejected event, filtered row by row
        assert plan.startswith("SEARCH") and "rejected_event_reason" in plan, plan
        assert "(reason=?" in plan, plan


# --- event types ---------------------------------------------------------------------------------


VIDEO = {
    "type": "object",
    "properties": {"video_id": {"type": "string"}, "seconds": {"type": "number", "minimum": 0}},
    "required": ["video_id"],
}


def test_seed_types_are_registered(app: Client) -> None:
    types = list(app.events.iter_types())
    assert [(t.category, t.name, t.version) for t in types] == [
        ("form interaction", "submit", 1),
        ("page interaction", "cta click", 1),
        ("page interaction", "pageview", 1),
    ]


def test_registering_types_and_versions(client: Client, app: Client) -> None:
    play = {"category": "video", "name": "play"}
    assert client.events.create_type("video", "play", VIDEO).version == 1
    assert app.events.send(pageview(**play, data={"video_id": "v1", "seconds": 3})).event
    rejected_with(app, pageview(**play, data={"seconds": -1}))
    stricter = {**VIDEO, "required": ["video_id", "seconds"]}
    assert client.events.create_type("video", "play", stricter).version == 2
    error = rejected_with(app, pageview(**play, data={"video_id": "v1"}))
    assert ("event.data.seconds", "EVENT_PAYLOAD_INVALID") in [
        (v.field, v.reason) for v in error.field_violations
    ]
    stored = app.events.send(pageview(**play, data={"video_id": "v1", "seconds": 1})).event
    assert stored.schema_version == 2


def test_events_the_fast_validator_refuses_are_never_stored(client: Client, app: Client) -> None:
    """fastjsonschema accepts events; jsonschema lists the problems of those it refused. They
    must agree: jsonschema alone checks no `format`, and matches `pattern` differently."""
    schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "format": "email"},
            "code": {"type": "string", "pattern": "^a$"},
        },
    }
    client.events.create_type("signup", "done", schema)
    kind = {"category": "signup", "name": "done"}
    error = rejected_with(app, pageview(**kind, data={"email": "x"}))
    assert [(v.field, v.reason) for v in error.field_violations] == [
        ("event.data.email", "EVENT_PAYLOAD_INVALID")
    ]
    # fastjsonschema refuses "a\n" for ^a$, jsonschema finds nothing wrong: a generic violation.
    error = rejected_with(app, pageview(**kind, data={"code": "a\n"}))
    assert [(v.field, v.reason) for v in error.field_violations] == [
        ("event.data", "EVENT_PAYLOAD_INVALID")
    ]
    assert "pattern" in error.field_violations[0].description
    batch = app.events.send_batch([pageview(**kind, data={"email": "x"})])
    assert [r.status for r in batch.results] == [pb.EVENT_STATUS_REJECTED]
    assert app.events.send(pageview(**kind, data={"email": "a@example.com", "code": "a"}))
    assert count(client) == 1
    assert len(list(client.events.iter_rejected(reason="EVENT_PAYLOAD_INVALID"))) == 3


def test_draft_2020_12_keywords_are_enforced(client: Client, app: Client) -> None:
    """fastjsonschema knows drafts 4 to 7 and would let these through unchecked."""
    schema = {
        "type": "object",
        "properties": {"plan": {"type": "string"}, "seats": {"type": "integer"}},
        "dependentRequired": {"plan": ["seats"]},
        "unevaluatedProperties": False,
    }
    client.events.create_type("billing", "upgrade", schema)
    kind = {"category": "billing", "name": "upgrade"}
    error = rejected_with(app, pageview(**kind, data={"plan": "team"}))
    assert "'seats' is a dependency of 'plan'" in error.field_violations[0].description
    error = rejected_with(app, pageview(**kind, data={"plan": "team", "seats": 3, "x": 1}))
    assert "Unevaluated properties" in error.field_violations[0].description
    assert app.events.send(pageview(**kind, data={"plan": "team", "seats": 3}))
    assert count(client) == 1


def test_violations_quote_no_more_than_a_few_hundred_characters(app: Client) -> None:
    error = rejected_with(app, pageview(data={"host": "h" * 60_000, "path": "/"}))
    (violation,) = error.field_violations
    assert violation.field == "event.data.host" and len(violation.description) <= 300


def test_concurrent_registrations_each_get_their_own_version(client: Client, app: Client) -> None:
    versions: list[int] = []
    failures: list[QuartetError] = []

    def register(n: int) -> None:
        for _ in range(3):
            try:
                schema = {**VIDEO, "description": f"sender {n}"}
                versions.append(client.events.create_type("video", "play", schema).version)
            except QuartetError as error:
                failures.append(error)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(versions) == list(range(1, 19))
    (play,) = [t for t in client.events.iter_types() if t.category == "video"]
    assert play.version == 18
    # The server validates with the latest version, whichever registration finished last.
    sent = app.events.send(pageview(category="video", name="play", data={"video_id": "v"}))
    assert sent.event.schema_version == 18


def video_play(version: int) -> events.EventType:
    """The row of version `version` of video/play, its schema titled with its version."""
    schema = json.dumps({**VIDEO, "title": str(version)})
    return events.EventType(category="video", name="play", version=version, schema=schema)


def test_a_reload_read_before_a_registration_never_takes_its_version_back() -> None:
    """A reload announced by registration 17 may read the types before 18 commits, and finish
    after this process answered (and added) 18: the validating schema stays 18."""
    registry = Registry()
    registry.update([video_play(17)], registry.generation)
    since = registry.generation  # the reload starts reading
    registry.add(video_play(18))
    registry.update([video_play(17)], since)
    schema = registry.get("video", "play")
    assert schema is not None and schema.version == 18 and schema.document["title"] == "18"


def test_a_reload_nothing_happened_during_is_taken_as_it_is() -> None:
    """A database restored to an earlier state is followed: types gone, versions lower."""
    registry = Registry()
    registry.update([video_play(17)], registry.generation)
    compiled = registry.get("video", "play")
    registry.update([video_play(17)], registry.generation)
    assert registry.get("video", "play") is compiled  # the same schema is not compiled again
    registry.update([video_play(3)], registry.generation)
    schema = registry.get("video", "play")
    assert schema is not None and schema.version == 3 and schema.document["title"] == "3"
    registry.update([], registry.generation)
    assert registry.get("video", "play") is None


def test_a_type_registered_while_it_was_looked_up_is_not_remembered_as_missing() -> None:
    registry = Registry()
    asked = registry.unknown([("video", "play")])
    since = registry.generation  # the lookup starts reading: nothing yet
    registry.forget_missing()  # video/play registered elsewhere, and announced
    registry.learn(asked, [], since)
    assert registry.unknown([("video", "play")]) == [("video", "play")]  # looked up again
    registry.learn(asked, [], registry.generation)  # a lookup after it, and nothing found
    assert registry.unknown([("video", "play")]) == []


@pytest.mark.parametrize(
    ("category", "schema", "field"),
    [("video", {"type": "nonsense"}, "schema"), ("", VIDEO, "category"), ("video", {}, "schema")],
)
def test_invalid_event_types(
    client: Client, category: str, schema: dict[str, Any], field: str
) -> None:
    with pytest.raises(QuartetError) as caught:
        client.events.create_type(category, "play", schema)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in caught.value.field_violations]


def test_unknown_types_can_be_accepted(settings: Settings, admin: Principal) -> None:
    accepting = dataclasses.replace(settings, unknown_event_types="accept")
    with running_server(accepting) as target:
        with Client(target, token=mint_token(admin.id, "admin")) as admin_client:
            api_key = admin_client.auth.create_application("web").api_key
        with Client(target, token=api_key) as sender:
            stored = sender.events.send(pageview(category="video", name="play", data={"a": 1}))
            assert stored.event.schema_version == 0
            rejected_with(sender, pageview(data={"path": "/"}))  # known types still validate


def test_event_types_file_registers_at_start(
    settings: Settings, tmp_path: Path, admin: Principal
) -> None:
    path = tmp_path / "types.json"
    path.write_text(json.dumps([{"category": "video", "name": "play", "schema": VIDEO}]))
    with_file = dataclasses.replace(settings, event_types_file=str(path))
    token = mint_token(admin.id, "admin")
    for _ in range(2):  # the second start finds the same schema and registers nothing
        with running_server(with_file) as target, Client(target, token=token) as client:
            types = {(t.category, t.name): t.version for t in client.events.iter_types()}
            assert types[("video", "play")] == 1


@pytest.mark.parametrize(
    ("category", "name"),
    [("video", "pl\x00ay"), ("vid\neo", "play"), ("video", "p" * 101), (" ", "play")],
)
def test_an_event_types_file_with_bad_names_registers_nothing(
    db: peewee.Database, tmp_path: Path, category: str, name: str
) -> None:
    path = tmp_path / "types.json"
    path.write_text(json.dumps([{"category": category, "name": name, "schema": VIDEO}]))
    with pytest.raises(ValueError, match="category and name"):
        register_file(db, path)
    with db.connection_context():
        assert (
            not events.EventType.select()
            .where(events.EventType.category != "page interaction")
            .where(events.EventType.category != "form interaction")
            .exists()
        )


# --- who may send and read -----------------------------------------------------------------------


def test_only_applications_send(
    sign_in: Callable[..., Principal], client: Client, anonymous: Client
) -> None:
    for caller in (sign_in("user").client, sign_in("analyst").client, client):
        with pytest.raises(QuartetError) as caught:
            caller.events.send(pageview())
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(QuartetError) as unauthenticated:
        anonymous.events.send(pageview())
    assert unauthenticated.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_only_analysts_read(app: Client, sign_in: Callable[..., Principal]) -> None:
    app.events.send(pageview())
    for caller in (app, sign_in("user").client):
        with pytest.raises(QuartetError) as caught:
            caller.events.list()
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert len(sign_in("analyst").client.events.list().events) == 1


# --- the buffered sender -------------------------------------------------------------------------


def test_buffered_sender_batches_flushes_and_reports_rejections(
    app: Client, client: Client
) -> None:
    rejected: list[str] = []
    with app.events.buffered(
        batch_size=100, flush_interval=30, on_rejected=lambda m, r: rejected.append(m.id)
    ) as sender:
        for n in range(250):
            sender.add(pageview(occurred_at=at(n)))
        bad = pageview(occurred_at=FUTURE)
        sender.add(bad)
        sender.flush()  # well before flush_interval: flush sends the partial batch now
        assert count(client) == 250
        sender.add(pageview())
    assert count(client) == 251  # close() flushed the last one
    assert rejected == [bad.id]
    assert sender.sent == 251 and [m.id for m, _ in sender.rejected] == [bad.id]


def test_buffered_sender_surfaces_permanent_failures(target: str) -> None:
    with Client(target, token="qk_0000000000000000_nope") as forged:
        sender = forged.events.buffered(batch_size=10)
        added = [pageview() for _ in range(3)]
        for message in added:
            sender.add(message)
        with pytest.raises(EventsNotSent) as caught:
            sender.flush()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert [m.id for m in caught.value.unsent] == [m.id for m in added]
        with pytest.raises(QuartetError):
            sender.close()
        assert [m.id for m in sender.unsent] == [m.id for m in added]


def test_buffered_sender_and_stream_split_batches_by_size(app: Client, client: Client) -> None:
    """150 events of 64 KB (9.6 MB) are more than the server's 8 MiB per batch: split."""
    with app.events.buffered(batch_size=500, flush_interval=30) as sender:
        for _ in range(150):
            sender.add(big_event())
    assert (sender.sent, sender.batches) == (150, 2)
    reply = app.events.stream(big_event() for _ in range(150))
    assert (reply.stored_count, reply.rejected_count) == (150, 0)
    assert count(client) == 300
    with (
        app.events.buffered(max_batch_bytes=1000) as small,
        pytest.raises(ValueError, match="more than a whole batch"),
    ):
        small.add(big_event())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def register_application(database_url: str) -> tuple[int, str]:
    """An application's id and API key, made in the database directly (no server running)."""
    full_key, key_id, secret_hash = new_api_key()
    database = storage.open_database(database_url)
    storage.bind(database)
    with database.connection_context():
        application, _ = applications.create_application("web", key_id, secret_hash)
    storage.close(database)
    return application.id, full_key


def stored_ids(database_url: str) -> set[str]:
    database = storage.open_database(database_url)
    storage.bind(database)
    with database.connection_context():
        found = {row.id for row in events.Event.select(events.Event.id)}
    storage.close(database)
    return found


# Reconnect at once when the server is back, instead of after gRPC's growing backoff.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def test_buffered_sender_waits_for_a_server_that_is_down(
    settings: Settings, database_url: str
) -> None:
    _, api_key = register_application(database_url)
    port = free_port()  # nothing listens there yet
    with Client(f"127.0.0.1:{port}", token=api_key, options=FAST_RECONNECT) as sender_client:
        sender = sender_client.events.buffered(batch_size=10, flush_interval=0.05)
        added = [pageview(occurred_at=at(n)) for n in range(25)]
        for message in added:
            sender.add(message)
        threading.Event().wait(1.0)  # several attempts fail meanwhile, with UNAVAILABLE
        assert sender.sent == 0 and sender.unsent == []
        with running_server(settings, port=port):
            sender.close()  # waits until all are acknowledged
    assert sender.sent == 25
    assert stored_ids(database_url) == {m.id for m in added}


def test_buffered_sender_waits_while_the_server_is_at_its_call_limit(
    settings: Settings, database_url: str
) -> None:
    """The concurrent-call limiter's RESOURCE_EXHAUSTED passes: the sender retries."""
    _, api_key = register_application(database_url)
    capped = dataclasses.replace(settings, max_concurrent_rpcs=2)
    added = [pageview(occurred_at=at(n)) for n in range(10)]
    with running_server(capped) as target, Client(target, token=api_key) as app:
        with table_locked(database_url, "event"):
            held = [Background(lambda: app.events.send(pageview(), timeout=30)) for _ in range(2)]
            for call in held:
                call.start()
            threading.Event().wait(0.5)  # both calls wait for the lock, using up the limit
            sender = app.events.buffered(batch_size=5, flush_interval=0.05)
            for message in added:
                sender.add(message)
            threading.Event().wait(0.5)  # its sends are refused meanwhile
            assert sender.sent == 0 and sender.unsent == []
        sender.close()
        for call in held:
            call.join_result()
    assert sender.sent == 10
    assert {m.id for m in added} <= stored_ids(database_url)


def test_buffered_sender_gives_up_with_the_unsent_events(database_url: str) -> None:
    _, api_key = register_application(database_url)
    with Client(f"127.0.0.1:{free_port()}", token=api_key) as nowhere:
        sender = nowhere.events.buffered(batch_size=2, give_up_after=0.5)
        added = [pageview() for _ in range(5)]
        for message in added:
            sender.add(message)
        with pytest.raises(EventsNotSent) as caught:
            sender.close()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert [m.id for m in caught.value.unsent] == [m.id for m in added]
    with pytest.raises(EventsNotSent):
        sender.add(pageview())


# --- durability ----------------------------------------------------------------------------------


def test_acknowledged_events_survive_kill_9(database_url: str) -> None:
    """Send from several threads (single events, batches and streams), kill -9 the server
    mid-stream, and find every acknowledged event in the database: an acknowledgement is only
    sent after the commit."""
    full_key, key_id, secret_hash = new_api_key()
    database = storage.open_database(database_url)
    storage.bind(database)
    with database.connection_context():
        applications.create_application("durable", key_id, secret_hash)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    env = {**os.environ, "DATABASE_URL": database_url}
    with server_process(env=env) as server:

        def send(mode: str) -> None:
            with Client(server.address, token=full_key, timeout=5) as sender:
                while not stop.is_set():
                    messages = [pageview(occurred_at=at(len(acknowledged)))]
                    try:
                        if mode == "batch":
                            messages += [pageview() for _ in range(49)]
                            sender.events.send_batch(messages)
                        elif mode == "stream":  # acknowledged by the one reply at its end
                            messages += [pageview() for _ in range(59)]
                            sender.events.stream(messages, batch_size=20)
                        else:
                            sender.events.send(messages[0])
                    except QuartetError:
                        return  # the server is gone
                    with lock:
                        acknowledged.extend(m.id for m in messages)

        modes = ["one", "batch", "one", "stream"]
        senders = [threading.Thread(target=send, args=(mode,)) for mode in modes]
        for thread in senders:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 2000:  # senders that die early must not hang the test
            assert time.monotonic() < deadline, f"only {len(acknowledged)} acknowledged in 60 s"
            assert any(t.is_alive() for t in senders), "every sender stopped:\n" + "".join(
                server.log[-20:]
            )
            threading.Event().wait(0.01)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        stop.set()
        for thread in senders:
            thread.join(timeout=30)
            assert not thread.is_alive()
    with database.connection_context():
        stored = {row.id for row in events.Event.select(events.Event.id)}
    storage.close(database)
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged events were lost"
    assert len(acknowledged) >= 2000


def test_the_sqlite_log_is_checkpointed_while_the_server_runs(tmp_path: Path) -> None:
    """No connection copies SQLite's write-ahead log into the database as it commits (that held
    every other writer up): the server's checkpointer does it beside them, so acknowledged events
    reach the database file itself while the server keeps running."""
    path = tmp_path / "quartet.db"
    settings = Settings(database_url=f"sqlite:///{path}", grace_seconds=0, secret=SECRET)
    full_key, key_id, secret_hash = new_api_key()
    with running_server(settings) as target:
        with storage.base.db.obj.connection_context():
            applications.create_application("web", key_id, secret_hash)
        with Client(target, token=full_key) as sender:
            reply = sender.events.send_batch([pageview() for _ in range(100)])
        assert {r.status for r in reply.results} == {pb.EVENT_STATUS_STORED}
        copy, found = tmp_path / "without-its-log.db", 0
        deadline = time.monotonic() + 10
        while found < 100:
            assert time.monotonic() < deadline, f"{found} of 100 events in the file after 10 s"
            time.sleep(0.05)
            shutil.copyfile(path, copy)  # the database file alone, not its log
            try:
                with contextlib.closing(sqlite3.connect(copy)) as copied:
                    found = copied.execute("SELECT count(*) FROM event").fetchone()[0]
            except sqlite3.DatabaseError:  # copied in the middle of a checkpoint, or before one
                found = 0
