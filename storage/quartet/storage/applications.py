"""Applications (trusted event senders) and their API keys, stored as hashes."""

from __future__ import annotations

import peewee

from quartet.storage import changes
from quartet.storage.base import BaseModel, db, utcnow
from quartet.storage.errors import RecordExists, RecordNotFound


class Application(BaseModel):
    """A trusted client that sends events."""

    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=100, unique=True)
    create_time = peewee.DateTimeField(default=utcnow)


class ApiKey(BaseModel):
    """One key of an application: a public id and the SHA-256 of its secret part."""

    id = peewee.CharField(max_length=16, primary_key=True)
    application = peewee.ForeignKeyField(Application, on_delete="CASCADE", backref="api_keys")
    secret_hash = peewee.CharField(max_length=64)
    create_time = peewee.DateTimeField(default=utcnow)
    revoke_time = peewee.DateTimeField(null=True)
    # "secret", or "publishable": a key for web pages, limited to sending events from the
    # origins listed (one per line) in allowed_origins.
    kind = peewee.CharField(max_length=16, default="secret")
    allowed_origins = peewee.TextField(null=True)
    application_id: int

    @property
    def origins(self) -> list[str]:
        return self.allowed_origins.split("\n") if self.allowed_origins else []


def create_application(name: str, key_id: str, secret_hash: str) -> tuple[Application, ApiKey]:
    """Register an application with its first key; RecordExists if the name is taken."""
    try:
        with db.atomic():
            application = Application.create(name=name)
            key = ApiKey.create(id=key_id, application=application, secret_hash=secret_hash)
            changes.notify(changes.API_KEYS, key_id)  # a process may cache the id as unknown
    except peewee.IntegrityError:
        raise RecordExists("application", name) from None
    return application, key


def add_api_key(
    application_id: int,
    key_id: str,
    secret_hash: str,
    *,
    kind: str = "secret",
    origins: list[str] | None = None,
) -> ApiKey:
    with db.atomic():
        if not Application.select().where(Application.id == application_id).exists():
            raise RecordNotFound("application", application_id)
        key: ApiKey = ApiKey.create(
            id=key_id,
            application=application_id,
            secret_hash=secret_hash,
            kind=kind,
            allowed_origins="\n".join(origins) if origins else None,
        )
        changes.notify(changes.API_KEYS, key_id)  # a process may cache the id as unknown
        return key


def publishable_origins() -> set[str]:
    """Every origin some valid publishable key allows: what CORS preflights are answered for
    (a preflight carries no credentials, so it cannot name its key)."""
    query = ApiKey.select(ApiKey.allowed_origins).where(
        (ApiKey.kind == "publishable") & ApiKey.revoke_time.is_null()
    )
    return {origin for key in query for origin in key.origins}


def revoke_api_key(key_id: str) -> ApiKey:
    """Revoke the key (revoking twice keeps the first revocation time)."""
    with db.atomic():
        key: ApiKey | None = ApiKey.get_or_none(ApiKey.id == key_id)
        if key is None:
            raise RecordNotFound("api key", key_id)
        if key.revoke_time is None:
            key.revoke_time = utcnow()
            key.save()
            changes.notify(changes.API_KEYS, key_id)
        return key


def find_api_key(key_id: str) -> ApiKey | None:
    key: ApiKey | None = ApiKey.get_or_none(ApiKey.id == key_id)
    return key


def list_applications(
    *, limit: int, after_id: int | None = None
) -> list[tuple[Application, list[ApiKey]]]:
    """Applications oldest first, each with its keys (oldest first), in two queries."""
    query = Application.select().order_by(Application.id)
    if after_id is not None:
        query = query.where(Application.id > after_id)
    applications = list(query.limit(limit))
    keys = (
        ApiKey.select()
        .where(ApiKey.application.in_([a.id for a in applications]))
        .order_by(ApiKey.create_time, ApiKey.id)
    )
    by_application: dict[int, list[ApiKey]] = {}
    for key in keys:
        by_application.setdefault(key.application_id, []).append(key)
    return [(a, by_application.get(a.id, [])) for a in applications]
