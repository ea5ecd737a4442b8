"""API keys get a kind: "secret" (every key so far) or "publishable", a key for web pages that
may only send events, from the origins listed in allowed_origins (one per line)."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    migrator.migrate(
        migrator.add_column("api_key", "kind", peewee.CharField(max_length=16, default="secret")),
        migrator.add_column("api_key", "allowed_origins", peewee.TextField(null=True)),
    )
