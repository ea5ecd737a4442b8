"""client.scores: compute, get and list scores."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence

from quartet.client import _aio_base, _base
from quartet.client._base import Call, call, fields, timestamp
from quartet.score.v1 import score_service_pb2 as pb

Score = pb.Score
SERVICE = pb.DESCRIPTOR.services_by_name["ScoreService"]


class ScoreCalls:
    """The ScoreService's calls, described once for both clients."""

    @staticmethod
    def create(
        input_value: float,
        *,
        user_id: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Call[Score]:
        """Compute and store the score of input_value.

        The score belongs to the caller, or to user_id (admins only). A request_id is generated
        when none is given, so the automatic retry of a call that failed in transit never stores
        the score twice. Pass your own to make retries across processes safe too.
        """
        request = pb.CreateScoreRequest(
            input_value=input_value,
            request_id=request_id or str(uuid.uuid4()),
            **fields(user_id=user_id),
        )
        return call(SERVICE, "CreateScore", request, Score, timeout)

    @staticmethod
    def get(score_id: int, *, timeout: float | None = None) -> Call[Score]:
        """The stored score with this id; QuartetError NOT_FOUND if there is none."""
        return call(SERVICE, "GetScore", pb.GetScoreRequest(id=score_id), Score, timeout)

    @staticmethod
    def list(
        *,
        page_size: int = 0,
        page_token: str = "",
        score_greater_than: float | None = None,
        user_id: int | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        search: str = "",
        timeout: float | None = None,
    ) -> Call[pb.ListScoresResponse]:
        """One page of scores, newest first; created_after is inclusive, created_before not."""
        request = pb.ListScoresRequest(
            page_size=page_size,
            page_token=page_token,
            search=search,
            **fields(
                score_greater_than=score_greater_than,
                user_id=user_id,
                create_time_start=timestamp(created_after),
                create_time_end=timestamp(created_before),
            ),
        )
        return call(SERVICE, "ListScores", request, pb.ListScoresResponse, timeout)


def _scores(page: pb.ListScoresResponse) -> Sequence[Score]:
    return page.scores


class Scores(_base.Service):
    """The ScoreService, through `Client.scores`."""

    SERVICE = SERVICE
    create = _base.unary(ScoreCalls.create)
    get = _base.unary(ScoreCalls.get)
    list = _base.unary(ScoreCalls.list)
    iter = _base.paged(ScoreCalls.list, _scores)


class AsyncScores(_aio_base.AsyncService):
    """The ScoreService, through `quartet.client.aio.Client.scores`: the methods of `Scores`,
    as coroutines (and an async iterator for `iter`)."""

    SERVICE = SERVICE
    create = _aio_base.unary(ScoreCalls.create)
    get = _aio_base.unary(ScoreCalls.get)
    list = _aio_base.unary(ScoreCalls.list)
    iter = _aio_base.paged(ScoreCalls.list, _scores)
