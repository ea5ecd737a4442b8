"""The HTTP port: every service over the Connect protocol (JSON or binary bodies, GET for reads)
and gRPC-Web, served by the Connect project's runtime (connectrpc) under Hypercorn.

One generic adapter registers each method from the services' protobuf descriptors (no generated
Connect code) and runs every call through the same `CallCore` as the gRPC interceptor: access
rules, request checks, budgets, metrics and the access log are the gRPC port's, and so are the
servicers. Around it, a small ASGI layer answers CORS for the origins that publishable keys allow.
See docs/http.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
import orjson
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from hypercorn.asyncio import serve
from hypercorn.config import Config
from protobuf.wkt import Any as ConnectAny

from quartet.errors.v1 import error_reason_pb2
from quartet.server import auth, errors
from quartet.server.calls import Call, CallCore, Shape, Undecodable
from quartet.server.settings import Settings
from quartet.storage import DatabaseRunner, applications

logger = logging.getLogger(__name__)

# What a browser may send on a CORS request: Connect's own headers, the body's type, and the
# key (`authorization: Bearer <key>`). See https://connectrpc.com/docs/cors/.
ALLOWED_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, "
    "x-grpc-web, x-user-agent, grpc-timeout"
)
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"
# How long a browser may reuse a preflight's answer (seconds): origins change rarely.
PREFLIGHT_MAX_AGE = "7200"
# A preflight from an origin not seen among the publishable keys reads the keys again, at most
# this often (seconds): see AllowedOrigins.
ORIGINS_REFRESH_SECONDS = 1.0
# Clients (keys, addresses) whose rate is tracked at once; the least recently seen go first.
RATE_KEYS = 10_000


def _code(code: grpc.StatusCode) -> Code:
    return Code.CANCELED if code == grpc.StatusCode.CANCELLED else Code[code.name]


def connect_error(error: errors.ServiceError) -> ConnectError:
    """The Connect error of a ServiceError: the same code, message and google.rpc details as
    the gRPC port's status (ErrorInfo, BadRequest, ...)."""
    return ConnectError(
        _code(error.code),
        error.message,
        [
            ErrorDetail(
                ConnectAny(
                    type_url=f"type.googleapis.com/{detail.DESCRIPTOR.full_name}",
                    value=detail.SerializeToString(),
                )
            )
            for detail in error.details()
        ],
    )


class _BinaryCodec:
    """Binary protobuf (application/proto), with undecodable bytes answered as on gRPC."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Any:
        try:
            return message_class.FromString(bytes(data))
        except DecodeError:
            return Undecodable(message_class.DESCRIPTOR.full_name)


class _JsonCodec:
    """The proto3 JSON mapping (application/json). Unknown fields are refused, as a typo in a
    hand-written body would otherwise be silently dropped."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Any:
        message = message_class()
        try:
            json_format.Parse(bytes(data) or b"{}", message)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
            return Undecodable(message_class.DESCRIPTOR.full_name, f"not its JSON mapping: {exc}")
        return message


class _Context:
    """What the servicers ask of a grpc.aio.ServicerContext, for a call over HTTP."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...], remaining: float | None):
        self._peer = peer
        self._metadata = metadata
        self._end = None if remaining is None else time.monotonic() + remaining

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    async def send_initial_metadata(self, metadata: object) -> None:
        """Streams send their headers with the first message anyway."""


class RateLimiter:
    """A token bucket per key: `rate` calls a second, bursts of `2 * rate`. Bounded: the least
    recently seen keys are forgotten first (a forgotten key starts with a full bucket)."""

    def __init__(self, name: str, rate: int, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.rate = float(rate)
        self.burst = 2.0 * rate
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, key: str) -> None:
        """Take one call's token for key, or raise ResourceExhausted saying when to retry."""
        now = self._clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            wait = (1 - tokens) / self.rate
            raise errors.ResourceExhausted(
                f"too many calls for this {self.name}: at most {self.rate:g} a second; "
                f"retry in {wait:.2f} s",
                metadata={"limit": f"http_calls_per_{self.name}", "rate": f"{self.rate:g}"},
                retry_delay=_seconds(wait),
            )
        self._buckets[key] = (tokens - 1, now)
        while len(self._buckets) > RATE_KEYS:
            self._buckets.popitem(last=False)


def _seconds(value: float) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=math.ceil(value * 1000))


@dataclass(frozen=True)
class _Method:
    path: str
    descriptor: MethodDescriptor
    behaviour: Callable[..., Any]


class HttpAdapter:
    """Connect endpoints for the servicers, every call going through the CallCore."""

    def __init__(self, core: CallCore, settings: Settings) -> None:
        self._core = core
        self._per_key = RateLimiter("key", settings.http_calls_per_key)
        self._per_address = RateLimiter("address", settings.http_calls_per_address)

    def endpoints(self, servicers: Iterable[tuple[ServiceDescriptor, object]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for service, servicer in servicers:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                found[path] = self._endpoint(
                    _Method(path, method, getattr(servicer, method.name)), service
                )
        return found

    def _endpoint(self, method: _Method, service: ServiceDescriptor) -> Any:
        descriptor = method.descriptor
        streams = (descriptor.client_streaming, descriptor.server_streaming)
        kind, stream_type = {
            (False, False): ("unary_unary", StreamType.UNARY),
            (False, True): ("unary_stream", StreamType.SERVER_STREAM),
            (True, False): ("stream_unary", StreamType.CLIENT_STREAM),
            (True, True): ("stream_stream", StreamType.BIDI_STREAM),
        }[streams]
        info: MethodInfo[Any, Any] = MethodInfo(
            name=descriptor.name,
            service_name=service.full_name,
            input=message_factory.GetMessageClass(descriptor.input_type),
            output=message_factory.GetMessageClass(descriptor.output_type),
            idempotency_level=_idempotency(descriptor),
            stream_type=stream_type,
        )
        shape = self._core.shape(method.path, kind)
        behaviour = method.behaviour
        if stream_type is StreamType.UNARY:

            async def unary(request: Any, ctx: RequestContext[Any, Any]) -> Any:
                async with self._call(shape, ctx, request) as context:
                    response = await behaviour(request, context.servicer)
                    context.holds.hold_reply(response)
                    return response
                raise AssertionError("unreachable: the call raises or returns")

            return Endpoint.unary(info, unary)
        if stream_type is StreamType.SERVER_STREAM:

            async def server_stream(request: Any, ctx: RequestContext[Any, Any]) -> Any:
                async with self._call(shape, ctx, request) as context:
                    async for response in behaviour(request, context.servicer):
                        yield response

            return Endpoint.server_stream(info, server_stream)
        if stream_type is StreamType.CLIENT_STREAM:

            async def client_stream(requests: Any, ctx: RequestContext[Any, Any]) -> Any:
                async with self._call(shape, ctx, None) as context:
                    response = await behaviour(self._core.checked(requests), context.servicer)
                    context.holds.hold_reply(response)
                    return response
                raise AssertionError("unreachable: the call raises or returns")

            return Endpoint.client_stream(info, client_stream)

        async def bidi_stream(requests: Any, ctx: RequestContext[Any, Any]) -> Any:
            async with self._call(shape, ctx, None) as context:
                async for response in behaviour(self._core.checked(requests), context.servicer):
                    yield response

        return Endpoint.bidi_stream(info, bidi_stream)

    @contextlib.asynccontextmanager
    async def _call(
        self, shape: Shape, ctx: RequestContext[Any, Any], request: Any
    ) -> AsyncIterator[_Call]:
        headers = ctx.request_headers
        metadata = tuple((key, headers[key]) for key in headers)
        peer = _peer(ctx.client_address)
        remaining = None if ctx.timeout_ms is None else ctx.timeout_ms / 1000
        holds = self._core.new_holds()

        def rate_limits(caller: auth.Caller | None) -> None:
            # Publishable keys only: every other credential is a secret its holder keeps.
            if caller is not None and caller.origins is not None:
                self._per_address.take(peer.rpartition(":")[0])
                self._per_key.take(str(caller))

        try:
            async with Call(
                self._core,
                shape,
                peer=peer,
                metadata=metadata,
                time_remaining=remaining,
                request=request,
                holds=holds,
                extra_checks=rate_limits,
            ):
                servicer = cast(
                    grpc.aio.ServicerContext[Any, Any], _Context(peer, metadata, remaining)
                )
                yield _Call(servicer, holds)
        except errors.ServiceError as error:
            raise connect_error(error) from None
        finally:
            holds.release()


@dataclass(frozen=True)
class _Call:
    servicer: grpc.aio.ServicerContext[Any, Any]
    holds: Any


def _idempotency(method: MethodDescriptor) -> IdempotencyLevel:
    level = method.GetOptions().idempotency_level
    if level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS:
        return IdempotencyLevel.NO_SIDE_EFFECTS  # served by GET too
    if level == descriptor_pb2.MethodOptions.IDEMPOTENT:
        return IdempotencyLevel.IDEMPOTENT
    return IdempotencyLevel.UNKNOWN


def _peer(address: str | None) -> str:
    """The client's address in gRPC's peer form ("ipv4:1.2.3.4:5678"), which the login
    throttle and the access log already read."""
    if not address:
        return "unknown"
    host, _, port = address.rpartition(":")
    if ":" in host:
        return f"ipv6:[{host}]:{port}"
    return f"ipv4:{host}:{port}"


class AllowedOrigins:
    """The origins publishable keys allow, read from the database and kept in memory.

    An origin not found is looked up again, by a read that starts after it was asked for, so
    that a key made a moment ago works at once; the reads are at most one per
    ORIGINS_REFRESH_SECONDS, shared by every preflight waiting, so unknown origins (anyone can
    send them) cost a wait, not a query each."""

    def __init__(self, runner: DatabaseRunner) -> None:
        self._runner = runner
        self._origins: set[str] = set()
        self._read = -math.inf  # when the last read started
        self._lock = asyncio.Lock()

    async def allows(self, origin: str) -> bool:
        if origin in self._origins:
            return True
        asked = time.monotonic()
        async with self._lock:
            if self._read < asked:
                await asyncio.sleep(max(0.0, self._read + ORIGINS_REFRESH_SECONDS - asked))
                started = time.monotonic()
                self._origins = await self._runner.run(applications.publishable_origins)
                self._read = started
        return origin in self._origins


Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Cors:
    """CORS around the Connect application, for web pages using publishable keys.

    A preflight carries no credentials, so it is answered for any origin that some publishable
    key allows, and refused (403, PERMISSION_DENIED, ORIGIN_NOT_ALLOWED) for the others; the
    call itself is then checked against its own key's origins (`auth.admit_publishable`).
    Requests without an `Origin` header (curl, servers) pass untouched."""

    def __init__(self, app: Any, origins: AllowedOrigins) -> None:
        self._app = app
        self._origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self._app(scope, receive, send)
            return
        allowed = await self._origins.allows(origin)
        if scope["method"] == "OPTIONS":
            await self._preflight(origin, allowed, send)
            return

        async def with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and allowed:
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"access-control-allow-origin", origin.encode()),
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        await self._app(scope, receive, with_cors)

    async def _preflight(self, origin: str, allowed: bool, send: Send) -> None:
        if allowed:
            headers = [
                (b"access-control-allow-origin", origin.encode()),
                (b"access-control-allow-methods", b"GET, POST"),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
                (b"vary", b"Origin"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        error = errors.PermissionDenied(
            f"the origin {origin} is not allowed for any publishable key",
            reason=error_reason_pb2.ORIGIN_NOT_ALLOWED,
            metadata={"origin": origin},
        )
        body = orjson.dumps(
            {
                "code": "permission_denied",
                "message": error.message,
                "details": [
                    {
                        "type": detail.DESCRIPTOR.full_name,
                        "value": _base64(detail.SerializeToString()),
                        "debug": json_format.MessageToDict(detail),
                    }
                    for detail in error.details()
                ],
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"vary", b"Origin")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode().rstrip("=")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class _Connect(ConnectASGIApplication[None]):
    """The Connect application of every service at once (generated code makes one a service,
    each mounted at its path)."""

    @property
    def path(self) -> str:
        return "/"


def application(
    core: CallCore,
    settings: Settings,
    runner: DatabaseRunner,
    servicers: Iterable[tuple[ServiceDescriptor, object]],
) -> Cors:
    """The ASGI application of the HTTP port."""
    endpoints = HttpAdapter(core, settings).endpoints(servicers)
    connect = _Connect(
        service=None,
        endpoints=lambda _: endpoints,
        read_max_bytes=settings.max_message_bytes,
        codecs=[_BinaryCodec(), _JsonCodec()],
    )
    return Cors(connect, AllowedOrigins(runner))


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket for the HTTP port. reuse_port: shared by the worker processes, as
    their gRPC port is (their supervisor checked it was free); otherwise a taken port fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _CancelledConnection(logging.Filter):
    """Python 3.11's asyncio logs an ERROR with a traceback for every connection task cancelled
    when Hypercorn stops (its StreamReaderProtocol callback asks a cancelled task for its
    exception; later Pythons check first): an idle keep-alive connection closed at shutdown is
    no error."""

    def filter(self, record: logging.LogRecord) -> bool:
        cancelled = record.exc_info is not None and isinstance(
            record.exc_info[1], asyncio.CancelledError
        )
        return not (cancelled and str(record.msg).startswith("Exception in callback StreamReader"))


logging.getLogger("asyncio").addFilter(_CancelledConnection())


class HttpServer:
    """Hypercorn serving the application on a bound socket, until `stop`."""

    def __init__(self, app: Cors, sock: socket.socket, grace: float) -> None:
        self.port = int(sock.getsockname()[1])
        config = Config()
        # Hypercorn takes the descriptor over (and closes it when it stops).
        config.bind = [f"fd://{sock.detach()}"]
        config.graceful_timeout = grace
        config.accesslog = None  # the call core logs each call
        config.errorlog = logger
        config.keep_alive_timeout = 75  # longer than common load balancers' idle timeout (60 s)
        self._config = config
        self._app = app
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            serve(self._app, self._config, shutdown_trigger=self._stopping.wait, mode="asgi")  # type: ignore[arg-type]
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
