"""The quartet SDK for asyncio: `Client(target)`, the same services and methods as
`quartet.client.Client`, as coroutines, on a grpc.aio channel (no threads).

    from quartet.client.aio import Client

    async with Client("localhost:50051") as client:
        score = await client.scores.create(41)
        async for event in client.events.iter(category="page interaction"):
            ...

Calls have the same default deadlines, retries (from the protos' idempotency levels) and
errors (`QuartetError`); `iter*` methods and `events.tail` are async iterators. Every request is
built by the same code as the synchronous client's. Create the client in the event loop that
uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from quartet.auth.v1 import auth_service_pb2
from quartet.client._aio_base import AsyncTransport
from quartet.client._auth import AsyncAuth
from quartet.client._base import DEFAULT_TIMEOUT, channel_credentials, channel_options
from quartet.client._errors import FieldViolation, QuartetError
from quartet.client._events import AsyncEvents, AsyncEventTail, event
from quartet.client._experiments import AsyncExperiments
from quartet.client._health import AsyncHealth
from quartet.client._regions import AsyncRegions
from quartet.client._scores import AsyncScores

__all__ = ["AsyncEventTail", "Client", "FieldViolation", "QuartetError", "event"]


class Client:
    """An asyncio connection to quartet. Use it as an async context manager, or await close().

    The arguments are those of `quartet.client.Client`.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool | bytes = False,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if tls is False:
            channel = grpc.aio.insecure_channel(target, options=channel_options(options))
        else:
            channel = grpc.aio.secure_channel(
                target, channel_credentials(tls), options=channel_options(options)
            )
        self._transport = AsyncTransport(channel, timeout)
        self._transport.set_token(token)
        self.auth = AsyncAuth(self._transport)
        self.health = AsyncHealth(self._transport)
        self.scores = AsyncScores(self._transport)
        self.events = AsyncEvents(self._transport)
        self.regions = AsyncRegions(self._transport)
        self.experiments = AsyncExperiments(self._transport)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying grpc.aio channel, for calling generated stubs directly."""
        return self._transport.channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credentials metadata this client sends, to pass to a generated stub's calls."""
        return self._transport.metadata

    async def login(
        self,
        email: str,
        password: str,
        *,
        on_refresh: Callable[[auth_service_pb2.TokenPair], None] | None = None,
    ) -> auth_service_pb2.TokenPair:
        """Log in and send the access token on every later call, refreshing it when it expires
        (on_refresh, if given, is called with each new pair)."""
        pair = await self.auth.login(email, password)
        self.use_tokens(pair, on_refresh=on_refresh)
        return pair

    def use_tokens(
        self,
        pair: auth_service_pb2.TokenPair,
        *,
        on_refresh: Callable[[auth_service_pb2.TokenPair], None] | None = None,
    ) -> None:
        """Go on with the tokens of an earlier login (kept by you): send pair's access token,
        and refresh it with its refresh token when it expires. The refresh token is single-use,
        so keep each new pair: on_refresh is called with it."""
        self._transport.use_tokens(pair)
        self._transport.on_refresh = on_refresh

    def set_token(self, token: str | None) -> None:
        """Send this API key or access token on every later call (None: no credentials)."""
        self._transport.set_token(token)

    async def close(self) -> None:
        await self._transport.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
