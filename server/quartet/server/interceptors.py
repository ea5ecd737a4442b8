"""The one server interceptor: every call's deadline, errors and access-log line, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from quartet import storage
from quartet.server import auth, errors, metrics

access_log = logging.getLogger("quartet.access")
logger = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # grpc types are generic only in stubs


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler once, so that each call:

    - records its deadline, so that database work queued past it is skipped;
    - authenticates the caller and checks the method's rule (`quartet.server.auth.policy`);
    - turns a `ServiceError` (or a storage error a client caused) into a rich status, a database
      that cannot be reached into UNAVAILABLE (retryable), and anything unexpected into INTERNAL
      with a generic message (the traceback goes to the log only);
    - ends with one access-log line (method, status code, duration, peer, caller) and the
      Prometheus counts (started, handled by code, latency, in flight).
    """

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self._authenticator = authenticator
        self._wrapped: dict[str, Handler] = {}

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
        if inspect.isasyncgenfunction(inner):

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self._call(method, context, counts):
                    async for response in inner(request, context):
                        yield response

            behaviour: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self._call(method, context, counts):
                    return await inner(request, context)

            behaviour = unary
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(  # type: ignore[no-any-return]
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _call(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], counts: _MethodMetrics
    ) -> AsyncIterator[None]:
        counts.start()
        start = time.perf_counter()
        # Read now, not when logging: gRPC core frees the peer string with the transport, and
        # asking a cancelled call for it can crash the process (grpc/grpc#29069, never merged).
        peer = context.peer()
        code = grpc.StatusCode.OK
        failure: grpc.Status | None = None
        caller: auth.Caller | None = None
        try:
            remaining = context.time_remaining()
            if remaining is not None:
                # Each call runs in its own task, so this value lives exactly as long as the call.
                storage.deadline.set(time.monotonic() + remaining)
            rule = auth.rule_for(method)
            if rule.credentials != "none":
                caller = await self._authenticator.authenticate(context.invocation_metadata() or ())
            auth.admit(rule, caller)
            yield
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
            duration = time.perf_counter() - start
            counts.finish(code, duration)
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


class _MethodMetrics:
    """One method's Prometheus series, looked up once instead of on every call."""

    def __init__(self, method: str, kind: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self._labels = (service, name, _TYPES[kind])
        self._started = metrics.started.labels(*self._labels)
        self._in_flight = metrics.in_flight.labels(*self._labels)
        self._seconds = metrics.handling_seconds.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def start(self) -> None:
        self._started.inc()
        self._in_flight.inc()

    def finish(self, code: grpc.StatusCode, seconds: float) -> None:
        self._in_flight.dec()
        self._seconds.observe(seconds)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = metrics.handled.labels(*self._labels, code.name)
        handled.inc()


def _kind(handler: Handler) -> str:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("method handler has no behaviour")
