"""Regions reference tables: regions, provinces, health regions, FSAs and their parts.

The data itself is not loaded here: `migrate()` loads the packaged dataset after the last
migration, with the models of that day, so that this migration stays valid whatever later ones
change in these tables.
"""

from __future__ import annotations

import datetime

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # Frozen copies of the models as they were when this migration was written.
    class Region(peewee.Model):
        id = peewee.IntegerField(primary_key=True)
        name_en = peewee.CharField(max_length=200)
        name_fr = peewee.CharField(max_length=200)

        class Meta:
            database = db
            table_name = "region"

    class Province(peewee.Model):
        geo_code = peewee.IntegerField(primary_key=True)
        alpha_code = peewee.CharField(max_length=2, unique=True)
        name_en = peewee.CharField(max_length=200)
        name_fr = peewee.CharField(max_length=200)
        region = peewee.ForeignKeyField(Region, on_delete="RESTRICT")

        class Meta:
            database = db
            table_name = "province"

    class HealthRegion(peewee.Model):
        hr_uid = peewee.IntegerField(primary_key=True)
        province = peewee.ForeignKeyField(Province, on_delete="RESTRICT")
        name_en = peewee.CharField(max_length=200)
        name_fr = peewee.CharField(max_length=200)
        short_name = peewee.CharField(max_length=200)
        population = peewee.BigIntegerField(null=True)
        website_en = peewee.TextField(null=True)
        website_fr = peewee.TextField(null=True)
        vaccine_website_en = peewee.TextField(null=True)
        vaccine_website_fr = peewee.TextField(null=True)

        class Meta:
            database = db
            table_name = "health_region"

    class Fsa(peewee.Model):
        code = peewee.CharField(max_length=3, primary_key=True)
        province = peewee.ForeignKeyField(Province, on_delete="RESTRICT")

        class Meta:
            database = db
            table_name = "fsa"

    class FsaHealthRegion(peewee.Model):
        fsa = peewee.ForeignKeyField(Fsa, on_delete="CASCADE")
        health_region = peewee.ForeignKeyField(HealthRegion, on_delete="RESTRICT")
        estimated_population = peewee.BigIntegerField(null=True)

        class Meta:
            database = db
            table_name = "fsa_health_region"
            primary_key = peewee.CompositeKey("fsa", "health_region")

    class RegionDataset(peewee.Model):
        checksum = peewee.CharField(max_length=64, primary_key=True)
        load_time = peewee.DateTimeField(default=datetime.datetime.now)

        class Meta:
            database = db
            table_name = "region_dataset"

    db.create_tables([Region, Province, HealthRegion, Fsa, FsaHealthRegion, RegionDataset])
