"""quartet experiments: import the data set over gRPC, and print its report."""

from __future__ import annotations

import datetime
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from quartet.cli.output import Column, as_dict, json_text, print_fields, print_list, time_text
from quartet.cli.session import (
    api_command,
    connection_options,
    limit_option,
    limited,
    page_size,
    session,
)
from quartet.client import exports
from quartet.client._experiments import FILE_NAMES, Filter
from quartet.client.progress import describe
from quartet.experiments.v1 import experiment_service_pb2 as pb

FLAGS = ("users", "compounds", "experiments")  # the flags naming each file, in FILE_NAMES order

USER_COLUMNS: list[Column[pb.UserReport]] = [
    Column("user", lambda r: r.user_id, "right"),
    Column("name", lambda r: r.name),
    Column("email", lambda r: r.email),
    Column("experiments", lambda r: r.experiment_count, "right"),
    Column(
        "favourite compound",
        lambda r: r.favourite_compound.name if r.HasField("favourite_compound") else "",
    ),
    Column("uses", lambda r: r.favourite_compound_uses or "", "right"),
    Column("run time", lambda r: f"{r.total_run_time:g}", "right"),
    Column("average", lambda r: f"{r.average_run_time:g}", "right"),
]
COMPOUND_COLUMNS: list[Column[pb.CompoundReport]] = [
    Column("compound", lambda r: r.compound.id, "right"),
    Column("name", lambda r: r.compound.name),
    Column("structure", lambda r: r.compound.structure),
    Column("experiments", lambda r: r.experiment_count, "right"),
    Column("average run time", lambda r: f"{r.average_run_time:g}", "right"),
]
IMPORT_COLUMNS: list[Column[pb.Import]] = [
    Column("import", lambda i: i.id, "right"),
    Column(
        "outcome",
        lambda i: pb.ImportOutcome.Name(i.outcome).removeprefix("IMPORT_OUTCOME_").lower(),
    ),
    Column("problems", lambda i: i.problem_count, "right"),
    Column("users", lambda i: i.user_rows, "right"),
    Column("compounds", lambda i: i.compound_rows, "right"),
    Column("experiments", lambda i: i.experiment_rows, "right"),
    Column("started", lambda i: time_text(i.start_time)),
    Column("finished", lambda i: time_text(i.finish_time)),
    Column("caller", lambda i: i.caller),
]
F = TypeVar("F", bound=Callable[..., Any])


def _day(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime.date | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day (YYYY-MM-DD)") from None


def filter_options(fn: F) -> F:
    """The report filter's options, --compound, --signed-up-from and --signed-up-to, given to
    the command as one `selected` argument: the SDK's filter keywords."""

    @functools.wraps(fn)
    def command(
        *args: Any,
        compound: int | None,
        signed_up_from: datetime.date | None,
        signed_up_to: datetime.date | None,
        **kwargs: Any,
    ) -> Any:
        selected: Filter = {
            "compound_id": compound,
            "signup_date_start": signed_up_from,
            "signup_date_end": signed_up_to,
        }
        return fn(*args, selected=selected, **kwargs)

    options = [
        click.option(
            "--compound",
            type=click.IntRange(min=1),
            metavar="ID",
            help="only users who used this compound",
        ),
        click.option(
            "--signed-up-from",
            metavar="DAY",
            callback=_day,
            help="only users who signed up on or after this day (YYYY-MM-DD)",
        ),
        click.option(
            "--signed-up-to",
            metavar="DAY",
            callback=_day,
            help="only users who signed up on or before this day (YYYY-MM-DD)",
        ),
    ]
    wrapped: Any = command
    for option in reversed(options):
        wrapped = option(wrapped)
    return cast(F, wrapped)


@click.group(help="The experiment data set: import it, and read its report.")
def experiments() -> None:
    pass


@experiments.command(
    "import",
    help="Replace the data set with DIRECTORY's users.csv, compounds.csv and "
    "user_experiments.csv (admins). All or nothing: on a problem nothing is imported and every "
    "problem is listed (file:line:column), exit status 3. Progress is shown on a terminal.",
)
@click.argument(
    "directory", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--users",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="instead of DIRECTORY/users.csv",
)
@click.option(
    "--compounds",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="instead of DIRECTORY/compounds.csv",
)
@click.option(
    "--experiments",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="instead of DIRECTORY/user_experiments.csv",
)
@click.option("--allow-empty", is_flag=True, help="let files without any row empty the data set")
@api_command("table", "json")
def import_(
    directory: Path | None,
    users: Path | None,
    compounds: Path | None,
    experiments: Path | None,
    allow_empty: bool,
) -> None:
    given = {"users": users, "compounds": compounds, "experiments": experiments}
    paths: list[Path] = []
    for flag, file_name in zip(FLAGS, FILE_NAMES.values(), strict=True):
        path = given[flag] or (directory / file_name if directory else None)
        if path is None:
            raise click.UsageError(
                "give a DIRECTORY, or all of --users, --compounds and --experiments"
            )
        paths.append(path)
    state = session()
    client = state.client()
    total = sum(path.stat().st_size for path in paths)
    progress = Progress(
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),  # progress is for people at a terminal only
    )
    with progress:
        task = progress.add_task("starting", total=total)
        final = client.experiments.import_files(
            *paths,
            allow_empty=allow_empty,
            on_progress=lambda reply: progress.update(
                task,
                completed=sum(f.bytes_read for f in reply.files),
                description=describe(reply),
            ),
        )
    if state.format == "json":
        click.echo(json_text(as_dict(final)))
    else:
        click.echo(describe(final))


@experiments.command(
    help="Print the report: counts, averages, run times, the import it comes from, and each "
    "user's experiments, favourite compound and run times (analysts and admins). The filter "
    "options narrow it to some users."
)
@click.option("--user", type=int, metavar="ID", help="only this user's report")
@filter_options
@limit_option
@api_command("table", "json", "csv")
def report(user: int | None, selected: Filter, limit: int) -> None:
    state = session()
    client = state.client()
    if user is not None:
        found = client.experiments.get_user_report(user)
        if state.format == "json":
            click.echo(json_text(as_dict(found)))
        else:
            print_list([found], USER_COLUMNS, state.format)
        return
    overall = client.experiments.get_report(**selected)
    users = limited(
        client.experiments.iter_user_reports(page_size=page_size(limit), **selected), limit
    )
    if state.format == "json":
        click.echo(json_text({"report": as_dict(overall), "users": [as_dict(u) for u in users]}))
        return
    if state.format == "table":
        imported = (
            f"{overall.import_id}, published {time_text(overall.publish_time)}"
            if overall.import_id
            else "none"
        )
        print_fields(
            [
                ("experiments", f"{overall.experiment_count:,}"),
                ("users", f"{overall.user_count:,} ({overall.active_user_count:,} ran one)"),
                ("compounds", f"{overall.compound_count:,}"),
                ("per user", f"{overall.average_experiments_per_user:g}"),
                ("per active user", f"{overall.average_experiments_per_active_user:g}"),
                ("run time", f"{overall.total_run_time:g}"),
                ("per experiment", f"{overall.average_run_time:g}"),
                ("import", imported),
            ]
        )
        click.echo()
    print_list(users, USER_COLUMNS, state.format)


@experiments.command(
    help="Print each compound's experiments and their average run time (analysts and admins). "
    "The filter options count only the experiments of some users."
)
@filter_options
@limit_option
@api_command("table", "json", "csv")
def compounds(selected: Filter, limit: int) -> None:
    state = session()
    reports = state.client().experiments.iter_compound_reports(
        page_size=page_size(limit), **selected
    )
    print_list(limited(reports, limit), COMPOUND_COLUMNS, state.format)


@experiments.command(
    help="Write the report (--report FILE) and the user rows (--users FILE) as CSV (the "
    "default) or JSON, with the same columns in both (analysts and admins). The filter options "
    "narrow them to some users."
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the report's figures here",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write every user's row here",
)
@click.option(
    "--format", "fmt", type=click.Choice(exports.FORMATS), default="csv", show_default=True
)
@filter_options
@connection_options
def export(
    report_file: Path | None,
    users_file: Path | None,
    fmt: exports.Format,
    selected: Filter,
) -> None:
    if report_file is None and users_file is None:
        raise click.UsageError("give --report FILE, --users FILE, or both")
    state = session()
    client = state.client()
    if report_file is not None:
        client.experiments.write_report(report_file, fmt, **selected)
        click.echo(f"wrote the report to {report_file}", err=True)
    if users_file is not None:
        count = client.experiments.write_user_reports(users_file, fmt, **selected)
        click.echo(f"wrote {count:,} user rows to {users_file}", err=True)


@experiments.command(
    help="List the imports, published and refused, newest first (analysts and admins)."
)
@limit_option
@api_command("table", "json", "csv")
def imports(limit: int) -> None:
    state = session()
    found = state.client().experiments.iter_imports(page_size=page_size(limit))
    print_list(limited(found, limit), IMPORT_COLUMNS, state.format, empty="no imports yet")


COMMANDS = [experiments]
