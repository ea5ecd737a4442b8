"""The regions reference tables: a copy of the packaged dataset, for SQL users and joins.

quartet writes them only when it loads the packaged dataset (`load.load`); the RegionService
answers from memory. Keys are the codes people use (hr_uid, SGC geo code, the FSA itself), never
surrogates, so the rows read the same in SQL as in the API.
"""

from __future__ import annotations

import peewee

from quartet.storage.base import BaseModel, utcnow


class Region(BaseModel):
    """One of the six regions the provinces are grouped in."""

    id = peewee.IntegerField(primary_key=True)
    name_en = peewee.CharField(max_length=200)
    name_fr = peewee.CharField(max_length=200)


class Province(BaseModel):
    """A province or territory, keyed by its SGC geographic code (35 for Ontario)."""

    geo_code = peewee.IntegerField(primary_key=True)
    alpha_code = peewee.CharField(max_length=2, unique=True)
    name_en = peewee.CharField(max_length=200)
    name_fr = peewee.CharField(max_length=200)
    region = peewee.ForeignKeyField(Region, on_delete="RESTRICT")
    region_id: int  # the raw foreign key, which Peewee adds beside `region`


class HealthRegion(BaseModel):
    """A health region, keyed by its HR_UID. NULL is unknown."""

    hr_uid = peewee.IntegerField(primary_key=True)
    province = peewee.ForeignKeyField(Province, on_delete="RESTRICT")
    province_id: int
    name_en = peewee.CharField(max_length=200)
    name_fr = peewee.CharField(max_length=200)
    short_name = peewee.CharField(max_length=200)
    population = peewee.BigIntegerField(null=True)
    website_en = peewee.TextField(null=True)
    website_fr = peewee.TextField(null=True)
    vaccine_website_en = peewee.TextField(null=True)
    vaccine_website_fr = peewee.TextField(null=True)


class Fsa(BaseModel):
    """A forward sortation area (the first three characters of a postal code)."""

    code = peewee.CharField(max_length=3, primary_key=True)
    province = peewee.ForeignKeyField(Province, on_delete="RESTRICT")
    province_id: int


class FsaHealthRegion(BaseModel):
    """The part of an FSA inside one health region, with its population (NULL: unknown)."""

    fsa = peewee.ForeignKeyField(Fsa, on_delete="CASCADE")
    health_region = peewee.ForeignKeyField(HealthRegion, on_delete="RESTRICT")
    estimated_population = peewee.BigIntegerField(null=True)
    fsa_id: str
    health_region_id: int

    class Meta:
        primary_key = peewee.CompositeKey("fsa", "health_region")


class RegionDataset(BaseModel):
    """The checksum of the dataset the tables hold (one row), so a load can skip when current."""

    checksum = peewee.CharField(max_length=64, primary_key=True)
    load_time = peewee.DateTimeField(default=utcnow)


# The tables holding the data, in dependency order: a load inserts in this order and deletes in
# the reverse.
DATA_MODELS: list[type[peewee.Model]] = [Region, Province, HealthRegion, Fsa, FsaHealthRegion]
MODELS: list[type[peewee.Model]] = [*DATA_MODELS, RegionDataset]
