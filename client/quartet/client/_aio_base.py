"""The asyncio counterparts of `_base`: the transport and the method factories that make the
same described calls (`Call`) on a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar, Concatenate, ParamSpec, Self, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from quartet.client._base import (
    Call,
    Credentials,
    PageT,
    described,
    multicallable,
    with_token,
)
from quartet.client._errors import QuartetError

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")
T = TypeVar("T")
P = ParamSpec("P")


class AsyncTransport(Credentials):
    """One grpc.aio channel and the credentials sent on it."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__()
        self.channel = channel
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._callables: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    async def invoke(self, call: Call[T]) -> T:
        """Make the call with the credentials and its deadline; raise QuartetError."""
        metadata = self.metadata
        try:
            return call.result(await self._invoke(call, metadata))
        except QuartetError as error:
            if not self.should_refresh(error, metadata) or not await self._refreshed(metadata):
                raise
        return call.result(await self._invoke(call, self.metadata))

    async def _invoke(self, call: Call[Any], metadata: tuple[tuple[str, str], ...]) -> Any:
        method = multicallable(self.channel, self._callables, call)
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            return await method(call.request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    async def invoke_stream_unary(
        self,
        method: grpc.aio.StreamUnaryMultiCallable[Request, Response],
        requests: Iterable[Request] | AsyncIterable[Request],
        timeout: float | None,
    ) -> Response:
        """Send a stream of requests, get one response; raise QuartetError."""
        try:
            return await method(
                requests,  # type: ignore[arg-type]
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    async def invoke_streaming(
        self,
        method: grpc.aio.StreamStreamMultiCallable[Request, Response],
        requests: Iterable[Request] | AsyncIterable[Request],
        timeout: float | None,
    ) -> AsyncIterator[Response]:
        """Call a method that answers with a stream; iterate its responses, raise QuartetError."""
        try:
            async for response in method(
                requests,  # type: ignore[arg-type]
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            ):
                yield response
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None

    async def invoke_server_stream(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> AsyncIterator[Response]:
        """Call a method that answers with a stream that ends: see
        `Transport.invoke_server_stream`."""
        responses: Any = method(request, timeout=timeout, metadata=self.metadata)
        try:
            async for response in responses:
                yield response
        except grpc.RpcError as error:
            raise QuartetError.from_rpc_error(error) from None
        finally:
            responses.cancel()

    async def follow(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> AsyncStream[Response]:
        """Start a server stream that runs until closed (or for `timeout` seconds: no deadline
        when None), once the server has sent its headers; an expired access token is refreshed
        first. Raise QuartetError if the call failed at once."""
        metadata = self.metadata
        try:
            return await AsyncStream.start(method, request, timeout, metadata)
        except QuartetError as error:
            if not self.should_refresh(error, metadata) or not await self._refreshed(metadata):
                raise
        return await AsyncStream.start(method, request, timeout, self.metadata)

    async def _refreshed(self, failed_with: tuple[tuple[str, str], ...]) -> bool:
        """Refresh the access token unless another task already did; False if we cannot."""
        from quartet.client._auth import AuthCalls  # the auth service's own calls

        async with self._lock:
            if self.metadata != failed_with:
                return True  # refreshed meanwhile by another call
            if not self.refresh_token:
                return False
            self.rotate(await self._invoke(AuthCalls.refresh(self.refresh_token), ()))
            return True


class AsyncStream(AsyncIterator[Response]):
    """The responses of a server stream, until the server ends it or you close() it (which
    cancels the call). Ending at its own deadline is the end of the stream, not an error."""

    def __init__(self, call: Any) -> None:
        self._call = call  # a grpc.aio.UnaryStreamCall
        self._responses: AsyncIterator[Response] = call.__aiter__()
        self._closed = False

    @classmethod
    async def start(
        cls,
        method: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> AsyncStream[Response]:
        call: Any = method(request, timeout=timeout, metadata=metadata)
        await call.initial_metadata()  # waits for the headers, or for the call's end
        if call.done() and await call.code() != grpc.StatusCode.OK:
            try:
                await call.read()  # raises the call's error
            except grpc.RpcError as error:
                raise QuartetError.from_rpc_error(error) from None
        return cls(call)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Response:
        try:
            return await self._responses.__anext__()
        except asyncio.CancelledError:
            if self._closed:
                raise StopAsyncIteration from None
            raise
        except grpc.RpcError as error:
            if self._closed or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise StopAsyncIteration from None
            raise QuartetError.from_rpc_error(error) from None

    async def close(self) -> None:
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncService:
    """A service of the asyncio client: its methods come from `unary` and `paged`."""

    # The service it calls (tests/test_registration.py: a Client attribute for every service).
    SERVICE: ClassVar[ServiceDescriptor]

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport


def unary(
    build: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncService, P], Coroutine[Any, Any, T]]:
    """A coroutine method making the call that build describes (and documented by it)."""

    async def method(self: AsyncService, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._transport.invoke(build(*args, **kwargs))

    return described(method, build)


def paged(
    build: Callable[P, Call[PageT]], items: Callable[[PageT], Sequence[Item]]
) -> Callable[Concatenate[AsyncService, P], AsyncIterator[Item]]:
    """A method iterating (`async for`) the items of every page of a List method (build), from
    `page_token` on, fetching the next page as you iterate."""

    async def method(
        self: AsyncService, /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncIterator[Item]:
        token = ""
        while True:
            page = await self._transport.invoke(with_token(build, token, args, kwargs))
            for item in items(page):
                yield item
            token = page.next_page_token
            if not token:
                return

    return described(
        method, build, f"Every item of every page, fetched as you iterate: see `{build.__name__}`."
    )
