"""quartet experiments: import the data set over gRPC, and print its report."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from quartet.cli.output import Column, as_dict, json_text, print_fields, print_list
from quartet.cli.session import api_command, limit_option, limited, page_size, session
from quartet.client._experiments import FILE_NAMES
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
]


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
    help="Print the report: counts, averages, and each user's experiments and favourite compound "
    "(analysts and admins)."
)
@click.option("--user", type=int, metavar="ID", help="only this user's report")
@limit_option
@api_command("table", "json", "csv")
def report(user: int | None, limit: int) -> None:
    state = session()
    client = state.client()
    if user is not None:
        found = client.experiments.get_user_report(user)
        if state.format == "json":
            click.echo(json_text(as_dict(found)))
        else:
            print_list([found], USER_COLUMNS, state.format)
        return
    overall = client.experiments.get_report()
    users = limited(client.experiments.iter_user_reports(page_size=page_size(limit)), limit)
    if state.format == "json":
        click.echo(json_text({"report": as_dict(overall), "users": [as_dict(u) for u in users]}))
        return
    if state.format == "table":
        print_fields(
            [
                ("experiments", f"{overall.experiment_count:,}"),
                ("users", f"{overall.user_count:,} ({overall.active_user_count:,} ran one)"),
                ("compounds", f"{overall.compound_count:,}"),
                ("per user", f"{overall.average_experiments_per_user:g}"),
                ("per active user", f"{overall.average_experiments_per_active_user:g}"),
            ]
        )
        click.echo()
    print_list(users, USER_COLUMNS, state.format)


COMMANDS = [experiments]
