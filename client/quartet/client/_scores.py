"""client.scores: compute, get and list scores."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import ClassVar

from google.protobuf.descriptor import ServiceDescriptor

from quartet.client._base import Transport, fields, pages, timestamp
from quartet.score.v1 import score_service_pb2, score_service_pb2_grpc

Score = score_service_pb2.Score


class Scores:
    """The ScoreService, through `Client.scores`."""

    # The service it calls (tests/test_registration.py: a Client attribute for every service).
    SERVICE: ClassVar[ServiceDescriptor] = score_service_pb2.DESCRIPTOR.services_by_name[
        "ScoreService"
    ]

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = score_service_pb2_grpc.ScoreServiceStub(transport.channel)

    def create(
        self,
        input_value: float,
        *,
        user_id: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Score:
        """Compute and store the score of input_value.

        The score belongs to the caller, or to user_id (admins only). A request_id is generated
        when none is given, so the automatic retry of a call that failed in transit never stores
        the score twice. Pass your own to make retries across processes safe too.
        """
        request = score_service_pb2.CreateScoreRequest(
            input_value=input_value,
            request_id=request_id or str(uuid.uuid4()),
            **fields(user_id=user_id),
        )
        return self._transport.invoke(self._stub.CreateScore, request, timeout)

    def get(self, score_id: int, *, timeout: float | None = None) -> Score:
        """The stored score with this id; QuartetError NOT_FOUND if there is none."""
        request = score_service_pb2.GetScoreRequest(id=score_id)
        return self._transport.invoke(self._stub.GetScore, request, timeout)

    def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        score_greater_than: float | None = None,
        user_id: int | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        search: str = "",
        timeout: float | None = None,
    ) -> score_service_pb2.ListScoresResponse:
        """One page of scores, newest first; created_after is inclusive, created_before not."""
        request = score_service_pb2.ListScoresRequest(
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
        return self._transport.invoke(self._stub.ListScores, request, timeout)

    def iter(
        self,
        *,
        page_size: int = 0,
        score_greater_than: float | None = None,
        user_id: int | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        search: str = "",
        timeout: float | None = None,
    ) -> Iterator[Score]:
        """Every matching score, newest first, fetching page after page as you iterate."""
        return pages(
            lambda token: self.list(
                page_size=page_size,
                page_token=token,
                score_greater_than=score_greater_than,
                user_id=user_id,
                created_after=created_after,
                created_before=created_before,
                search=search,
                timeout=timeout,
            ),
            lambda page: page.scores,
        )
