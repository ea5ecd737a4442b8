"""One import, from chunks to the published data set: read each file, stage its rows in batches,
check what spans files, then publish, or reject: stream every problem's file, line and reason
(the first 10,000), then fail with the first of them in the error's details.

It runs in one database thread (the staging tables belong to that thread's connection) and takes
its chunks from a blocking iterator, so the same code serves the gRPC stream and the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from quartet.errors.v1 import error_reason_pb2
from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.server.errors import FieldViolation, InvalidArgument
from quartet.server.experiments.csvfiles import (
    FILE_NAMES,
    READERS,
    DataFile,
    Problem,
    Problems,
    Reader,
)
from quartet.storage import experiment_history, experiment_import
from quartet.storage.base import utcnow

BATCH_ROWS = 10_000  # rows staged per write; one progress message each
MAX_LISTED = 10_000  # problems streamed back in REJECTED messages (all are counted) ...
PROBLEMS_PER_MESSAGE = 1_000  # ... this many per message
MAX_REPORTED = 50  # problems repeated in the error's details ...
MAX_REPORTED_BYTES = 6_000  # ... and their text, to fit gRPC's default 8 KiB of trailers

Progress = Callable[[pb.ImportExperimentDataResponse], None]
# One chunk: its file, its bytes, and whether its request allows an import of no rows at all.
Chunk = tuple[DataFile, bytes, bool]

_FILES: dict[str, DataFile] = {
    "user": pb.DATA_FILE_USERS,
    "compound": pb.DATA_FILE_COMPOUNDS,
    "experiment": pb.DATA_FILE_EXPERIMENTS,
}


def run_import(chunks: Iterable[Chunk], progress: Progress, caller: str) -> None:
    """Import the files in chunks, calling progress as it goes, and record the import's outcome
    in the history under `caller`.

    Raises InvalidArgument when a file has problems (the stored data set is then unchanged) or when
    the chunks break the protocol (a file unnamed, or resumed after another began; such a stream
    reaches no verdict and is not recorded).
    """
    started = utcnow()
    readers: dict[DataFile, Reader] = {}

    def attempt() -> experiment_history.Attempt:
        rows = {file: reader.rows_read for file, reader in readers.items()}
        return experiment_history.Attempt(
            start_time=started,
            caller=caller,
            user_rows=rows.get(pb.DATA_FILE_USERS, 0),
            compound_rows=rows.get(pb.DATA_FILE_COMPOUNDS, 0),
            experiment_rows=rows.get(pb.DATA_FILE_EXPERIMENTS, 0),
        )

    try:
        _run(chunks, progress, readers, attempt)
    except _Refused as refused:
        # Its own transaction, after the staged rows were dropped: the refusal is kept, the
        # refused rows are not.
        experiment_history.record(attempt(), experiment_history.REFUSED, refused.count)
        raise refused.error from None


class _Refused(Exception):
    """The files have `count` problems; `error` says so to the caller."""

    def __init__(self, count: int, error: InvalidArgument) -> None:
        super().__init__(error.message)
        self.count = count
        self.error = error


def _run(
    chunks: Iterable[Chunk],
    progress: Progress,
    readers: dict[DataFile, Reader],
    attempt: Callable[[], experiment_history.Attempt],
) -> None:
    problems = Problems(keep=MAX_LISTED)
    reply = pb.ImportExperimentDataResponse(stage=pb.IMPORT_STAGE_RECEIVING)

    def report(stage: pb.ImportStage.ValueType = pb.IMPORT_STAGE_RECEIVING) -> None:
        reply.stage = stage
        del reply.files[:]
        reply.files.extend(_file_progress(reader) for reader in readers.values())
        progress(_copy(reply))

    with experiment_import.staging() as staging:
        current: Reader | None = None
        allow_empty = False
        for file, data, allow in chunks:
            allow_empty |= allow
            if current is None or file != current.file:
                _check_order(file, readers)
                if current is not None:
                    _finish(current, staging)
                    report()
                current = readers[file] = READERS[file](problems)
            current.feed(data)
            if current.pending() >= BATCH_ROWS:
                current.stage(staging)
                report()
        if current is not None:
            _finish(current, staging)
        for file, name in FILE_NAMES.items():
            if file not in readers:
                problems.add(file, 0, "", f"{name} was not sent; an import needs all three files")
        rows_referenced = _check_rows(readers, problems, allow_empty=allow_empty)
        report(pb.IMPORT_STAGE_CHECKING)
        # Without a file's rows, every reference to them would look broken: check them only when
        # every file could be read.
        references = (
            rows_referenced
            and len(readers) == len(FILE_NAMES)
            and not any(reader.unusable for reader in readers.values())
        )
        found, findings = staging.findings(MAX_LISTED, references=references)
        if problems.count or found:
            listed = problems.first(_problems(findings))[:MAX_LISTED]
            for start in range(0, len(listed), PROBLEMS_PER_MESSAGE):
                reply.problems.extend(
                    _problem(p) for p in listed[start : start + PROBLEMS_PER_MESSAGE]
                )
                report(pb.IMPORT_STAGE_REJECTED)
                del reply.problems[:]
            count = problems.count + found
            raise _Refused(count, rejection(count, listed))
        report(pb.IMPORT_STAGE_PUBLISHING)
        staging.publish(attempt())
    report(pb.IMPORT_STAGE_DONE)


def _check_order(file: DataFile, readers: dict[DataFile, Reader]) -> None:
    if file in readers:
        name = FILE_NAMES[file]
        raise InvalidArgument(
            f"{name} was sent again after another file began; send each file's chunks together",
            violations=[FieldViolation("file", f"{name} was already sent")],
        )


def _check_rows(readers: dict[DataFile, Reader], problems: Problems, *, allow_empty: bool) -> bool:
    """An import replaces the whole data set, so one without users is refused: an empty
    users.csv beside rows in the others is a mistake, and files without any row empty the data
    set, which only a request saying so (allow_empty) may do. Experiments need compounds too.
    Whether the references across files are worth checking: not when a file they name is empty,
    each would look broken (that file's one problem says it all)."""
    empty = {file for file, r in readers.items() if not r.rows_read and not r.unusable}
    if len(empty) == len(FILE_NAMES):
        if not allow_empty:
            problems.add(
                pb.DATA_FILE_USERS,
                0,
                "",
                "users.csv has no rows, nor do the other files: importing them would empty the "
                "data set, which the request must allow (allow_empty)",
            )
        return True
    if pb.DATA_FILE_USERS in empty:
        problems.add(pb.DATA_FILE_USERS, 0, "", "users.csv has no rows")
    experiments = readers.get(pb.DATA_FILE_EXPERIMENTS)
    compounds_needed = experiments is not None and experiments.rows_read > 0
    if pb.DATA_FILE_COMPOUNDS in empty and compounds_needed:
        problems.add(
            pb.DATA_FILE_COMPOUNDS,
            0,
            "",
            "compounds.csv has no rows, but user_experiments.csv has experiments naming compounds",
        )
    return not empty & {pb.DATA_FILE_USERS, pb.DATA_FILE_COMPOUNDS}


def _finish(reader: Reader, staging: experiment_import.Staging) -> None:
    reader.feed(b"", final=True)
    reader.stage(staging)


def _file_progress(reader: Reader) -> pb.FileProgress:
    return pb.FileProgress(
        file=reader.file,
        bytes_read=reader.bytes_read,
        rows_read=reader.rows_read,
        rows_stored=reader.rows_stored,
        complete=reader.complete,
    )


def _problem(problem: Problem) -> pb.ImportProblem:
    return pb.ImportProblem(
        file=problem.file,
        line=problem.line,
        column=problem.column,
        description=problem.description,
    )


def _copy(reply: pb.ImportExperimentDataResponse) -> pb.ImportExperimentDataResponse:
    copy = pb.ImportExperimentDataResponse()
    copy.CopyFrom(reply)
    return copy


def _problems(findings: list[experiment_import.Finding]) -> list[Problem]:
    """The storage layer's findings, said in terms of the files."""
    problems = []
    for finding in findings:
        if finding.kind == "duplicate":
            file, column = _FILES[finding.table], f"{finding.table}_id"
            description = f"repeats {column} {finding.key} of line {finding.first_line}"
        elif finding.kind == "unknown_user":
            file, column = pb.DATA_FILE_EXPERIMENTS, "user_id"
            description = f"user {finding.key} is not in users.csv"
        else:
            file, column = pb.DATA_FILE_EXPERIMENTS, "experiment_compound_ids"
            description = f"compound {finding.key} is not in compounds.csv"
        problems.append(Problem.of(file, finding.line, column, description))
    return problems


def rejection(count: int, problems: list[Problem]) -> InvalidArgument:
    """The error for an import with `count` problems, listing as many of `problems` as fit."""
    violations: list[FieldViolation] = []
    size = 0
    for problem in problems[:MAX_REPORTED]:
        violation = FieldViolation(problem.location, problem.description)
        size += len(violation.field.encode()) + len(violation.description.encode()) + 8
        if size > MAX_REPORTED_BYTES:
            break
        violations.append(violation)
    first = violations[0]
    if count == 1:
        listed = "it is"
    else:
        listed = "all are" if len(violations) == count else f"the first {len(violations)} are"
    return InvalidArgument(
        f"the files have {count:,} problem{'s' * (count != 1)}, so nothing was imported "
        f"({listed} in the error details); first: {first.field}: {first.description}",
        reason=error_reason_pb2.IMPORT_FILES_INVALID,
        metadata={"problem_count": str(count), "reported_count": str(len(violations))},
        violations=violations,
    )
