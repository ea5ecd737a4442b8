"""Per-worker budgets: anonymous streams and one key's streams cannot starve signed-in calls.

gRPC's own limit is set low here (max_concurrent_rpcs=10), as it would be under the attack the
budgets answer: without them, the streams below would fill it.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from quartet.client import Client, QuartetError, event
from quartet.events.v1 import event_service_pb2 as pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from tests.conftest import Principal

UNARY_LIMIT = 10
ANONYMOUS_STREAMS = 20
STREAMS_PER_CALLER = 5


@pytest.fixture
def target(settings: Settings) -> Iterator[str]:
    budgeted = dataclasses.replace(
        settings,
        max_concurrent_rpcs=UNARY_LIMIT,
        max_anonymous_streams=ANONYMOUS_STREAMS,
        max_streams=50,
        max_streams_per_caller=STREAMS_PER_CALLER,
    )
    with running_server(budgeted) as address:
        yield address


def limit_exceeded(error: grpc.RpcError) -> dict[str, str]:
    """The ErrorInfo metadata of a RESOURCE_EXHAUSTED / LIMIT_EXCEEDED error."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "LIMIT_EXCEEDED"
    return dict(info.metadata)


class IdleStreams:
    """StreamEvents calls that stay open, sending nothing, until closed."""

    def __init__(self, channel: grpc.Channel, key: str) -> None:
        self._stub = event_service_pb2_grpc.EventServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {key}"),)
        self._stop = threading.Event()
        self.calls: list[grpc.Future[pb.StreamEventsResponse]] = []
        self.ended = threading.Semaphore(0)

    def open(self, count: int) -> None:
        for _ in range(count):
            call = self._stub.StreamEvents.future(self._requests(), metadata=self._metadata)
            call.add_done_callback(lambda _: self.ended.release())
            self.calls.append(call)

    def _requests(self) -> Iterator[pb.StreamEventsRequest]:
        self._stop.wait()
        return
        yield  # a generator that ends when the streams are closed

    def ended_calls(self) -> list[grpc.Future[pb.StreamEventsResponse]]:
        return [call for call in self.calls if call.done()]

    def close(self) -> None:
        self._stop.set()
        for call in self.calls:
            call.cancel()


def open_watches(channel: grpc.Channel, count: int) -> tuple[list[object], list[grpc.RpcError]]:
    """count Health/Watch streams with no credentials: those open (each has had its first reply)
    and the errors of those refused."""
    stub = health_pb2_grpc.HealthStub(channel)
    calls = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(count)]
    opened, refused = [], []
    for call in calls:
        try:
            next(call)
            opened.append(call)
        except grpc.RpcError as error:
            refused.append(error)
    return opened, refused


def test_anonymous_watches_and_one_keys_streams_leave_signed_in_calls_served(
    target: str, client: Client, sign_in: Callable[..., Principal]
) -> None:
    app_key = client.auth.create_application("streamer").api_key
    other_key = client.auth.create_application("other").api_key
    user = sign_in("user").client
    with grpc.insecure_channel(target) as channel, Client(target, token=app_key) as app:
        watches, refused = open_watches(channel, ANONYMOUS_STREAMS + 1)
        assert len(watches) == ANONYMOUS_STREAMS
        (over,) = refused
        assert limit_exceeded(over) == {"budget": "anonymous_streams", "limit": "20"}

        streams = IdleStreams(channel, app_key)
        streams.open(STREAMS_PER_CALLER + 1)
        assert streams.ended.acquire(timeout=30)
        (ended,) = streams.ended_calls()
        error = ended.exception()
        assert isinstance(error, grpc.RpcError)
        assert limit_exceeded(error) == {
            "budget": "streams_per_caller",
            "limit": str(STREAMS_PER_CALLER),
        }
        # Another application has a budget of its own.
        others = IdleStreams(channel, other_key)
        others.open(1)

        # Signed-in unary calls are served all along, by the same worker.
        for _ in range(UNARY_LIMIT * 2):
            assert user.regions.list_provinces()
        sent = event(
            session_id="0d4a7a5e-4b52-4a8e-9d86-3b9b3a5a6f70",
            category="page interaction",
            name="pageview",
            data={"host": "www.ca.com", "path": "/"},
            occurred_at=datetime.datetime.now(datetime.UTC),
        )
        assert not app.events.send(sent).duplicate
        assert len(streams.ended_calls()) == 1 and not others.ended_calls()

        # Closing the streams gives their budgets back, however they ended.
        for watch in watches:
            watch.cancel()  # type: ignore[attr-defined]
        streams.close()
        others.close()
        reopened, refused = open_watches(channel, ANONYMOUS_STREAMS)
        assert (len(reopened), refused) == (ANONYMOUS_STREAMS, [])
        for watch in reopened:
            watch.cancel()  # type: ignore[attr-defined]


def test_sign_ups_cannot_crowd_out_health_checks_or_signed_in_calls(settings: Settings) -> None:
    # One anonymous place: concurrent logins, each waiting for its password hash, overflow it.
    one_anonymous = dataclasses.replace(settings, max_anonymous_calls=1, max_concurrent_rpcs=2)
    with running_server(one_anonymous) as address, Client(address) as anonymous:
        tokens = anonymous.auth.create_account("user@example.com", "a long enough password").tokens
        user = Client(address, token=tokens.access_token)
        start = threading.Barrier(8)
        refused: list[dict[str, str]] = []

        def log_in(n: int) -> None:
            start.wait()
            try:
                anonymous.auth.create_account(f"signup{n}@example.com", "a long enough password")
            except QuartetError as error:
                assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                refused.append(error.metadata)

        threads = [threading.Thread(target=log_in, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while any(thread.is_alive() for thread in threads):
                # Health checks and signed-in calls are served while sign-ups fill their pool.
                assert health.Check(health_pb2.HealthCheckRequest()).status == 1
                assert user.regions.list_provinces()
        for thread in threads:
            thread.join()
        user.close()
        assert refused, "eight concurrent sign-ups fit in one anonymous place"
        assert all(m == {"budget": "anonymous_calls", "limit": "1"} for m in refused), refused
