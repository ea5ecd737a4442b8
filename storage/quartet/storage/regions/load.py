"""Load a regions dataset into the reference tables: idempotent, in one transaction.

Each table is synchronised row by row with the dataset (missing rows added, differing rows
updated, extra rows removed), so a load that finds the tables current changes nothing and rows
other tables may one day reference keep their identity. The checksum stored with the tables lets
`migrate()` skip the comparison when the database already holds this dataset.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import peewee

from quartet.storage.base import utcnow
from quartet.storage.regions.dataset import Dataset, packaged
from quartet.storage.regions.models import (
    DATA_MODELS,
    Fsa,
    FsaHealthRegion,
    HealthRegion,
    Province,
    Region,
    RegionDataset,
)

logger = logging.getLogger(__name__)

# Any constant works: it only has to be the same in every quartet process.
_PG_LOAD_LOCK = 0x71A27E8
_CHUNK = 500  # rows per INSERT, keys per IN (...): well under every driver's parameter limit

Row = dict[str, Any]
Key = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Changes:
    """What a load did to one table."""

    rows: int
    added: int
    updated: int
    removed: int


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a load did: per table (empty when skipped because the checksum was current)."""

    checksum: str
    tables: dict[str, Changes]

    @property
    def skipped(self) -> bool:
        return not self.tables

    @property
    def changed(self) -> bool:
        return any(c.added or c.updated or c.removed for c in self.tables.values())

    def __str__(self) -> str:
        if self.skipped:
            return f"regions dataset {self.checksum[:12]} already loaded"
        tables = "; ".join(
            f"{name} {c.rows} rows ({c.added} added, {c.updated} updated, {c.removed} removed)"
            for name, c in self.tables.items()
        )
        return f"regions dataset {self.checksum[:12]}: {tables}"


def load(
    database: peewee.Database, dataset: Dataset | None = None, *, force: bool = False
) -> LoadReport:
    """Make the reference tables of database hold dataset (by default the packaged one).

    Without force, a database whose stored checksum is the dataset's is left alone after one
    query; force compares every row anyway, repairing rows edited by hand. Concurrent loads
    (several servers starting at once) run one after the other and the later ones find nothing
    to do. The database need not be the one the models are bound to.
    """
    dataset = dataset or packaged()
    with database.connection_context(), database.atomic():
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_LOAD_LOCK,))  # type: ignore[no-untyped-call]
        current = RegionDataset.select(RegionDataset.checksum).scalar(database)
        if current == dataset.checksum and not force:
            return LoadReport(dataset.checksum, {})
        wanted = rows(dataset)
        have = {model: _existing(database, model) for model in DATA_MODELS}
        removed = {
            model: _remove(database, model, [k for k in have[model] if k not in wanted[model]])
            for model in reversed(DATA_MODELS)
        }
        tables = {}
        for model in DATA_MODELS:
            added, updated = _add_and_update(database, model, have[model], wanted[model])
            tables[model._meta.table_name] = Changes(
                len(wanted[model]), added, updated, removed[model]
            )
        if current != dataset.checksum:
            RegionDataset.delete().execute(database)
            RegionDataset.insert(
                checksum=dataset.checksum, load_time=utcnow()
            ).as_rowcount().execute(database)
    report = LoadReport(dataset.checksum, tables)
    if report.changed:
        logger.info("loaded %s", report)
    return report


def rows(dataset: Dataset) -> dict[type[peewee.Model], dict[Key, Row]]:
    """The rows each table should hold, by primary key, named as the models' fields."""
    tables: dict[type[peewee.Model], list[Row]] = {
        Region: [dataclasses.asdict(r) for r in dataset.regions],
        Province: [
            {
                "geo_code": p.geo_code,
                "alpha_code": p.alpha_code,
                "name_en": p.name_en,
                "name_fr": p.name_fr,
                "region": p.region_id,
            }
            for p in dataset.provinces
        ],
        HealthRegion: [
            {
                **{k: v for k, v in dataclasses.asdict(hr).items() if k != "province_geo_code"},
                "province": hr.province_geo_code,
            }
            for hr in dataset.health_regions
        ],
        Fsa: [{"code": fsa, "province": geo} for fsa, geo in dataset.fsa_provinces.items()],
        FsaHealthRegion: [
            {
                "fsa": p.fsa,
                "health_region": p.hr_uid,
                "estimated_population": p.estimated_population,
            }
            for p in dataset.fsa_parts
        ],
    }
    return {model: {_key(model, row): row for row in table} for model, table in tables.items()}


def _key(model: type[peewee.Model], row: Row) -> Key:
    return tuple(row[field.name] for field in _key_fields(model))


def _key_fields(model: type[peewee.Model]) -> list[peewee.Field]:
    return list(model._meta.get_primary_keys())  # type: ignore[no-untyped-call]


def _existing(database: peewee.Database, model: type[peewee.Model]) -> dict[Key, Row]:
    return {_key(model, row): row for row in model.select().dicts().execute(database)}


def _remove(database: peewee.Database, model: type[peewee.Model], keys: list[Key]) -> int:
    for chunk in _chunks(keys):
        model.delete().where(_with_keys(model, chunk)).execute(database)
    return len(keys)


def _add_and_update(
    database: peewee.Database, model: type[peewee.Model], have: dict[Key, Row], want: dict[Key, Row]
) -> tuple[int, int]:
    new = [row for key, row in want.items() if key not in have]
    for chunk in _chunks(new):
        # as_rowcount: no RETURNING, which the model's bound database (maybe another kind than
        # `database`) would otherwise have asked for.
        model.insert_many(chunk).as_rowcount().execute(database)
    updated = 0
    for key, row in want.items():
        changed = {k: v for k, v in row.items() if key in have and have[key][k] != v}
        if changed:
            model.update(changed).where(_with_keys(model, [key])).execute(database)
            updated += 1
    return len(new), updated


def _with_keys(model: type[peewee.Model], keys: Sequence[Key]) -> peewee.Expression:
    fields = _key_fields(model)
    if len(fields) == 1:
        return fields[0].in_([key[0] for key in keys])
    return peewee.Tuple(*fields).in_(list(keys))  # type: ignore[no-any-return]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
