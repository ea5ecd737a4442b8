"""What every call gets, whatever protocol carried it (gRPC, Connect, gRPC-Web): the budgets,
authentication, access rules, request checks, error mapping, metrics and access-log line. The
gRPC interceptor (`quartet.server.interceptors`) and the HTTP adapter (`quartet.server.http`)
each translate their protocol's call into one `Call`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from quartet import storage
from quartet.errors.v1 import error_reason_pb2
from quartet.server import auth, budgets, errors, logs, metrics
from quartet.server.budgets import Budgets
from quartet.server.validation import RequestRules

_HEALTH = "/grpc.health.v1.Health/"
logger = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

_TYPES = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


@dataclass(frozen=True)
class Shape:
    """What a method is, once per method: its metrics and how its calls are budgeted."""

    method: str  # "/package.Service/Method"
    kind: str  # "unary_unary", "unary_stream", "stream_unary" or "stream_stream"
    counts: metrics.CallMetrics = field(compare=False)
    streaming_request: bool  # the client sends a stream of messages
    streaming: bool  # either side streams: the call may stay open indefinitely
    read_only: bool  # the method declares no side effects: refusing its reply loses nothing

    @classmethod
    def of(cls, method: str, kind: str) -> Shape:
        service, _, name = method.lstrip("/").rpartition("/")
        return cls(
            method=method,
            kind=kind,
            counts=metrics.CallMetrics(service, name, _TYPES[kind]),
            streaming_request=kind.startswith("stream"),
            streaming=kind != "unary_unary",
            read_only=read_only(method),
        )


@dataclass
class Outcome:
    """How a call ended, for the protocol to answer: `failure` None is success."""

    holds: CallHolds
    code: grpc.StatusCode = grpc.StatusCode.OK
    failure: errors.ServiceError | None = None
    caller: auth.Caller | None = None


class Aborted(Exception):
    """The protocol already answered the call with this code (grpc.aio's context.abort)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


class CallCore:
    """What every call of a worker shares, whatever protocol carried it: the authenticator, the
    budgets, the request rules and the methods' shapes. Each call goes through a `Call`."""

    def __init__(self, authenticator: auth.Authenticator, budgets: Budgets) -> None:
        self.authenticator = authenticator
        self.budgets = budgets
        self.rules = RequestRules()
        self._shapes: dict[str, Shape] = {}

    def shape(self, method: str, kind: str) -> Shape:
        """The method's shape, one per method whichever protocol calls it, so that its metrics
        series are counted in one place."""
        found = self._shapes.get(method)
        if found is None:
            found = self._shapes[method] = Shape.of(method, kind)
        return found

    def new_holds(self) -> CallHolds:
        return CallHolds(self.budgets.reply_bytes)

    async def checked(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A stream of requests, each message checked against its rules as it arrives."""
        index = 0
        async for request in requests:
            if isinstance(request, Undecodable):
                raise request.error()
            self.rules.check(request, prefix=f"messages[{index}].")
            index += 1
            yield request

    def slot(self, shape: Shape, *, signed_in: bool) -> budgets.Pool:
        """The pool a call takes its place from."""
        pools = self.budgets
        if signed_in:
            return pools.streams if shape.streaming else pools.signed_in_calls
        if shape.streaming:
            return pools.anonymous_streams
        # Health checks have a pool of their own, as Envoy keeps them outside its circuit
        # breakers: logins waiting for their password hash must not fail a load balancer's probe.
        return pools.health_checks if shape.method.startswith(_HEALTH) else pools.anonymous_calls


class Call:
    """One call's passage through the core, as an async context manager. Entering admits the
    call (budgets, credentials, the method's access rule, the request's field rules) and gives
    its `Outcome`; leaving records how it ended (metrics, the access-log line). The call's
    errors, admission's included, leave as a ServiceError (anything unexpected mapped to one by
    `as_service_error`), which the protocol turns into its error format; a cancellation or an
    `Aborted` leaves as itself. A class, not an `asynccontextmanager`: every call passes here,
    and the generator's machinery cost more than the work (docs/performance.md)."""

    __slots__ = (
        "_start",
        "core",
        "extra_checks",
        "holds",
        "metadata",
        "outcome",
        "peer",
        "request",
        "shape",
        "time_remaining",
    )

    def __init__(
        self,
        core: CallCore,
        shape: Shape,
        *,
        peer: str,
        metadata: Metadata,
        time_remaining: float | None,
        request: Any,
        holds: CallHolds,
        extra_checks: Callable[[auth.Caller | None], None] | None = None,
    ) -> None:
        """`holds` (from `core.new_holds`) collects the call's budget leases: the protocol gives
        them back once it is done with the call. `request` is the decoded message (None for a
        stream of them, checked by `core.checked`), or an `Undecodable`. `extra_checks` adds the
        protocol's own admission rules (the HTTP port's rate limits), run once the caller is
        known."""
        self.core, self.shape, self.peer, self.metadata = core, shape, peer, metadata
        self.time_remaining, self.request, self.holds = time_remaining, request, holds
        self.extra_checks = extra_checks
        self.outcome = Outcome(holds)
        self._start = 0.0

    async def __aenter__(self) -> Outcome:
        self.shape.counts.start()
        self._start = time.perf_counter()
        try:
            await self._admit()
        except BaseException as exc:
            self._end(exc)
            raise
        return self.outcome

    async def _admit(self) -> None:
        """Admit the call, or raise why not."""
        core, shape, request, metadata, holds = (
            self.core, self.shape, self.request, self.metadata, self.holds
        )  # fmt: skip
        if isinstance(request, Undecodable):
            raise request.error()
        if self.time_remaining is not None:
            # Each call runs in its own task, so this value lives exactly as long as the call.
            storage.deadline.set(time.monotonic() + self.time_remaining)
        rule = auth.rule_for(shape.method)
        presented = rule.credentials != "none" and any(k == "authorization" for k, _ in metadata)
        # A credential is checked holding a signed-in place (checking one may take a database
        # read), so that made-up credentials can only crowd out signed-in calls; a call with
        # none (health, login, a sign-up) takes an anonymous place instead.
        holds.add(core.slot(shape, signed_in=presented).take())
        caller = None
        if presented:
            caller = self.outcome.caller = await core.authenticator.authenticate(metadata)
        auth.admit(rule, caller)
        auth.admit_publishable(shape.method, caller, _origin(metadata))
        if self.extra_checks is not None:
            self.extra_checks(caller)
        if shape.streaming and caller is not None:
            holds.add(core.budgets.streams_per_caller.take(key=str(caller)))
        if not shape.streaming_request:
            core.rules.check(request)
        holds.reply_may_be_refused = shape.read_only

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        """Record how the call ended; raise the ServiceError it failed with, if any."""
        outcome, shape = self.outcome, self.shape
        if isinstance(exc, Aborted):
            outcome.code = exc.code
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            outcome.code = grpc.StatusCode.CANCELLED
        elif isinstance(exc, Exception):
            error = as_service_error(exc)
            if isinstance(error, errors.Internal):
                logger.error("unexpected error in %s", shape.method, exc_info=exc)
            elif isinstance(error, errors.Unavailable):
                # One line per call, not a traceback each: an outage fails every call at once.
                logger.warning("%s: the database is unavailable: %s", shape.method, exc)
            outcome.code = error.code
            outcome.failure = error
        duration = time.perf_counter() - self._start
        code = outcome.code.name
        shape.counts.finish(code, duration)
        logs.access.call(
            method=shape.method,
            code=code,
            duration_ms=round(duration * 1000, 3),
            peer=self.peer,
            caller=str(outcome.caller) if outcome.caller else "",
        )
        if outcome.failure is not None and outcome.failure is not exc:
            raise outcome.failure from None


def _origin(metadata: Metadata) -> str | None:
    return next((str(v) for k, v in metadata if k == "origin"), None)


def as_service_error(exc: Exception) -> errors.ServiceError:
    """The status-carrying error for exc: storage errors are the client's, a database that cannot
    be reached is UNAVAILABLE, and the rest (programming errors) is INTERNAL."""
    if isinstance(exc, errors.ServiceError):
        return exc
    if isinstance(exc, storage.RecordNotFound):
        return errors.NotFound(str(exc), resource=(exc.kind, str(exc.key)))
    if isinstance(exc, storage.RecordExists):
        return errors.AlreadyExists(str(exc), resource=(exc.kind, str(exc.key)))
    if isinstance(exc, storage.DeadlineExceeded):
        return errors.DeadlineExceeded(str(exc))
    if storage.unavailable(exc):
        return errors.Unavailable("the database is unavailable; retry later")
    return errors.Internal("internal error; the server log has the details")


class CallHolds:
    """The budget leases of one call, given back by `release` when the protocol is done with
    the call: for gRPC when it reports the call done, not when its handler returns, since a
    reply the client has not read yet is still held."""

    def __init__(self, reply_bytes: budgets.Pool):
        self._reply_bytes = reply_bytes
        self._leases: list[budgets.Lease] = []
        self.reply_may_be_refused = True

    def add(self, lease: budgets.Lease) -> None:
        self._leases.append(lease)

    def hold_reply(self, reply: Message) -> None:
        """Charge the reply's size to the worker's reply-bytes budget, or refuse it: only a read's
        reply, since refusing a write's would hide that its work is done (and a new API key's
        only copy of its secret)."""
        self.add(self._reply_bytes.take(reply.ByteSize(), force=not self.reply_may_be_refused))

    def release(self) -> None:
        for lease in self._leases:
            lease.release()
        self._leases.clear()


@dataclass(frozen=True)
class Undecodable:
    """What a deserializer returns for bytes that do not decode, so that the call answers
    INVALID_ARGUMENT (gRPC would answer UNKNOWN and log a traceback if it raised)."""

    message_type: str
    problem: str = "its bytes do not decode"

    def error(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"the request is not a valid {self.message_type} message ({self.problem})",
            reason=error_reason_pb2.REQUEST_UNDECODABLE,
            metadata={"message_type": self.message_type},
        )


def descriptor(method: str) -> MethodDescriptor | None:
    """The descriptor of a method served, by its path."""
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return None


def input_type(method: str) -> str:
    """The full name of method's request message, from its descriptor (the deserializer may be
    any function, not only a message class's FromString)."""
    found = descriptor(method)
    return "request" if found is None else str(found.input_type.full_name)


def read_only(method: str) -> bool:
    """Whether the method declares no side effects; gRPC's own services (health, reflection,
    which declare nothing) only read."""
    found = descriptor(method)
    if found is None or not found.full_name.startswith("quartet."):
        return True
    level = found.GetOptions().idempotency_level
    return bool(level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS)
