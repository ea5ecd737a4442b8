"""The field rules the protos declare (buf.validate) are applied centrally, before any servicer
runs, with the control-character rule for every string a request holds: over the wire, each
problem is INVALID_ARGUMENT with ErrorInfo FIELD_INVALID and one BadRequest field violation, with
its reason."""

from __future__ import annotations

import math

import grpc
from buf.validate import validate_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quartet.auth.v1 import auth_service_pb2 as auth_pb
from quartet.events.v1 import event_service_pb2 as events_pb
from quartet.score.v1 import score_service_pb2 as score_pb
from quartet.server import auth
from quartet.server.services import SERVICE_NAMES
from tests.conftest import Principal
from tests.test_field_behavior import quartet_methods

FIELD_INVALID = "FIELD_INVALID"


def rules(field: FieldDescriptor) -> validate_pb2.FieldRules:
    return field.GetOptions().Extensions[validate_pb2.field]


Metadata = tuple[tuple[str, str], ...]


def call(
    channel: grpc.Channel, method: MethodDescriptor, request: Message, metadata: Metadata
) -> tuple[str, str, list[tuple[str, str, str]]]:
    """The code, ErrorInfo reason and (field, description, reason) of each violation."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    stub: grpc.UnaryUnaryMultiCallable[Message, bytes] = channel.unary_unary(
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=bytes
    )
    try:
        stub(request, timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        status = rpc_status.from_call(error)
        reason, violations = "", []
        for detail in status.details if status else []:
            info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(bad_request):
                violations += [
                    (v.field, v.description, v.reason) for v in bad_request.field_violations
                ]
        return error.code().name, reason, violations
    return "OK", "", []


def method(full_name: str) -> MethodDescriptor:
    [found] = [m for m in quartet_methods() if m.full_name == full_name]
    return found


def test_every_page_size_refuses_a_negative_size() -> None:
    """pagination.page_size trusts the rule: a negative size would be no LIMIT at all."""
    pool = descriptor_pool.Default()
    methods = [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]
    sizes = [field for m in methods for field in m.input_type.fields if field.name == "page_size"]
    assert len(sizes) >= 8
    assert [f.full_name for f in sizes if not rules(f).int32.HasField("gte")] == []
    assert {rules(f).int32.gte for f in sizes} == {0}


def test_declared_rules_refuse_each_problem_with_a_field_violation(
    target: str, admin: Principal
) -> None:
    cases = [
        (
            "quartet.score.v1.ScoreService.CreateScore",
            score_pb.CreateScoreRequest(input_value=math.nan, user_id=-1, request_id="r" * 65),
            {
                ("input_value", "must be finite"),
                ("user_id", "must be greater than 0"),
                ("request_id", "must be at most 64 characters"),
            },
        ),
        (
            "quartet.events.v1.EventService.ListEvents",
            events_pb.ListEventsRequest(page_size=-1, session_id="not-a-uuid", application_id=-3),
            {
                ("page_size", "must be greater than or equal to 0"),
                ("session_id", "must be a valid UUID"),
                ("application_id", "must be greater than or equal to 0"),
            },
        ),
        (
            "quartet.events.v1.EventService.CreateEventType",
            events_pb.CreateEventTypeRequest(category="   ", name="n" * 101),
            {
                ("category", "must not be blank"),
                ("name", "must be at most 100 characters"),
                ("schema", "value is required"),
            },
        ),
        (
            "quartet.auth.v1.AuthService.SetAccountRole",
            auth_pb.SetAccountRoleRequest(account_id=admin.id),
            {("role", "must be a role, not ROLE_UNSPECIFIED")},
        ),
        (
            "quartet.auth.v1.AuthService.CreateAccount",
            auth_pb.CreateAccountRequest(
                email="not an email",
                password="short",
                role=auth_pb.Role.ValueType(77),  # a role no version of the contract has
            ),
            {
                ("email", "must be a valid email address"),
                ("password", "must be at least 8 characters"),
                ("role", "value must be one of the defined enum values"),
            },
        ),
    ]
    with grpc.insecure_channel(target) as channel:
        for name, request, expected in cases:
            code, reason, violations = call(channel, method(name), request, admin.client.metadata)
            assert (code, reason) == ("INVALID_ARGUMENT", FIELD_INVALID), (name, violations)
            assert {(field, text) for field, text, _ in violations} == expected, name
            assert {why for _, _, why in violations} == {FIELD_INVALID}, name


def test_a_control_character_in_any_request_string_is_refused(
    target: str, admin: Principal
) -> None:
    """Every string field of every unary request, but those whose rules leave them to their
    servicer (events are kept as rejected, each FSA of a batch answered on its own)."""
    app_key = admin.client.auth.create_application("sender").api_key
    unary = [m for m in quartet_methods() if not m.client_streaming and not m.server_streaming]
    checked, wrong = [], []
    with grpc.insecure_channel(target) as channel:
        for m in unary:
            rule = auth.rule_for(f"/{m.containing_service.full_name}/{m.name}")
            metadata = (
                (("authorization", f"Bearer {app_key}"),)
                if "application" in rule.grants
                else admin.client.metadata
            )
            for field in m.input_type.fields:
                if field.type != FieldDescriptor.TYPE_STRING:
                    continue
                if rules(field).ignore == validate_pb2.IGNORE_ALWAYS:
                    continue
                request = message_factory.GetMessageClass(m.input_type)()
                if field.is_repeated:
                    getattr(request, field.name).append("ab\x07")
                    path = f"{field.name}[0]"
                else:
                    setattr(request, field.name, "ab\x07")
                    path = field.name
                code, reason, violations = call(channel, m, request, metadata)
                named = [v for v in violations if v[0] == path]
                checked.append(field.full_name)
                if (
                    code != "INVALID_ARGUMENT"
                    or reason != FIELD_INVALID
                    or not any("control characters" in text for _, text, _ in named)
                ):
                    wrong.append((field.full_name, code, reason, violations))
    assert len(checked) > 15
    assert wrong == []
