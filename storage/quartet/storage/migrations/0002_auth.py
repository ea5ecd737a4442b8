"""Accounts get passwords and roles; refresh tokens; applications and their API keys."""

from __future__ import annotations

import datetime

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    migrator.migrate(
        migrator.add_column(
            "account", "password_hash", peewee.CharField(max_length=200, null=True)
        ),
        migrator.add_column("account", "role", peewee.CharField(max_length=16, default="user")),
    )

    # Frozen copies of the models as they were when this migration was written.
    class Account(peewee.Model):
        id = peewee.BigAutoField()

        class Meta:
            database = db
            table_name = "account"

    class RefreshToken(peewee.Model):
        jti = peewee.CharField(max_length=32, primary_key=True)
        account = peewee.ForeignKeyField(Account, on_delete="CASCADE")
        family = peewee.CharField(max_length=32, index=True)
        create_time = peewee.DateTimeField(default=datetime.datetime.now)
        expire_time = peewee.DateTimeField()
        use_time = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "refresh_token"

    class Application(peewee.Model):
        id = peewee.BigAutoField()
        name = peewee.CharField(max_length=100, unique=True)
        create_time = peewee.DateTimeField(default=datetime.datetime.now)

        class Meta:
            database = db
            table_name = "application"

    class ApiKey(peewee.Model):
        id = peewee.CharField(max_length=16, primary_key=True)
        application = peewee.ForeignKeyField(Application, on_delete="CASCADE")
        secret_hash = peewee.CharField(max_length=64)
        create_time = peewee.DateTimeField(default=datetime.datetime.now)
        revoke_time = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "api_key"

    db.create_tables([RefreshToken, Application, ApiKey])
