"""What every command that calls the server shares: where the server is, the credentials, the
output format, and the one Client, opened on first use and closed when the command ends."""

from __future__ import annotations

import contextlib
import datetime
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from quartet.cli import credentials
from quartet.cli.output import Format
from quartet.client import Client

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass
class Session:
    """The options of the command line, gathered from whichever command level gave them."""

    server: str = ""
    token: str = ""
    tls: bool = False
    ca_file: str = ""
    timeout: float | None = None
    format: Format = "table"
    _client: Client | None = None

    @property
    def target(self) -> str:
        return self.server or credentials.default_server()

    def client(self, *, signed_in: bool = True) -> Client:
        """The Client for this command: with --token, or the login kept for the server."""
        if self._client is not None:
            return self._client
        target = self.target
        login = credentials.load(target) if signed_in and not self.token else None
        tls: bool | bytes = self.tls or (login.tls if login else False)
        ca_file = self.ca_file or (login.ca_file if login else "")
        if ca_file:
            tls = Path(ca_file).read_bytes()
        options: dict[str, Any] = {} if self.timeout is None else {"timeout": self.timeout}
        client = Client(target, token=self.token or None, tls=tls, **options)
        if login is not None:
            client.use_tokens(
                login.pair(), on_refresh=lambda pair: credentials.update_tokens(target, pair)
            )
        self._client = client
        click.get_current_context().call_on_close(client.close)
        return client


def session() -> Session:
    return click.get_current_context().ensure_object(Session)


@contextlib.contextmanager
def closed_on_interrupt(close_stream: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C calls close_stream, from a thread of its own, and is raised as KeyboardInterrupt once
    the block has ended, rather than wherever the main thread was. Raised inside gRPC's wait
    for a stream's next message, it could land between CPython's Condition.wait releasing its
    lock and the code that takes it back, and the command died of "cannot release un-acquired
    lock" with a traceback instead of saying "interrupted". A second Ctrl-C interrupts at once."""
    interrupted = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=close_stream, daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def _setter(attribute: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[..., None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value not in (None, "", False):
            setattr(ctx.ensure_object(Session), attribute, convert(value))

    return store


def connection_options(fn: F) -> F:
    """--server, --token, --tls, --ca-file and --timeout, kept in the Session."""
    for option in reversed(
        [
            click.option(
                "--server",
                "-s",
                metavar="HOST:PORT",
                envvar="QUARTET_SERVER",
                expose_value=False,
                callback=_setter("server"),
                help="the server (QUARTET_SERVER; else the one logged in to last; "
                f"else {credentials.DEFAULT_SERVER})",
            ),
            click.option(
                "--token",
                metavar="TOKEN",
                envvar="QUARTET_TOKEN",
                expose_value=False,
                callback=_setter("token"),
                help="an API key or access token to send instead of the login's (QUARTET_TOKEN)",
            ),
            click.option(
                "--tls",
                is_flag=True,
                expose_value=False,
                callback=_setter("tls"),
                help="use TLS with the system's root certificates",
            ),
            click.option(
                "--ca-file",
                type=click.Path(exists=True, dir_okay=False),
                envvar="QUARTET_CA_FILE",
                expose_value=False,
                callback=_setter("ca_file"),
                help="use TLS, trusting this PEM root certificate (QUARTET_CA_FILE)",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                metavar="SECONDS",
                expose_value=False,
                callback=_setter("timeout"),
                help="the deadline of each call (10)",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def output_options(*formats: Format) -> Callable[[F], F]:
    """--json, and --format when there is more than table and JSON (lists: CSV too)."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--format",
            "fmt",
            type=click.Choice(formats),
            expose_value=False,
            callback=_setter("format"),
            help="table (for people, the default), json, or csv (for scripts)"
            if "csv" in formats
            else "table (for people, the default) or json",
        )(fn)
        return click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=_setter("format", lambda _: "json"),
            help="print JSON (the protobuf JSON mapping, proto field names): --format json",
        )(fn)

    return decorate


def api_command(*formats: Format) -> Callable[[F], F]:
    """The options of a command that calls the server and prints in one of these formats."""

    def decorate(fn: F) -> F:
        return connection_options(output_options(*formats)(fn))

    return decorate


def when(text: str) -> datetime.datetime:
    """A date or time from the command line: ISO 8601 ("2026-12-04", "2026-12-04T09:30",
    "2026-12-04 09:30:00+01:00"); without a zone, in the local time zone."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.astimezone()


def time_option(name: str, help: str) -> Callable[[F], F]:
    """An option taking a date or time (see `when`)."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        return None if value is None else when(value)

    return click.option(name, metavar="TIME", callback=convert, help=help)


def limit_option(fn: F) -> F:
    return click.option(
        "--limit",
        "-n",
        type=click.IntRange(min=0),
        default=100,
        show_default=True,
        help="print at most this many (0: every one, fetching page after page)",
    )(fn)


def page_size(limit: int) -> int:
    """The page size to ask for: enough to see whether there is more than limit (the server
    caps it at 1000)."""
    return min(limit + 1, 1000) if limit else 1000


def limited(items: Iterable[T], limit: int) -> Iterator[T]:
    """The first limit items (all if 0); says on stderr when there were more."""
    for index, item in enumerate(items):
        if limit and index == limit:
            click.echo(f"(only the first {limit}: --limit 0 prints every one)", err=True)
            return
        yield item
