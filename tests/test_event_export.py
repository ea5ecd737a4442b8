"""ExportEvents through the SDK: NDJSON and Event messages, order, filters, message sizes,
resuming, the SDK's file, chunked reads of many rows, access."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import json_format

from quartet.client import Client, QuartetError, event
from quartet.client.aio import Client as AsyncClient
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.events import export
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import events
from quartet.storage.events import NewEvent
from tests.conftest import Principal, mint_token

UTC = datetime.UTC
T0 = datetime.datetime(2021, 1, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def app(client: Client, target: str) -> Iterator[Client]:
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        yield sender


def history(app: Client, count: int = 30) -> list[pb.Event]:
    """count pageviews and clicks, two sessions, occurring out of the order sent (and two at
    the same time, which arrival orders), with text JSON must escape."""
    messages = []
    for n in range(count):
        click = n % 3 == 0
        data: dict[str, Any] = {"host": "h", "path": f'/"ü\n{n}'} | (
            {"element": "b"} if click else {}
        )
        messages.append(
            event(
                session_id=str(uuid.UUID(int=n % 2 + 1)),
                category="page interaction",
                name="cta click" if click else "pageview",
                data=data,
                occurred_at=T0 + datetime.timedelta(seconds=(n * 7) % count, microseconds=n % 2),
            )
        )
    app.events.send_batch(messages)
    return messages


def ndjson_events(responses: Iterator[pb.ExportEventsResponse]) -> list[pb.Event]:
    text = b"".join(r.ndjson for r in responses).decode()
    assert text.endswith("\n")
    return [json_format.Parse(line, pb.Event()) for line in text.splitlines()]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"session_id": str(uuid.UUID(int=1))},
        {"category": "page interaction", "name": "cta click"},
        {"occurred_after": T0 + datetime.timedelta(seconds=5)},
        {"occurred_before": T0 + datetime.timedelta(seconds=5), "application_id": 1},
    ],
    ids=str,
)
def test_an_export_holds_what_listing_gives_in_its_order(
    app: Client, client: Client, filters: dict[str, Any]
) -> None:
    history(app)
    listed = list(client.events.iter(**filters))
    assert listed or "application_id" in filters
    assert ndjson_events(client.events.export(**filters)) == listed
    typed = [e for r in client.events.export(format="events", **filters) for e in r.events]
    assert typed == listed


def test_ndjson_lines_are_protobuf_json(app: Client, client: Client) -> None:
    history(app, 3)
    [response] = client.events.export()
    listed = list(client.events.iter())
    lines = response.ndjson.decode().splitlines()
    for line, stored in zip(lines, listed, strict=True):
        document = json.loads(line)
        assert set(document) == set(json.loads(json_format.MessageToJson(stored)))
        assert document["applicationId"] == stored.application_id  # a number, not a string
        assert document["data"] == json_format.MessageToDict(stored.data)
        assert document["occurTime"].endswith("Z")
        assert json_format.Parse(line, pb.Event()) == stored
    assert response.event_count == 3 and response.last_event_id == listed[-1].id


def test_messages_keep_to_the_reply_budget_and_an_export_resumes(
    settings: Settings, admin: Principal
) -> None:
    small = dataclasses.replace(settings, max_page_bytes=4096)
    with (
        running_server(small) as target,
        Client(target, token=mint_token(admin.id, "admin")) as client,
    ):
        with Client(target, token=client.auth.create_application("web").api_key) as app:
            history(app, 100)
        whole = list(client.events.iter())
        for export_format in ("ndjson", "events"):
            responses = list(client.events.export(format=export_format))
            assert len(responses) > 3
            assert all(r.ByteSize() <= 4096 for r in responses)
            assert sum(r.event_count for r in responses) == 100
            resumed = client.events.export(after_event_id=responses[2].last_event_id)
            before = (
                ndjson_events(iter(responses[:3]))
                if export_format == "ndjson"
                else [e for r in responses[:3] for e in r.events]
            )
            assert before + ndjson_events(resumed) == whole


def test_an_export_reads_many_rows_a_chunk_at_a_time(db: peewee.Database, client: Client) -> None:
    count = export.CHUNK * 2 + 7
    start = T0.replace(tzinfo=None)
    stored = [
        NewEvent(str(uuid.uuid4()), 1, str(uuid.uuid4()), "c", "n", f'{{"n":{n}}}',
                 start + datetime.timedelta(milliseconds=n // 2), 0)
        for n in range(count)
    ]  # fmt: skip
    with db.connection_context(), db.atomic():
        events.store(stored, [], start)
    exported = [json.loads(line) for r in client.events.export() for line in r.ndjson.splitlines()]
    assert [e["data"]["n"] for e in exported] == list(range(count))
    assert [e["id"] for e in exported] == [e.id for e in stored]


def test_the_sdk_writes_an_export_to_a_file_and_finishes_a_broken_one(
    app: Client, client: Client, tmp_path: Path
) -> None:
    history(app, 20)
    path = tmp_path / "events.ndjson"
    assert client.events.export_to(path) == 20
    whole = path.read_bytes()
    assert [json.loads(line)["id"] for line in whole.splitlines()] == [
        e.id for e in client.events.iter()
    ]
    lines = whole.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:8]) + lines[8][:30])  # broken off within a line
    assert client.events.export_to(path) == 12
    assert path.read_bytes() == whole
    assert client.events.export_to(path) == 0  # finished: nothing after its last event
    assert client.events.export_to(path, resume=False) == 20
    assert path.read_bytes() == whole


def test_the_async_sdk_exports_and_counts_too(
    app: Client, target: str, admin: Principal, tmp_path: Path
) -> None:
    history(app, 5)

    async def main() -> tuple[int, int, int]:
        async with AsyncClient(target, token=mint_token(admin.id, "admin")) as client:
            typed = [e async for r in client.events.export(format="events") for e in r.events]
            written = await client.events.export_to(tmp_path / "e.ndjson")
            day = datetime.timedelta(days=1)
            counts = [c.count async for c in client.events.iter_counts("day", T0, T0 + day)]
            return len(typed), written, sum(counts)

    assert asyncio.run(main()) == (5, 5, 5)


@pytest.mark.parametrize(
    ("filters", "code", "field"),
    [
        ({"after_event_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND, ""),
        ({"after_event_id": "42"}, grpc.StatusCode.INVALID_ARGUMENT, "after_event_id"),
        ({"name": "pageview"}, grpc.StatusCode.INVALID_ARGUMENT, "name"),
        ({"session_id": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
    ],
    ids=str,
)
def test_bad_exports_fail_with_details(
    client: Client, filters: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(QuartetError) as caught:
        list(client.events.export(**filters))
    assert caught.value.code == code
    assert [v.field for v in caught.value.field_violations] == ([field] if field else [])


def test_exporting_takes_what_listing_takes(app: Client, sign_in: Callable[..., Principal]) -> None:
    history(app, 2)
    for caller in (app, sign_in("user").client):
        with pytest.raises(QuartetError) as caught:
            list(caller.events.export())
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert len(ndjson_events(sign_in("analyst").client.events.export())) == 2
