"""CountEvents through the SDK: counts by type per bucket, filters, pages, limits, access, plans."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee
import pytest

from quartet.client import Client, QuartetError, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.storage import events
from quartet.storage.events import NewEvent
from tests.conftest import Principal

UTC = datetime.UTC
T0 = datetime.datetime(2021, 1, 1, 9, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)
PAGE = ("page interaction", "pageview", {"host": "h", "path": "/"})
CLICK = ("page interaction", "cta click", {"host": "h", "path": "/", "element": "b"})


@pytest.fixture
def app(client: Client, target: str) -> Iterator[Client]:
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        yield sender


def send(
    app: Client, kind: tuple[str, str, dict[str, Any]], at: datetime.datetime, **more: Any
) -> None:
    category, name, data = kind
    app.events.send(
        event(
            session_id=more.get("session", str(uuid.uuid4())),
            category=category,
            name=name,
            data=data,
            occurred_at=at,
        )
    )


def table(
    client: Client, bucket: Any, start: datetime.datetime, end: datetime.datetime, **filters: Any
) -> list[tuple[datetime.datetime, str, int]]:
    return [
        (c.bucket_start_time.ToDatetime(UTC), c.name, c.count)
        for c in client.events.iter_counts(bucket, start, end, **filters)
    ]


@pytest.fixture
def history(app: Client, client: Client, target: str) -> dict[str, Any]:
    """Pageviews and clicks over two hours and a day: 09:00:10, 09:00:50, 09:01:30 (pageviews),
    09:00:20 and 10:30 (clicks), next day 09:00 (a pageview of another app and session)."""
    session = str(uuid.uuid4())
    for seconds in (10, 50, 90):
        send(app, PAGE, T0 + datetime.timedelta(seconds=seconds), session=session)
    send(app, CLICK, T0 + datetime.timedelta(seconds=20), session=session)
    send(app, CLICK, T0 + datetime.timedelta(minutes=90))
    other = client.auth.create_application("mobile")
    with Client(target, token=other.api_key) as mobile:
        send(mobile, PAGE, T0 + DAY)
    return {"session": session, "mobile": other.application.id}


def test_counts_by_type_per_bucket(client: Client, history: dict[str, Any]) -> None:
    minute = datetime.timedelta(minutes=1)
    assert table(client, "minute", T0, T0 + 2 * DAY) == [
        (T0, "cta click", 1),
        (T0, "pageview", 2),
        (T0 + minute, "pageview", 1),
        (T0 + 90 * minute, "cta click", 1),
        (T0 + DAY, "pageview", 1),
    ]
    hour = datetime.timedelta(hours=1)
    assert table(client, "hour", T0, T0 + 2 * DAY) == [
        (T0, "cta click", 1),
        (T0, "pageview", 3),
        (T0 + hour, "cta click", 1),
        (T0 + DAY, "pageview", 1),
    ]
    midnight = T0.replace(hour=0)
    assert table(client, "day", midnight, midnight + 2 * DAY) == [
        (midnight, "cta click", 2),
        (midnight, "pageview", 3),
        (midnight + DAY, "pageview", 1),
    ]


def test_the_range_bounds_what_is_counted(client: Client, history: dict[str, Any]) -> None:
    # The range cuts into the first hour: only its events from 09:00:30 on count, in that bucket.
    start = T0 + datetime.timedelta(seconds=30)
    assert table(client, "hour", start, T0 + DAY) == [
        (T0, "pageview", 2),
        (T0 + datetime.timedelta(hours=1), "cta click", 1),
    ]
    assert table(client, "day", T0 - 2 * DAY, T0 - DAY) == []


def test_counts_of_one_application_or_session(client: Client, history: dict[str, Any]) -> None:
    assert table(client, "day", T0, T0 + 2 * DAY, application_id=history["mobile"]) == [
        (T0.replace(hour=0) + DAY, "pageview", 1)
    ]
    assert table(client, "hour", T0, T0 + 2 * DAY, session_id=history["session"]) == [
        (T0, "cta click", 1),
        (T0, "pageview", 3),
    ]


def test_pages_walk_every_count_once(client: Client, history: dict[str, Any]) -> None:
    whole = table(client, "minute", T0, T0 + 2 * DAY)
    first = client.events.count("minute", T0, T0 + 2 * DAY, page_size=2)
    assert len(first.counts) == 2 and first.next_page_token
    assert table(client, "minute", T0, T0 + 2 * DAY, page_size=2) == whole
    with pytest.raises(QuartetError) as caught:
        client.events.count("hour", T0, T0 + 2 * DAY, page_token=first.next_page_token)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"bucket": 0}, "bucket"),
        ({"occur_time_start": None}, "occur_time_start"),
        ({"occur_time_end": None}, "occur_time_end"),
        ({"occur_time_end": T0}, "occur_time_end"),
        ({"session_id": "not-a-uuid"}, "session_id"),
        ({"application_id": -1}, "application_id"),
    ],
    ids=str,
)
def test_invalid_requests(client: Client, request_fields: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {
        "bucket": pb.COUNT_BUCKET_HOUR,
        "occur_time_start": T0,
        "occur_time_end": T0 + DAY,
    } | request_fields
    request = pb.CountEventsRequest()
    for name, value in values.items():
        if isinstance(value, datetime.datetime):
            getattr(request, name).FromDatetime(value)
        elif value is not None:
            setattr(request, name, value)
    with pytest.raises(grpc.RpcError) as caught:
        client.channel.unary_unary(
            "/quartet.events.v1.EventService/CountEvents",
            request_serializer=pb.CountEventsRequest.SerializeToString,
            response_deserializer=pb.CountEventsResponse.FromString,
        )(request, metadata=client.metadata, timeout=10)
    error = QuartetError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [field]


def test_at_most_ten_thousand_buckets(client: Client) -> None:
    minutes = datetime.timedelta(minutes=10_000)
    assert client.events.count("minute", T0, T0 + minutes).counts == []
    with pytest.raises(QuartetError) as caught:
        client.events.count("minute", T0, T0 + minutes + datetime.timedelta(seconds=1))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "LIMIT_EXCEEDED"
    assert caught.value.metadata["max_buckets"] == "10000"
    assert [v.field for v in caught.value.field_violations] == ["occur_time_end"]


def test_counting_takes_what_listing_takes(
    app: Client, sign_in: Callable[..., Principal], history: dict[str, Any]
) -> None:
    for caller in (app, sign_in("user").client):
        with pytest.raises(QuartetError) as caught:
            caller.events.count("day", T0, T0 + DAY)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    counts = sign_in("analyst").client.events.count("day", T0, T0 + DAY).counts
    assert sum(c.count for c in counts) == 5


def _spread(count: int, days: int) -> list[NewEvent]:
    """count events of four types spread evenly over days, from T0."""
    step = datetime.timedelta(days=days) / count
    start = T0.replace(tzinfo=None)
    return [
        NewEvent(
            id=str(uuid.uuid4()),
            application_id=1 + n % 3,
            session_id=str(uuid.UUID(int=n % 500)),
            category="page interaction",
            name=f"type {n % 4}",
            data="{}",
            occur_time=start + n * step,
            schema_version=0,
        )
        for n in range(count)
    ]


@pytest.mark.parametrize(
    "filters", [{}, {"application_id": 2}, {"session_id": str(uuid.UUID(int=7))}], ids=str
)
def test_counts_read_the_range_by_an_index(
    db: peewee.Database, run_in_db: Any, filters: dict[str, Any]
) -> None:
    """With 20,000 events over 200 days, counting one day reads that day's rows by an index:
    the planner, given the table's statistics, chooses it; no full scan."""
    spread = _spread(20_000, 200)
    with db.connection_context(), db.atomic():
        events.store(spread, [], T0.replace(tzinfo=None))
    start = (T0 + 50 * DAY).replace(tzinfo=None)
    query = events.count_query("hour", start, start + DAY, **filters)
    sql, params = query.sql()
    with db.connection_context():
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("ANALYZE event")  # type: ignore[no-untyped-call]
            rows = db.execute_sql(f"EXPLAIN {sql}", params)  # type: ignore[no-untyped-call]
            plan = " ".join(row[0] for row in rows)
            assert "Seq Scan" not in plan and "Index" in plan, plan
        else:
            db.execute_sql("ANALYZE")  # type: ignore[no-untyped-call]
            rows = db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)  # type: ignore[no-untyped-call]
            plan = " ".join(row[-1] for row in rows)
            assert plan.startswith("SEARCH") and "USING INDEX event_" in plan, plan
    counted = run_in_db(events.count_events, "day", start, start + DAY, limit=10, **filters)
    expected = [
        e
        for e in spread
        if start <= e.occur_time < start + DAY
        and all(getattr(e, name) == value for name, value in filters.items())
    ]
    assert sum(row[3] for row in counted) == len(expected)
