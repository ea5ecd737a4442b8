"""The SDK's own behaviour: retries, deadlines and errors, against a real gRPC server that
misbehaves on purpose (quartet itself never answers UNAVAILABLE on demand)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from quartet.auth.v1 import auth_service_pb2
from quartet.client import Client, QuartetError
from quartet.score.v1 import score_service_pb2


@contextlib.contextmanager
def fake_server(
    behaviour: Callable[[bytes, grpc.ServicerContext, int], bytes],
) -> Iterator[tuple[str, list[str]]]:
    """A gRPC server answering every method with behaviour(request, context, attempt); yields
    its address and the methods called, in order."""
    calls: list[str] = []

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
            def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
                calls.append(details.method)
                return behaviour(request, context, calls.count(details.method))

            return grpc.unary_unary_rpc_method_handler(answer)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([Handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        server.stop(0)


def unavailable_then(
    reply: bytes, failures: int
) -> Callable[[bytes, grpc.ServicerContext, int], bytes]:
    def behaviour(request: bytes, context: grpc.ServicerContext, attempt: int) -> bytes:
        if attempt <= failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        return reply

    return behaviour


SCORE = score_service_pb2.Score(id=7, value=42).SerializeToString()


def test_safe_calls_are_retried_when_unavailable() -> None:
    with (
        fake_server(unavailable_then(SCORE, failures=2)) as (target, calls),
        Client(target) as client,
    ):
        assert client.scores.get(7).value == 42
        assert client.scores.create(41).value == 42  # carries an idempotency key
    assert calls.count("/quartet.score.v1.ScoreService/GetScore") == 3
    assert calls.count("/quartet.score.v1.ScoreService/CreateScore") == 3


def test_unsafe_calls_are_not_retried() -> None:
    reply = auth_service_pb2.CreateAccountResponse().SerializeToString()
    with (
        fake_server(unavailable_then(reply, failures=1)) as (target, calls),
        Client(target) as client,
    ):
        with pytest.raises(QuartetError) as caught:
            client.auth.create_account("a@example.com", "correct horse")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert calls == ["/quartet.auth.v1.AuthService/CreateAccount"]


def test_every_call_has_a_default_deadline() -> None:
    def slow(request: bytes, context: grpc.ServicerContext, attempt: int) -> bytes:
        time.sleep(2)
        return SCORE

    with fake_server(slow) as (target, _), Client(target, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(QuartetError) as caught:
            client.scores.get(7)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        assert client.scores.get(7, timeout=5).value == 42  # a call's own timeout wins


def test_errors_without_details_still_raise_quartet_error() -> None:
    def plain(request: bytes, context: grpc.ServicerContext, attempt: int) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today")

    with fake_server(plain) as (target, _), Client(target) as client:
        with pytest.raises(QuartetError) as caught:
            client.scores.get(7)
    error = caught.value
    assert (error.code, error.message, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "not today",
        "",
    )
    assert error.field_violations == [] and error.status is None
    assert str(error) == "FAILED_PRECONDITION: not today"


def test_an_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=2) as client:
        with pytest.raises(QuartetError) as caught:
            client.health.check()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
