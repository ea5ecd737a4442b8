"""`quartet-server`: serve quartet, apply its migrations, create the first admin."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        parser.error(str(exc))
    logs.configure(settings.log_level, settings.log_format)
    try:
        status = args.command(settings, args)
    except (RuntimeError, ValueError, storage.RecordExists) as exc:  # PortInUse is a RuntimeError
        logger.error("%s", exc)
        sys.exit(1)
    sys.exit(status or 0)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    with _metrics_directory():
        from quartet.server import workers

        return workers.serve(settings)


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


def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    database = storage.open_database(settings.database_url)
    applied = storage.migrate(database)
    print(f"applied: {', '.join(applied)}" if applied else "the database is up to date")


def _load_regions(settings: Settings, args: argparse.Namespace) -> None:
    """Migrate, then make the regions tables hold exactly the packaged dataset again."""
    database = storage.open_database(settings.database_url)
    storage.migrate(database)  # loads the dataset, if the database lacks it, and logs that
    report = regions.load(database, force=True)
    storage.close(database)
    print(f"regions dataset {report.checksum[:12]} loaded; this run compared every row:")
    for table, changes in report.tables.items():
        print(
            f"  {table:<18} {changes.rows:>5} rows: {changes.added} added, "
            f"{changes.updated} updated, {changes.removed} removed"
        )


def _create_admin(settings: Settings, args: argparse.Namespace) -> None:
    """Create an admin account, or make an existing account an admin with this password."""
    try:
        email = normalized_email(args.email)  # what CreateAccount accepts, no more
    except EmailNotValidError as exc:
        raise ValueError(f"the email {args.email!r} is not valid: {exc}") from None
    password = _admin_password(args)
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
    print(f"{verb}: {account.email} (account {account.id}); log in with this email and password")


def _demo_data(settings: Settings, args: argparse.Namespace) -> None:
    from quartet.server import demo

    database = storage.open_database(settings.database_url)
    storage.migrate(database)
    storage.bind(database)
    filled = demo.fill(
        database,
        users=args.users,
        sessions=args.sessions,
        experiments=args.experiments,
        seed=args.seed,
    )
    storage.close(database)
    print(
        f"added {filled.users} users (password {demo.DEMO_PASSWORD!r}) with {filled.scores} "
        f"scores; {filled.events} events ({filled.rejected} rejected) sent by an application "
        f"whose API key is {filled.api_key}; and an experiment data set of "
        f"{filled.experiment_users} people and {filled.experiments} experiments"
    )


def _import_experiments(settings: Settings, args: argparse.Namespace) -> int:
    from quartet.server.experiments.command import import_experiments

    return import_experiments(settings.database_url, args.directory, allow_empty=args.allow_empty)


def _admin_password(args: argparse.Namespace) -> str:
    if args.password_file:
        with open(args.password_file) as file:
            return file.read().strip()
    if os.environ.get("QUARTET_ADMIN_PASSWORD"):
        return os.environ["QUARTET_ADMIN_PASSWORD"]
    if not sys.stdin.isatty():
        raise ValueError("give the password with --password-file or QUARTET_ADMIN_PASSWORD")
    password = getpass.getpass("password for the admin account: ")
    if getpass.getpass("again: ") != password:
        raise ValueError("the passwords differ")
    return password


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quartet-server",
        description="Serve quartet over gRPC. Flags override the environment variables named.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        metavar="URL",
        help="sqlite:///path/to.db or postgresql://user@host/name (DATABASE_URL; "
        f"default sqlite:///{storage.DEFAULT_SQLITE_PATH})",
    )
    serve_parser = commands.add_parser(
        "serve", parents=[database], help="migrate the database, then serve until SIGTERM/SIGINT"
    )
    serve_parser.set_defaults(command=_serve)
    serve_parser.add_argument("--host", help="address to listen on (QUARTET_HOST; 127.0.0.1)")
    serve_parser.add_argument(
        "--port", type=int, help="port, 0 for any free one (QUARTET_PORT; 50051)"
    )
    serve_parser.add_argument(
        "--workers", type=int, help="server processes sharing the port (QUARTET_WORKERS; cores)"
    )
    serve_parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics over HTTP on this port (QUARTET_METRICS_PORT; 0: none)",
    )
    serve_parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="signed-in unary calls per worker before RESOURCE_EXHAUSTED "
        "(QUARTET_MAX_CONCURRENT_RPCS; 1000; the other kinds of call have budgets of their own)",
    )
    serve_parser.add_argument(
        "--signup",
        choices=("open", "closed"),
        help="whether anyone may create an account (QUARTET_SIGNUP; closed in production, "
        "open in development)",
    )
    serve_parser.add_argument(
        "--db-threads", type=int, help="threads doing database work (QUARTET_DB_THREADS; 8)"
    )
    serve_parser.add_argument(
        "--grace-seconds",
        type=float,
        help="how long in-flight calls may finish on shutdown (QUARTET_GRACE_SECONDS; 10)",
    )
    serve_parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING or ERROR (QUARTET_LOG_LEVEL; INFO)"
    )
    serve_parser.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        help="auto is text on a terminal, JSON lines otherwise (QUARTET_LOG_FORMAT)",
    )
    migrate_parser = commands.add_parser(
        "migrate", parents=[database], help="apply pending migrations and exit"
    )
    migrate_parser.set_defaults(command=_migrate)
    regions_parser = commands.add_parser(
        "load-regions",
        parents=[database],
        help="reload the packaged regions data, repairing any row changed by hand",
        description="migrate does this too when the database lacks this version's data; this "
        "command also compares every row. Running servers need no restart: they serve the same "
        "packaged data from memory.",
    )
    regions_parser.set_defaults(command=_load_regions)
    admin_parser = commands.add_parser(
        "create-admin",
        parents=[database],
        help="create the first admin account (or promote, and enable, an existing one)",
        description="The password comes from --password-file, QUARTET_ADMIN_PASSWORD, or a prompt.",
    )
    admin_parser.set_defaults(command=_create_admin)
    admin_parser.add_argument("email")
    admin_parser.add_argument("--password-file", metavar="FILE")
    demo_parser = commands.add_parser(
        "demo-data",
        parents=[database],
        help="fill the database with realistic fake users, scores, events and experiments",
    )
    demo_parser.set_defaults(command=_demo_data)
    demo_parser.add_argument("--users", type=int, default=50)
    demo_parser.add_argument("--sessions", type=int, default=200, help="visits with events")
    demo_parser.add_argument(
        "--experiments", type=int, default=500, help="replaces the experiment data set; 0: none"
    )
    demo_parser.add_argument("--seed", type=int, help="make the data reproducible")
    experiments_parser = commands.add_parser(
        "import-experiments",
        parents=[database],
        help="replace the experiment data set with DIRECTORY's users.csv, compounds.csv and "
        "user_experiments.csv (without DIRECTORY: the demo data set)",
    )
    experiments_parser.set_defaults(command=_import_experiments)
    experiments_parser.add_argument("directory", nargs="?", type=Path, metavar="DIRECTORY")
    experiments_parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="let files without any row empty the data set (refused otherwise)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given."""
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(Settings.from_env(), **flags).validated()
