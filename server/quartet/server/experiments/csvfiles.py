"""Reading the data set's three CSV files from chunks of bytes: every quirk of the original files,
and a problem (file, line, column, reason) for every cell that does not parse.

What is accepted, as the original ETL accepted it: a comma followed by any whitespace (the files
use `,` + tab) as the separator, cells stripped of surrounding whitespace, blank and
whitespace-only lines anywhere, an optional header row, no newline after the last line, LF or
CRLF line ends, and `;`-separated compound ids. What the original silently skipped is a problem
here: a row whose id is not a number was dropped without a word; now it rejects the import.
"""

from __future__ import annotations

import abc
import datetime
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.server.errors import text_problem
from quartet.server.experiments.lines import MAX_LINE_LENGTH, Lines, split_cells
from quartet.storage import experiment_import as staged
from quartet.storage.experiments import (
    EMAIL_LENGTH,
    MAX_COMPOUNDS_PER_EXPERIMENT,
    NAME_LENGTH,
    STRUCTURE_LENGTH,
)

DataFile: TypeAlias = pb.DataFile.ValueType

FILE_NAMES: dict[DataFile, str] = {
    pb.DATA_FILE_USERS: "users.csv",
    pb.DATA_FILE_COMPOUNDS: "compounds.csv",
    pb.DATA_FILE_EXPERIMENTS: "user_experiments.csv",
}
COLUMNS: dict[DataFile, tuple[str, ...]] = {
    pb.DATA_FILE_USERS: ("user_id", "name", "email", "signup_date"),
    pb.DATA_FILE_COMPOUNDS: ("compound_id", "compound_name", "compound_structure"),
    pb.DATA_FILE_EXPERIMENTS: (
        "experiment_id",
        "user_id",
        "experiment_compound_ids",
        "experiment_run_time",
    ),
}
MAX_ID = 2**63 - 1  # ids are stored as BIGINT
SHOWN_LENGTH = 32  # how much of a bad value a problem quotes
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)
# A valid experiment row in the usual layout, ids of up to 18 digits (so within BIGINT): most
# rows of a large file match, and skip the cell-by-cell parsing.
_ID = r"\s*([1-9][0-9]{0,17})\s*"
_PLAIN_EXPERIMENT = re.compile(
    rf"{_ID},{_ID},\s*([0-9]{{1,18}}(?:\s*;\s*[0-9]{{1,18}})*)\s*,\s*([0-9]+(?:\.[0-9]*)?)\s*",
    re.ASCII,
)


@dataclass(frozen=True, order=True)
class Problem:
    """Something wrong with a file: `line` 0 means the whole file, `column` "" the whole line.
    Problems sort by file, line and column."""

    file: DataFile
    line: int
    column_index: int
    column: str = field(compare=False)
    description: str = field(compare=False)

    @classmethod
    def of(cls, file: DataFile, line: int, column: str, description: str) -> Problem:
        columns = COLUMNS[file]
        index = columns.index(column) if column in columns else -1
        return cls(file, line, index, column, description)

    @property
    def location(self) -> str:
        """`file:line:column`, as compilers print it (shorter when line or column is not set)."""
        parts = [FILE_NAMES[self.file]]
        if self.line:
            parts.append(str(self.line))
            if self.column:
                parts.append(self.column)
        return ":".join(parts)


class Problems:
    """Every problem is counted; the first `keep` of each file are kept, in line order."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.count = 0
        self._kept: dict[DataFile, list[Problem]] = {}

    def add(self, file: DataFile, line: int, column: str, description: str) -> None:
        self.count += 1
        kept = self._kept.setdefault(file, [])
        if len(kept) < self.keep:
            kept.append(Problem.of(file, line, column, description))

    def first(self, extra: Sequence[Problem] = ()) -> list[Problem]:
        """The kept problems and `extra`, ordered by file, line and column."""
        return sorted([*(p for kept in self._kept.values() for p in kept), *extra])


def shown(text: str) -> str:
    """text quoted for a problem's description: ASCII only, and short."""
    quoted = ascii(text)
    return quoted if len(quoted) <= SHOWN_LENGTH else quoted[: SHOWN_LENGTH - 4] + "...'"


class Reader(abc.ABC):
    """Turns one file's chunks into staged rows. Subclasses parse one kind of row each."""

    def __init__(self, file: DataFile, problems: Problems) -> None:
        self.file = file
        self.problems = problems
        self.rows_read = 0
        self.rows_stored = 0
        self.complete = False
        self.rows: list[tuple[Any, ...]] = []  # parsed, not yet staged
        self._lines = Lines()
        self._columns: tuple[int, ...] | None = None  # where each expected column is in a row
        self._width = 0
        self.unusable = False  # the header lacks a column: no row can be read
        self._plain = False  # the columns are the expected ones, in order: quick() may try

    @property
    def bytes_read(self) -> int:
        return self._lines.bytes_read

    @property
    def name(self) -> str:
        return FILE_NAMES[self.file]

    def feed(self, data: bytes, *, final: bool = False) -> None:
        first, lines = self._lines.feed(data, final=final)
        for number, line in enumerate(lines, first):
            if line is None:
                self.problem(number, "", f"is longer than {MAX_LINE_LENGTH:,} characters")
            elif line and not line.isspace():
                self._line(number, line)
        self.complete = final

    def pending(self) -> int:
        """How many parsed rows wait to be staged."""
        return len(self.rows)

    def stage(self, staging: staged.Staging) -> None:
        """Write the parsed rows to the staging area, and forget them."""
        self.write(staging)
        self.rows_stored += len(self.rows)
        self.rows = []

    @abc.abstractmethod
    def write(self, staging: staged.Staging) -> None:
        """Write the parsed rows (and whatever goes with them) to the staging area."""
        ...

    @abc.abstractmethod
    def parse(self, number: int, cells: list[str]) -> None:
        """Parse one data row's cells (in COLUMNS order, stripped), collecting its problems."""
        ...

    def quick(self, number: int, line: str) -> bool:
        """Parse a line in one step if it is plainly valid; False sends it the long way, which
        finds its problems. Readers of large files override it."""
        return False

    def problem(self, line: int, column: str, description: str) -> None:
        self.problems.add(self.file, line, column, description)

    def _line(self, number: int, line: str) -> None:
        if self.unusable:
            return
        if self._plain and self.quick(number, line):
            self.rows_read += 1
            return
        # A row with a problem is still read as well as it can be, so that its id counts as
        # defined and the ids it names are checked: one mistake, one problem.
        if "\ufffd" in line:
            self.problem(number, "", "is not valid UTF-8")
        cells = split_cells(line)
        if cells is None:
            self.problem(number, "", "has a quote that is not closed")
            cells = line.split(",")
        expected = COLUMNS[self.file]
        if self._columns is None:
            header = [cell.strip().lower() for cell in cells]
            if header[0] in expected:
                self._read_header(number, header)
                return
            self._columns = tuple(range(len(expected)))
            self._width = len(expected)
            self._plain = True
        self.rows_read += 1
        if len(cells) != self._width:
            self.problem(number, "", f"has {len(cells)} cells; expected {self._width}")
            return
        self.parse(number, [cells[i].strip() for i in self._columns])

    def _read_header(self, number: int, header: list[str]) -> None:
        missing = [name for name in COLUMNS[self.file] if name not in header]
        for name in missing:
            self.problem(number, "", f"the header has no column {name!r}")
        repeated = sorted({name for name in header if header.count(name) > 1})
        for name in repeated:
            self.problem(number, "", f"the header has column {name!r} more than once")
        if missing or repeated:
            self.unusable = True
            return
        self._columns = tuple(header.index(name) for name in COLUMNS[self.file])
        self._width = len(header)
        self._plain = self._columns == tuple(range(self._width))

    # --- cell parsers: the value, or None after recording the problem ---

    def id_cell(self, number: int, column: str, text: str) -> int | None:
        if text.isascii() and text.isdigit():
            value = int(text)
            if 0 < value <= MAX_ID:
                return value
            self.problem(number, column, f"{shown(text)} is not between 1 and {MAX_ID}")
            return None
        self.problem(number, column, f"{shown(text)} is not a whole number")
        return None

    def text_cell(self, number: int, column: str, text: str, limit: int) -> str | None:
        if not text:
            self.problem(number, column, "is empty")
            return None
        if len(text) > limit:
            self.problem(number, column, f"is longer than {limit} characters")
            return None
        problem = text_problem(text)
        if problem is not None:
            self.problem(number, column, problem)
            return None
        return text


class UsersReader(Reader):
    def __init__(self, problems: Problems) -> None:
        super().__init__(pb.DATA_FILE_USERS, problems)

    def parse(self, number: int, cells: list[str]) -> None:
        user_id, name, email, signup = cells
        parsed_id = self.id_cell(number, "user_id", user_id)
        row = (
            number,
            parsed_id,
            self.text_cell(number, "name", name, NAME_LENGTH),
            self.text_cell(number, "email", email, EMAIL_LENGTH),
            self._date(number, signup),
        )
        if parsed_id is not None:
            self.rows.append(row)

    def _date(self, number: int, text: str) -> str | None:
        if len(text) == 10 and text[4] == "-" and text[7] == "-":
            try:
                return datetime.date.fromisoformat(text).isoformat()
            except ValueError:
                pass
        self.problem(number, "signup_date", f"{shown(text)} is not a date (YYYY-MM-DD)")
        return None

    def write(self, staging: staged.Staging) -> None:
        staging.add_users(self.rows)


class CompoundsReader(Reader):
    def __init__(self, problems: Problems) -> None:
        super().__init__(pb.DATA_FILE_COMPOUNDS, problems)

    def parse(self, number: int, cells: list[str]) -> None:
        compound_id, name, structure = cells
        parsed_id = self.id_cell(number, "compound_id", compound_id)
        row = (
            number,
            parsed_id,
            self.text_cell(number, "compound_name", name, NAME_LENGTH),
            self.text_cell(number, "compound_structure", structure, STRUCTURE_LENGTH),
        )
        if parsed_id is not None:
            self.rows.append(row)

    def write(self, staging: staged.Staging) -> None:
        staging.add_compounds(self.rows)


class ExperimentsReader(Reader):
    def __init__(self, problems: Problems) -> None:
        super().__init__(pb.DATA_FILE_EXPERIMENTS, problems)
        self._links: list[staged.LinkRow] = []

    def quick(self, number: int, line: str) -> bool:
        match = _PLAIN_EXPERIMENT.fullmatch(line)
        if match is None:
            return False
        experiment_id, user_id, compound_ids, run_time = match.groups()
        compounds = list(map(int, compound_ids.split(";")))
        if 0 in compounds or len(compounds) > MAX_COMPOUNDS_PER_EXPERIMENT:
            return False
        parsed_id = int(experiment_id)
        self.rows.append((number, parsed_id, int(user_id), float(run_time)))
        self._links += [
            (parsed_id, position, compound) for position, compound in enumerate(compounds)
        ]
        return True

    def parse(self, number: int, cells: list[str]) -> None:
        experiment_id, user_id, compound_ids, run_time = cells
        parsed_id = self.id_cell(number, "experiment_id", experiment_id)
        parsed_user = self.id_cell(number, "user_id", user_id)
        compounds = self._compounds(number, compound_ids)
        parsed_time = self._run_time(number, run_time)
        if parsed_id is None:
            return
        self.rows.append((number, parsed_id, parsed_user, parsed_time))
        self._links += [
            (parsed_id, position, compound)
            for position, compound in enumerate(compounds)
            if compound is not None
        ]

    def _compounds(self, number: int, text: str) -> list[int | None]:
        column = "experiment_compound_ids"
        if not text:
            self.problem(number, column, "is empty: an experiment uses at least one compound")
            return []
        parts = text.split(";")
        if len(parts) > MAX_COMPOUNDS_PER_EXPERIMENT:
            self.problem(
                number, column, f"lists more than {MAX_COMPOUNDS_PER_EXPERIMENT} compounds"
            )
            return []
        ids: list[int | None] = []
        for part in parts:
            part = part.strip()
            if not part:
                self.problem(number, column, f"{shown(text)} has an empty entry between ';'")
                ids.append(None)
            else:
                ids.append(self.id_cell(number, column, part))
        return ids

    def _run_time(self, number: int, text: str) -> float | None:
        if _DECIMAL.fullmatch(text):
            value = float(text)
            if math.isfinite(value):
                return value
        self.problem(
            number, "experiment_run_time", f"{shown(text)} is not a number of zero or more"
        )
        return None

    def write(self, staging: staged.Staging) -> None:
        staging.add_experiments(self.rows, self._links)
        self._links = []


READERS: dict[DataFile, Callable[[Problems], Reader]] = {
    pb.DATA_FILE_USERS: UsersReader,
    pb.DATA_FILE_COMPOUNDS: CompoundsReader,
    pb.DATA_FILE_EXPERIMENTS: ExperimentsReader,
}
