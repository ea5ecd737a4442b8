"""The history of experiment data imports, published or refused (issue 16).

Numbered 0010: 0009 is taken by another change to the events tables.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # A frozen copy of the model as it was when this migration was written.
    class ImportRecord(peewee.Model):
        id = peewee.BigAutoField()
        start_time = peewee.DateTimeField()
        finish_time = peewee.DateTimeField()
        caller = peewee.CharField(max_length=100)
        user_rows = peewee.BigIntegerField()
        compound_rows = peewee.BigIntegerField()
        experiment_rows = peewee.BigIntegerField()
        outcome = peewee.CharField(max_length=16)
        problem_count = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "experiment_import_record"

    db.create_tables([ImportRecord])
