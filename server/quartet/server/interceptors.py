"""The one server interceptor: every call's deadline, errors and access-log line, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from quartet import storage
from quartet.errors.v1 import error_reason_pb2
from quartet.server import auth, budgets, errors, metrics
from quartet.server.budgets import Budgets
from quartet.server.validation import RequestRules

access_log = logging.getLogger("quartet.access")
_HEALTH = "/grpc.health.v1.Health/"
logger = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # grpc types are generic only in stubs


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler once, so that each call:

    - refuses a request whose bytes do not decode (INVALID_ARGUMENT, REQUEST_UNDECODABLE), before
      authentication and without a traceback: anyone can send such bytes;
    - records its deadline, so that database work queued past it is skipped;
    - takes its share of the worker's budgets (`quartet.server.budgets`): anonymous calls, streams
      (per worker and per caller), and the bytes of its reply, all given back when the call ends;
    - authenticates the caller and checks the method's rule (`quartet.server.auth.policy`);
    - checks the request (each message of a stream as it arrives) against the field rules its
      proto declares (`quartet.server.validation`), so that servicers see only valid requests;
    - turns a `ServiceError` (or a storage error a client caused) into a rich status, a database
      that cannot be reached into UNAVAILABLE (retryable), and anything unexpected into INTERNAL
      with a generic message (the traceback goes to the log only);
    - ends with one access-log line (method, status code, duration, peer, caller) and the
      Prometheus counts (started, handled by code, latency, in flight).
    """

    def __init__(self, authenticator: auth.Authenticator, budgets: Budgets) -> None:
        self._authenticator = authenticator
        self._budgets = budgets
        self._rules = RequestRules()
        self._wrapped: dict[str, Handler] = {}
        logging.getLogger("grpc._cython.cygrpc").addFilter(_CLIENT_GONE)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kind = _kind(handler)
        inner = getattr(handler, kind)
        counts = _MethodMetrics(method, kind)
        shape = _Shape(
            streaming_request=kind.startswith("stream"),
            streaming=kind != "unary_unary",
            read_only=_read_only(method),
        )
        if inspect.isasyncgenfunction(inner):

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self._call(method, context, counts, shape, request):
                    async for response in inner(self._requests(request, shape), context):
                        yield response

            behaviour: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self._call(method, context, counts, shape, request) as call:
                    response = await inner(self._requests(request, shape), context)
                    if response is not None:  # None: a stream written with context.write()
                        call.hold_reply(response)
                    return response

            behaviour = unary
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(  # type: ignore[no-any-return]
            behaviour,
            request_deserializer=_tolerant(method, handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        counts: _MethodMetrics,
        shape: _Shape,
        request: Any,
    ) -> AsyncIterator[_CallHolds]:
        counts.start()
        start = time.perf_counter()
        # Read now, not when logging: gRPC core frees the peer string with the transport, and
        # asking a cancelled call for it can crash the process (grpc/grpc#29069, never merged).
        peer = context.peer()
        code = grpc.StatusCode.OK
        failure: grpc.Status | None = None
        caller: auth.Caller | None = None
        holds = _CallHolds(self._budgets.reply_bytes, context)
        try:
            if isinstance(request, _Undecodable):
                raise request.error()
            remaining = context.time_remaining()
            if remaining is not None:
                # Each call runs in its own task, so this value lives exactly as long as the call.
                storage.deadline.set(time.monotonic() + remaining)
            rule = auth.rule_for(method)
            metadata = context.invocation_metadata() or ()
            presented = rule.credentials != "none" and any(
                k == "authorization" for k, _ in metadata
            )
            # A credential is checked holding a signed-in place (checking one may take a
            # database read), so that made-up credentials can only crowd out signed-in calls;
            # a call with none (health, login, a sign-up) takes an anonymous place instead.
            holds.add(self._slot(method, shape, signed_in=presented).take())
            if presented:
                caller = await self._authenticator.authenticate(metadata)
            auth.admit(rule, caller)
            if shape.streaming and caller is not None:
                holds.add(self._budgets.streams_per_caller.take(key=str(caller)))
            if not shape.streaming_request:
                self._rules.check(request)
            holds.reply_may_be_refused = shape.read_only
            yield holds
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            error = as_service_error(exc)
            if isinstance(error, errors.Internal):
                logger.exception("unexpected error in %s", method)
            elif isinstance(error, errors.Unavailable):
                # One line per call, not a traceback each: an outage fails every call at once.
                logger.warning("%s: the database is unavailable: %s", method, exc)
            code = error.code
            failure = error.to_status()
        finally:
            holds.settle(context)
            duration = time.perf_counter() - start
            counts.finish(code.name, duration)
            # Logged before the status is sent, so the line exists once the client has its answer.
            access_log.info(
                "call",
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": round(duration * 1000, 3),
                    "peer": peer,
                    "caller": str(caller) if caller else "",
                },
            )
        if failure is not None:
            await context.abort(failure.code, failure.details, failure.trailing_metadata)

    def _requests(self, request: Any, shape: _Shape) -> Any:
        """The handler's request: a message (checked by _call), or a stream whose messages are
        checked as they arrive."""
        return self._checked(request) if shape.streaming_request else request

    async def _checked(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        index = 0
        async for request in requests:
            if isinstance(request, _Undecodable):
                raise request.error()
            self._rules.check(request, prefix=f"messages[{index}].")
            index += 1
            yield request

    def _slot(self, method: str, shape: _Shape, *, signed_in: bool) -> budgets.Pool:
        """The pool a call takes its place from."""
        pools = self._budgets
        if signed_in:
            return pools.streams if shape.streaming else pools.signed_in_calls
        if shape.streaming:
            return pools.anonymous_streams
        # Health checks have a pool of their own, as Envoy keeps them outside its circuit
        # breakers: logins waiting for their password hash must not fail a load balancer's probe.
        return pools.health_checks if method.startswith(_HEALTH) else pools.anonymous_calls


class _ClientGone(logging.Filter):
    """gRPC logs an ERROR with a traceback when a reply cannot be sent because its client went
    away (ExecuteBatchError), which any client can cause at will, for instance by leaving with
    its reply unread: a WARNING line instead, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("ExecuteBatchError raised in core"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


_CLIENT_GONE = _ClientGone()


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


_TYPES = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


class _MethodMetrics(metrics.CallMetrics):
    """One method's Prometheus series, labelled from its path and kind once."""

    def __init__(self, method: str, kind: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        super().__init__(service, name, _TYPES[kind])


def _kind(handler: Handler) -> str:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("method handler has no behaviour")


@dataclass(frozen=True)
class _Shape:
    streaming_request: bool  # the client sends a stream of messages
    streaming: bool  # either side streams: the call may stay open indefinitely
    read_only: bool  # the method declares no side effects: refusing its reply loses nothing


class _CallHolds:
    """The budget leases of one call. They are given back when gRPC reports the call done, not
    when its handler returns: a reply the client has not read yet is still held, and so is the
    call's place in gRPC's own limit. (No reference to the context: its done callback refers to
    this object, and a cycle would keep both, and the reply, until the garbage collector ran.)"""

    def __init__(self, reply_bytes: budgets.Pool, context: grpc.aio.ServicerContext[Any, Any]):
        self._reply_bytes = reply_bytes
        self._leases: list[budgets.Lease] = []
        self.reply_may_be_refused = True
        # The stubs type the callback as a class of their own (types-grpcio); any callable works.
        context.add_done_callback(lambda _: self.release())  # type: ignore[arg-type]

    def add(self, lease: budgets.Lease) -> None:
        self._leases.append(lease)

    def hold_reply(self, reply: Message) -> None:
        """Charge the reply's size to the worker's reply-bytes budget, or refuse it: only a read's
        reply, since refusing a write's would hide that its work is done (and a new API key's
        only copy of its secret)."""
        self.add(self._reply_bytes.take(reply.ByteSize(), force=not self.reply_may_be_refused))

    def settle(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """At the handler's end: give back now if the call is already over (a cancelled call may
        end before its done callback could be added)."""
        if context.done():
            self.release()

    def release(self) -> None:
        for lease in self._leases:
            lease.release()
        self._leases.clear()


@dataclass(frozen=True)
class _Undecodable:
    """What the deserializer returns for bytes that do not decode, so that the call answers
    INVALID_ARGUMENT (gRPC would answer UNKNOWN and log a traceback if it raised)."""

    message_type: str

    def error(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"the request is not a valid {self.message_type} message (its bytes do not decode)",
            reason=error_reason_pb2.REQUEST_UNDECODABLE,
            metadata={"message_type": self.message_type},
        )


def _tolerant(
    method: str, deserialize: Callable[[bytes], Any] | None
) -> Callable[[bytes], Any] | None:
    """deserialize, returning an _Undecodable instead of raising DecodeError."""
    if deserialize is None:
        return None
    message_type = _input_type(method)

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return _Undecodable(message_type)

    return tolerant


def _descriptor(method: str) -> MethodDescriptor | None:
    """The descriptor of a method served, by its path."""
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return None


def _input_type(method: str) -> str:
    """The full name of method's request message, from its descriptor (the deserializer may be
    any function, not only a message class's FromString)."""
    found = _descriptor(method)
    return "request" if found is None else str(found.input_type.full_name)


def _read_only(method: str) -> bool:
    """Whether the method declares no side effects; gRPC's own services (health, reflection,
    which declare nothing) only read."""
    found = _descriptor(method)
    if found is None or not found.full_name.startswith("quartet."):
        return True
    level = found.GetOptions().idempotency_level
    return bool(level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS)
