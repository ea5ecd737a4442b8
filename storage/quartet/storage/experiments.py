"""The experiment data set (its users, compounds and experiments) and the report the database
computes over it.

The data set is replaced as a whole by each import (`quartet.storage.experiment_import`), which is
its only writer and checks every reference before it publishes. The tables therefore carry no
foreign keys: on PostgreSQL their per-row triggers made a million-experiment import three times
slower, and they would guard against nothing the import does not already refuse.
"""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import peewee

from quartet.storage.base import BaseModel, db
from quartet.storage.errors import RecordNotFound
from quartet.storage.experiment_history import PUBLISHED, ImportRecord

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
class Selection:
    """Which users a report covers: those who used `compound_id` (when set) and signed up
    between `signup_start` and `signup_end`, both days included (when set). Empty: everyone."""

    compound_id: int | None = None
    signup_start: datetime.date | None = None
    signup_end: datetime.date | None = None

    def __bool__(self) -> bool:
        return any(
            value is not None for value in (self.compound_id, self.signup_start, self.signup_end)
        )

    def condition(self, user: Any) -> peewee.Expression:
        """The condition on `user` (ExperimentUser or an alias of it) that selects them."""
        conditions: list[Any] = [peewee.SQL("1 = 1")]
        # Dates as ISO text: SQLite stores them so, PostgreSQL casts the text to a date.
        if self.signup_start is not None:
            conditions.append(user.signup_date >= self.signup_start.isoformat())
        if self.signup_end is not None:
            conditions.append(user.signup_date <= self.signup_end.isoformat())
        if self.compound_id is not None:
            ran, listed = Experiment.alias("ran"), ExperimentCompound.alias("listed")
            used = (
                ran.select(peewee.SQL("1"))
                .join(listed, on=listed.experiment_id == ran.id)
                .where((ran.user_id == user.id) & (listed.compound_id == self.compound_id))
            )
            conditions.append(peewee.fn.EXISTS(used))
        condition: peewee.Expression = functools.reduce(operator.and_, conditions)
        return condition

    def user_ids(self) -> tuple[str, list[Any]]:
        """SQL selecting the ids of the users it selects, and its parameters."""
        sql, params = (
            ExperimentUser.select(ExperimentUser.id).where(self.condition(ExperimentUser)).sql()
        )
        return sql, list(params)


EVERYONE = Selection()


@dataclass(frozen=True)
class Totals:
    """The figures over the selected users; the averages are 0 when their divisor is.
    `import_id` and `publish_time` name the import that published the data set (0 and None
    if none has)."""

    user_count: int
    active_user_count: int
    experiment_count: int
    compound_count: int
    average_per_user: float
    average_per_active_user: float
    total_run_time: float
    average_run_time: float
    import_id: int
    publish_time: datetime.datetime | None


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
    total_run_time: float
    average_run_time: float


def totals(selection: Selection = EVERYONE) -> Totals:
    """Counts, averages and run times over the selected users, and the import that published
    the data set, in one query (so in one snapshot of the database)."""
    users, experiments = ExperimentUser._meta.table_name, Experiment._meta.table_name
    compounds, imports = Compound._meta.table_name, ImportRecord._meta.table_name
    params: list[Any] = []
    user_where = experiment_where = ""
    if selection:
        selected, params = selection.user_ids()
        user_where = f" WHERE id IN ({selected})"
        experiment_where = f" WHERE user_id IN ({selected})"
        params = params * 2
    # `* 1.0` makes the division exact on both backends (numeric on PostgreSQL, real on SQLite).
    # The experiments are read once, for every figure over them.
    sql = (
        "SELECT u.users, r.active, r.experiments, c.compounds, "
        "r.experiments * 1.0 / NULLIF(u.users, 0), r.experiments * 1.0 / NULLIF(r.active, 0), "
        "r.run_time, r.run_time * 1.0 / NULLIF(r.experiments, 0), i.id, i.finish_time FROM "
        f"(SELECT COUNT(*) AS users FROM {users}{user_where}) AS u "
        "CROSS JOIN (SELECT COUNT(DISTINCT user_id) AS active, COUNT(*) AS experiments, "
        f"SUM(run_time) AS run_time FROM {experiments}{experiment_where}) AS r "
        f"CROSS JOIN (SELECT COUNT(*) AS compounds FROM {compounds}) AS c "
        f"LEFT JOIN (SELECT id, finish_time FROM {imports} WHERE outcome = '{PUBLISHED}' "
        "ORDER BY id DESC LIMIT 1) AS i ON 1 = 1"
    )
    row = db.execute_sql(sql, params).fetchone()
    counts, averages, (import_id, published) = row[:4], row[4:8], row[8:]
    user_count, active_count, experiment_count, compound_count = (int(v) for v in counts)
    per_user, per_active_user, run_time, average_run_time = (float(v or 0) for v in averages)
    return Totals(
        user_count=user_count,
        active_user_count=active_count,
        experiment_count=experiment_count,
        compound_count=compound_count,
        average_per_user=per_user,
        average_per_active_user=per_active_user,
        total_run_time=run_time,
        average_run_time=average_run_time,
        import_id=int(import_id or 0),
        publish_time=None if published is None else _datetime(published),
    )


def user_summaries(
    *, after: int | None, limit: int, selection: Selection = EVERYONE
) -> list[UserSummary]:
    """The report of up to `limit` selected users with ids above `after`, by id."""
    low = 0 if after is None else after
    page = (
        ExperimentUser.select(ExperimentUser.id)
        .where((ExperimentUser.id > low) & selection.condition(ExperimentUser))
        .order_by(ExperimentUser.id)
        .limit(limit)
    )
    high = ExperimentUser.select(peewee.fn.MAX(page.c.id)).from_(page).scalar()
    return [] if high is None else _summaries(low, high, selection)


def user_summary(user_id: int) -> UserSummary:
    """One user's report; RecordNotFound if the data set has no such user."""
    rows = _summaries(user_id - 1, user_id)
    if not rows:
        raise RecordNotFound("experiment user", user_id)
    return rows[0]


def _summaries(low: int, high: int, selection: Selection = EVERYONE) -> list[UserSummary]:
    """The report of the selected users with ids in (low, high], in one query.

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

    def of_user(aggregate: peewee.Function, name: str) -> peewee.Node:
        # Aliased: Peewee would read an unnamed subquery's value as its table's key, an integer.
        return counted.select(aggregate).where(counted.user_id == ExperimentUser.id).alias(name)

    experiments = of_user(peewee.fn.COUNT(peewee.SQL("*")), "experiments")
    run_time = of_user(peewee.fn.SUM(counted.run_time), "run_time")
    average_run_time = of_user(peewee.fn.AVG(counted.run_time), "average_run_time")
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
            run_time,
            average_run_time,
        )
        .join(ExperimentUser, on=ExperimentUser.id == ranked.c.user_id)
        .join(Compound, peewee.JOIN.LEFT_OUTER, on=Compound.id == ranked.c.compound_id)
        .where((ranked.c.rank == 1) & selection.condition(ExperimentUser))
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
            total_run_time=float(run_time or 0),
            average_run_time=float(average_run_time or 0),
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
            run_time,
            average_run_time,
        ) in rows
    ]


def _date(value: datetime.date | str) -> datetime.date:
    # A tuples() query returns SQLite's DATE column as the stored text.
    return value if isinstance(value, datetime.date) else datetime.date.fromisoformat(value)


def _datetime(value: datetime.datetime | str) -> datetime.datetime:
    # Raw SQL returns SQLite's DATETIME column as the stored text.
    return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)


@dataclass(frozen=True)
class CompoundSummary:
    """One compound's line of the report: how many selected experiments list it, and their
    average run time (0 if none)."""

    id: int
    name: str
    structure: str
    experiment_count: int
    average_run_time: float


def compound_summaries(
    *, after: int | None, limit: int, selection: Selection = EVERYONE
) -> list[CompoundSummary]:
    """Up to `limit` compounds with ids above `after`, by id, with the figures of the selected
    users' experiments that list them, each experiment once, in one query."""
    low = 0 if after is None else after
    page = Compound.select(Compound.id).where(Compound.id > low).order_by(Compound.id).limit(limit)
    high = Compound.select(peewee.fn.MAX(page.c.id)).from_(page).scalar()
    if high is None:
        return []
    compounds, links = Compound._meta.table_name, ExperimentCompound._meta.table_name
    experiments, mark = Experiment._meta.table_name, db.obj.param
    params: list[Any] = [low, high]
    selected_only = ""
    if selection:
        selected, selected_params = selection.user_ids()
        selected_only = f" AND e.user_id IN ({selected})"
        params += selected_params
    sql = (
        "SELECT c.id, c.name, c.structure, COUNT(x.experiment_id), AVG(x.run_time) "
        f"FROM {compounds} AS c LEFT JOIN ("
        "SELECT DISTINCT l.compound_id, l.experiment_id, e.run_time "
        f"FROM {links} AS l JOIN {experiments} AS e ON e.id = l.experiment_id "
        f"WHERE l.compound_id > {mark} AND l.compound_id <= {mark}{selected_only}"
        f") AS x ON x.compound_id = c.id WHERE c.id > {mark} AND c.id <= {mark} "
        "GROUP BY c.id, c.name, c.structure ORDER BY c.id"
    )
    rows = db.execute_sql(sql, [*params, low, high]).fetchall()
    return [
        CompoundSummary(int(id_), name, structure, int(count), float(average or 0))
        for id_, name, structure, count, average in rows
    ]


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
