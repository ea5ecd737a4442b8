"""The experiment data set (its users, compounds and experiments) and the report the database
computes over it.

The data set is replaced as a whole by each import (`quartet.storage.experiment_import`), which is
its only writer and checks every reference before it publishes. The tables therefore carry no
foreign keys: on PostgreSQL their per-row triggers made a million-experiment import three times
slower, and they would guard against nothing the import does not already refuse.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import peewee

from quartet.storage.base import BaseModel, db
from quartet.storage.errors import RecordNotFound

# Limits the import enforces, so that every stored value fits its column.
NAME_LENGTH = 200
EMAIL_LENGTH = 254
STRUCTURE_LENGTH = 1000
MAX_COMPOUNDS_PER_EXPERIMENT = 1000


class ExperimentUser(BaseModel):
    """A person of the experiment data set (users.csv); not a quartet account."""

    id = peewee.BigIntegerField(primary_key=True)
    name = peewee.CharField(max_length=NAME_LENGTH)
    email = peewee.CharField(max_length=EMAIL_LENGTH)
    signup_date = peewee.DateField()


class Compound(BaseModel):
    """A compound of the experiment data set (compounds.csv)."""

    id = peewee.BigIntegerField(primary_key=True)
    name = peewee.CharField(max_length=NAME_LENGTH)
    structure = peewee.CharField(max_length=STRUCTURE_LENGTH)


class Experiment(BaseModel):
    """An experiment (user_experiments.csv). `line` keeps the file's order, which breaks ties
    between favourite compounds."""

    id = peewee.BigIntegerField(primary_key=True)
    user_id = peewee.BigIntegerField(index=True)
    run_time = peewee.DoubleField()
    line = peewee.BigIntegerField()


class ExperimentCompound(BaseModel):
    """One entry of an experiment's compound list: `position` counts from 0, left to right."""

    experiment_id = peewee.BigIntegerField()
    position = peewee.IntegerField()
    compound_id = peewee.BigIntegerField()

    class Meta:
        primary_key = peewee.CompositeKey("experiment_id", "position")


@dataclass(frozen=True)
class Totals:
    """The figures over the whole data set; the averages are 0 when their divisor is."""

    user_count: int
    active_user_count: int
    experiment_count: int
    compound_count: int
    average_per_user: float
    average_per_active_user: float


@dataclass(frozen=True)
class UserSummary:
    """One user's line of the report; the favourite fields are None without experiments."""

    user_id: int
    name: str
    email: str
    signup_date: datetime.date
    experiment_count: int
    favourite_id: int | None
    favourite_name: str | None
    favourite_structure: str | None
    favourite_uses: int


def totals() -> Totals:
    """Counts and both averages, in one query."""
    users, experiments = ExperimentUser._meta.table_name, Experiment._meta.table_name
    compounds = Compound._meta.table_name
    # `* 1.0` makes the division exact on both backends (numeric on PostgreSQL, real on SQLite).
    sql = (
        "SELECT users, active, experiments, compounds, "
        "experiments * 1.0 / NULLIF(users, 0), experiments * 1.0 / NULLIF(active, 0) FROM ("
        f"SELECT (SELECT COUNT(*) FROM {users}) AS users, "
        f"(SELECT COUNT(DISTINCT user_id) FROM {experiments}) AS active, "
        f"(SELECT COUNT(*) FROM {experiments}) AS experiments, "
        f"(SELECT COUNT(*) FROM {compounds}) AS compounds) AS counts"
    )
    row = db.execute_sql(sql).fetchone()
    return Totals(*(int(value) for value in row[:4]), *(float(value or 0) for value in row[4:]))


def user_summaries(*, after: int | None, limit: int) -> list[UserSummary]:
    """The report of up to `limit` users with ids above `after`, by id."""
    low = 0 if after is None else after
    page = (
        ExperimentUser.select(ExperimentUser.id)
        .where(ExperimentUser.id > low)
        .order_by(ExperimentUser.id)
        .limit(limit)
    )
    high = ExperimentUser.select(peewee.fn.MAX(page.c.id)).from_(page).scalar()
    return [] if high is None else _summaries(low, high)


def user_summary(user_id: int) -> UserSummary:
    """One user's report; RecordNotFound if the data set has no such user."""
    rows = _summaries(user_id - 1, user_id)
    if not rows:
        raise RecordNotFound("experiment user", user_id)
    return rows[0]


def _summaries(low: int, high: int) -> list[UserSummary]:
    """The report of the users with ids in (low, high], in one query.

    Each user's compounds are ranked by uses, then by where each first appears in the user's
    experiments (file order, each list left to right); the first is the favourite. Every part is
    limited to the id range, so that a page reads only its users' rows (through the index on
    experiment.user_id) whatever the size of the data set, and no step joins two derived tables
    (SQLite would scan one of them once per row of the other).
    """
    users_in_range = (ExperimentUser.id > low) & (ExperimentUser.id <= high)
    first_seen = Experiment.line * MAX_COMPOUNDS_PER_EXPERIMENT + ExperimentCompound.position
    used = (
        Experiment.select(
            Experiment.user_id.alias("user_id"),
            ExperimentCompound.compound_id.alias("compound_id"),
            peewee.fn.COUNT(peewee.SQL("*")).alias("uses"),
            peewee.fn.MIN(first_seen).alias("first_seen"),
        )
        .join(ExperimentCompound, on=ExperimentCompound.experiment_id == Experiment.id)
        .where((Experiment.user_id > low) & (Experiment.user_id <= high))
        .group_by(Experiment.user_id, ExperimentCompound.compound_id)
    )
    # One more row per user, with no compound and zero uses: it ranks last, so it is the user's
    # first row only when the user used no compound at all.
    everyone = ExperimentUser.select(
        ExperimentUser.id, peewee.Value(None), peewee.Value(0), peewee.Value(None)
    ).where(users_in_range)
    uses = used.union_all(everyone).cte("uses", columns=("user_id", "compound_id", "uses", "first"))
    ranked = uses.select_from(
        uses.c.user_id,
        uses.c.compound_id,
        uses.c.uses,
        peewee.fn.ROW_NUMBER()
        .over(partition_by=[uses.c.user_id], order_by=[uses.c.uses.desc(), uses.c.first])
        .alias("rank"),
    ).cte("ranked")
    counted = Experiment.alias("counted")
    experiments = counted.select(peewee.fn.COUNT(peewee.SQL("*"))).where(
        counted.user_id == ExperimentUser.id
    )
    query = (
        ranked.select_from(
            ExperimentUser.id,
            ExperimentUser.name,
            ExperimentUser.email,
            ExperimentUser.signup_date,
            experiments,
            ranked.c.compound_id,
            Compound.name,
            Compound.structure,
            ranked.c.uses,
        )
        .join(ExperimentUser, on=ExperimentUser.id == ranked.c.user_id)
        .join(Compound, peewee.JOIN.LEFT_OUTER, on=Compound.id == ranked.c.compound_id)
        .where(ranked.c.rank == 1)
        .order_by(ranked.c.user_id)
        .with_cte(uses, ranked)
        .tuples()
    )
    rows = cast(Iterable[tuple[Any, ...]], query)
    return [
        UserSummary(
            user_id=int(user_id),
            name=name,
            email=email,
            signup_date=_date(signup),
            experiment_count=int(experiments),
            favourite_id=None if favourite_id is None else int(favourite_id),
            favourite_name=favourite_name,
            favourite_structure=favourite_structure,
            favourite_uses=int(favourite_uses),
        )
        for (
            user_id,
            name,
            email,
            signup,
            experiments,
            favourite_id,
            favourite_name,
            favourite_structure,
            favourite_uses,
        ) in rows
    ]


def _date(value: datetime.date | str) -> datetime.date:
    # A tuples() query returns SQLite's DATE column as the stored text.
    return value if isinstance(value, datetime.date) else datetime.date.fromisoformat(value)


@dataclass(frozen=True)
class StoredExperiment:
    """An experiment with its compound ids in file order."""

    id: int
    user_id: int
    compound_ids: list[int]
    run_time: float
    line: int


def list_experiments(
    *, after: int | None, limit: int, user_id: int | None = None
) -> list[StoredExperiment]:
    """Up to `limit` experiments with ids above `after`, by id, optionally of one user."""
    query = Experiment.select().order_by(Experiment.id).limit(limit)
    if after is not None:
        query = query.where(Experiment.id > after)
    if user_id is not None:
        query = query.where(Experiment.user_id == user_id)
    experiments = list(query)
    compounds: dict[int, list[int]] = {e.id: [] for e in experiments}
    if experiments:
        links = (
            ExperimentCompound.select(
                ExperimentCompound.experiment_id, ExperimentCompound.compound_id
            )
            .where(ExperimentCompound.experiment_id.in_(list(compounds)))
            .order_by(ExperimentCompound.experiment_id, ExperimentCompound.position)
            .tuples()
        )
        for experiment_id, compound_id in cast(Iterable[tuple[int, int]], links):
            compounds[experiment_id].append(compound_id)
    return [
        StoredExperiment(e.id, e.user_id, compounds[e.id], e.run_time, e.line) for e in experiments
    ]
