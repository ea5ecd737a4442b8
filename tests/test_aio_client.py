"""quartet.client.aio: the asyncio Client, mirroring the synchronous SDK's tests (test_client.py,
and the services through a real server on both databases), and the tail as an async iterator."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from quartet.auth.v1 import auth_service_pb2
from quartet.client import Client as SyncClient
from quartet.client import QuartetError
from quartet.client.aio import AsyncEventTail, Client, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from tests.conftest import Principal
from tests.test_client import SCORE, fake_server, unavailable_then
from tests.test_tail import CATEGORY, ids, sent

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run main() in a new event loop (the client must be made in the loop that uses it)."""
    return asyncio.run(main())


# --- the SDK's own behaviour, against a misbehaving server (as tests/test_client.py) -----------


def test_safe_calls_are_retried_when_unavailable() -> None:
    async def main() -> None:
        async with Client(target) as client:
            assert (await client.scores.get(7)).value == 42
            assert (await client.scores.create(41)).value == 42  # carries an idempotency key

    with fake_server(unavailable_then(SCORE, failures=2)) as (target, calls):
        run(main)
    assert calls.count("/quartet.score.v1.ScoreService/GetScore") == 3
    assert calls.count("/quartet.score.v1.ScoreService/CreateScore") == 3


def test_unsafe_calls_are_not_retried() -> None:
    reply = auth_service_pb2.CreateAccountResponse().SerializeToString()

    async def main() -> QuartetError:
        async with Client(target) as client:
            with pytest.raises(QuartetError) as caught:
                await client.auth.create_account("a@example.com", "correct horse")
            return caught.value

    with fake_server(unavailable_then(reply, failures=1)) as (target, calls):
        assert run(main).code == grpc.StatusCode.UNAVAILABLE
    assert calls == ["/quartet.auth.v1.AuthService/CreateAccount"]


def test_every_call_has_a_default_deadline() -> None:
    def slow(request: bytes, context: grpc.ServicerContext, attempt: int) -> bytes:
        time.sleep(2)
        return SCORE

    async def main() -> None:
        async with Client(target, timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(QuartetError) as caught:
                await client.scores.get(7)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 1.5
            assert (await client.scores.get(7, timeout=5)).value == 42

    with fake_server(slow) as (target, _):
        run(main)


def test_errors_without_details_still_raise_quartet_error() -> None:
    def plain(request: bytes, context: grpc.ServicerContext, attempt: int) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today")

    async def main() -> QuartetError:
        async with Client(target) as client:
            with pytest.raises(QuartetError) as caught:
                await client.scores.get(7)
            return caught.value

    with fake_server(plain) as (target, _):
        error = run(main)
    assert (error.code, error.message, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "not today",
        "",
    )
    assert str(error) == "FAILED_PRECONDITION: not today"


def test_an_unreachable_server_is_unavailable() -> None:
    async def main() -> QuartetError:
        async with Client("127.0.0.1:1", timeout=2) as client:
            with pytest.raises(QuartetError) as caught:
                await client.health.check()
            return caught.value

    assert run(main).code == grpc.StatusCode.UNAVAILABLE


def test_both_clients_have_the_same_services_and_methods() -> None:
    async def main() -> dict[str, set[str]]:
        async with Client("127.0.0.1:1") as client:
            return surface(client)

    with SyncClient("127.0.0.1:1") as sync:
        expected = surface(sync)
    expected["events"].discard("buffered")  # a background thread: the sync client's own
    assert run(main) == expected


def surface(client: object) -> dict[str, set[str]]:
    return {
        name: {m for m in dir(service) if not m.startswith("_") and m != "SERVICE"}
        for name, service in vars(client).items()
        if hasattr(type(service), "SERVICE")
    }


# --- through a real server, on both databases -----------------------------------------------


def test_scores_are_created_read_and_iterated(admin: Principal, target: str) -> None:
    async def main() -> None:
        async with Client(target, token=token_of(admin)) as client:
            created = [await client.scores.create(value) for value in (1, 50, 500)]
            assert (await client.scores.get(created[0].id)).value == created[0].value
            page = await client.scores.list(page_size=2)
            assert len(page.scores) == 2 and page.next_page_token
            found = [s.id async for s in client.scores.iter(page_size=1)]
            assert found == [s.id for s in reversed(created)]  # newest first, page by page
            over = [s.value async for s in client.scores.iter(score_greater_than=100)]
            assert over == [created[2].value]
            with pytest.raises(QuartetError) as caught:
                await client.scores.get(10**9)
            assert caught.value.code == grpc.StatusCode.NOT_FOUND

    run(main)


def token_of(principal: Principal) -> str:
    return principal.client.metadata[0][1].removeprefix("Bearer ")


def test_events_are_sent_every_way_and_read_back(
    client: SyncClient, target: str, admin: Principal
) -> None:
    key = client.auth.create_application("web").api_key
    session = str(uuid.uuid4())

    async def some(count: int) -> AsyncIterator[pb.Event]:
        for _ in range(count):
            yield sent(session)

    async def main() -> None:
        async with (
            Client(target, token=key) as app,
            Client(target, token=token_of(admin)) as reader,
        ):
            one = await app.events.send(sent(session))
            assert not one.duplicate and one.event.application_id
            assert (await app.events.send(one.event)).duplicate
            batch = await app.events.send_batch([sent(session) for _ in range(3)])
            assert [r.status for r in batch.results] == [pb.EVENT_STATUS_STORED] * 3
            streamed = await app.events.stream(some(7), batch_size=3)
            assert (streamed.stored_count, streamed.rejected_count) == (7, 0)
            assert (await app.events.stream([sent(session)])).stored_count == 1
            batches = [
                (len(events), [r.status for r in reply.results])
                async for events, reply in app.events.send_batches(
                    [sent(session) for _ in range(5)], batch_size=3
                )
            ]
            assert batches == [(3, [pb.EVENT_STATUS_STORED] * 3), (2, [pb.EVENT_STATUS_STORED] * 2)]
            listed = [e async for e in reader.events.iter(session_id=session, page_size=4)]
            assert len(listed) == 17
            assert (await reader.events.get(one.event.id)).id == one.event.id
            types = [t.name async for t in reader.events.iter_types()]
            assert "pageview" in types
            with pytest.raises(QuartetError) as caught:
                await app.events.send(
                    event(
                        session_id=session,
                        category="x",
                        name="y",
                        occurred_at="2021-01-01 00:00:00",
                    )
                )
            assert caught.value.reason == "EVENT_REJECTED"
            rejected = [r async for r in reader.events.iter_rejected()]
            assert len(rejected) == 1

    run(main)


def test_regions_and_health(admin: Principal, target: str) -> None:
    async def main() -> None:
        async with Client(target, token=token_of(admin)) as client:
            assert await client.health.check()
            regions = await client.regions.list_regions()
            assert len(regions) == 6
            assert (await client.regions.get_province("ON")).alpha_code == "ON"
            results = await client.regions.lookup_fsas(["K1A", "nope"])
            assert [r.WhichOneof("result") for r in results] == ["fsa", "error"]

    run(main)


def test_login_refreshes_an_expired_access_token(
    settings: Settings, client_class: type[Any]
) -> None:
    short = dataclasses.replace(settings, access_token_minutes=1 / 60)  # one second
    with running_server(short) as target, SyncClient(target) as anonymous:
        anonymous.auth.create_account("ada@example.com", "correct horse battery")

        async def main() -> tuple[int, int]:
            async with Client(target) as client:
                pair = await client.login("ada@example.com", "correct horse battery")
                first = (await client.auth.current_account()).id
                await asyncio.sleep(1.5)
                assert client.metadata == (("authorization", f"Bearer {pair.access_token}"),)
                again = (await client.auth.current_account()).id  # refreshed on the way
                assert client.metadata != (("authorization", f"Bearer {pair.access_token}"),)
                return first, again

        if client_class is Client:
            first, again = run(main)
        else:
            with SyncClient(target) as sync:
                pair = sync.login("ada@example.com", "correct horse battery")
                first = sync.auth.current_account().id
                time.sleep(1.5)
                again = sync.auth.current_account().id
                assert sync.metadata != (("authorization", f"Bearer {pair.access_token}"),)
        assert first == again


@pytest.fixture(params=[Client, SyncClient], ids=["aio", "sync"])
def client_class(request: pytest.FixtureRequest) -> type[Any]:
    return request.param  # type: ignore[no-any-return]


# --- the tail, as an async iterator -------------------------------------------------------------


async def received(tail: AsyncEventTail, count: int) -> list[pb.Event]:
    found: list[pb.Event] = []
    async with asyncio.timeout(10):
        async for message in tail:
            found.append(message)
            if len(found) == count:
                break
    return found


def test_a_tail_follows_events_and_resumes(
    client: SyncClient, target: str, admin: Principal
) -> None:
    key = client.auth.create_application("web").api_key
    session = str(uuid.uuid4())

    async def main() -> None:
        async with (
            Client(target, token=key) as app,
            Client(target, token=token_of(admin)) as reader,
        ):
            first = [sent(session) for _ in range(4)]
            async with await reader.events.tail(session_id=session) as tail:
                await app.events.send_batch(first)
                found = await received(tail, 2)
            assert ids(found) == ids(first[:2])
            later = sent(session)
            await app.events.send(later)
            resumed = await reader.events.tail(session_id=session, after_event_id=found[-1].id)
            assert ids(await received(resumed, 3)) == ids([*first[2:], later])
            await resumed.close()
            assert [e async for e in await reader.events.tail(category=CATEGORY, timeout=0.5)] == []
            with pytest.raises(QuartetError) as caught:
                await app.events.tail(category=CATEGORY)
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(QuartetError) as caught:
                await reader.events.tail()
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    run(main)


# --- the typed surface --------------------------------------------------------------------------

TYPED_USE = """
from collections.abc import AsyncIterator, Iterator
from quartet.client import Client as SyncClient, EventTail
from quartet.client.aio import AsyncEventTail, Client
from quartet.events.v1.event_service_pb2 import Event, SendEventsResponse
from quartet.score.v1.score_service_pb2 import Score

async def use(client: Client, sync: SyncClient) -> None:
    score: Score = await client.scores.create(41, timeout=2)
    scores: AsyncIterator[Score] = client.scores.iter(score_greater_than=1)
    events: AsyncIterator[Event] = client.events.iter(session_id="s")
    reply: SendEventsResponse = await client.events.send_batch([])
    tail: AsyncEventTail = await client.events.tail(category="c", after_event_id="e")
    first: Event = await anext(tail)
    serving: bool = await client.health.check()
    same: Score = sync.scores.create(41, timeout=2)
    pages: Iterator[Score] = sync.scores.iter()
    sync_tail: EventTail = sync.events.tail(session_id="s", timeout=None)
    event: Event = next(sync_tail)
"""
MISTAKES = """
from quartet.client.aio import Client
from quartet.client import Client as SyncClient

async def use(client: Client, sync: SyncClient) -> None:
    not_awaited: float = client.scores.create(41).value
    wrong_argument = await client.scores.get("7")
    unknown_filter = await client.events.list(colour="red")
    wrong_tail = sync.events.tail(category=3)
"""


@pytest.mark.parametrize(("source", "errors"), [(TYPED_USE, 0), (MISTAKES, 4)])
def test_the_sdk_is_typed_for_mypy_strict(tmp_path: Path, source: str, errors: int) -> None:
    module = tmp_path / "use.py"
    module.write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(module)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(found) == errors, result.stdout
