"""The experiment data set: its users (not accounts), compounds, experiments and their compounds."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # Frozen copies of the models as they were when this migration was written.
    class ExperimentUser(peewee.Model):
        id = peewee.BigIntegerField(primary_key=True)
        name = peewee.CharField(max_length=200)
        email = peewee.CharField(max_length=254)
        signup_date = peewee.DateField()

        class Meta:
            database = db
            table_name = "experiment_user"

    class Compound(peewee.Model):
        id = peewee.BigIntegerField(primary_key=True)
        name = peewee.CharField(max_length=200)
        structure = peewee.CharField(max_length=1000)

        class Meta:
            database = db
            table_name = "compound"

    class Experiment(peewee.Model):
        id = peewee.BigIntegerField(primary_key=True)
        user_id = peewee.BigIntegerField(index=True)
        run_time = peewee.DoubleField()
        line = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "experiment"

    class ExperimentCompound(peewee.Model):
        experiment_id = peewee.BigIntegerField()
        position = peewee.IntegerField()
        compound_id = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "experiment_compound"
            primary_key = peewee.CompositeKey("experiment_id", "position")

    db.create_tables([ExperimentUser, Compound, Experiment, ExperimentCompound])
