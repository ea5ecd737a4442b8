"""Errors a servicer raises, and their one mapping to `google.rpc.Status` with rich details.

Every error leaves the server as a status whose details hold an `ErrorInfo` (domain "quartet", a
`quartet.errors.v1.ErrorReason` name as reason), plus a `BadRequest` listing field violations or a
`ResourceInfo` naming the resource, and a `RetryInfo` when the client should wait before trying
again, as AIP-193 describes.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import google.rpc.code_pb2 as code_pb2
import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status

from quartet.errors.v1 import error_reason_pb2

DOMAIN = "quartet"
Reason: TypeAlias = error_reason_pb2.ErrorReason.ValueType


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (e.g. "events[2].occur_time"), what is wrong, and
    optionally a reason of its own (an ErrorReason name) when violations differ in cause."""

    field: str
    description: str
    reason: str = ""


class ServiceError(Exception):
    """An error the client caused or can act on; `code` is its gRPC status code."""

    code = grpc.StatusCode.UNKNOWN
    default_reason: Reason = error_reason_pb2.ERROR_REASON_UNSPECIFIED

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        resource: tuple[str, str] | None = None,
        retry_delay: datetime.timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = self.default_reason if reason is None else reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)
        self.resource = resource
        self.retry_delay = retry_delay

    def to_status(self) -> grpc.Status:
        """This error as a gRPC status carrying google.rpc.Status details in its trailers."""
        packed = []
        for detail in self.details():
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(code=_CODES[self.code], message=self.message, details=packed)
        return rpc_status.to_status(status)  # type: ignore[no-any-return]

    def details(self) -> list[Message]:
        """The google.rpc details every protocol sends with this error: ErrorInfo always, then
        BadRequest, ResourceInfo and RetryInfo when they apply."""
        details: list[Message] = [
            error_details_pb2.ErrorInfo(
                reason=error_reason_pb2.ErrorReason.Name(self.reason),
                domain=DOMAIN,
                metadata=self.metadata,
            )
        ]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in self.violations
                    ]
                )
            )
        if self.resource is not None:
            resource_type, resource_name = self.resource
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=resource_name
                )
            )
        if self.retry_delay is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromTimedelta(self.retry_delay)
            details.append(retry)
        return details


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = error_reason_pb2.FIELD_INVALID


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = error_reason_pb2.RESOURCE_NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = error_reason_pb2.RESOURCE_ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = error_reason_pb2.CREDENTIALS_INVALID


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = error_reason_pb2.ROLE_NOT_ALLOWED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = error_reason_pb2.LIMIT_EXCEEDED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = error_reason_pb2.DATABASE_UNAVAILABLE


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
    default_reason = error_reason_pb2.INTERNAL_ERROR


_CODES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}

# The C0 control characters and DEL. PostgreSQL cannot store NUL in text at all, and none of them
# means anything in the names, ids, emails, filters and data cells requests carry.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The same but tab, line feed and carriage return, which multi-line text (an event's data
# values) legitimately holds: the control characters XML 1.0 admits in its text, too.
_CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def text_problem(text: str, *, multiline: bool = False) -> str | None:
    """Why text cannot be a request's text field (it holds a control character), or None.

    The one check for request text: `quartet.server.validation` applies it to every string field
    of every request before the servicer runs, and the event rules (through
    `Violations.check_text`) to each event's fields, which the request check leaves to them.
    `multiline` text (the string values of an event's data) may hold tabs and line breaks,
    nothing else below U+0020.
    """
    found = (_CONTROL_BUT_LINE_BREAKS if multiline else _CONTROL).search(text)
    if found is None:
        return None
    return f"must not contain control characters; found {found.group()!r} at {found.start()}"


class Violations:
    """Collects every problem with a request, so the client learns them all in one answer."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str, reason: str = "") -> None:
        self._items.append(FieldViolation(field, description, reason))

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.add(field, description)

    def check_text(self, field: str, text: str, reason: str = "") -> bool:
        """Add a violation if text holds a control character (see text_problem); True if not."""
        problem = text_problem(text)
        if problem is not None:
            self.add(field, problem, reason)
        return problem is None

    @property
    def items(self) -> list[FieldViolation]:
        return list(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self, message: str = "the request is invalid") -> None:
        if self._items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self._items)
            raise InvalidArgument(f"{message}: {summary}", violations=self._items)
