"""What every service wrapper shares: the transport (deadlines, credentials, errors) and paging."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from quartet.client._errors import QuartetError

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")


class Closable:
    """A context manager that calls close() on exit."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TokenSource(Protocol):
    """Something that can trade a refresh token for a new TokenPair (the AuthService stub)."""

    def __call__(self, refresh_token: str) -> Any: ...


class Transport:
    """One channel and the credentials sent on it.

    With a static token (an API key, or an access token you manage), every call sends it. After
    `use_tokens(pair)` (what `Client.login` does) an expired access token is refreshed once,
    transparently, and the call retried; the refresh token rotates each time.
    """

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = ()
        self._refresh_token = ""
        self._refresh: TokenSource | None = None
        self._on_refresh: Callable[[Any], None] | None = None
        self._lock = threading.Lock()

    def set_token(self, token: str | None) -> None:
        with self._lock:
            self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
            self._refresh_token = ""

    def use_tokens(
        self,
        pair: Any,
        refresh: TokenSource,
        on_refresh: Callable[[Any], None] | None = None,
    ) -> None:
        """Send pair.access_token from now on, and refresh it with `refresh` when it expires;
        on_refresh is given each new pair (to keep it, as the `quartet` command does)."""
        with self._lock:
            self.metadata = (("authorization", f"Bearer {pair.access_token}"),)
            self._refresh_token = pair.refresh_token
            self._refresh = refresh
            self._on_refresh = on_refresh

    def invoke(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> Response:
        """Call a unary method with the credentials and a deadline; raise QuartetError."""
        metadata = self.metadata
        try:
            return self._call(method, request, timeout, metadata)
        except QuartetError as error:
            if error.reason != "CREDENTIALS_EXPIRED" or not self._refreshed(metadata):
                raise
        return self._call(method, request, timeout, self.metadata)

    def invoke_stream_unary(
        self,
        method: grpc.StreamUnaryMultiCallable[Request, Response],
        requests: Iterator[Request],
        timeout: float | None,
    ) -> Response:
        """Send a stream of requests, get one response; raise QuartetError."""
        try:
            return method(
                requests,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    def invoke_streaming(
        self,
        method: grpc.StreamStreamMultiCallable[Request, Response]
        | grpc.UnaryStreamMultiCallable[Request, Response],
        request: Request | Iterator[Request],
        timeout: float | None,
    ) -> Iterator[Response]:
        """Call a method that answers with a stream; iterate its responses, raise QuartetError.

        `timeout` bounds the whole call, so give long transfers (imports) a generous one.
        """
        try:
            yield from method(
                request,  # type: ignore[arg-type]
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    def follow(
        self,
        method: grpc.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> Stream[Response]:
        """Start a server stream that runs until closed (or for `timeout` seconds: no deadline
        when None), once the server has sent its headers; an expired access token is refreshed
        first, as for unary calls. Raise QuartetError if the call failed at once."""
        metadata = self.metadata
        try:
            return Stream.start(method, request, timeout, metadata)
        except QuartetError as error:
            if error.reason != "CREDENTIALS_EXPIRED" or not self._refreshed(metadata):
                raise
        return Stream.start(method, request, timeout, self.metadata)

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> Response:
        try:
            return method(
                request, timeout=self.timeout if timeout is None else timeout, metadata=metadata
            )
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    def _refreshed(self, failed_with: tuple[tuple[str, str], ...]) -> bool:
        """Refresh the access token unless another thread already did; False if we cannot."""
        with self._lock:
            if self.metadata != failed_with:
                return True  # refreshed meanwhile by another call
            if not self._refresh_token or self._refresh is None:
                return False
            pair = self._refresh(self._refresh_token)
            self.metadata = (("authorization", f"Bearer {pair.access_token}"),)
            self._refresh_token = pair.refresh_token
            if self._on_refresh is not None:
                self._on_refresh(pair)
            return True


class Stream(Closable, Iterator[Response]):
    """The responses of a server stream, until the server ends it or you close() it (which
    cancels the call; from another thread too, ending an iteration that waits). Ending at its
    own deadline is the end of the stream, not an error."""

    def __init__(self, call: Any) -> None:
        self._call = call  # a grpc.Call that is also an iterator of responses
        self._closed = False

    @classmethod
    def start(
        cls,
        method: grpc.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> Stream[Response]:
        call: Any = method(request, timeout=timeout, metadata=metadata)
        call.initial_metadata()  # waits for the headers, or for the call's end
        if call.done() and call.code() != grpc.StatusCode.OK:
            raise QuartetError.from_rpc_error(call)
        return cls(call)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Response:
        try:
            return next(self._call)  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            if self._closed or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise StopIteration from None
            raise QuartetError.from_rpc_error(error) from None

    def close(self) -> None:
        self._closed = True
        self._call.cancel()


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
