"""client.experiments: import the experiment data set from CSV files, and read its report."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeAlias

from google.protobuf.descriptor import ServiceDescriptor

from quartet.client._base import Transport, fields, pages
from quartet.client._errors import FieldViolation, QuartetError
from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.experiments.v1 import experiment_service_pb2_grpc

Source: TypeAlias = "str | os.PathLike[str] | BinaryIO"
"""A file to import: a path, or a binary file object opened for reading (left open)."""
Progress = pb.ImportExperimentDataResponse

DEFAULT_CHUNK_SIZE = 256 * 1024
IMPORT_TIMEOUT = 3600.0  # the default deadline of a whole import, in seconds
FILE_NAMES = {
    pb.DATA_FILE_USERS: "users.csv",
    pb.DATA_FILE_COMPOUNDS: "compounds.csv",
    pb.DATA_FILE_EXPERIMENTS: "user_experiments.csv",
}


class Experiments:
    """The ExperimentService, through `Client.experiments`."""

    # The service it calls (tests/test_registration.py: a Client attribute for every service).
    SERVICE: ClassVar[ServiceDescriptor] = pb.DESCRIPTOR.services_by_name["ExperimentService"]

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = experiment_service_pb2_grpc.ExperimentServiceStub(transport.channel)

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
        folder = Path(directory)
        users, compounds, experiments = (folder / name for name in FILE_NAMES.values())
        return self.import_files(
            users,
            compounds,
            experiments,
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
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        with contextlib.ExitStack() as stack:
            files = [
                (kind, _open(source, stack))
                for kind, source in zip(FILE_NAMES, (users, compounds, experiments), strict=True)
            ]
            problems: list[FieldViolation] = []
            try:
                for progress in self._transport.invoke_streaming(
                    self._stub.ImportExperimentData,
                    _chunks(files, chunk_size, allow_empty),
                    IMPORT_TIMEOUT if timeout is None else timeout,
                ):
                    problems += (_violation(p) for p in progress.problems)
                    yield progress
            except QuartetError as error:
                # The trailers hold only the first problems; the stream brought every one.
                if problems:
                    error.field_violations = problems
                raise

    def get_report(self, *, timeout: float | None = None) -> pb.ExperimentReport:
        """The figures over the whole data set: counts and both averages."""
        request = pb.GetExperimentReportRequest()
        return self._transport.invoke(self._stub.GetExperimentReport, request, timeout)

    def get_user_report(self, user_id: int, *, timeout: float | None = None) -> pb.UserReport:
        """One user's report; QuartetError NOT_FOUND if the data set has no such user."""
        request = pb.GetUserReportRequest(user_id=user_id)
        return self._transport.invoke(self._stub.GetUserReport, request, timeout)

    def list_user_reports(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> pb.ListUserReportsResponse:
        """One page of user reports, by user id."""
        request = pb.ListUserReportsRequest(page_size=page_size, page_token=page_token)
        return self._transport.invoke(self._stub.ListUserReports, request, timeout)

    def iter_user_reports(
        self, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[pb.UserReport]:
        """Every user's report, by user id, fetching page after page as you iterate."""
        return pages(
            lambda token: self.list_user_reports(
                page_size=page_size, page_token=token, timeout=timeout
            ),
            lambda page: page.user_reports,
        )

    def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        user_id: int | None = None,
        timeout: float | None = None,
    ) -> pb.ListExperimentsResponse:
        """One page of stored experiments, by id, optionally of one user only."""
        request = pb.ListExperimentsRequest(
            page_size=page_size, page_token=page_token, **fields(user_id=user_id)
        )
        return self._transport.invoke(self._stub.ListExperiments, request, timeout)

    def iter(
        self, *, page_size: int = 0, user_id: int | None = None, timeout: float | None = None
    ) -> Iterator[pb.Experiment]:
        """Every stored experiment (of one user, if given), by id, page after page."""
        return pages(
            lambda token: self.list(
                page_size=page_size, page_token=token, user_id=user_id, timeout=timeout
            ),
            lambda page: page.experiments,
        )


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
