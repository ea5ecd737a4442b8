"""Importing an experiment data set: stage its rows aside, find what spans rows, then publish.

An import writes its rows into temporary tables of its own connection (invisible to every other
connection), in batches, as they arrive. Once every file has arrived, SQL finds duplicate ids and
references to users or compounds the files do not define. Only when nothing is wrong does one short
transaction replace the stored data set with the staged one; otherwise the staged rows are dropped
and the stored data set was never touched.

- PostgreSQL: the whole import is one transaction, the temporary tables are `ON COMMIT DROP` and
  filled with COPY; an advisory lock makes concurrent imports publish one after the other.
- SQLite: writing temporary tables takes no lock on the main database, so other writers carry on
  while a long upload is staged; the main database is locked only while publishing.

Memory stays flat whatever the size of the files: rows go to the database batch by batch, and the
checks are queries that return at most `limit` findings.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import peewee

from quartet.storage.base import db
from quartet.storage.experiments import Compound, Experiment, ExperimentCompound, ExperimentUser

# Staged rows; a cell the import could not parse is None (such an import never publishes).
UserRow = tuple[int, int, str | None, str | None, str | None]  # line, id, name, email, ISO date
CompoundRow = tuple[int, int, str | None, str | None]  # line, id, name, structure
ExperimentRow = tuple[int, int, int | None, float | None]  # line, id, user id, run time
LinkRow = tuple[int, int, int, int]  # line, experiment id, position, compound id

_STAGES = {
    "import_user": "line BIGINT NOT NULL, id BIGINT NOT NULL, name TEXT, email TEXT, "
    "signup_date DATE",
    "import_compound": "line BIGINT NOT NULL, id BIGINT NOT NULL, name TEXT, structure TEXT",
    "import_experiment": "line BIGINT NOT NULL, id BIGINT NOT NULL, user_id BIGINT, "
    "run_time DOUBLE PRECISION",
    "import_link": "line BIGINT NOT NULL, experiment_id BIGINT NOT NULL, "
    "position INTEGER NOT NULL, compound_id BIGINT NOT NULL",
}

_NUMERIC_STAGES = {"import_experiment", "import_link"}

# Any constant works: it only has to be the same in every quartet process.
_PG_PUBLISH_LOCK = 0x0E7E51


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
            yield stage
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
        suffix = " ON COMMIT DROP" if postgres else ""
        for table, columns in _STAGES.items():
            self._sql(f"DROP TABLE IF EXISTS {table}")
            self._sql(f"CREATE TEMPORARY TABLE {table} ({columns}){suffix}")

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
        if self._postgres:  # temporary tables get no statistics unless asked: plan with them
            self._sql(f"ANALYZE {', '.join(_STAGES)}")
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
            (count,) = self._sql(f"SELECT COUNT(*) - COUNT(DISTINCT id) FROM {stage}").fetchone()
            if count:
                total += count
                rows = self._sql(
                    "SELECT line, id, first_line FROM (SELECT line, id, "
                    f"MIN(line) OVER (PARTITION BY id) AS first_line FROM {stage}) AS ranked "
                    f"WHERE line > first_line ORDER BY line LIMIT {int(limit)}"
                )
                found += [Finding(table, "duplicate", *row) for row in rows]
        checks = (
            ("unknown_user", "import_experiment", "user_id", "import_user"),
            ("unknown_compound", "import_link", "compound_id", "import_compound"),
        )
        for kind, stage, column, targets in checks if references else ():
            missing = (
                f"FROM {stage} AS s WHERE s.{column} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM {targets} AS t WHERE t.id = s.{column})"
            )
            (count,) = self._sql(f"SELECT COUNT(*) {missing}").fetchone()
            if count:
                total += count
                order = "s.line, s.position" if stage == "import_link" else "s.line"
                rows = self._sql(
                    f"SELECT s.line, s.{column} {missing} ORDER BY {order} LIMIT {int(limit)}"
                )
                found += [Finding("experiment", kind, *row) for row in rows]
        return total, found

    def publish(self) -> None:
        """Replace the stored data set with the staged one, in one transaction."""
        copies = (
            (ExperimentUser, "id, name, email, signup_date", "import_user"),
            (Compound, "id, name, structure", "import_compound"),
            (Experiment, "id, user_id, run_time, line", "import_experiment"),
            (ExperimentCompound, "experiment_id, position, compound_id", "import_link"),
        )
        with self._db.atomic():
            if self._postgres:
                self._sql("SELECT pg_advisory_xact_lock(%s)", (_PG_PUBLISH_LOCK,))
            for model, *_ in reversed(copies):
                model.delete().execute()
            for model, columns, stage in copies:
                # In file order: no sort, and files usually list ids in order, which appends to
                # the primary key's index.
                table = model._meta.table_name
                self._sql(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage}")
            if self._postgres:  # plan the first reports with the new data's statistics
                self._sql(f"ANALYZE {', '.join(model._meta.table_name for model, *_ in copies)}")

    def drop(self) -> None:
        for table in _STAGES:
            self._sql(f"DROP TABLE IF EXISTS {table}")

    def _insert(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._postgres:
            # One batch is at most a few MiB of text: build it whole, COPY it in one go.
            if table in _NUMERIC_STAGES:
                # Numbers need no escaping, and str(None) is the NULL marker COPY is told of.
                line = "\t".join(["%s"] * len(rows[0])) + "\n"
                text, options = "".join([line % row for row in rows]), " WITH (NULL 'None')"
            else:
                text, options = "".join([_copy_line(row) for row in rows]), ""
            cursor = self._db.cursor()  # type: ignore[no-untyped-call]
            cursor.copy_expert(f"COPY {table} FROM STDIN{options}", io.StringIO(text))
            return
        marks = ", ".join("?" * len(rows[0]))
        # A deferred transaction that writes only temporary tables locks nothing else.
        with self._db.atomic("DEFERRED"):
            self._db.cursor().executemany(  # type: ignore[no-untyped-call]
                f"INSERT INTO {table} VALUES ({marks})", rows
            )

    def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute_sql(sql, params)  # type: ignore[no-untyped-call]


def _copy_line(row: tuple[Any, ...]) -> str:
    return "\t".join([_copy_value(value) for value in row]) + "\n"


def _copy_value(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return str(value)
