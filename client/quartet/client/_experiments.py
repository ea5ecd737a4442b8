"""client.experiments: import the experiment data set from CSV files, and read its report."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TypeAlias, TypedDict, Unpack

from quartet.client import _aio_base, _base, exports
from quartet.client._base import Call, call, fields
from quartet.client._errors import FieldViolation, QuartetError
from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.experiments.v1 import experiment_service_pb2_grpc

Source: TypeAlias = "str | os.PathLike[str] | BinaryIO"
"""A file to import: a path, or a binary file object opened for reading (left open)."""
Progress = pb.ImportExperimentDataResponse
Day: TypeAlias = "datetime.date | str"
"""A day of a report filter: a date, or its ISO 8601 text (YYYY-MM-DD)."""

DEFAULT_CHUNK_SIZE = 256 * 1024
IMPORT_TIMEOUT = 3600.0  # the default deadline of a whole import, in seconds
SERVICE = pb.DESCRIPTOR.services_by_name["ExperimentService"]
FILE_NAMES = {
    pb.DATA_FILE_USERS: "users.csv",
    pb.DATA_FILE_COMPOUNDS: "compounds.csv",
    pb.DATA_FILE_EXPERIMENTS: "user_experiments.csv",
}


class Filter(TypedDict, total=False):
    """The report calls' filter, as keywords: the users who used `compound_id` and signed up
    between `signup_date_start` and `signup_date_end` (both days included). A keyword left out,
    or None, leaves its condition out."""

    compound_id: int | None
    signup_date_start: Day | None
    signup_date_end: Day | None


def report_filter(**given: Unpack[Filter]) -> pb.ReportFilter:
    """The ReportFilter of the keywords."""
    return pb.ReportFilter(
        **fields(
            compound_id=given.get("compound_id"),
            signup_date_start=_day(given.get("signup_date_start")),
            signup_date_end=_day(given.get("signup_date_end")),
        )
    )


def _day(day: Day | None) -> str | None:
    return day.isoformat() if isinstance(day, datetime.date) else day


class ExperimentCalls:
    """The ExperimentService's unary calls, described once for both clients. The report calls
    take the same filter keywords (`Filter`): the users who used `compound_id` and signed up
    between `signup_date_start` and `signup_date_end` (both days included)."""

    @staticmethod
    def get_report(
        *, timeout: float | None = None, **selected: Unpack[Filter]
    ) -> Call[pb.ExperimentReport]:
        """The figures over the whole data set or the filter's users: counts, averages, run
        times, and the import the data set comes from."""
        request = pb.GetExperimentReportRequest(filter=report_filter(**selected))
        return call(SERVICE, "GetExperimentReport", request, pb.ExperimentReport, timeout)

    @staticmethod
    def get_user_report(user_id: int, *, timeout: float | None = None) -> Call[pb.UserReport]:
        """One user's report; QuartetError NOT_FOUND if the data set has no such user."""
        request = pb.GetUserReportRequest(user_id=user_id)
        return call(SERVICE, "GetUserReport", request, pb.UserReport, timeout)

    @staticmethod
    def list_user_reports(
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        **selected: Unpack[Filter],
    ) -> Call[pb.ListUserReportsResponse]:
        """One page of user reports, by user id, of every user or the filter's."""
        request = pb.ListUserReportsRequest(
            page_size=page_size,
            page_token=page_token,
            filter=report_filter(**selected),
        )
        return call(SERVICE, "ListUserReports", request, pb.ListUserReportsResponse, timeout)

    @staticmethod
    def list_compound_reports(
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        **selected: Unpack[Filter],
    ) -> Call[pb.ListCompoundReportsResponse]:
        """One page of compound reports (experiments and average run time), by compound id,
        over the experiments of every user or the filter's."""
        request = pb.ListCompoundReportsRequest(
            page_size=page_size,
            page_token=page_token,
            filter=report_filter(**selected),
        )
        return call(
            SERVICE, "ListCompoundReports", request, pb.ListCompoundReportsResponse, timeout
        )

    @staticmethod
    def list(
        *,
        page_size: int = 0,
        page_token: str = "",
        user_id: int | None = None,
        timeout: float | None = None,
    ) -> Call[pb.ListExperimentsResponse]:
        """One page of stored experiments, by id, optionally of one user only."""
        request = pb.ListExperimentsRequest(
            page_size=page_size, page_token=page_token, **fields(user_id=user_id)
        )
        return call(SERVICE, "ListExperiments", request, pb.ListExperimentsResponse, timeout)

    @staticmethod
    def list_imports(
        *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Call[pb.ListImportsResponse]:
        """One page of the import history, published and refused, newest first."""
        request = pb.ListImportsRequest(page_size=page_size, page_token=page_token)
        return call(SERVICE, "ListImports", request, pb.ListImportsResponse, timeout)


def _user_reports(page: pb.ListUserReportsResponse) -> Sequence[pb.UserReport]:
    return page.user_reports


def _experiments(page: pb.ListExperimentsResponse) -> Sequence[pb.Experiment]:
    return page.experiments


def _compound_reports(page: pb.ListCompoundReportsResponse) -> Sequence[pb.CompoundReport]:
    return page.compound_reports


def _imports(page: pb.ListImportsResponse) -> Sequence[pb.Import]:
    return page.imports


class _Import:
    """One import's requests, and the problems its progress messages list (the trailers hold
    only the first ones; the stream brings every one)."""

    def __init__(
        self,
        users: Source,
        compounds: Source,
        experiments: Source,
        stack: contextlib.ExitStack,
        chunk_size: int,
        allow_empty: bool,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        # Paths are opened before the first message is sent, so a missing file raises OSError
        # without contacting the server.
        files = [
            (kind, _open(source, stack))
            for kind, source in zip(FILE_NAMES, (users, compounds, experiments), strict=True)
        ]
        self.requests = _chunks(files, chunk_size, allow_empty)
        self.problems: list[FieldViolation] = []

    def seen(self, progress: Progress) -> Progress:
        self.problems += (_violation(p) for p in progress.problems)
        return progress

    def failed(self, error: QuartetError) -> QuartetError:
        if self.problems:
            error.field_violations = self.problems
        return error


def _directory(directory: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The directory's users.csv, compounds.csv and user_experiments.csv."""
    folder = Path(directory)
    users, compounds, experiments = (folder / name for name in FILE_NAMES.values())
    return users, compounds, experiments


class Experiments(_base.Service):
    """The ExperimentService, through `Client.experiments`."""

    SERVICE = SERVICE
    get_report = _base.unary(ExperimentCalls.get_report)
    get_user_report = _base.unary(ExperimentCalls.get_user_report)
    list_user_reports = _base.unary(ExperimentCalls.list_user_reports)
    iter_user_reports = _base.paged(ExperimentCalls.list_user_reports, _user_reports)
    list_compound_reports = _base.unary(ExperimentCalls.list_compound_reports)
    iter_compound_reports = _base.paged(ExperimentCalls.list_compound_reports, _compound_reports)
    list = _base.unary(ExperimentCalls.list)
    iter = _base.paged(ExperimentCalls.list, _experiments)
    list_imports = _base.unary(ExperimentCalls.list_imports)
    iter_imports = _base.paged(ExperimentCalls.list_imports, _imports)

    def __init__(self, transport: _base.Transport) -> None:
        super().__init__(transport)
        self._stub = experiment_service_pb2_grpc.ExperimentServiceStub(transport.channel)

    def write_report(
        self,
        destination: exports.Destination,
        format: exports.Format = "csv",
        *,
        timeout: float | None = None,
        **selected: Unpack[Filter],
    ) -> pb.ExperimentReport:
        """Write the report's figures (get_report, with the same filter) to destination, a path
        or a text file: as CSV (a header and one row) or as a JSON object, with the columns that
        `quartet.client.exports` describes. Returns the report."""
        exports.check_format(format)
        report = self.get_report(
            timeout=timeout,
            **selected,
        )
        exports.write_one(destination, report, format)
        return report

    def write_user_reports(
        self,
        destination: exports.Destination,
        format: exports.Format = "csv",
        *,
        page_size: int = 0,
        timeout: float | None = None,
        **selected: Unpack[Filter],
    ) -> int:
        """Write every user report (iter_user_reports, with the same filter) to destination, a
        path or a text file: as CSV (a header, then a row per user, by user id) or as a JSON
        array of objects, page by page as they arrive. Returns how many were written."""
        exports.check_format(format)
        reports = self.iter_user_reports(
            page_size=page_size,
            timeout=timeout,
            **selected,
        )
        return exports.write(destination, reports, pb.UserReport.DESCRIPTOR, format)

    def import_files(
        self,
        users: Source,
        compounds: Source,
        experiments: Source,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> Progress:
        """Replace the stored data set with these three CSV files; return the final progress.

        The files are streamed in chunks of chunk_size bytes, so they may be of any size.
        on_progress is called with each progress message the server sends (the last one has
        stage IMPORT_STAGE_DONE). On a problem in the files, QuartetError INVALID_ARGUMENT (reason
        IMPORT_FILES_INVALID) lists every one's `file:line:column` in `field_violations` (the
        first 10,000; `metadata["problem_count"]` counts them all), and the stored data set is
        unchanged. timeout bounds the whole import (default one hour). Files without any row
        empty the data set only with allow_empty (else they are a problem, as an empty users.csv
        always is).
        """
        final = Progress()
        for progress in self.iter_import(
            users,
            compounds,
            experiments,
            chunk_size=chunk_size,
            timeout=timeout,
            allow_empty=allow_empty,
        ):
            if on_progress is not None:
                on_progress(progress)
            final = progress
        return final

    def import_directory(
        self,
        directory: str | os.PathLike[str],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> Progress:
        """import_files with directory's users.csv, compounds.csv and user_experiments.csv."""
        return self.import_files(
            *_directory(directory),
            on_progress=on_progress,
            chunk_size=chunk_size,
            timeout=timeout,
            allow_empty=allow_empty,
        )

    def iter_import(
        self,
        users: Source,
        compounds: Source,
        experiments: Source,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> Iterator[Progress]:
        """Like import_files, but yields each progress message; the import runs as you iterate.

        Paths are opened before the first message is sent, so a missing file raises OSError
        without contacting the server. Rejected files end the iteration with QuartetError, after
        the IMPORT_STAGE_REJECTED messages that list their problems.
        """
        with contextlib.ExitStack() as stack:
            work = _Import(users, compounds, experiments, stack, chunk_size, allow_empty)
            try:
                for progress in self._transport.invoke_streaming(
                    self._stub.ImportExperimentData,
                    work.requests,
                    IMPORT_TIMEOUT if timeout is None else timeout,
                ):
                    yield work.seen(progress)
            except QuartetError as error:
                raise work.failed(error) from None


class AsyncExperiments(_aio_base.AsyncService):
    """The ExperimentService, through `quartet.client.aio.Client.experiments`: the methods of
    `Experiments`, as coroutines (and async iterators for `iter*`). The files are read on the
    event loop, a chunk at a time."""

    SERVICE = SERVICE
    get_report = _aio_base.unary(ExperimentCalls.get_report)
    get_user_report = _aio_base.unary(ExperimentCalls.get_user_report)
    list_user_reports = _aio_base.unary(ExperimentCalls.list_user_reports)
    iter_user_reports = _aio_base.paged(ExperimentCalls.list_user_reports, _user_reports)
    list_compound_reports = _aio_base.unary(ExperimentCalls.list_compound_reports)
    iter_compound_reports = _aio_base.paged(
        ExperimentCalls.list_compound_reports, _compound_reports
    )
    list = _aio_base.unary(ExperimentCalls.list)
    iter = _aio_base.paged(ExperimentCalls.list, _experiments)
    list_imports = _aio_base.unary(ExperimentCalls.list_imports)
    iter_imports = _aio_base.paged(ExperimentCalls.list_imports, _imports)

    def __init__(self, transport: _aio_base.AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = experiment_service_pb2_grpc.ExperimentServiceStub(transport.channel)

    async def write_report(
        self,
        destination: exports.Destination,
        format: exports.Format = "csv",
        *,
        timeout: float | None = None,
        **selected: Unpack[Filter],
    ) -> pb.ExperimentReport:
        """Write the report's figures to destination: see `Experiments.write_report`."""
        exports.check_format(format)
        report = await self.get_report(
            timeout=timeout,
            **selected,
        )
        exports.write_one(destination, report, format)
        return report

    async def write_user_reports(
        self,
        destination: exports.Destination,
        format: exports.Format = "csv",
        *,
        page_size: int = 0,
        timeout: float | None = None,
        **selected: Unpack[Filter],
    ) -> int:
        """Write every user report to destination: see `Experiments.write_user_reports`. The
        pages are fetched first, then written (the file is written on the event loop)."""
        exports.check_format(format)
        reports = [
            report
            async for report in self.iter_user_reports(
                page_size=page_size,
                timeout=timeout,
                **selected,
            )
        ]
        return exports.write(destination, reports, pb.UserReport.DESCRIPTOR, format)

    async def import_files(
        self,
        users: Source,
        compounds: Source,
        experiments: Source,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> Progress:
        """Replace the stored data set with these three CSV files: see
        `Experiments.import_files`."""
        final = Progress()
        async for progress in self.iter_import(
            users,
            compounds,
            experiments,
            chunk_size=chunk_size,
            timeout=timeout,
            allow_empty=allow_empty,
        ):
            if on_progress is not None:
                on_progress(progress)
            final = progress
        return final

    async def import_directory(
        self,
        directory: str | os.PathLike[str],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> Progress:
        """import_files with directory's users.csv, compounds.csv and user_experiments.csv."""
        return await self.import_files(
            *_directory(directory),
            on_progress=on_progress,
            chunk_size=chunk_size,
            timeout=timeout,
            allow_empty=allow_empty,
        )

    async def iter_import(
        self,
        users: Source,
        compounds: Source,
        experiments: Source,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> AsyncIterator[Progress]:
        """Like import_files, but yields each progress message: see `Experiments.iter_import`."""
        with contextlib.ExitStack() as stack:
            work = _Import(users, compounds, experiments, stack, chunk_size, allow_empty)
            try:
                async for progress in self._transport.invoke_streaming(
                    self._stub.ImportExperimentData,
                    work.requests,
                    IMPORT_TIMEOUT if timeout is None else timeout,
                ):
                    yield work.seen(progress)
            except QuartetError as error:
                raise work.failed(error) from None


def _violation(problem: pb.ImportProblem) -> FieldViolation:
    """A problem as the server's error details say it: `file:line:column`, description."""
    location = [FILE_NAMES.get(problem.file, f"file {problem.file}")]
    if problem.line:
        location.append(str(problem.line))
        if problem.column:
            location.append(problem.column)
    return FieldViolation(":".join(location), problem.description)


def _open(source: Source, stack: contextlib.ExitStack) -> BinaryIO:
    if isinstance(source, str | os.PathLike):
        return stack.enter_context(open(source, "rb"))
    return source


def _chunks(
    files: list[tuple[pb.DataFile.ValueType, BinaryIO]], chunk_size: int, allow_empty: bool
) -> Iterator[pb.ImportExperimentDataRequest]:
    """Each file's chunks in turn; an empty file is one empty chunk, so that it counts as sent."""
    for kind, file in files:
        data = file.read(chunk_size)
        yield pb.ImportExperimentDataRequest(file=kind, data=data, allow_empty=allow_empty)
        while data:
            data = file.read(chunk_size)
            if data:
                yield pb.ImportExperimentDataRequest(file=kind, data=data, allow_empty=allow_empty)
