"""`quartet-server`: serve quartet, or apply its migrations."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence

from quartet import storage
from quartet.server import logs
from quartet.server.app import PortInUse, serve
from quartet.server.settings import Settings, SettingsError

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
        args.command(settings, args)
    except (PortInUse, ValueError) as exc:
        logger.error("%s", exc)
        sys.exit(1)


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    asyncio.run(serve(settings))


def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    database = storage.open_database(settings.database_url)
    applied = storage.migrate(database)
    print(f"applied: {', '.join(applied)}" if applied else "the database is up to date")


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
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given."""
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(Settings.from_env(), **flags).validated()
