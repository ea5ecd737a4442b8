"""Importing an experiment data set: stage its rows aside, find what spans rows, then publish.

An import writes its rows into temporary tables of its own connection (invisible to every other
connection), in batches, as they arrive. Once every file has arrived, SQL finds duplicate ids and
references to users or compounds the files do not define. Only when nothing is wrong does one short
transaction replace the stored data set with the staged one; otherwise the staged rows are dropped
and the stored data set was never touched.

- PostgreSQL: the whole import is one transaction, so nobody sees its tables before it commits.
  Users and compounds go to temporary tables; experiments and their compound lists, the bulk of
  an import, go by COPY straight into new tables shaped like the stored ones, written while the
  next rows are parsed. Publishing then only builds their keys and indexes and swaps them in for
  the old tables. An advisory lock makes concurrent imports (on any worker of any replica)
  publish one after the other: the later one waits, then replaces the data set whole, so the
  data set is always exactly one import's.
- SQLite: writing temporary tables takes no lock on the main database, so other writers carry on
  while a long upload is staged; the main database is locked only while publishing.

Memory stays flat whatever the size of the files: rows go to the database batch by batch, and the
checks are queries that return at most `limit` findings.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import peewee

from quartet.storage import experiment_history
from quartet.storage.base import copy_line, db
from quartet.storage.experiments import Compound, Experiment, ExperimentCompound, ExperimentUser

# Staged rows; a cell the import could not parse is None (such an import never publishes).
UserRow = tuple[int, int, str | None, str | None, str | None]  # line, id, name, email, ISO date
CompoundRow = tuple[int, int, str | None, str | None]  # line, id, name, structure
ExperimentRow = tuple[int, int, int | None, float | None]  # line, id, user id, run time
LinkRow = tuple[int, int, int]  # experiment id, position, compound id

_STAGES = {
    "import_user": "line BIGINT NOT NULL, id BIGINT NOT NULL, name TEXT, email TEXT, "
    "signup_date DATE",
    "import_compound": "line BIGINT NOT NULL, id BIGINT NOT NULL, name TEXT, structure TEXT",
    "import_experiment": "line BIGINT NOT NULL, id BIGINT NOT NULL, user_id BIGINT, "
    "run_time DOUBLE PRECISION",
    "import_link": "experiment_id BIGINT NOT NULL, position INTEGER NOT NULL, "
    "compound_id BIGINT NOT NULL",
}
# The columns staged rows carry, in their order.
_COLUMNS = {
    "import_user": "line, id, name, email, signup_date",
    "import_compound": "line, id, name, structure",
    "import_experiment": "line, id, user_id, run_time",
    "import_link": "experiment_id, position, compound_id",
}
# On PostgreSQL, the stages loaded straight into the shape of the stored table they replace.
_LOADED = {"import_experiment": Experiment, "import_link": ExperimentCompound}

_NUMERIC_STAGES = {"import_experiment", "import_link"}

# Any constant works: it only has to be the same in every quartet process.
_PG_PUBLISH_LOCK = 0x0E7E51
_COPIES_IN_FLIGHT = 2


@dataclass(frozen=True)
class Finding:
    """A problem that spans rows: `kind` is "duplicate" (of the row on `first_line`),
    "unknown_user" or "unknown_compound"; `table` is where the row is ("user", "compound",
    "experiment"); `key` is the offending id."""

    table: str
    kind: str
    line: int
    key: int
    first_line: int = 0


@contextlib.contextmanager
def staging() -> Iterator[Staging]:
    """A fresh staging area on the current connection; dropped on exit, published or not.

    Raise inside the block to abandon the import: nothing it staged reaches the data set.
    """
    database = db.obj
    if isinstance(database, peewee.PostgresqlDatabase):
        with database.atomic():
            stage = Staging(database, postgres=True)
            try:
                yield stage
            finally:
                stage.close()
        return
    stage = Staging(database, postgres=False)
    try:
        yield stage
    finally:
        stage.drop()


class Staging:
    """The temporary tables of one import, on the connection of the thread that created them."""

    def __init__(self, database: peewee.Database, *, postgres: bool) -> None:
        self._db = database
        self._postgres = postgres
        # PostgreSQL ingests one batch (COPY) while this thread parses the next: the copies run
        # on a thread of their own, at most _COPIES_IN_FLIGHT at a time, so memory stays flat.
        self._copier = ThreadPoolExecutor(1, "quartet-import-copy") if postgres else None
        self._copies: deque[Future[None]] = deque()
        # The copy thread uses this thread's connection, inside this import's transaction
        # (psycopg2 serializes calls from several threads; Peewee's state is per thread).
        self._connection = database.connection() if postgres else None  # type: ignore[no-untyped-call]
        self._tables = {stage: stage for stage in _STAGES}
        token = uuid.uuid4().hex[:12]
        for stage, columns in _STAGES.items():
            if postgres and stage in _LOADED:
                self._tables[stage] = table = f"{_LOADED[stage]._meta.table_name}_load_{token}"
                self._create_load_table(table, _LOADED[stage])
                continue
            self._sql(f"DROP TABLE IF EXISTS {stage}")
            suffix = " ON COMMIT DROP" if postgres else ""
            self._sql(f"CREATE TEMPORARY TABLE {stage} ({columns}){suffix}")

    def _create_load_table(self, table: str, model: type[peewee.Model]) -> None:
        """A table with the stored table's columns and types, nullable (a staged row whose cell
        could not be parsed holds NULL: such an import never publishes), without keys yet.

        The columns are read from the catalog, not copied with `LIKE`: that would hold a lock on
        the stored table until this import commits, and an import publishing meanwhile (under
        the lock below, from another worker or replica) needs that table's exclusive lock to
        drop it, while this one would wait for its publish lock: a deadlock."""
        stored = model._meta.table_name
        [(columns,)] = self._sql(
            "SELECT string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod),"
            " ', ' ORDER BY attnum) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (stored,),
        ).fetchall()
        self._sql(f"CREATE TABLE {table} ({columns})")

    def add_users(self, rows: Sequence[UserRow]) -> None:
        self._insert("import_user", rows)

    def add_compounds(self, rows: Sequence[CompoundRow]) -> None:
        self._insert("import_compound", rows)

    def add_experiments(self, rows: Sequence[ExperimentRow], links: Sequence[LinkRow]) -> None:
        self._insert("import_experiment", rows)
        self._insert("import_link", links)

    def findings(self, limit: int, *, references: bool = True) -> tuple[int, list[Finding]]:
        """How many cross-row problems there are, and the first `limit` of each kind by line.

        Without `references`, only duplicates are looked for.
        """
        self._flush()
        tables = self._tables
        if self._postgres:  # new tables get no statistics unless asked: plan with them
            self._sql(f"ANALYZE {', '.join(tables.values())}")
        else:
            self._sql("CREATE INDEX import_user_id ON import_user (id)")
            self._sql("CREATE INDEX import_compound_id ON import_compound (id)")
        total = 0
        found: list[Finding] = []
        for table, stage in (
            ("user", "import_user"),
            ("compound", "import_compound"),
            ("experiment", "import_experiment"),
        ):
            staged = tables[stage]
            (count,) = self._sql(f"SELECT COUNT(*) - COUNT(DISTINCT id) FROM {staged}").fetchone()
            if count:
                total += count
                rows = self._sql(
                    "SELECT line, id, first_line FROM (SELECT line, id, "
                    f"MIN(line) OVER (PARTITION BY id) AS first_line FROM {staged}) AS ranked "
                    f"WHERE line > first_line ORDER BY line LIMIT {int(limit)}"
                )
                found += [Finding(table, "duplicate", *row) for row in rows]
        experiments = tables["import_experiment"]
        # A compound list's line is its experiment's (the first, should an id be repeated).
        line_of_link = f"(SELECT MIN(e.line) FROM {experiments} AS e WHERE e.id = s.experiment_id)"
        checks = (
            ("unknown_user", experiments, "user_id", "import_user", "s.line", "s.line"),
            (
                "unknown_compound",
                tables["import_link"],
                "compound_id",
                "import_compound",
                line_of_link,
                "1, s.position",
            ),
        )
        for kind, staged, column, targets, line, order in checks if references else ():
            missing = (
                f"FROM {staged} AS s WHERE s.{column} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM {targets} AS t WHERE t.id = s.{column})"
            )
            (count,) = self._sql(f"SELECT COUNT(*) {missing}").fetchone()
            if count:
                total += count
                rows = self._sql(
                    f"SELECT {line}, s.{column} {missing} ORDER BY {order} LIMIT {int(limit)}"
                )
                found += [Finding("experiment", kind, *row) for row in rows]
        return total, found

    def publish(self, attempt: experiment_history.Attempt) -> None:
        """Replace the stored data set with the staged one, and record `attempt` as the import
        that published it, in one transaction."""
        self._flush()
        copies = (
            (ExperimentUser, "id, name, email, signup_date", "import_user"),
            (Compound, "id, name, structure", "import_compound"),
            (Experiment, "id, user_id, run_time, line", "import_experiment"),
            (ExperimentCompound, "experiment_id, position, compound_id", "import_link"),
        )
        with self._db.atomic():
            if not self._postgres:
                for model, *_ in reversed(copies):
                    model.delete().execute()
                for model, columns, stage in copies:
                    # In file order: no sort, and files usually list ids in order, which appends
                    # to the primary key's index.
                    table = model._meta.table_name
                    self._sql(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage}")
                experiment_history.record(attempt, experiment_history.PUBLISHED)
                return
            self._sql("SELECT pg_advisory_xact_lock(%s)", (_PG_PUBLISH_LOCK,))
            # Report reads wait the few seconds this takes (the tables are locked), rather than
            # read the old data set.
            small = [
                (model, columns, stage) for model, columns, stage in copies if stage not in _LOADED
            ]
            self._sql(f"TRUNCATE {', '.join(m._meta.table_name for m, *_ in small)}")
            for model, columns, stage in small:
                table = model._meta.table_name
                self._sql(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage}")
            self._sql("SET LOCAL maintenance_work_mem = '256MB'")
            for stage, loaded_model in _LOADED.items():
                self._swap_in(self._tables[stage], loaded_model)
            # Plan the first reports with the new data's statistics.
            self._sql(f"ANALYZE {', '.join(m._meta.table_name for m, *_ in copies)}")
            # Under the lock, so ids follow the order in which imports publish.
            experiment_history.record(attempt, experiment_history.PUBLISHED)

    def _swap_in(self, loaded: str, model: type[peewee.Model]) -> None:
        """Make the loaded table the stored one: its columns NOT NULL as declared, its primary
        key and indexes built in bulk (far faster than row by row), the old table dropped."""
        stored = model._meta.table_name
        key: Any = model._meta.primary_key
        key_columns = (
            [model._meta.fields[name].column_name for name in key.field_names]
            if isinstance(key, peewee.CompositeKey)
            else [key.column_name]
        )
        self._sql(f"DROP TABLE {stored}")
        self._sql(f"ALTER TABLE {loaded} RENAME TO {stored}")
        not_null = [
            f"ALTER COLUMN {field.column_name} SET NOT NULL"
            for field in model._meta.sorted_fields
            if not field.null
        ]
        primary_key = f"ADD PRIMARY KEY ({', '.join(key_columns)})"
        self._sql(f"ALTER TABLE {stored} {', '.join([*not_null, primary_key])}")
        model._schema.create_indexes()  # type: ignore[attr-defined]

    def drop(self) -> None:
        for table in self._tables.values():
            self._sql(f"DROP TABLE IF EXISTS {table}")

    def close(self) -> None:
        """Wait for the copies still running (an abandoned import must not leave one behind)."""
        if self._copier is not None:
            self._copier.shutdown(wait=True)

    def _flush(self) -> None:
        """Wait for every copy; raise the first one's error."""
        while self._copies:
            self._copies.popleft().result()

    def _insert(self, stage: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._postgres:
            # One batch is at most a few MiB of text: build it whole, COPY it in one go.
            if stage in _NUMERIC_STAGES:
                # Numbers need no escaping, and str(None) is the NULL marker COPY is told of.
                line = "\t".join(["%s"] * len(rows[0])) + "\n"
                text, options = "".join([line % row for row in rows]), " WITH (NULL 'None')"
            else:
                text, options = "".join([copy_line(row) for row in rows]), ""
            target = f"{self._tables[stage]} ({_COLUMNS[stage]})"
            assert self._copier is not None
            self._copies.append(self._copier.submit(self._copy, target, options, text))
            if len(self._copies) > _COPIES_IN_FLIGHT:
                self._copies.popleft().result()
            return
        marks = ", ".join("?" * len(rows[0]))
        # A deferred transaction that writes only temporary tables locks nothing else.
        with self._db.atomic("DEFERRED"):
            self._db.cursor().executemany(  # type: ignore[no-untyped-call]
                f"INSERT INTO {stage} ({_COLUMNS[stage]}) VALUES ({marks})", rows
            )

    def _copy(self, table: str, options: str, text: str) -> None:
        with self._connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.copy_expert(f"COPY {table} FROM STDIN{options}", io.StringIO(text))

    def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute_sql(sql, params)  # type: ignore[no-untyped-call]
