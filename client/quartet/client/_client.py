"""Client: one channel to a quartet server, with one attribute per service."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from quartet.auth.v1 import auth_service_pb2
from quartet.client import contract
from quartet.client._auth import Auth
from quartet.client._base import Closable, Transport
from quartet.client._events import Events
from quartet.client._experiments import Experiments
from quartet.client._health import Health
from quartet.client._regions import Regions
from quartet.client._scores import Scores

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
        channel_options = [("grpc.service_config", json.dumps(_SERVICE_CONFIG)), *options]
        if tls is False:
            channel = grpc.insecure_channel(target, options=channel_options)
        else:
            roots = tls if isinstance(tls, bytes) else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            channel = grpc.secure_channel(target, credentials, options=channel_options)
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
        self._transport.use_tokens(pair, self.auth.refresh, on_refresh)

    def set_token(self, token: str | None) -> None:
        """Send this API key or access token on every later call (None: no credentials)."""
        self._transport.set_token(token)

    def close(self) -> None:
        self._transport.channel.close()
