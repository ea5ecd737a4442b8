"""The gRPC server interceptor: each call's deadline, errors and access-log line, by way of the
protocol-independent `quartet.server.calls.CallCore` that the HTTP port uses too."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from quartet.server import errors
from quartet.server.calls import Aborted, Call, CallCore, CallHolds, Shape, Undecodable, input_type

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # grpc types are generic only in stubs


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler once, so that each call:

    - refuses a request whose bytes do not decode (INVALID_ARGUMENT, REQUEST_UNDECODABLE), before
      authentication and without a traceback: anyone can send such bytes;
    - records its deadline, so that database work queued past it is skipped;
    - goes through a `quartet.server.calls.Call`: budgets, authentication, the method's rule,
      the request's field rules, the mapping of errors to rich statuses, metrics and the
      access-log line;
    - gives its budget leases back when gRPC reports the call done (a reply the client has not
      read yet is still held).
    """

    def __init__(self, core: CallCore) -> None:
        self._core = core
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
        shape = self._core.shape(method, kind)
        if inspect.isasyncgenfunction(inner):

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self._call(context, shape, request):
                    async for response in inner(self._requests(request, shape), context):
                        yield response

            behaviour: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self._call(context, shape, request) as holds:
                    response = await inner(self._requests(request, shape), context)
                    if response is not None:  # None: a stream written with context.write()
                        holds.hold_reply(response)
                    return response

            behaviour = unary
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(  # type: ignore[no-any-return]
            behaviour,
            request_deserializer=_tolerant(method, handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _call(
        self, context: grpc.aio.ServicerContext[Any, Any], shape: Shape, request: Any
    ) -> _GrpcCall:
        # Read now, not when logging: gRPC core frees the peer string with the transport, and
        # asking a cancelled call for it can crash the process (grpc/grpc#29069, never merged).
        peer = context.peer()
        holds = self._core.new_holds()
        # The stubs type the callback as a class of their own (types-grpcio); any callable works.
        # (No reference to the context: a cycle would keep it, and the reply, until the garbage
        # collector ran.)
        context.add_done_callback(lambda _: holds.release())  # type: ignore[arg-type]
        call = Call(
            self._core,
            shape,
            peer=peer,
            metadata=tuple(context.invocation_metadata() or ()),
            time_remaining=context.time_remaining(),
            request=None if shape.streaming_request else request,
            holds=holds,
        )
        return _GrpcCall(call, context)

    def _requests(self, request: Any, shape: Shape) -> Any:
        """The handler's request: a message (checked by the core), or a stream whose messages are
        checked as they arrive."""
        return self._core.checked(request) if shape.streaming_request else request


class _GrpcCall:
    """A `Call` in gRPC's terms: an abort by the servicer is recorded with its code, and
    a ServiceError is answered with its rich status. (A class rather than an
    `asynccontextmanager`, for the same reason as `Call`.)"""

    __slots__ = ("_call", "_context")

    def __init__(self, call: Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._call, self._context = call, context

    async def __aenter__(self) -> CallHolds:
        try:
            await self._call.__aenter__()
        except errors.ServiceError as error:
            await self._fail(error)
        except BaseException:
            self._release()
            raise
        return self._call.holds

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, grpc.aio.AbortError):  # it goes on, as grpc.aio expects
            exc = Aborted(self._context.code() or grpc.StatusCode.UNKNOWN)
        try:
            await self._call.__aexit__(None if exc is None else type(exc), exc, tb)
        except errors.ServiceError:
            pass  # the call's failure, answered below
        except BaseException:
            self._release()
            raise
        failure = self._call.outcome.failure
        if failure is not None:
            await self._fail(failure)
        self._release()

    async def _fail(self, error: errors.ServiceError) -> None:
        """Answer the call with error's rich status (context.abort raises AbortError)."""
        failure = error.to_status()
        try:
            await self._context.abort(failure.code, failure.details, failure.trailing_metadata)
        finally:
            self._release()

    def _release(self) -> None:
        # A cancelled call may end before its done callback could be added.
        if self._context.done():
            self._call.holds.release()


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


def _kind(handler: Handler) -> str:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("method handler has no behaviour")


def _tolerant(
    method: str, deserialize: Callable[[bytes], Any] | None
) -> Callable[[bytes], Any] | None:
    """deserialize, returning an Undecodable instead of raising DecodeError."""
    if deserialize is None:
        return None
    message_type = input_type(method)

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError:
            return Undecodable(message_type)

    return tolerant
