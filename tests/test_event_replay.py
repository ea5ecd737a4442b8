"""ReplayRejectedEvents through the SDK: rejected events stored once their schema is fixed, with
their ids and times, idempotently; outcomes recorded and filtered on; progress; access."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import json_format

from quartet.client import Client, QuartetError, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.events import replay
from quartet.storage import events
from quartet.storage.events import Rejection
from tests.conftest import Principal

UTC = datetime.UTC
T0 = datetime.datetime(2021, 1, 1, 9, 0, tzinfo=UTC)
VIDEO = {"type": "object", "properties": {"video_id": {"type": "string"}}}


@pytest.fixture
def app(client: Client, target: str) -> Iterator[Client]:
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        yield sender


def play(n: int, **changes: Any) -> pb.Event:
    fields: dict[str, Any] = {
        "session_id": str(uuid.UUID(int=n + 1)),
        "category": "video",
        "name": "play",
        "data": {"video_id": f"v{n}"},
        "occurred_at": T0 + datetime.timedelta(seconds=n),
    }
    return event(**(fields | changes))


def rejected(app: Client, message: pb.Event) -> None:
    result = app.events.send_batch([message]).results[0]
    assert result.status == pb.EVENT_STATUS_REJECTED, result


def totals(progress: list[pb.ReplayRejectedEventsResponse]) -> tuple[int, int, int]:
    last = progress[-1]
    return last.stored_count, last.still_rejected_count, last.already_stored_count


def test_events_of_a_type_registered_later_are_stored_once_replayed(
    app: Client, client: Client
) -> None:
    sent = [play(n) for n in range(3)]
    for message in sent:
        rejected(app, message)  # no schema for video/play yet: EVENT_TYPE_UNKNOWN
    assert totals(list(client.events.replay_rejected())) == (0, 3, 0)
    client.events.create_type("video", "play", VIDEO)
    progress = list(client.events.replay_rejected(reason="EVENT_TYPE_UNKNOWN"))
    assert totals(progress) == (3, 0, 0)
    for message in sent:
        stored = client.events.get(message.id)
        assert (stored.session_id, stored.occur_time, stored.data) == (
            message.session_id, message.occur_time, message.data,
        )  # fmt: skip
        assert stored.application_id and stored.schema_version == 1
    # Replaying again stores nothing twice; each rejected event records what its replay did.
    assert totals(list(client.events.replay_rejected())) == (0, 0, 3)
    assert len(list(client.events.iter(category="video"))) == 3
    kept = list(client.events.iter_rejected(replay_state="stored"))
    assert sorted(r.event.id for r in kept) == sorted(m.id for m in sent)
    assert all(r.replay_time.seconds and not r.replay_violations for r in kept)
    assert list(client.events.iter_rejected(replay_state="not replayed")) == []


def test_events_still_invalid_stay_rejected_with_their_new_problems(
    app: Client, client: Client
) -> None:
    client.events.create_type("video", "play", VIDEO | {"required": ["video_id"]})
    rejected(app, play(1, data={"seconds": 3}))
    rejected(app, play(2, data={"video_id": 7}))
    never = play(3, session_id="not a session")
    rejected(app, never)
    client.events.create_type("video", "play", VIDEO | {"required": ["seconds"]})
    assert totals(list(client.events.replay_rejected(category="video"))) == (1, 2, 0)
    still = {r.event.id: r for r in client.events.iter_rejected(replay_state="still rejected")}
    assert {v.field for v in still[never.id].replay_violations} == {"session_id", "data.seconds"}
    assert [v.reason for v in still[never.id].violations] == ["FIELD_INVALID"]  # as sent
    assert len(list(client.events.iter_rejected(replay_state="stored"))) == 1


def test_an_event_sent_without_an_id_is_stored_once(
    db: peewee.Database, app: Client, client: Client
) -> None:
    message = play(1)
    message.ClearField("id")
    request = pb.SendEventsRequest(events=[message])
    app.channel.unary_unary(
        "/quartet.events.v1.EventService/SendEvents",
        request_serializer=pb.SendEventsRequest.SerializeToString,
        response_deserializer=pb.SendEventsResponse.FromString,
    )(request, metadata=app.metadata, timeout=10)
    client.events.create_type("video", "play", VIDEO)
    assert totals(list(client.events.replay_rejected())) == (1, 0, 0)
    # Even with its outcome forgotten, it is recognised: its id is derived from its rejection.
    with db.connection_context():
        events.RejectedEvent.update(replay_state=None).execute()
    assert totals(list(client.events.replay_rejected())) == (0, 0, 1)
    [kept] = client.events.list_rejected().rejected_events
    assert kept.event.id == ""
    [stored] = client.events.list(category="video").events
    assert stored.id == str(uuid.uuid5(replay._REPLAY_IDS, str(kept.id)))


def test_an_event_resent_meanwhile_counts_as_already_stored(app: Client, client: Client) -> None:
    message = play(1)
    rejected(app, message)
    client.events.create_type("video", "play", VIDEO)
    app.events.send(message)
    assert totals(list(client.events.replay_rejected())) == (0, 0, 1)
    [kept] = client.events.list_rejected(replay_state="already stored").rejected_events
    assert kept.event.id == message.id


def test_an_id_another_application_took_stays_rejected(
    app: Client, client: Client, target: str
) -> None:
    message = play(1)
    rejected(app, message)
    client.events.create_type("video", "play", VIDEO)
    with Client(target, token=client.auth.create_application("other").api_key) as other:
        other.events.send(message)
    assert totals(list(client.events.replay_rejected(application_id=app_id(client)))) == (0, 1, 0)
    [kept] = client.events.list_rejected(replay_state="still rejected").rejected_events
    assert [v.reason for v in kept.replay_violations] == ["RESOURCE_ALREADY_EXISTS"]


def app_id(client: Client) -> int:
    return min(a.id for a in client.auth.iter_applications())


def test_an_event_kept_without_its_data_cannot_be_replayed(app: Client, client: Client) -> None:
    client.events.create_type("video", "play", VIDEO)
    rejected(app, play(1, data={"video_id": "x" * 70_000}))
    assert totals(list(client.events.replay_rejected())) == (0, 1, 0)
    [kept] = client.events.list_rejected().rejected_events
    assert [v.field for v in kept.replay_violations] == ["data"]


def test_filters_select_what_is_replayed(app: Client, client: Client) -> None:
    rejected(app, play(1))
    rejected(app, play(2, category="audio"))
    rejected(app, play(3, name="pause"))
    client.events.create_type("video", "play", VIDEO)
    client.events.create_type("video", "pause", VIDEO)
    client.events.create_type("audio", "play", VIDEO)
    after = datetime.datetime.now(UTC) + datetime.timedelta(minutes=1)
    assert totals(list(client.events.replay_rejected(rejected_after=after))) == (0, 0, 0)
    assert totals(list(client.events.replay_rejected(category="video", name="play"))) == (1, 0, 0)
    assert totals(list(client.events.replay_rejected(category="video"))) == (1, 0, 1)
    assert totals(list(client.events.replay_rejected(reason="EVENT_TIME_IN_FUTURE"))) == (0, 0, 0)
    assert totals(list(client.events.replay_rejected())) == (1, 0, 2)


def test_a_large_replay_streams_its_progress(
    db: peewee.Database, app: Client, client: Client
) -> None:
    count = replay.CHUNK * 2 + 10
    application = app_id(client)
    unknown = [{"field": "name", "reason": "EVENT_TYPE_UNKNOWN", "description": "unknown"}]
    kept = [
        Rejection(application, json.dumps(json.loads(_json(play(n)))), unknown)
        for n in range(count)
    ]
    with db.connection_context(), db.atomic():
        events.store([], kept, T0.replace(tzinfo=None))
    client.events.create_type("video", "play", VIDEO)
    progress = [p.stored_count for p in client.events.replay_rejected()]
    assert progress == [replay.CHUNK, 2 * replay.CHUNK, count]
    assert len(list(client.events.iter(category="video", page_size=1000))) == count


def _json(message: pb.Event) -> str:
    return json_format.MessageToJson(message, indent=None)


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"name": "play"}, "name"),
        ({"reason": "SOMETHING"}, "reason"),
        ({"application_id": -1}, "application_id"),
    ],
    ids=str,
)
def test_bad_replays_fail_with_details(client: Client, filters: dict[str, Any], field: str) -> None:
    with pytest.raises(QuartetError) as caught:
        list(client.events.replay_rejected(**filters))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [field]


def test_only_admins_replay(app: Client, sign_in: Callable[..., Principal]) -> None:
    for caller in (app, sign_in("analyst").client):
        with pytest.raises(QuartetError) as caught:
            list(caller.events.replay_rejected())
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "kept",
    [
        play(1),
        pb.Event(category="video"),  # no id, session, data or time, as some are rejected
        play(2, data={"a": [1, 2.5, None, True, {"b": "ü\n"}], "c": {}}),
        pb.Event(id="x", application_id=3, schema_version=2),  # fields a sender may not set
    ],
    ids=["whole", "sparse", "nested", "server fields"],
)
def test_rejected_json_is_read_as_protobuf_reads_it(kept: pb.Event) -> None:
    text = json_format.MessageToJson(kept, indent=None)
    assert replay.sent_event(text) == json_format.Parse(text, pb.Event())
