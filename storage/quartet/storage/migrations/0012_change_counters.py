"""One counter per kind of cached row (event types, API keys, accounts), bumped in the transaction
that changes such a row, so that the worker processes sharing an SQLite file notice a change by
polling one tiny table (quartet.storage.changes). PostgreSQL notifies instead, but the table is
created there too, so that both databases have the same schema.

Numbered 0012: 0013 is taken by another change.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # A frozen copy of the model as it was when this migration was written.
    class ChangeCounter(peewee.Model):
        topic = peewee.CharField(max_length=32, primary_key=True)
        value = peewee.BigIntegerField(default=0)

        class Meta:
            database = db
            table_name = "change_counter"

    db.create_tables([ChangeCounter])
