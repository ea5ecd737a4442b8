"""The `google.api.field_behavior` annotations in the protos are what the server does.

Every unary quartet method is called over the wire with an empty request: one with REQUIRED
fields must be refused INVALID_ARGUMENT with a BadRequest violation naming each of them, and one
without must not be refused as invalid, unless listed below with its reason. So an annotation the
server does not enforce fails here, and so does a check the protos do not declare.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quartet.server import auth
from tests.conftest import Principal
from tests.test_malformed_requests import served_methods

REQUIRED = field_behavior_pb2.FieldBehavior.REQUIRED
OUTPUT_ONLY = field_behavior_pb2.FieldBehavior.OUTPUT_ONLY

# Methods whose empty request fails on something other than its REQUIRED fields: the code and
# ErrorInfo reason expected instead, and why.
REFUSED_OTHERWISE = {
    # Missing credentials are answered as wrong ones, naming no field: which of email and
    # password was wrong is not told (OWASP ASVS 2.2, generic authentication failures).
    "quartet.auth.v1.AuthService.Login": ("UNAUTHENTICATED", "LOGIN_FAILED"),
    "quartet.auth.v1.AuthService.RefreshToken": ("UNAUTHENTICATED", "CREDENTIALS_INVALID"),
}
# Methods with no REQUIRED field whose empty request is still invalid, and the fields named.
REQUIRED_WITHOUT_ANNOTATION = {
    # One of the `code` oneof's members is required (its buf.validate oneof rule, which names the
    # oneof); field_behavior cannot mark a oneof, and REQUIRED on either member would say both
    # are needed.
    "quartet.regions.v1.RegionService.GetProvince": {"code"},
}


def behaviours(field: FieldDescriptor) -> list[int]:
    # ListFields, not Extensions[...]: the stubs type the extension as a plain FieldDescriptor.
    declared = field.GetOptions().ListFields()
    return [b for f, bs in declared if f.full_name == "google.api.field_behavior" for b in bs]


def required_fields(message: Descriptor) -> set[str]:
    return {field.name for field in message.fields if REQUIRED in behaviours(field)}


def quartet_methods() -> Iterator[MethodDescriptor]:
    return (m for m in served_methods() if m.full_name.startswith("quartet."))


def call_empty(
    channel: grpc.Channel, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]
) -> grpc.RpcError | None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    try:
        channel.unary_unary(path, **raw)(b"", timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error
    return None


def refusal(error: grpc.RpcError) -> tuple[str, str, set[str]]:
    """The code, ErrorInfo reason and BadRequest field names of a refused call."""
    status = rpc_status.from_call(error)
    reason, fields = "", set[str]()
    for detail in status.details if status else []:
        info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad_request):
            fields |= {violation.field for violation in bad_request.field_violations}
    return error.code().name, reason, fields


def test_an_empty_request_is_refused_naming_every_required_field(
    target: str, admin: Principal
) -> None:
    app_key = admin.client.auth.create_application("sender").api_key
    unary = [m for m in quartet_methods() if not m.client_streaming and not m.server_streaming]
    assert len([m for m in unary if required_fields(m.input_type)]) > 10  # annotations were read
    checked, wrong = set[str](), []
    with grpc.insecure_channel(target) as channel:
        for method in unary:
            rule = auth.rule_for(f"/{method.containing_service.full_name}/{method.name}")
            as_app = "application" in rule.grants
            metadata = (
                (("authorization", f"Bearer {app_key}"),) if as_app else admin.client.metadata
            )
            error = call_empty(channel, method, metadata)
            got = refusal(error) if error else ("OK", "", set[str]())
            required = required_fields(method.input_type)
            if method.full_name in REFUSED_OTHERWISE:
                expected_code, expected_reason = REFUSED_OTHERWISE[method.full_name]
                ok = got[:2] == (expected_code, expected_reason) and bool(required)
            elif method.full_name in REQUIRED_WITHOUT_ANNOTATION:
                named = REQUIRED_WITHOUT_ANNOTATION[method.full_name]
                ok = got[0] == "INVALID_ARGUMENT" and named <= got[2] and not required
            elif required:
                ok = got[0] == "INVALID_ARGUMENT" and required <= got[2]
            else:
                ok = got[0] != "INVALID_ARGUMENT"
            checked.add(method.full_name)
            if not ok:
                wrong.append((method.full_name, sorted(required), got))
    assert wrong == []
    assert set(REFUSED_OTHERWISE) | set(REQUIRED_WITHOUT_ANNOTATION) <= checked


def test_required_is_on_requests_and_output_only_never_required() -> None:
    requests = {m.input_type.full_name for m in quartet_methods()}
    misplaced, contradictory = [], []
    for message in (
        {m.input_type for m in quartet_methods()}
        | {m.output_type for m in quartet_methods()}
        | set(nested_messages())
    ):
        for field in message.fields:
            found = behaviours(field)
            if REQUIRED in found and message.full_name not in requests:
                misplaced.append(field.full_name)
            if OUTPUT_ONLY in found and REQUIRED in found:
                contradictory.append(field.full_name)
    assert misplaced == []
    assert contradictory == []


def nested_messages() -> Iterator[Descriptor]:
    """Every message reachable from a quartet method's request or response."""
    seen: set[str] = set()
    pending = [m.input_type for m in quartet_methods()] + [m.output_type for m in quartet_methods()]
    while pending:
        message = pending.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        yield message
        pending += [f.message_type for f in message.fields if f.message_type is not None]
