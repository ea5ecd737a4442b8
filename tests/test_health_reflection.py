"""Health checking per service, and server reflection (what grpcurl and ghz rely on)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from quartet import storage
from quartet.client import Client, QuartetError
from quartet.server.app import build_server
from quartet.server.services import DATABASE_SERVICES, MEMORY_SERVICES, SERVICE_NAMES
from quartet.server.settings import Settings


def test_every_service_and_the_server_are_serving(client: Client) -> None:
    assert client.health.check()
    for name in SERVICE_NAMES:
        assert client.health.check(name), name


def test_unknown_service_is_not_found(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        client.health.check("quartet.nothing.v1.NothingService")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_every_service(client: Client) -> None:
    database = ProtoReflectionDescriptorDatabase(client.channel)
    services = set(database.get_services())
    assert {*SERVICE_NAMES, "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    service = pool.FindServiceByName("quartet.score.v1.ScoreService")
    method = service.methods_by_name["CreateScore"]
    assert method.input_type.full_name == "quartet.score.v1.CreateScoreRequest"
    assert "input_value" in method.input_type.fields_by_name


def test_reflection_v1_lists_every_service_and_describes_itself(client: Client) -> None:
    """grpc.reflection.v1, which newer grpcurl, ghz and Postman ask first, answers as v1alpha."""
    pool = descriptor_pool.Default()  # the v1 messages, as the server added them
    request_class: Any = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response_class: Any = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    info = client.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    requests = [
        request_class(list_services=""),
        request_class(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        request_class(file_containing_symbol="quartet.score.v1.ScoreService"),
    ]
    listed, itself, score = list(info(iter(requests), timeout=10))
    services = {service.name for service in listed.list_services_response.service}
    assert services == {
        *SERVICE_NAMES,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in itself.file_descriptor_response.file_descriptor_proto
    ]
    assert [f.service[0].name for f in files if f.package == "grpc.reflection.v1"] == [
        "ServerReflection"
    ]
    assert score.file_descriptor_response.file_descriptor_proto


def test_unreachable_database_turns_database_services_not_serving() -> None:
    async def scenario() -> dict[str, int]:
        unreachable = storage.open_database(
            "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
        )
        server = build_server(Settings(port=0), unreachable)
        await server.start()
        watchdog = asyncio.create_task(server.watch(interval=0.05))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                names = ("", *SERVICE_NAMES)
                requests = [health_pb2.HealthCheckRequest(service=n) for n in names]
                return {
                    n: (await stub.Check(r)).status for n, r in zip(names, requests, strict=True)
                }
        finally:
            watchdog.cancel()
            await server.stop(0)

    statuses = asyncio.run(scenario())
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert {statuses[n] for n in ("", *DATABASE_SERVICES)} == {not_serving}
    # Lookups are answered from memory, so regions stay available without the database.
    assert {statuses[n] for n in MEMORY_SERVICES} == {serving}
