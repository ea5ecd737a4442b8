"""Every service this server offers, each registered by its domain package: adding a service adds
one line here. The app, health checks, reflection and the migration model list derive from it."""

from __future__ import annotations

from typing import Any

import peewee

from quartet.server import auth, events, experiments, regions, score
from quartet.server.registration import Service

SERVICES: tuple[Service[Any], ...] = (
    auth.SERVICE,
    score.SERVICE,
    events.SERVICE,
    experiments.SERVICE,
    regions.SERVICE,
)

# The full names of the services, as health checks and reflection know them: those that need the
# database, and those that answer from memory (serving whatever it does).
DATABASE_SERVICES = tuple(service.name for service in SERVICES if service.needs_database)
MEMORY_SERVICES = tuple(service.name for service in SERVICES if not service.needs_database)
SERVICE_NAMES = tuple(service.name for service in SERVICES)

# Every table, in dependency order (referenced before referencing); tests/test_migrations.py
# proves the migrations create exactly these, and tests/test_registration.py that every model of
# the storage layer is here. (peewee.sort_models is public API; its stubs omit it.)
MODELS: list[type[peewee.Model]] = peewee.sort_models(  # type: ignore[attr-defined]
    [model for service in SERVICES for model in service.models]
)
