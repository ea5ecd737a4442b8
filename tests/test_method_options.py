"""Every RPC declares, in its proto, who may call it and whether it may be retried; the server's
access policy and the SDK's retries are built from those declarations."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from quartet.api.v1 import access_pb2
from quartet.auth.v1 import auth_service_pb2
from quartet.client import Client, QuartetError, contract
from quartet.client._base import _SERVICE_CONFIG
from quartet.server.auth import policy
from quartet.server.services import SERVICE_NAMES
from tests.conftest import Principal
from tests.helpers import database_unreachable

CREATE_EVENT_TYPE = "/quartet.events.v1.EventService/CreateEventType"


def undeclared(methods: Iterable[MethodDescriptor]) -> list[str]:
    """The methods whose proto lacks `idempotency_level` or a complete `(quartet.api.v1.access)`."""
    missing = []
    for method in methods:
        access = contract.access(method)
        if (
            not method.GetOptions().HasField("idempotency_level")
            or access is None
            or access.credentials == access_pb2.CREDENTIALS_UNSPECIFIED
            or access_pb2.GRANT_UNSPECIFIED in access.grants
        ):
            missing.append(contract.path(method))
    return missing


def test_every_rpc_declares_its_access_and_idempotency() -> None:
    # The services found on disk are the ones the server offers: none escapes the check.
    assert {service.full_name for service in contract.services()} == set(SERVICE_NAMES)
    assert len(contract.methods()) > len(SERVICE_NAMES)
    assert undeclared(contract.methods()) == []


def test_a_method_without_options_is_caught() -> None:
    """The check above does see a missing option: a method of a made-up proto has none."""
    file = descriptor_pb2.FileDescriptorProto(name="bare.proto", package="bare.v1", syntax="proto3")
    file.message_type.add(name="Empty")
    service = file.service.add(name="BareService")
    service.method.add(name="Bare", input_type=".bare.v1.Empty", output_type=".bare.v1.Empty")
    idempotent_only = service.method.add(
        name="Half", input_type=".bare.v1.Empty", output_type=".bare.v1.Empty"
    )
    idempotent_only.options.idempotency_level = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    bare = pool.FindServiceByName("bare.v1.BareService")
    assert undeclared(bare.methods) == ["/bare.v1.BareService/Bare", "/bare.v1.BareService/Half"]
    # An undeclared method is admins only, whatever it is.
    assert policy.rule_for("/bare.v1.BareService/Bare") == policy.UNLISTED


def test_the_policy_is_the_protos_and_only_grpc_services_are_listed_by_hand() -> None:
    from_protos = {contract.path(method) for method in contract.methods()}
    assert policy.RULES.keys() == from_protos | set(policy.GRPC_OPEN_METHODS)
    assert {policy.RULES[method] for method in policy.GRPC_OPEN_METHODS} == {policy.OPEN}
    # Every grant a proto may name is held by some caller: the account roles (auth.v1.Role) and
    # applications.
    held = set().union(*policy.GRANTS.values())
    names = {
        access_pb2.Grant.Name(g).removeprefix("GRANT_").lower() for g in access_pb2.Grant.values()
    }
    assert names - {"unspecified"} == held == set(policy.GRANTS)
    assert policy.GRANTS["admin"] == {"user", "analyst", "admin"}
    assert policy.GRANTS["application"] == {"application"}


def test_the_hint_of_the_proto_reaches_a_refused_caller(client: Client) -> None:
    """Only applications send events (event_service.proto once said admins could): an admin is
    refused, and told why by the option's hint."""
    with pytest.raises(QuartetError) as caught:
        client.events.send_batch([])
    error = caught.value
    assert error.code == grpc.StatusCode.PERMISSION_DENIED, error
    assert "application's API key" in error.message


def retried_methods() -> set[tuple[str, str]]:
    (config,) = _SERVICE_CONFIG["methodConfig"]
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    return {(name["service"], name.get("method", "*")) for name in config["name"]}


def test_the_sdk_retries_exactly_the_methods_declared_safe_to_repeat() -> None:
    safe = {
        (method.containing_service.full_name, method.name)
        for method in contract.methods()
        if method.GetOptions().idempotency_level
        in (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT)
    }
    # Health checks are gRPC's own proto, which declares no level: the one method listed by hand.
    assert retried_methods() == safe | {("grpc.health.v1.Health", "Check")}
    assert ("quartet.events.v1.EventService", "CreateEventType") not in retried_methods()
    assert ("quartet.score.v1.ScoreService", "CreateScore") in retried_methods()


def attempts(caplog: pytest.LogCaptureFixture, method: str) -> int:
    """How many calls of method the server logged as UNAVAILABLE."""
    records: list[Any] = [r for r in caplog.records if r.name == "quartet.access"]
    return sum(1 for r in records if (r.method, r.code) == (method, "UNAVAILABLE"))


def test_over_the_wire_unavailable_calls_are_retried_only_when_declared_safe(
    client: Client,
    sign_in: Callable[..., Principal],
    database_url: str,
    db: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = sign_in("user")
    calls: dict[str, Callable[[], object]] = {
        # Each call stores a new schema version: a lost reply plus a retry would store two.
        CREATE_EVENT_TYPE: lambda: client.events.create_type("page", "view", {"type": "object"}),
        "/quartet.events.v1.EventService/ListEventTypes": client.events.list_types,
        # IDEMPOTENT: setting a role twice is setting it once.
        "/quartet.auth.v1.AuthService/SetAccountRole": lambda: client.auth.set_role(
            user.id, auth_service_pb2.ROLE_ANALYST
        ),
    }
    with caplog.at_level(logging.INFO), database_unreachable(database_url, db):
        for call in calls.values():
            with pytest.raises(QuartetError) as caught:
                call()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE, caught.value
    tried = {method: attempts(caplog, method) for method in calls}
    assert tried.pop(CREATE_EVENT_TYPE) == 1
    assert all(count > 1 for count in tried.values()), tried
