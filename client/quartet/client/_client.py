"""Client: one channel to a quartet server, with one attribute per service."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from quartet.client._health import Health
from quartet.client._scores import Scores
from quartet.score.v1 import score_service_pb2_grpc

DEFAULT_TIMEOUT = 10.0

# Calls safe to repeat: reads, and writes that carry an idempotency key (the SDK always sets one).
# gRPC retries them itself when the server was unreachable or shutting down (UNAVAILABLE); see
# https://github.com/grpc/proposal/blob/master/A6-client-retries.md
_RETRYABLE: list[dict[str, str]] = [
    {"service": "grpc.health.v1.Health", "method": "Check"},
    {"service": "quartet.score.v1.ScoreService"},
]
_SERVICE_CONFIG = {
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


class Client:
    """A connection to quartet. Use it as a context manager, or call close().

    Args:
        target: the server's "host:port".
        token: an access token (from `auth.login`) or an application API key, sent as
            `authorization: Bearer <token>` on every call.
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
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            roots = tls if isinstance(tls, bytes) else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.set_token(token)
        self.health = Health(self, health_pb2_grpc.HealthStub(self._channel))
        self.scores = Scores(self, score_service_pb2_grpc.ScoreServiceStub(self._channel))

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel, for calling generated stubs directly."""
        return self._channel

    def set_token(self, token: str | None) -> None:
        """Use token (or no credentials, for None) on every later call."""
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
