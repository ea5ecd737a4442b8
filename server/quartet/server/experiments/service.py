"""ExperimentService: import the experiment data set over a stream, and read its report."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.experiments.v1 import experiment_service_pb2_grpc
from quartet.server.auth import current_caller
from quartet.server.auth.authenticator import rechecked
from quartet.server.errors import Violations
from quartet.server.experiments.importer import Chunk, run_import
from quartet.server.pagination import decode_page_token, encode_page_token, page_size, paged
from quartet.server.timestamps import to_timestamp
from quartet.storage import DatabaseRunner, experiment_history, experiments

Context = grpc.aio.ServicerContext[Any, Any]
POLL_SECONDS = 1.0  # how often a waiting import thread checks whether its call has ended


class ExperimentServicer(experiment_service_pb2_grpc.ExperimentServiceServicer):
    """Imports run in a database thread, fed chunk by chunk from the call's request stream;
    reports are single queries. The policy's rules say who may call what (admins import, analysts
    read)."""

    def __init__(self, runner: DatabaseRunner) -> None:
        self._db = runner
        # Imports replace the whole data set, so running two at once gains nothing, and each one
        # holds a database thread for as long as its upload lasts: the next one waits its turn.
        self._one_import = asyncio.Lock()

    async def ImportExperimentData(
        self, request_iterator: AsyncIterator[pb.ImportExperimentDataRequest], context: Context
    ) -> AsyncIterator[pb.ImportExperimentDataResponse]:
        async with self._one_import:
            async for reply in self._import(request_iterator):
                yield reply

    async def _import(
        self, request_iterator: AsyncIterator[pb.ImportExperimentDataRequest]
    ) -> AsyncIterator[pb.ImportExperimentDataResponse]:
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[pb.ImportExperimentDataResponse | None] = asyncio.Queue()
        ended = threading.Event()
        # Checked in this task, the call's: the chunks are read from another.
        source = _Chunks(rechecked(request_iterator), loop, ended)
        caller = str(current_caller())  # the method requires credentials: never None

        def progress(reply: pb.ImportExperimentDataResponse) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, reply)

        job = asyncio.ensure_future(self._db.run(run_import, source, progress, caller))
        job.add_done_callback(lambda _: updates.put_nowait(None))
        job.add_done_callback(_retrieve)
        try:
            while (reply := await updates.get()) is not None:
                yield reply
            await job  # raises the import's error, if any
        finally:
            ended.set()  # a cancelled call: let the import thread stop at its next chunk

    async def GetExperimentReport(
        self, request: pb.GetExperimentReportRequest, context: Context
    ) -> pb.ExperimentReport:
        totals = await self._db.run(experiments.totals, _selection(request.filter))
        report = pb.ExperimentReport(
            user_count=totals.user_count,
            active_user_count=totals.active_user_count,
            experiment_count=totals.experiment_count,
            compound_count=totals.compound_count,
            average_experiments_per_user=totals.average_per_user,
            average_experiments_per_active_user=totals.average_per_active_user,
            total_run_time=totals.total_run_time,
            average_run_time=totals.average_run_time,
            import_id=totals.import_id,
        )
        if totals.publish_time is not None:
            report.publish_time.CopyFrom(to_timestamp(totals.publish_time))
        return report

    async def ListUserReports(
        self, request: pb.ListUserReportsRequest, context: Context
    ) -> pb.ListUserReportsResponse:
        selection = _selection(request.filter)
        limit = page_size(request)
        after = decode_page_token(request, (int,))
        rows = await self._db.run(
            experiments.user_summaries,
            after=after[0] if after else None,
            limit=limit + 1,
            selection=selection,
        )
        page, token = paged(request, rows, limit, lambda row: (row.user_id,))
        return pb.ListUserReportsResponse(
            user_reports=[_user_report(r) for r in page], next_page_token=token
        )

    async def ListCompoundReports(
        self, request: pb.ListCompoundReportsRequest, context: Context
    ) -> pb.ListCompoundReportsResponse:
        selection = _selection(request.filter)
        limit = page_size(request)
        after = decode_page_token(request, (int,))
        rows = await self._db.run(
            experiments.compound_summaries,
            after=after[0] if after else None,
            limit=limit + 1,
            selection=selection,
        )
        page, token = paged(request, rows, limit, lambda row: (row.id,))
        return pb.ListCompoundReportsResponse(
            compound_reports=[
                pb.CompoundReport(
                    compound=pb.Compound(id=r.id, name=r.name, structure=r.structure),
                    experiment_count=r.experiment_count,
                    average_run_time=r.average_run_time,
                )
                for r in page
            ],
            next_page_token=token,
        )

    async def ListImports(
        self, request: pb.ListImportsRequest, context: Context
    ) -> pb.ListImportsResponse:
        limit = page_size(request)
        before = decode_page_token(request, (int,))
        rows = await self._db.run(
            experiment_history.list_imports, before=before[0] if before else None, limit=limit + 1
        )
        page, token = paged(request, rows, limit, lambda row: (row.id,))
        return pb.ListImportsResponse(imports=[_import(r) for r in page], next_page_token=token)

    async def GetUserReport(
        self, request: pb.GetUserReportRequest, context: Context
    ) -> pb.UserReport:
        return _user_report(await self._db.run(experiments.user_summary, request.user_id))

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: Context
    ) -> pb.ListExperimentsResponse:
        limit = page_size(request)
        after = decode_page_token(request, (int,))
        user_id = request.user_id if request.HasField("user_id") else None
        rows = await self._db.run(
            experiments.list_experiments,
            after=after[0] if after else None,
            limit=limit + 1,
            user_id=user_id,
        )
        response = pb.ListExperimentsResponse(
            experiments=[
                pb.Experiment(
                    id=r.id,
                    user_id=r.user_id,
                    compound_ids=r.compound_ids,
                    run_time=r.run_time,
                    line=r.line,
                )
                for r in rows[:limit]
            ]
        )
        if len(rows) > limit:
            response.next_page_token = encode_page_token(request, (rows[limit - 1].id,))
        return response


def _retrieve(job: asyncio.Future[None]) -> None:
    # A call that ended early never awaits its job: mark the job's error seen, or asyncio logs it.
    if not job.cancelled():
        job.exception()


class _Chunks:
    """The call's request stream as a blocking iterator of chunks, for the import thread.

    The thread asks the event loop for one request at a time, so the server holds one chunk per
    import and gRPC's flow control makes the client wait while the database catches up.
    """

    def __init__(
        self,
        requests: AsyncIterator[pb.ImportExperimentDataRequest],
        loop: asyncio.AbstractEventLoop,
        ended: threading.Event,
    ) -> None:
        self._requests = requests
        self._loop = loop
        self._ended = ended

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            while True:
                try:
                    request = future.result(POLL_SECONDS)
                    break
                except TimeoutError:
                    if self._ended.is_set():
                        future.cancel()
                        raise ImportAbandoned("the call ended before the last chunk") from None
            if request is None:
                return
            yield request.file, request.data, request.allow_empty

    async def _next(self) -> pb.ImportExperimentDataRequest | None:
        return await anext(aiter(self._requests), None)


class ImportAbandoned(Exception):
    """The call was cancelled or timed out mid-import; the import rolls back."""


def _selection(given: pb.ReportFilter) -> experiments.Selection:
    """The users a request's filter selects; InvalidArgument if its days are not dates, or
    its end comes before its start. (Their shape, YYYY-MM-DD, the proto's rules check.)"""
    violations = Violations()
    days: list[datetime.date | None] = []
    for name in ("signup_date_start", "signup_date_end"):
        text = getattr(given, name)
        try:
            days.append(datetime.date.fromisoformat(text) if text else None)
        except ValueError:
            violations.add(f"filter.{name}", f"{text!r} is not a date of the calendar")
            days.append(None)
    start, end = days
    violations.check(
        start is None or end is None or start <= end,
        "filter.signup_date_end",
        "must not be before filter.signup_date_start",
    )
    violations.raise_if_any("the report filter is invalid")
    compound_id = given.compound_id if given.HasField("compound_id") else None
    return experiments.Selection(compound_id, start, end)


def _import(row: experiment_history.ImportRecord) -> pb.Import:
    return pb.Import(
        id=row.id,
        start_time=to_timestamp(row.start_time),
        finish_time=to_timestamp(row.finish_time),
        caller=row.caller,
        user_rows=row.user_rows,
        compound_rows=row.compound_rows,
        experiment_rows=row.experiment_rows,
        outcome=_OUTCOMES[row.outcome],
        problem_count=row.problem_count,
    )


_OUTCOMES = {
    experiment_history.PUBLISHED: pb.IMPORT_OUTCOME_PUBLISHED,
    experiment_history.REFUSED: pb.IMPORT_OUTCOME_REFUSED,
}


def _user_report(row: experiments.UserSummary) -> pb.UserReport:
    report = pb.UserReport(
        user_id=row.user_id,
        name=row.name,
        email=row.email,
        signup_date=row.signup_date.isoformat(),
        experiment_count=row.experiment_count,
        favourite_compound_uses=row.favourite_uses,
        total_run_time=row.total_run_time,
        average_run_time=row.average_run_time,
    )
    if row.favourite_id is not None:
        report.favourite_compound.CopyFrom(
            pb.Compound(
                id=row.favourite_id,
                name=row.favourite_name or "",
                structure=row.favourite_structure or "",
            )
        )
    return report
