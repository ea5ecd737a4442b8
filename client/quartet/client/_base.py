"""What every service wrapper shares, in both clients: calls described once (`Call`, built by each
service's request builders), the credentials, the channel's options, and the synchronous
transport (deadlines, token refresh, errors) and method factories. `_aio_base` has the asyncio
counterparts of the transport and factories."""

from __future__ import annotations

import datetime
import functools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from quartet.client import contract
from quartet.client._errors import QuartetError

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")
T = TypeVar("T")
R = TypeVar("R", bound=Message)
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])
PageT = TypeVar("PageT", bound="Page")

DEFAULT_TIMEOUT = 10.0

# gRPC retries a call itself when the server was unreachable or shutting down (UNAVAILABLE), if
# the call is safe to repeat: its proto declares it NO_SIDE_EFFECTS or IDEMPOTENT (a write that
# carries an idempotency key the SDK always sets). See
# https://github.com/grpc/proposal/blob/master/A6-client-retries.md
_RETRYABLE: list[dict[str, str]] = [
    # A health check is a read, but the health proto is gRPC's own and declares no level.
    {"service": "grpc.health.v1.Health", "method": "Check"},
    *(
        {"service": method.containing_service.full_name, "method": method.name}
        for method in contract.methods()
        if contract.is_retryable(method)
    ),
]
_SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": _RETRYABLE,
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def channel_options(extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A channel's options: the retry policy above, then the caller's own."""
    return [("grpc.service_config", json.dumps(_SERVICE_CONFIG)), *extra]


def channel_credentials(tls: bool | bytes) -> grpc.ChannelCredentials:
    """TLS with the system's roots (True) or these PEM roots (bytes)."""
    return grpc.ssl_channel_credentials(root_certificates=tls if isinstance(tls, bytes) else None)


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


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One unary call, described once for both clients: the method's path, the request, the
    response's class, the deadline (None: the client's default) and what to return of the
    response."""

    path: str
    request: Message
    response: type[Message]
    timeout: float | None
    result: Callable[[Any], T]


def _same(response: T) -> T:
    return response


@overload
def call(
    service: ServiceDescriptor,
    method: str,
    request: Message,
    response: type[R],
    timeout: float | None,
) -> Call[R]: ...
@overload
def call(
    service: ServiceDescriptor,
    method: str,
    request: Message,
    response: type[R],
    timeout: float | None,
    result: Callable[[R], T],
) -> Call[T]: ...
def call(
    service: ServiceDescriptor,
    method: str,
    request: Message,
    response: type[Message],
    timeout: float | None,
    result: Callable[[Any], Any] = _same,
) -> Call[Any]:
    """The call of service's method (its name, such as "GetScore") with request."""
    return Call(f"/{service.full_name}/{method}", request, response, timeout, result)


def multicallable(channel: Any, cache: dict[str, Any], call: Call[Any]) -> Any:
    """The channel's (sync or grpc.aio) callable for the call's method, made once."""
    method = cache.get(call.path)
    if method is None:
        method = cache[call.path] = channel.unary_unary(
            call.path,
            request_serializer=type(call.request).SerializeToString,
            response_deserializer=call.response.FromString,
        )
    return method


class Page(Protocol):
    """A List method's response."""

    @property
    def next_page_token(self) -> str: ...


class Credentials:
    """The credentials a client sends, shared by its calls.

    With a static token (an API key, or an access token you manage), every call sends it. After
    `use_tokens(pair)` (what `login` does) an expired access token is refreshed once,
    transparently, and the call retried; the refresh token rotates each time.
    """

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.refresh_token = ""
        # Given each refreshed pair, to keep it (the refresh token is single-use).
        self.on_refresh: Callable[[Any], None] | None = None

    def set_token(self, token: str | None) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.refresh_token = ""

    def use_tokens(self, pair: Any) -> None:
        """Send pair.access_token from now on, and pair.refresh_token when it expires."""
        self.metadata = (("authorization", f"Bearer {pair.access_token}"),)
        self.refresh_token = pair.refresh_token

    def rotate(self, pair: Any) -> None:
        """Use a refreshed pair, and hand it to on_refresh."""
        self.use_tokens(pair)
        if self.on_refresh is not None:
            self.on_refresh(pair)

    def should_refresh(self, error: QuartetError, failed_with: tuple[tuple[str, str], ...]) -> bool:
        """Whether a call that failed with error, sending failed_with, may succeed once the
        tokens are refreshed (or were meanwhile, by another call)."""
        return error.reason == "CREDENTIALS_EXPIRED" and (
            self.metadata != failed_with or bool(self.refresh_token)
        )


class Transport(Credentials):
    """One channel and the credentials sent on it, for the synchronous client."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        super().__init__()
        self.channel = channel
        self.timeout = timeout
        self._lock = threading.Lock()
        self._callables: dict[str, grpc.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._auth_path = ""

    def invoke(self, call: Call[T]) -> T:
        """Make the call with the credentials and its deadline; raise QuartetError."""
        metadata = self.metadata
        try:
            return call.result(self._invoke(call, metadata))
        except QuartetError as error:
            if not self.should_refresh(error, metadata) or not self._refreshed(metadata):
                raise
        return call.result(self._invoke(call, self.metadata))

    def _invoke(self, call: Call[Any], metadata: tuple[tuple[str, str], ...]) -> Any:
        method = multicallable(self.channel, self._callables, call)
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            return method(call.request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

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
        method: grpc.StreamStreamMultiCallable[Request, Response],
        requests: Iterator[Request],
        timeout: float | None,
    ) -> Iterator[Response]:
        """Call a method that answers with a stream; iterate its responses, raise QuartetError.

        `timeout` bounds the whole call, so give long transfers (imports) a generous one.
        """
        try:
            yield from method(
                requests,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    def invoke_server_stream(
        self,
        method: grpc.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> Iterator[Response]:
        """Call a method that answers with a stream that ends (an export, a replay); iterate its
        responses, raise QuartetError, the end of its deadline too (`timeout`, None for none: it
        bounds the whole transfer). Leaving the iteration early cancels the call."""
        responses: Any = method(request, timeout=timeout, metadata=self.metadata)
        try:
            yield from responses
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None
        finally:
            responses.cancel()

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
            if not self.should_refresh(error, metadata) or not self._refreshed(metadata):
                raise
        return Stream.start(method, request, timeout, self.metadata)

    def _refreshed(self, failed_with: tuple[tuple[str, str], ...]) -> bool:
        """Refresh the access token unless another thread already did; False if we cannot."""
        from quartet.client._auth import AuthCalls  # the auth service's own calls

        with self._lock:
            if self.metadata != failed_with:
                return True  # refreshed meanwhile by another call
            if not self.refresh_token:
                return False
            self.rotate(self._invoke(AuthCalls.refresh(self.refresh_token), ()))
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


class Service:
    """A service of the synchronous client: its methods come from `unary` and `paged`."""

    # The service it calls (tests/test_registration.py: a Client attribute for every service).
    SERVICE: ClassVar[ServiceDescriptor]

    def __init__(self, transport: Transport) -> None:
        self._transport = transport


def unary(build: Callable[P, Call[T]]) -> Callable[Concatenate[Service, P], T]:
    """A method making the call that build describes (and documented by it)."""

    def method(self: Service, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._transport.invoke(build(*args, **kwargs))

    return described(method, build)


def paged(
    build: Callable[P, Call[PageT]], items: Callable[[PageT], Sequence[Item]]
) -> Callable[Concatenate[Service, P], Iterator[Item]]:
    """A method iterating the items of every page of a List method (build), from `page_token`
    on, fetching the next page as you iterate."""

    def method(self: Service, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Item]:
        return pages(
            lambda token: self._transport.invoke(with_token(build, token, args, kwargs)), items
        )

    return described(
        method, build, f"Every item of every page, fetched as you iterate: see `{build.__name__}`."
    )


def with_token(
    build: Callable[..., Call[Any]], token: str, args: Any, kwargs: dict[str, Any]
) -> Call[Any]:
    """The call of a List method for the page of token (the first page's own, at first)."""
    return build(*args, **{**kwargs, "page_token": token or kwargs.get("page_token", "")})


def described(method: F, build: Callable[..., Any], doc: str | None = None) -> F:
    """method, named and documented as the request builder it calls."""
    functools.update_wrapper(method, build, assigned=("__module__", "__name__", "__doc__"))
    if doc is not None:
        method.__doc__ = doc
    return method


def pages(
    fetch: Callable[[str], PageT], items: Callable[[PageT], Sequence[Item]]
) -> Iterator[Item]:
    """Every item of every page: fetch(page_token) until next_page_token is empty."""
    token = ""
    while True:
        page = fetch(token)
        yield from items(page)
        token = page.next_page_token
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
