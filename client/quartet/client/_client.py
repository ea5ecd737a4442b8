"""Client: one channel to a quartet server, with one attribute per service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from quartet.auth.v1 import auth_service_pb2
from quartet.client._auth import Auth
from quartet.client._base import (
    DEFAULT_TIMEOUT,
    Closable,
    Transport,
    channel_credentials,
    channel_options,
)
from quartet.client._events import Events
from quartet.client._experiments import Experiments
from quartet.client._health import Health
from quartet.client._regions import Regions
from quartet.client._scores import Scores

__all__ = ["DEFAULT_TIMEOUT", "Client"]


class Client(Closable):
    """A connection to quartet. Use it as a context manager, or call close().

    Args:
        target: the server's "host:port".
        token: an application's API key, or an access token, sent as
            `authorization: Bearer <token>` on every call. Or call `login()` instead.
        tls: False for plaintext; True for TLS with the system's root certificates; or the PEM
            bytes of the root certificate(s) to trust (for a private CA or a self-signed server).
        timeout: the default deadline of every call, in seconds.
        options: extra gRPC channel options.

    `quartet.client.aio.Client` is the same for asyncio.
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
            channel = grpc.insecure_channel(target, options=channel_options(options))
        else:
            channel = grpc.secure_channel(
                target, channel_credentials(tls), options=channel_options(options)
            )
        self._transport = Transport(channel, timeout)
        self._transport.set_token(token)
        self.auth = Auth(self._transport)
        self.health = Health(self._transport)
        self.scores = Scores(self._transport)
        self.events = Events(self._transport)
        self.regions = Regions(self._transport)
        self.experiments = Experiments(self._transport)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel, for calling generated stubs directly."""
        return self._transport.channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credentials metadata this client sends, to pass to a generated stub's calls."""
        return self._transport.metadata

    def login(
        self,
        email: str,
        password: str,
        *,
        on_refresh: Callable[[auth_service_pb2.TokenPair], None] | None = None,
    ) -> auth_service_pb2.TokenPair:
        """Log in and send the access token on every later call, refreshing it when it expires
        (on_refresh, if given, is called with each new pair)."""
        pair = self.auth.login(email, password)
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

    def close(self) -> None:
        self._transport.channel.close()
