"""Scores: computed values stored with their owner and time, and the admin view's queries."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import peewee

from quartet.storage.accounts import Account
from quartet.storage.base import BaseModel, as_datetime, db, prepared, utcnow
from quartet.storage.errors import RecordExists, RecordNotFound


class Score(BaseModel):
    """One stored score. `request_id` is the client's idempotency key, unique when present."""

    id = peewee.BigAutoField()
    user = peewee.ForeignKeyField(Account, null=True, on_delete="CASCADE", backref="scores")
    input_value = peewee.DoubleField()
    value = peewee.DoubleField()
    create_time = peewee.DateTimeField(default=utcnow)
    request_id = peewee.CharField(max_length=64, null=True, unique=True)
    user_id: int | None  # the raw foreign key, which Peewee adds beside `user`

    class Meta:
        indexes = (
            # Newest-first listing, and its keyset pagination, overall and per user.
            (("create_time", "id"), False),
            (("user", "create_time", "id"), False),
        )


def create_score(
    *, input_value: float, value: float, user_id: int | None, request_id: str | None
) -> Score:
    """Store a score. A repeated request_id returns the score stored the first time.

    The database decides, in one statement: the unique request_id makes a repeat insert nothing
    (no check-then-insert race), and the foreign key refuses an unknown user. Raises
    RecordNotFound for an unknown user, and RecordExists when request_id was already used for
    another owner's score.
    """
    # Zero is stored without its sign: SQLite keeps no -0.0 (PostgreSQL would), so a reply
    # echoing -0.0 would disagree with every later read of the same score.
    input_value, value = input_value + 0.0, value + 0.0
    now = utcnow()
    insert = Score.insert(
        input_value=input_value,
        value=value,
        user=user_id,
        create_time=now,
        request_id=request_id or None,
    )
    try:
        with db.atomic():
            inserted = list(insert.on_conflict_ignore().returning(Score.id).execute())
    except peewee.IntegrityError:  # the only constraint left to break is the user's foreign key
        raise RecordNotFound("account", user_id) from None
    if inserted:
        return Score(
            id=inserted[0].id,
            input_value=input_value,
            value=value,
            user=user_id,
            create_time=now,
            request_id=request_id or None,
        )
    assert request_id, "only a request_id conflict inserts nothing"
    previous = _replay(request_id, user_id)
    assert previous is not None
    return previous


@dataclass(frozen=True)
class NewScore:
    """A score to store, as create_score takes it: what a group commit queues (`write_scores`)."""

    input_value: float
    value: float
    user_id: int | None
    request_id: str | None


def write_scores(items: list[NewScore]) -> list[Score | RecordNotFound | RecordExists]:
    """Store each score as create_score does, all in the caller's transaction (a group commit),
    each in a savepoint of its own: an unknown user or a request_id taken by another owner
    fails that score alone, returned in its place, and leaves nothing of it behind."""
    outcomes: list[Score | RecordNotFound | RecordExists] = []
    for item in items:
        try:
            outcomes.append(
                create_score(
                    input_value=item.input_value,
                    value=item.value,
                    user_id=item.user_id,
                    request_id=item.request_id,
                )
            )
        except (RecordNotFound, RecordExists) as refused:
            outcomes.append(refused)
    return outcomes


def _replay(request_id: str, user_id: int | None) -> Score | None:
    previous: Score | None = Score.get_or_none(Score.request_id == request_id)
    if previous is not None and previous.user_id != user_id:
        raise RecordExists("score request", request_id)
    return previous


class ScoreRow(NamedTuple):
    """A stored score as read by the calls that only show it, straight from the cursor."""

    id: int
    user_id: int | None
    input_value: float
    value: float
    create_time: datetime.datetime


# The columns of a ScoreRow, in its order.
_ROW_COLUMNS = (Score.id, Score.user, Score.input_value, Score.value, Score.create_time)


def _score_row(*values: Any) -> ScoreRow:
    score_id, user_id, input_value, value, create_time = values
    return ScoreRow(score_id, user_id, input_value, value, as_datetime(create_time))


def find_score(score_id: int) -> ScoreRow | None:
    found = prepared(
        "find_score",
        lambda: Score.select(*_ROW_COLUMNS).where(Score.id == score_id),
        [score_id],
        _score_row,
    )
    return found[0] if found else None


def get_score(score_id: int) -> ScoreRow:
    score = find_score(score_id)
    if score is None:
        raise RecordNotFound("score", score_id)
    return score


def list_scores(
    *,
    limit: int,
    after: tuple[datetime.datetime, int] | None = None,
    score_greater_than: float | None = None,
    user_id: int | None = None,
    create_time_start: datetime.datetime | None = None,
    create_time_end: datetime.datetime | None = None,
    search: str = "",
) -> list[ScoreRow]:
    """Scores newest first (then highest id), after the keyset position `after`, at most limit."""
    if search:  # the admin search: a join and a shape of its own each time
        sql, found = _list_query(
            limit,
            after,
            score_greater_than,
            user_id,
            create_time_start,
            create_time_end,
            search,
        ).sql()
        return [_score_row(*values) for values in db.obj.execute_sql(sql, found)]
    filters = (score_greater_than, user_id, create_time_start, create_time_end)
    params: list[object] = [value for value in filters if value is not None]
    params += [*(after or ()), limit]
    shape = "list_scores" + "".join("01"[value is not None] for value in (*filters, after))
    return prepared(
        shape,
        lambda: _list_query(
            limit, after, score_greater_than, user_id, create_time_start, create_time_end, ""
        ),
        params,
        _score_row,
    )


def _list_query(
    limit: int,
    after: tuple[datetime.datetime, int] | None,
    score_greater_than: float | None,
    user_id: int | None,
    create_time_start: datetime.datetime | None,
    create_time_end: datetime.datetime | None,
    search: str,
) -> peewee.ModelSelect[Score]:
    query = Score.select(*_ROW_COLUMNS)
    if score_greater_than is not None:
        query = query.where(Score.value > score_greater_than)
    if user_id is not None:
        query = query.where(Score.user == user_id)
    if create_time_start is not None:
        query = query.where(Score.create_time >= create_time_start)
    if create_time_end is not None:
        query = query.where(Score.create_time < create_time_end)
    if search:
        query = query.join(Account, peewee.JOIN.LEFT_OUTER).where(_matches(search))
    if after is not None:
        query = query.where(peewee.Tuple(Score.create_time, Score.id) < peewee.Tuple(*after))
    return query.order_by(Score.create_time.desc(), Score.id.desc()).limit(limit)


def _matches(search: str) -> peewee.ColumnBase:
    """The admin search: the owner's email contains the text, or the score equals it."""
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    email_contains = peewee.NodeList(
        (
            peewee.fn.LOWER(Account.email),
            peewee.SQL("LIKE"),
            f"%{escaped}%",
            peewee.SQL("ESCAPE '\\'"),
        )
    )
    try:
        number = float(search)
    except ValueError:
        return email_contains
    if not math.isfinite(number):
        return email_contains
    return email_contains | (Score.value == number)
