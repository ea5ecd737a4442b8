"""`quartet server`: serve quartet, apply its migrations, create the first admin, fill demo data.

The same group is the `quartet-server` command and `python -m quartet.server` (older names, kept).
Flags override the environment variables named in their help.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from email_validator import EmailNotValidError

from quartet import storage
from quartet.server import logs
from quartet.server.auth.passwords import hash_password
from quartet.server.auth.service import PASSWORD_LENGTH, normalized_email
from quartet.server.settings import Settings, SettingsError
from quartet.storage import accounts, regions
from quartet.storage.base import utcnow

# NOTE: quartet.server.app (and with it prometheus_client) is imported inside the commands, after
# _metrics_directory() has set PROMETHEUS_MULTIPROC_DIR: prometheus_client reads it at import.

logger = logging.getLogger("quartet.server")
F = TypeVar("F", bound=Callable[..., Any])

DATABASE_HELP = (
    "sqlite:///path/to.db or postgresql://user@host/name (DATABASE_URL; default "
    "$XDG_DATA_HOME/quartet/quartet.db, ~/.local/share/quartet/quartet.db). Give every command "
    "the same database as `serve`: the same URL, or the same XDG_DATA_HOME."
)


@click.group(
    "server",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run the quartet server and administer its database directly (no server needed). Also "
    "installed as `quartet-server`.",
)
def server() -> None:
    pass


def _database_command(fn: F) -> F:
    """--database-url, and --verbose for the commands people run by hand."""
    fn = click.option("--database-url", metavar="URL", help=DATABASE_HELP)(fn)
    return fn


def _quiet_unless_verbose(fn: F) -> F:
    return click.option(
        "-v", "--verbose", is_flag=True, help="also print the log (migrations applied, ...)"
    )(fn)


def _settings(**flags: Any) -> Settings:
    """Settings from the environment, overridden by the flags given; a usage error if invalid."""
    given = {
        f.name: flags[f.name] for f in dataclasses.fields(Settings) if flags.get(f.name) is not None
    }
    try:
        return dataclasses.replace(Settings.from_env(), **given).validated()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@contextlib.contextmanager
def _failures() -> Iterator[None]:
    """A command's expected failures: one line on stderr and exit status 1, no traceback."""
    try:
        yield
    except (RuntimeError, ValueError, OSError, storage.RecordExists) as exc:  # PortInUse too
        logger.error("%s", exc)
        sys.exit(1)


def _logs_for_people(settings: Settings, verbose: bool) -> None:
    """Only warnings and errors, unless --verbose: the person asked for the result, not a log."""
    logs.configure(settings.log_level if verbose else "WARNING", settings.log_format)


@server.command(help="Migrate the database, then serve until SIGTERM/SIGINT.")
@_database_command
@click.option("--host", help="address to listen on (QUARTET_HOST; 127.0.0.1)")
@click.option("--port", type=int, help="port, 0 for any free one (QUARTET_PORT; 50051)")
@click.option(
    "--workers", type=int, help="server processes sharing the port (QUARTET_WORKERS; cores)"
)
@click.option(
    "--http-port",
    type=int,
    help="serve the Connect protocol (curl, browsers) and gRPC-Web on this port "
    "(QUARTET_HTTP_PORT; 0: none; see docs/http.md)",
)
@click.option(
    "--metrics-port",
    type=int,
    help="serve Prometheus metrics over HTTP on this port (QUARTET_METRICS_PORT; 0: none)",
)
@click.option(
    "--max-concurrent-rpcs",
    type=int,
    help="signed-in unary calls per worker before RESOURCE_EXHAUSTED "
    "(QUARTET_MAX_CONCURRENT_RPCS; 1000; the other kinds of call have budgets of their own)",
)
@click.option(
    "--signup",
    type=click.Choice(["open", "closed"]),
    help="whether anyone may create an account (QUARTET_SIGNUP; closed in production, "
    "open in development)",
)
@click.option("--db-threads", type=int, help="threads doing database work (QUARTET_DB_THREADS; 8)")
@click.option(
    "--grace-seconds",
    type=float,
    help="how long in-flight calls may finish on shutdown (QUARTET_GRACE_SECONDS; 10)",
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR (QUARTET_LOG_LEVEL; INFO)")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    help="auto is text on a terminal, JSON lines otherwise (QUARTET_LOG_FORMAT)",
)
def serve(**flags: Any) -> None:
    settings = _settings(**flags)
    logs.configure(settings.log_level, settings.log_format)
    with _failures(), _metrics_directory():
        from quartet.server import workers

        sys.exit(workers.serve(settings) or 0)


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """Give the workers' metrics a shared directory for this run, emptied first (a directory
    named by PROMETHEUS_MULTIPROC_DIR is used, and kept, instead of a temporary one)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = given or tempfile.mkdtemp(prefix="quartet-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    for stale in Path(directory).glob("*.db"):
        stale.unlink()
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


@server.command(help="Apply pending migrations and exit.")
@_database_command
@_quiet_unless_verbose
def migrate(database_url: str | None, verbose: bool) -> None:
    settings = _settings(database_url=database_url)
    _logs_for_people(settings, verbose)
    with _failures():
        database = storage.open_database(settings.database_url)
        applied = storage.migrate(database)
        storage.close(database)
    click.echo(f"applied: {', '.join(applied)}" if applied else "the database is up to date")


@server.command(
    "load-regions",
    short_help="Reload the packaged regions data, repairing any row changed by hand.",
    help="Reload the packaged regions data, repairing any row changed by hand. migrate does this "
    "too when the database lacks this version's data; this command also compares every row. "
    "Running servers need no restart: they serve the same packaged data from memory.",
)
@_database_command
@_quiet_unless_verbose
def load_regions(database_url: str | None, verbose: bool) -> None:
    settings = _settings(database_url=database_url)
    _logs_for_people(settings, verbose)
    with _failures():
        database = storage.open_database(settings.database_url)
        storage.migrate(database)  # loads the dataset, if the database lacks it
        report = regions.load(database, force=True)
        storage.close(database)
    click.echo(f"regions dataset {report.checksum[:12]} loaded; this run compared every row:")
    for table, changes in report.tables.items():
        click.echo(
            f"  {table:<18} {changes.rows:>5} rows: {changes.added} added, "
            f"{changes.updated} updated, {changes.removed} removed"
        )


@server.command(
    "create-admin",
    short_help="Create the first admin account (or promote, and enable, an existing one).",
    help="Create the first admin account (or promote, and enable, an existing one), straight in "
    "the database: give it the same database as `serve` (--database-url, DATABASE_URL, or the "
    "same XDG_DATA_HOME). The password comes from --password-file, QUARTET_ADMIN_PASSWORD, or a "
    "prompt on a terminal.",
)
@click.argument("email")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False),
    help="read the password from this file's first line",
)
@_database_command
@_quiet_unless_verbose
def create_admin(
    email: str, password_file: str | None, database_url: str | None, verbose: bool
) -> None:
    settings = _settings(database_url=database_url)
    _logs_for_people(settings, verbose)
    with _failures():
        try:
            email = normalized_email(email)  # what CreateAccount accepts, no more
        except EmailNotValidError as exc:
            raise ValueError(f"the email {email!r} is not valid: {exc}") from None
        password = _admin_password(password_file)
        low, high = PASSWORD_LENGTH
        if not low <= len(password) <= high:
            raise ValueError(f"the password must be {low} to {high} characters")
        database = storage.open_database(settings.database_url)
        storage.migrate(database)
        storage.bind(database)
        password_hash = hash_password(password)
        with database.connection_context(), database.atomic():
            account = accounts.find_account(email)
            if account is None:
                account = accounts.create_account(email, password_hash, role="admin")
                verb = "created"
            else:
                accounts.set_password_hash(account.id, password_hash)
                accounts.set_role(account.id, "admin")
                accounts.set_disabled(account.id, False, utcnow())  # the way back in, if disabled
                verb = "made admin"
        storage.close(database)
    click.echo(f"{verb}: {account.email} (account {account.id}); log in with `quartet login`")


def _admin_password(password_file: str | None) -> str:
    if password_file:
        with open(password_file) as file:
            return file.read().strip()
    if os.environ.get("QUARTET_ADMIN_PASSWORD"):
        return os.environ["QUARTET_ADMIN_PASSWORD"]
    if not sys.stdin.isatty():
        raise ValueError("give the password with --password-file or QUARTET_ADMIN_PASSWORD")
    password: str = click.prompt(
        "password for the admin account", hide_input=True, confirmation_prompt="again"
    )
    return password


@server.command(
    "demo-data", help="Fill the database with realistic fake users, scores, events and experiments."
)
@_database_command
@click.option("--users", type=int, default=50, show_default=True, help="accounts to add")
@click.option("--sessions", type=int, default=200, show_default=True, help="visits with events")
@click.option(
    "--experiments",
    type=int,
    default=500,
    show_default=True,
    help="replaces the experiment data set; 0: none",
)
@click.option("--seed", type=int, help="make the data reproducible")
@_quiet_unless_verbose
def demo_data(
    database_url: str | None,
    users: int,
    sessions: int,
    experiments: int,
    seed: int | None,
    verbose: bool,
) -> None:
    try:
        from quartet.server import demo
    except ModuleNotFoundError as missing:  # Faker: the `demo` extra, kept out of the image
        raise click.UsageError(
            f"demo-data needs the demo extra ({missing.name} is not installed): "
            "pip install 'quartet[server,demo]'"
        ) from None

    settings = _settings(database_url=database_url)
    _logs_for_people(settings, verbose)
    with _failures():
        database = storage.open_database(settings.database_url)
        storage.migrate(database)
        storage.bind(database)
        filled = demo.fill(
            database, users=users, sessions=sessions, experiments=experiments, seed=seed
        )
        storage.close(database)
    click.echo(
        f"added {filled.users} users (password {demo.DEMO_PASSWORD!r}) with {filled.scores} "
        f"scores; {filled.events} events ({filled.rejected} rejected) sent by an application "
        f"whose API key is {filled.api_key}; and an experiment data set of "
        f"{filled.experiment_users} people and {filled.experiments} experiments"
    )


@server.command(
    "import-experiments",
    short_help="Replace the experiment data set, straight in the database.",
    help="Replace the experiment data set with DIRECTORY's users.csv, compounds.csv and "
    "user_experiments.csv (without DIRECTORY: the demo data set), straight in the database. "
    "Over the network, use `quartet experiments import`.",
)
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@_database_command
@click.option("--allow-empty", is_flag=True, help="let files without any row empty the data set")
@_quiet_unless_verbose
def import_experiments(
    directory: Path | None, database_url: str | None, allow_empty: bool, verbose: bool
) -> None:
    from quartet.server.experiments.command import import_experiments as run

    settings = _settings(database_url=database_url)
    _logs_for_people(settings, verbose)
    with _failures():
        sys.exit(run(settings.database_url, directory, allow_empty=allow_empty))


def main() -> None:
    """The `quartet-server` command: the `quartet server` group under its older name."""
    server(prog_name="quartet-server")
