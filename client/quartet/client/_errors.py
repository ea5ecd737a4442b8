"""QuartetError: every failed call, with its status code and the server's structured details."""

from __future__ import annotations

from dataclasses import dataclass, field

import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, as the server reported it."""

    field: str
    """The field's path in the request, such as "input_value" or "events[2].timestamp"."""
    description: str
    """What is wrong with it, for people."""
    reason: str = ""
    """Its own machine-readable cause (an ErrorReason name), when the server gives one."""


@dataclass
class QuartetError(Exception):
    """A call failed. Branch on `code` and `reason`; show `message` to people.

    `reason` is a `quartet.errors.v1.ErrorReason` value name (for example "FIELD_INVALID"), or ""
    when the failure did not come from quartet itself (a network error, say).
    """

    code: grpc.StatusCode
    """The gRPC status code."""
    message: str
    """The server's explanation, for people."""
    reason: str = ""
    """The machine-readable cause (google.rpc.ErrorInfo.reason)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Extra facts about the cause (google.rpc.ErrorInfo.metadata)."""
    field_violations: list[FieldViolation] = field(default_factory=list)
    """The request fields that were invalid (google.rpc.BadRequest)."""
    resource: tuple[str, str] | None = None
    """The (type, name) of the resource concerned (google.rpc.ResourceInfo)."""
    retry_delay: float | None = None
    """Seconds to wait before trying again (google.rpc.RetryInfo), when the server says."""
    status: status_pb2.Status | None = None
    """The raw google.rpc.Status, for details not unpacked above."""

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> QuartetError:
        """Unpack a failed call's status and its google.rpc details."""
        call: grpc.Call = error  # type: ignore[assignment]
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # the trailers disagree with the status line; trust the status line
            status = None
        result = cls(code=call.code(), message=call.details() or "", status=status)
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                result.reason = info.reason
                result.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                result.field_violations = [
                    FieldViolation(v.field, v.description, v.reason)
                    for v in bad_request.field_violations
                ]
            elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                info_ = error_details_pb2.ResourceInfo()
                detail.Unpack(info_)
                result.resource = (info_.resource_type, info_.resource_name)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                result.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
        return result
