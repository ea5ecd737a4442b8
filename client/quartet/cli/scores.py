"""quartet scores: compute, get and list scores, with the old admin view's filters."""

from __future__ import annotations

import datetime

import click

from quartet.cli.output import Column, print_list, print_one, time_text
from quartet.cli.session import api_command, limit_option, limited, page_size, session, time_option
from quartet.score.v1 import score_service_pb2 as pb

COLUMNS: list[Column[pb.Score]] = [
    Column("id", lambda s: s.id, "right"),
    Column("user", lambda s: s.user_id if s.HasField("user_id") else "", "right"),
    Column("input", lambda s: s.input_value, "right"),
    Column("score", lambda s: s.value, "right"),
    Column("created", lambda s: time_text(s.create_time)),
]


def _rows(score: pb.Score) -> list[tuple[str, object]]:
    return [(c.header, c.value(score)) for c in COLUMNS]


@click.group(help="Scores: input + 1, stored with their owner and time.")
def scores() -> None:
    pass


@scores.command(help="Compute and store the score of VALUE.")
@click.argument("value", type=float)
@click.option("--user", type=int, metavar="ID", help="for this account (admins)")
@click.option(
    "--request-id",
    metavar="ID",
    help="makes a retry of this command store the score once (a random one by default)",
)
@api_command("table", "json")
def create(value: float, user: int | None, request_id: str | None) -> None:
    state = session()
    score = state.client().scores.create(value, user_id=user, request_id=request_id)
    print_one(score, _rows(score), state.format)


@scores.command(help="Print the score with this id.")
@click.argument("score_id", type=int, metavar="ID")
@api_command("table", "json")
def get(score_id: int) -> None:
    state = session()
    score = state.client().scores.get(score_id)
    print_one(score, _rows(score), state.format)


@scores.command(
    "list",
    help="List scores, newest first. Users see their own; analysts and admins everyone's. "
    "Times without a zone are local.",
)
@click.option("--greater-than", type=float, metavar="X", help="only scores above X")
@click.option("--user", type=int, metavar="ID", help="only this account's scores")
@time_option("--since", help="created at or after this date or time")
@time_option("--until", help="created before this date or time")
@click.option("--today", is_flag=True, help="created since midnight (local time)")
@click.option("--last-7-days", is_flag=True, help="created in the last 7 days")
@click.option(
    "--search",
    metavar="TEXT",
    help="only scores whose owner's email contains TEXT, or whose value is TEXT",
)
@limit_option
@api_command("table", "json", "csv")
def list_scores(
    greater_than: float | None,
    user: int | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    today: bool,
    last_7_days: bool,
    search: str | None,
    limit: int,
) -> None:
    if sum(bool(x) for x in (since, today, last_7_days)) > 1:
        raise click.UsageError("give only one of --since, --today and --last-7-days")
    now = datetime.datetime.now().astimezone()
    if today:
        since = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elif last_7_days:
        since = now - datetime.timedelta(days=7)
    state = session()
    found = state.client().scores.iter(
        page_size=page_size(limit),
        score_greater_than=greater_than,
        user_id=user,
        created_after=since,
        created_before=until,
        search=search or "",
    )
    print_list(limited(found, limit), COLUMNS, state.format)


COMMANDS = [scores]
