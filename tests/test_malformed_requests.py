"""Bytes that are not a request message: INVALID_ARGUMENT with a reason, and no ERROR in the log.

Every method of every service is found from the descriptors, so a new method is covered as soon as
it is served.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

import quartet
from quartet.client import Client
from quartet.server import auth
from quartet.server.reflection import V1_SERVICE_NAME
from tests.conftest import Principal

UNDECODABLE = b"\xff"  # a field tag that runs past the end of the message


def served_methods() -> Iterator[MethodDescriptor]:
    """Every method of quartet's generated services, health, and both versions of reflection."""
    for module_info in pkgutil.walk_packages(quartet.__path__, "quartet."):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(module_info.name)
            for service in module.DESCRIPTOR.services_by_name.values():
                yield from service.methods
    yield from health_pb2.DESCRIPTOR.services_by_name["Health"].methods
    yield from reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods
    # The v1 descriptor exists once a server has been built (quartet.server.reflection).
    yield from descriptor_pool.Default().FindServiceByName(V1_SERVICE_NAME).methods


def credentials_for(method: str, admin: Principal, app_key: str) -> tuple[tuple[str, str], ...]:
    """No credentials, unless the method streams requests and needs them: a streamed request's
    messages are read only after the call is authenticated from its headers."""
    rule = auth.rule_for(method)
    if rule.credentials == "none":
        return ()
    if "application" in rule.grants:
        return (("authorization", f"Bearer {app_key}"),)
    return admin.client.metadata


def call(
    channel: grpc.Channel, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]
) -> grpc.RpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    send = {"request_serializer": lambda raw: raw}
    with pytest.raises(grpc.RpcError) as caught:
        match method.client_streaming, method.server_streaming:
            case False, False:
                channel.unary_unary(path, **send)(UNDECODABLE, timeout=10)
            case False, True:
                list(channel.unary_stream(path, **send)(UNDECODABLE, timeout=10))
            case True, False:
                channel.stream_unary(path, **send)(
                    iter([UNDECODABLE]), timeout=10, metadata=metadata
                )
            case True, True:
                list(
                    channel.stream_stream(path, **send)(
                        iter([UNDECODABLE]), timeout=10, metadata=metadata
                    )
                )
    return caught.value


def test_every_method_refuses_undecodable_bytes_as_invalid_argument(
    target: str, admin: Principal, caplog: pytest.LogCaptureFixture
) -> None:
    app_key = admin.client.auth.create_application("sender").api_key
    methods = list(served_methods())
    assert len(methods) > 30  # every service was found
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(target) as channel:
        for method in methods:
            path = f"/{method.containing_service.full_name}/{method.name}"
            metadata = credentials_for(path, admin, app_key) if method.client_streaming else ()
            error = call(channel, method, metadata)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error.details())
            status = rpc_status.from_call(error)
            assert status is not None, path
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info), path
            assert info.reason == "REQUEST_UNDECODABLE", path
            assert info.metadata["message_type"] == method.input_type.full_name
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Each refusal is an access-log line, nothing more.
    refused = [r for r in caplog.records if getattr(r, "code", "") == "INVALID_ARGUMENT"]
    assert len(refused) == len(methods)


def test_a_decodable_request_is_still_served(anonymous: Client, client: Client) -> None:
    assert anonymous.health.check()
    assert client.regions.list_provinces()
