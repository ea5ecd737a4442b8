"""Server reflection in both of its versions: grpc.reflection.v1, which newer grpcurl, ghz and
Postman ask first, and v1alpha, which older clients know.

grpcio-reflection ships only v1alpha (grpc/grpc#38576). v1 is the same protocol under a new package
name, message for message and field for field, so one servicer answers both: v1 requests decode as
v1alpha messages and v1alpha replies read as v1 ones. What v1 adds is its own descriptor, built here
from v1alpha's, so that reflection describes itself under either name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection (both versions) on server, listing service_names and itself."""
    v1_request = _add_v1_descriptor()
    names = (*service_names, V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)

    async def v1_info(
        requests: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        replies = servicer.ServerReflectionInfo(_as_v1alpha(requests), context)
        async for reply in replies:
            yield reply

    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                v1_info,
                request_deserializer=v1_request.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


async def _as_v1alpha(
    requests: AsyncIterator[Message],
) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
    async for request in requests:
        yield reflection_pb2.ServerReflectionRequest.FromString(request.SerializeToString())


def _add_v1_descriptor() -> type[Message]:
    """Add grpc/reflection/v1/reflection.proto to the default pool, made from v1alpha's, unless
    there (another server in this process added it, or a real v1 module); its request class."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(_v1_file().SerializeToString())
    request = pool.FindMessageTypeByName(f"{V1_PACKAGE}.ServerReflectionRequest")
    return message_factory.GetMessageClass(request)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.ClearField("options")  # v1alpha's Java and Objective-C names
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # messages' fields, not scalars'
                field.type_name = field.type_name.replace(old, new, 1)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new, 1)
        method.output_type = method.output_type.replace(old, new, 1)
    return proto
