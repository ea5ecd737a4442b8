"""What quartet's protos declare of each method: who may call it, and whether a call may be retried.

Read from the generated modules' descriptors, so that the server's access policy, the SDK's
retries and docs/api.md all follow the `.proto` files (`option idempotency_level` and
`option (quartet.api.v1.access)`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import quartet
from quartet.api.v1 import access_pb2

# Levels at which a call may be repeated: a read, or a write whose repetition changes nothing more.
RETRYABLE_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)


@functools.cache
def services() -> tuple[ServiceDescriptor, ...]:
    """Every service of quartet's own protos, by full name: those of the generated packages
    `quartet.<domain>.v1`, found on disk, so that a new service needs no list updated here."""
    found: dict[str, ServiceDescriptor] = {}
    for root in quartet.__path__:
        for domain in pkgutil.iter_modules([root]):
            version = Path(root, domain.name, "v1")
            for module in pkgutil.iter_modules([str(version)]):
                if module.name.endswith("_pb2"):
                    name = f"quartet.{domain.name}.v1.{module.name}"
                    generated = importlib.import_module(name)
                    found.update(generated.DESCRIPTOR.services_by_name)
    return tuple(sorted(found.values(), key=lambda service: service.full_name))


def methods() -> list[MethodDescriptor]:
    """Every method of every service of quartet's protos."""
    return [method for service in services() for method in service.methods]


def path(method: MethodDescriptor) -> str:
    """The method's path on the wire, such as "/quartet.score.v1.ScoreService/GetScore"."""
    return f"/{method.containing_service.full_name}/{method.name}"


def access(method: MethodDescriptor) -> access_pb2.Access | None:
    """Who may call the method, or None where its proto does not say."""
    options = method.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return None
    return options.Extensions[access_pb2.access]


def is_retryable(method: MethodDescriptor) -> bool:
    """Whether the proto declares a call safe to repeat (NO_SIDE_EFFECTS or IDEMPOTENT)."""
    return method.GetOptions().idempotency_level in RETRYABLE_LEVELS
