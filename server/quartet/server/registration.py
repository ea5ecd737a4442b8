"""How a service registers itself with the server: one `Service` record, in its domain package.

`quartet.server.services` collects the records in one list; the app builds and adds each
servicer, health tells the services that need the database from those that answer from memory,
and the migration model list is the union of their models. So a new service touches its own
files and that one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import peewee
from google.protobuf.descriptor import ServiceDescriptor

from quartet import storage
from quartet.server.settings import Settings

if TYPE_CHECKING:  # Both are domain packages, which import this module to register.
    from quartet.server.auth import Authenticator
    from quartet.server.events import Registry

Servicer = TypeVar("Servicer")


@dataclass(frozen=True)
class Provided:
    """What the app provides to build servicers with: one of each per server (per worker)."""

    settings: Settings
    runner: storage.DatabaseRunner
    authenticator: Authenticator
    # Owned by the app, which reloads the event types and closes the writer with the server.
    event_writer: storage.BatchWriter[Any, Any]
    event_types: Registry
    score_writer: storage.BatchWriter[Any, Any]  # closed with the server, as the event writer


@dataclass(frozen=True)
class Service(Generic[Servicer]):
    """One service of the protos, as this server offers it."""

    # The service in its generated module, such as
    # `score_service_pb2.DESCRIPTOR.services_by_name["ScoreService"]`.
    descriptor: ServiceDescriptor
    # Builds the servicer from what the app provides.
    servicer: Callable[[Provided], Servicer]
    # The generated `add_<Name>Servicer_to_server` (or a wrapper of it).
    add_to_server: Callable[[Servicer, grpc.aio.Server], None]
    # Whether it answers from the database: health reports it NOT_SERVING while that is down.
    needs_database: bool
    # The storage models (tables) it owns, for the migration model list.
    models: tuple[type[peewee.Model], ...] = ()

    @property
    def name(self) -> str:
        """The full name, as health checks and reflection know it."""
        return self.descriptor.full_name
