"""quartet events: send JSON lines, list, get, the rejected ones, and event types."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from quartet.cli.output import (
    Column,
    as_dict,
    json_text,
    print_list,
    print_one,
    time_text,
)
from quartet.cli.session import (
    api_command,
    closed_on_interrupt,
    connection_options,
    limit_option,
    limited,
    page_size,
    session,
    time_option,
)
from quartet.client import Client
from quartet.client._events import Bucket, ReplayStateName
from quartet.events.v1 import event_service_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])
EXIT_REJECTED = 3  # the exit status when an event was rejected (main.EXIT_REFUSED)


def data_text(event: pb.Event) -> str:
    return (
        json.dumps(json_format.MessageToDict(event.data), ensure_ascii=False)
        if event.HasField("data")
        else ""
    )


COLUMNS: list[Column[pb.Event]] = [
    Column("id", lambda e: e.id),
    Column("occurred", lambda e: time_text(e.occur_time)),
    Column("session", lambda e: e.session_id),
    Column("category", lambda e: e.category),
    Column("name", lambda e: e.name),
    Column("application", lambda e: e.application_id, "right"),
    Column("data", data_text),
]


def violations_text(violations: Any) -> str:
    return "; ".join(f"{v.field}: {v.reason}" for v in violations)


REPLAY_STATE_NAMES = {
    pb.REPLAY_STATE_UNSPECIFIED: "",
    pb.REPLAY_STATE_NOT_REPLAYED: "",
    pb.REPLAY_STATE_STORED: "stored",
    pb.REPLAY_STATE_STILL_REJECTED: "still rejected",
    pb.REPLAY_STATE_ALREADY_STORED: "already stored",
}

REJECTED_COLUMNS: list[Column[pb.RejectedEvent]] = [
    Column("id", lambda r: r.id, "right"),
    Column("rejected", lambda r: time_text(r.reject_time)),
    Column("application", lambda r: r.application_id, "right"),
    Column("event id", lambda r: r.event.id),
    Column("category", lambda r: r.event.category),
    Column("name", lambda r: r.event.name),
    Column("problems", lambda r: violations_text(r.violations)),
    Column("replay", lambda r: REPLAY_STATE_NAMES[r.replay_state]),
]

COUNT_COLUMNS: list[Column[pb.EventCount]] = [
    Column("bucket", lambda c: time_text(c.bucket_start_time)),
    Column("category", lambda c: c.category),
    Column("name", lambda c: c.name),
    Column("count", lambda c: c.count, "right"),
]

TYPE_COLUMNS: list[Column[pb.EventType]] = [
    Column("category", lambda t: t.category),
    Column("name", lambda t: t.name),
    Column("version", lambda t: t.version, "right"),
    Column("created", lambda t: time_text(t.create_time)),
]


@click.group(help="Analytics events: send them (with an API key), and query them.")
def events() -> None:
    pass


class BadLine(Exception):
    """A line of the input that is not an event."""


def parse_event(line: str) -> pb.Event:
    """An event from one JSON object: the Event message's JSON mapping (`occur_time` in RFC
    3339), or the original challenge's form, with `timestamp` ("2021-01-01 09:15:27.243860",
    UTC without a zone)."""
    try:
        document = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadLine("not a JSON object")
    if "timestamp" in document:
        stamp = document.pop("timestamp")
        try:
            moment = datetime.datetime.fromisoformat(str(stamp))
        except ValueError:
            raise BadLine(f"timestamp {stamp!r} is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        document["occur_time"] = moment.isoformat()
    try:
        return json_format.ParseDict(document, pb.Event())
    except json_format.ParseError as exc:
        raise BadLine(str(exc)) from None


@dataclasses.dataclass
class Tally:
    stored: int = 0
    duplicate: int = 0
    rejected: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        return (
            f"stored {self.stored:,}, duplicate {self.duplicate:,}, rejected {len(self.rejected):,}"
        )


def _read_events(stream: IO[str], read: collections.deque[tuple[int, int]]) -> Iterator[pb.Event]:
    """The events of stream, noting each one's line number and size in bytes in `read`; blank
    lines are skipped."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            message = parse_event(line)
        except BadLine as exc:
            raise click.UsageError(f"line {number}: {exc}") from None
        read.append((number, len(line.encode())))
        yield message


@events.command(
    help="Send events, one JSON object per line, from FILE or standard input (-), in batches. "
    "Each line is an Event in protobuf's JSON mapping (session_id, category, name, data, "
    "occur_time in RFC 3339, optional id), or the original challenge's form with `timestamp`. "
    "Give each line an id (a UUID) to make sending the file again store nothing twice. "
    "Prints how many were stored, duplicates (already sent) and rejected, with every "
    "rejection's problems; exits 3 if any was rejected. Needs an application's API key "
    "(--token or QUARTET_TOKEN). A progress bar is shown on a terminal."
)
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    default=500,
    show_default=True,
    help="events per call",
)
@api_command("table", "json")
def send(file: IO[str], batch_size: int) -> None:
    state = session()
    client = state.client()
    tally = Tally()
    progress = Progress(
        TextColumn("sending"),
        BarColumn(),
        TextColumn("{task.fields[sent]:,} events"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),  # progress is for people at a terminal only
    )
    try:
        with progress:
            _send(client, file, batch_size, progress, tally)
    except click.UsageError:
        click.echo(f"before the line that is not an event: {tally.text()}", err=True)
        raise
    _print_tally(tally, state.format)
    if tally.rejected:
        sys.exit(EXIT_REJECTED)


def _send(client: Client, file: IO[str], batch_size: int, progress: Progress, tally: Tally) -> None:
    """Send file's events, counting each outcome in tally."""
    read: collections.deque[tuple[int, int]] = collections.deque()  # (line, bytes) unanswered
    task = progress.add_task("send", total=_size(file), sent=0)
    batches = client.events.send_batches(_read_events(file, read), batch_size=batch_size)
    for _, reply in batches:
        answered = 0
        for result in reply.results:
            line, size = read.popleft()
            answered += size
            if result.status == pb.EVENT_STATUS_STORED:
                tally.stored += 1
            elif result.status == pb.EVENT_STATUS_DUPLICATE:
                tally.duplicate += 1
            else:
                tally.rejected.append(
                    {
                        "line": line,
                        "event_id": result.event_id,
                        "violations": [as_dict(v) for v in result.violations],
                    }
                )
        sent = tally.stored + tally.duplicate + len(tally.rejected)
        progress.update(task, advance=answered, sent=sent)


def _size(file: IO[str]) -> int | None:
    """The size of a regular file, for the progress bar; None for a pipe."""
    try:
        status = os.fstat(file.fileno())
    except (OSError, ValueError):
        return None
    return status.st_size if status.st_size and os.path.isfile(file.name) else None


def _print_tally(tally: Tally, fmt: str) -> None:
    if fmt == "json":
        summary = {
            "stored": tally.stored,
            "duplicate": tally.duplicate,
            "rejected": len(tally.rejected),
            "rejections": tally.rejected,
        }
        click.echo(json_text(summary))
        return
    click.echo(tally.text())
    for rejection in tally.rejected:
        for violation in rejection["violations"]:
            click.echo(
                f"  line {rejection['line']} ({rejection['event_id']}): {violation['field']}: "
                f"{violation['description']} ({violation['reason']})"
            )


def event_filters(fn: F) -> F:
    """The options that select events, as `events list` and `events export` take them."""
    for option in reversed(
        [
            click.option(
                "--session", "session_id", metavar="UUID", help="only this session's events"
            ),
            click.option("--category", help="only this category"),
            click.option("--name", help="only this name (with --category)"),
            click.option(
                "--application", type=int, metavar="ID", help="only this application's events"
            ),
            time_option("--since", help="occurred at or after this date or time"),
            time_option("--until", help="occurred before this date or time"),
        ]
    ):
        fn = option(fn)
    return fn


@events.command(
    "list",
    help="List events, in the order they occurred (--newest-first: reversed). Times without a "
    "zone are local.",
)
@event_filters
@click.option("--newest-first", is_flag=True, help="the latest first")
@limit_option
@api_command("table", "json", "csv")
def list_events(
    session_id: str | None,
    category: str | None,
    name: str | None,
    application: int | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    newest_first: bool,
    limit: int,
) -> None:
    state = session()
    found = state.client().events.iter(
        page_size=page_size(limit),
        session_id=session_id or "",
        category=category or "",
        name=name or "",
        application_id=application or 0,
        occurred_after=since,
        occurred_before=until,
        newest_first=newest_first,
    )
    print_list(limited(found, limit), COLUMNS, state.format)


def event_rows(event: pb.Event) -> list[tuple[str, object]]:
    data = json_format.MessageToDict(event.data) if event.HasField("data") else {}
    return [
        ("id", event.id),
        ("session", event.session_id),
        ("category", event.category),
        ("name", event.name),
        ("occurred", time_text(event.occur_time)),
        ("received", time_text(event.receive_time)),
        ("application", event.application_id),
        ("schema version", event.schema_version),
        ("data", json_text(data)),
    ]


@events.command(help="Print one event.")
@click.argument("event_id", metavar="ID")
@api_command("table", "json")
def get(event_id: str) -> None:
    state = session()
    event = state.client().events.get(event_id)
    print_one(event, event_rows(event), state.format)


@events.command(help="List rejected events, newest first, with their problems.")
@click.option(
    "--reason", metavar="REASON", help="only those with this problem (EVENT_TIME_IN_FUTURE, ...)"
)
@click.option("--application", type=int, metavar="ID", help="only this application's")
@time_option("--since", help="rejected at or after this date or time")
@time_option("--until", help="rejected before this date or time")
@click.option(
    "--replay",
    "replay_state",
    type=click.Choice(["not replayed", "stored", "still rejected", "already stored"]),
    help="only those whose latest replay did this",
)
@limit_option
@api_command("table", "json", "csv")
def rejected(
    reason: str | None,
    application: int | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    replay_state: ReplayStateName | None,
    limit: int,
) -> None:
    state = session()
    found = state.client().events.iter_rejected(
        page_size=page_size(limit),
        reason=reason or "",
        application_id=application or 0,
        rejected_after=since,
        rejected_before=until,
        replay_state=replay_state or "",
    )
    print_list(limited(found, limit), REJECTED_COLUMNS, state.format)


@events.command(
    help="Print events as they are stored, within a second, until interrupted (Ctrl-C): those of "
    "a session, or of a category (and name). One line per event; with --json one JSON object "
    "per line (JSON Lines). --after resumes after an event a previous tail printed, missing and "
    "repeating none (analysts and admins)."
)
@click.option("--session", "session_id", metavar="UUID", help="this session's events")
@click.option("--category", help="this category's events")
@click.option("--name", help="only this name (with --category)")
@click.option("--application", type=int, metavar="ID", help="only this application's events")
@click.option("--after", "after_event_id", metavar="EVENT_ID", help="resume after this event")
@api_command("table", "json")
def tail(
    session_id: str | None,
    category: str | None,
    name: str | None,
    application: int | None,
    after_event_id: str | None,
) -> None:
    if not session_id and not category:
        raise click.UsageError("give --session or --category")
    state = session()
    followed = state.client().events.tail(
        session_id=session_id or "",
        category=category or "",
        name=name or "",
        application_id=application or 0,
        after_event_id=after_event_id or "",
        timeout=state.timeout,  # none by default: until interrupted
    )
    with followed, closed_on_interrupt(followed.close):
        for event in followed:
            if state.format == "json":
                line = json.dumps(as_dict(event), ensure_ascii=False)
            else:
                line = "  ".join(
                    [
                        time_text(event.occur_time),
                        event.id,
                        event.session_id,
                        f"{event.category}/{event.name}",
                        f"app {event.application_id}",
                        data_text(event),
                    ]
                )
            click.echo(line)  # a line at a time, flushed, for a pipe to read as it comes


@events.command(
    help="Replay rejected events (admins): check those matching the filters against today's "
    "schemas and store those that pass, with their original ids and times. Safe to repeat: "
    "nothing is stored twice. Prints how many were stored, are still rejected and were already "
    "stored (`events rejected --replay still rejected` lists why). Progress is shown on a "
    "terminal."
)
@click.option("--reason", metavar="REASON", help="only those rejected for this problem")
@click.option("--application", type=int, metavar="ID", help="only this application's")
@click.option("--category", help="only events of this category")
@click.option("--name", help="only events of this name (with --category)")
@time_option("--since", help="rejected at or after this date or time")
@time_option("--until", help="rejected before this date or time")
@api_command("table", "json")
def replay(
    reason: str | None,
    application: int | None,
    category: str | None,
    name: str | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
) -> None:
    state = session()
    progress = state.client().events.replay_rejected(
        reason=reason or "",
        application_id=application or 0,
        category=category or "",
        name=name or "",
        rejected_after=since,
        rejected_before=until,
        timeout=state.timeout,
    )
    last = pb.ReplayRejectedEventsResponse()
    watching = sys.stderr.isatty()
    for last in progress:
        if watching:
            click.echo(f"\r{_replayed_text(last)}", nl=False, err=True)
    if watching:
        click.echo("", err=True)
    if state.format == "json":
        click.echo(json_text(as_dict(last)))
    else:
        click.echo(_replayed_text(last))


def _replayed_text(progress: pb.ReplayRejectedEventsResponse) -> str:
    return (
        f"stored {progress.stored_count:,}, still rejected {progress.still_rejected_count:,}, "
        f"already stored {progress.already_stored_count:,}"
    )


@events.command(
    help="Export events to FILE (default: standard output) as NDJSON, one JSON object an event "
    "(protobuf's JSON field names), in the order they occurred. Into a file, an export that "
    "broke off is finished by running it again (it resumes after the file's last whole line; "
    "--restart starts afresh); the count written goes to standard error. Times without a zone "
    "are local."
)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@event_filters
@click.option("--restart", is_flag=True, help="overwrite FILE instead of resuming it")
@connection_options
def export(
    file: str,
    session_id: str | None,
    category: str | None,
    name: str | None,
    application: int | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    restart: bool,
) -> None:
    state = session()
    filters: dict[str, Any] = {
        "session_id": session_id or "",
        "category": category or "",
        "name": name or "",
        "application_id": application or 0,
        "occurred_after": since,
        "occurred_before": until,
    }
    service = state.client().events
    if file != "-":
        written = service.export_to(file, resume=not restart, **filters)
        click.echo(f"exported {written:,} events to {file}", err=True)
        return
    out = sys.stdout.buffer
    for response in service.export(timeout=state.timeout, **filters):
        out.write(response.ndjson)
    out.flush()


@events.command(
    help="Count events by type (category and name) per bucket of time (--by minute, hour or "
    "day, in UTC) from --since to --until (at most 10,000 buckets), optionally of one "
    "application or session. Times without a zone are local."
)
@click.option(
    "--by", "bucket", type=click.Choice(["minute", "hour", "day"]), default="hour",
    show_default=True, help="the bucket",
)  # fmt: skip
@time_option("--since", help="occurred at or after this date or time (required)")
@time_option("--until", help="occurred before this date or time (required)")
@click.option("--application", type=int, metavar="ID", help="only this application's events")
@click.option("--session", "session_id", metavar="UUID", help="only this session's events")
@limit_option
@api_command("table", "json", "csv")
def count(
    bucket: Bucket,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    application: int | None,
    session_id: str | None,
    limit: int,
) -> None:
    if since is None or until is None:
        raise click.UsageError("give --since and --until")
    state = session()
    found = state.client().events.iter_counts(
        bucket,
        since,
        until,
        application_id=application or 0,
        session_id=session_id or "",
        page_size=page_size(limit),
    )
    print_list(limited(found, limit), COUNT_COLUMNS, state.format)


@events.group(help="Event types: the JSON Schema each category and name must satisfy.")
def types() -> None:
    pass


@types.command("list", help="List event types, each at its latest version.")
@limit_option
@api_command("table", "json", "csv")
def list_types(limit: int) -> None:
    state = session()
    found = state.client().events.iter_types(page_size=page_size(limit))
    print_list(limited(found, limit), TYPE_COLUMNS, state.format)


@types.command(
    "create",
    help="Register SCHEMA_FILE (a JSON Schema, draft 2020-12; - for standard input) as the next "
    "version of the type CATEGORY / NAME (admins).",
)
@click.argument("category")
@click.argument("name")
@click.argument("schema_file", type=click.File("r", encoding="utf-8"))
@api_command("table", "json")
def create_type(category: str, name: str, schema_file: IO[str]) -> None:
    try:
        schema = json.load(schema_file)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="SCHEMA_FILE") from None
    if not isinstance(schema, dict):
        raise click.BadParameter("a JSON Schema is an object", param_hint="SCHEMA_FILE")
    state = session()
    created = state.client().events.create_type(category, name, schema)
    print_one(
        created,
        [(c.header, c.value(created)) for c in TYPE_COLUMNS],
        state.format,
    )


COMMANDS = [events]
