"""Accounts (a minimal owner record) and scores."""

from __future__ import annotations

import datetime

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # Frozen copies of the models as they were when this migration was written.
    class Account(peewee.Model):
        id = peewee.BigAutoField()
        email = peewee.CharField(max_length=254, unique=True)
        create_time = peewee.DateTimeField(default=datetime.datetime.now)

        class Meta:
            database = db
            table_name = "account"

    class Score(peewee.Model):
        id = peewee.BigAutoField()
        user = peewee.ForeignKeyField(Account, null=True, on_delete="CASCADE")
        input_value = peewee.DoubleField()
        value = peewee.DoubleField()
        create_time = peewee.DateTimeField(default=datetime.datetime.now)
        request_id = peewee.CharField(max_length=64, null=True, unique=True)

        class Meta:
            database = db
            table_name = "score"
            indexes = (
                (("create_time", "id"), False),
                (("user", "create_time", "id"), False),
            )

    db.create_tables([Account, Score])
