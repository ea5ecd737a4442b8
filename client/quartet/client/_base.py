"""What every service wrapper shares: calling with deadlines and credentials, and paging."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from quartet.client._errors import QuartetError

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")


class CallOptions(Protocol):
    """What a service wrapper needs from the Client that owns it."""

    timeout: float
    metadata: tuple[tuple[str, str], ...]


def call(
    options: CallOptions,
    method: grpc.UnaryUnaryMultiCallable[Request, Response],
    request: Request,
    timeout: float | None,
) -> Response:
    """Call a unary method with the client's credentials and deadline; raise QuartetError."""
    try:
        return method(
            request,
            timeout=options.timeout if timeout is None else timeout,
            metadata=options.metadata,
        )
    except grpc.RpcError as error:
        raise QuartetError.from_rpc_error(error) from None


def pages(
    fetch: Callable[[str], Response], items: Callable[[Response], Sequence[Item]]
) -> Iterator[Item]:
    """Every item of every page: fetch(page_token) until next_page_token is empty."""
    token = ""
    while True:
        page = fetch(token)
        yield from items(page)
        token = page.next_page_token  # type: ignore[attr-defined]
        if not token:
            return


def timestamp(value: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for an aware datetime, or a naive one taken as UTC."""
    if value is None:
        return None
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def fields(**values: Any) -> dict[str, Any]:
    """The keyword arguments that are not None: unset optional fields stay unset in the request."""
    return {k: v for k, v in values.items() if v is not None}
