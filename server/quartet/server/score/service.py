"""ScoreService's servicer and its formula: compute scores, store them, list them."""

from __future__ import annotations

import datetime
import math
from typing import Any

import grpc

from quartet.score.v1 import score_service_pb2, score_service_pb2_grpc
from quartet.server.auth import require_caller
from quartet.server.errors import PermissionDenied, Violations
from quartet.server.pagination import decode_page_token, page_size, paged
from quartet.server.timestamps import optional_timestamp, to_timestamp
from quartet.storage import BatchWriter, DatabaseRunner, scores

Context = grpc.aio.ServicerContext[Any, Any]


def compute_score(input_value: float) -> float:
    """The scoring formula, in one place so that it can change."""
    return input_value + 1


class ScoreServicer(score_service_pb2_grpc.ScoreServiceServicer):
    """Validates requests, calls the storage layer (reads through the runner, creations through a
    group-commit writer), and returns messages.

    A score belongs to the account that created it, unless an admin names another owner. Users
    read only their own scores; analysts and admins read everyone's.
    """

    def __init__(
        self,
        runner: DatabaseRunner,
        writer: BatchWriter[scores.NewScore, scores.Score | Exception],
    ) -> None:
        self._db = runner
        self._writer = writer  # group commit: the scores created meanwhile share a transaction

    async def CreateScore(
        self, request: score_service_pb2.CreateScoreRequest, context: Context
    ) -> score_service_pb2.Score:
        violations = Violations()
        violations.check(
            math.isfinite(compute_score(request.input_value)),
            "input_value",
            "is too large: its score is not a finite number",
        )
        violations.raise_if_any()
        user_id = request.user_id if request.HasField("user_id") else None
        caller = require_caller()
        if user_id is not None and user_id != caller.id and not caller.may("admin"):
            raise PermissionDenied("only an admin may store a score for another account")
        new = scores.NewScore(
            input_value=request.input_value,
            value=compute_score(request.input_value),
            user_id=caller.id if user_id is None else user_id,
            request_id=request.request_id or None,
        )
        (row,) = await self._writer.submit([new])
        if isinstance(row, Exception):  # refused alone: the others of its transaction are kept
            raise row
        return to_message(row)

    async def GetScore(
        self, request: score_service_pb2.GetScoreRequest, context: Context
    ) -> score_service_pb2.Score:
        caller = require_caller()
        if caller.may("analyst"):
            return to_message(await self._db.read(scores.get_score, request.id))
        # AIP-211: without access, whether the score exists is not the caller's business either.
        row = await self._db.read(scores.find_score, request.id)
        if row is None or row.user_id != caller.id:
            raise PermissionDenied(f"score {request.id} is not one of yours")
        return to_message(row)

    async def ListScores(
        self, request: score_service_pb2.ListScoresRequest, context: Context
    ) -> score_service_pb2.ListScoresResponse:
        violations = Violations()
        limit = page_size(request)
        after = decode_page_token(request, (datetime.datetime, int))
        start = optional_timestamp(request, "create_time_start", violations)
        end = optional_timestamp(request, "create_time_end", violations)
        threshold = request.score_greater_than if request.HasField("score_greater_than") else None
        violations.raise_if_any()
        user_id = request.user_id if request.HasField("user_id") else None
        caller = require_caller()
        if not caller.may("analyst"):
            if user_id not in (None, caller.id):
                raise PermissionDenied("you may list only your own scores")
            user_id = caller.id
        rows = await self._db.read(
            scores.list_scores,
            limit=limit + 1,
            after=after,
            score_greater_than=threshold,
            user_id=user_id,
            create_time_start=start,
            create_time_end=end,
            search=request.search.strip(),
        )
        page, token = paged(request, rows, limit, lambda row: (row.create_time, row.id))
        return score_service_pb2.ListScoresResponse(
            scores=[to_message(row) for row in page], next_page_token=token
        )


def to_message(row: scores.Score | scores.ScoreRow) -> score_service_pb2.Score:
    message = score_service_pb2.Score(
        id=row.id,
        input_value=row.input_value,
        value=row.value,
        create_time=to_timestamp(row.create_time),
    )
    if row.user_id is not None:
        message.user_id = row.user_id
    return message
