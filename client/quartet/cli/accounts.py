"""login, logout, whoami; and the admins' accounts, applications and keys."""

from __future__ import annotations

import os
import sys

import click
from google.protobuf.message import Message

from quartet.auth.v1 import auth_service_pb2 as pb
from quartet.cli import credentials
from quartet.cli.output import Column, as_dict, json_text, print_list, print_one, time_text
from quartet.cli.session import api_command, limit_option, limited, page_size, session

ROLES = {"user": pb.ROLE_USER, "analyst": pb.ROLE_ANALYST, "admin": pb.ROLE_ADMIN}


def role_name(role: int) -> str:
    return pb.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def _password(from_stdin: bool, prompt: str, confirm: bool = False) -> str:
    """From stdin's first line, QUARTET_PASSWORD, or a prompt on a terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if os.environ.get("QUARTET_PASSWORD"):
        return os.environ["QUARTET_PASSWORD"]
    if not sys.stdin.isatty():
        raise click.UsageError("give the password with --password-stdin or QUARTET_PASSWORD")
    password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return password


def password_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--password-stdin",
        is_flag=True,
        help="read the password from standard input's first line (else QUARTET_PASSWORD, else "
        "a prompt)",
    )(fn)


def _account_rows(account: pb.Account) -> list[tuple[str, object]]:
    return [
        ("id", account.id),
        ("email", account.email),
        ("role", role_name(account.role)),
        ("created", time_text(account.create_time)),
        ("disabled", time_text(account.disable_time, account.HasField("disable_time"))),
    ]


ACCOUNT_COLUMNS: list[Column[pb.Account]] = [
    Column("id", lambda a: a.id, "right"),
    Column("email", lambda a: a.email),
    Column("role", lambda a: role_name(a.role)),
    Column("created", lambda a: time_text(a.create_time)),
    Column("disabled", lambda a: time_text(a.disable_time, a.HasField("disable_time"))),
]


@click.command(help="Log in, and keep the tokens for later commands (refreshed as needed).")
@click.option(
    "--email", "-e", envvar="QUARTET_EMAIL", help="the account (QUARTET_EMAIL; else asked)"
)
@password_option
@api_command("table", "json")
def login(email: str | None, password_stdin: bool) -> None:
    state = session()
    if not email:
        if not sys.stdin.isatty():
            raise click.UsageError("give the account with --email or QUARTET_EMAIL")
        email = str(click.prompt("email"))
    password = _password(password_stdin, f"password for {email}")
    client = state.client(signed_in=False)
    pair = client.login(email, password)
    account = client.auth.current_account()
    credentials.save(
        state.target,
        credentials.Login(
            email=account.email,
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            tls=state.tls,
            ca_file=os.path.abspath(state.ca_file) if state.ca_file else "",
        ),
    )
    if state.format == "json":
        click.echo(json_text({"server": state.target, "account": as_dict(account)}))
    else:
        click.echo(f"logged in to {state.target} as {account.email} ({role_name(account.role)})")


@click.command(help="Forget the login kept for the server (or, with --all, every login).")
@click.option("--all", "everything", is_flag=True, help="every server's login")
@click.option(
    "--server",
    "-s",
    metavar="HOST:PORT",
    envvar="QUARTET_SERVER",
    help="the server (QUARTET_SERVER; else the one logged in to last)",
)
def logout(everything: bool, server: str | None) -> None:
    target = None if everything else (server or credentials.default_server())
    gone = credentials.forget(target)
    click.echo(f"logged out of {', '.join(gone)}" if gone else "not logged in")


@click.command(help="Print the account the command signs in as, and the server.")
@api_command("table", "json")
def whoami() -> None:
    state = session()
    account = state.client().auth.current_account()
    if state.format == "json":
        click.echo(json_text({"server": state.target, "account": as_dict(account)}))
        return
    print_one(account, [("server", state.target), *_account_rows(account)], "table")


@click.group(help="Accounts (admins).")
def accounts() -> None:
    pass


@accounts.command("list", help="List the accounts, by id.")
@limit_option
@api_command("table", "json", "csv")
def list_accounts(limit: int) -> None:
    state = session()
    found = state.client().auth.iter_accounts(page_size=page_size(limit))
    print_list(limited(found, limit), ACCOUNT_COLUMNS, state.format)


@accounts.command("create", help="Create an account (a user unless --role says otherwise).")
@click.argument("email")
@click.option("--role", type=click.Choice(list(ROLES)), default="user", show_default=True)
@password_option
@api_command("table", "json")
def create_account(email: str, role: str, password_stdin: bool) -> None:
    state = session()
    password = _password(password_stdin, f"password for {email}", confirm=True)
    created = state.client().auth.create_account(email, password, role=ROLES[role])
    print_one(created.account, _account_rows(created.account), state.format)


@accounts.command("set-role", help="Give an account another role.")
@click.argument("account_id", type=int, metavar="ID")
@click.argument("role", type=click.Choice(list(ROLES)))
@api_command("table", "json")
def set_role(account_id: int, role: str) -> None:
    state = session()
    account = state.client().auth.set_role(account_id, ROLES[role])
    print_one(account, _account_rows(account), state.format)


APPLICATION_COLUMNS: list[Column[pb.Application]] = [
    Column("id", lambda a: a.id, "right"),
    Column("name", lambda a: a.name),
    Column("created", lambda a: time_text(a.create_time)),
    Column("keys", lambda a: " ".join(k.id for k in a.api_keys if not k.HasField("revoke_time"))),
    Column(
        "revoked keys", lambda a: " ".join(k.id for k in a.api_keys if k.HasField("revoke_time"))
    ),
]


@click.group(help="Applications: the senders of events, with their API keys (admins).")
def applications() -> None:
    pass


@applications.command("create", help="Register an application; prints its API key, only this once.")
@click.argument("name")
@api_command("table", "json")
def create_application(name: str) -> None:
    state = session()
    created = state.client().auth.create_application(name)
    app = created.application
    rows = [("id", app.id), ("name", app.name), ("created", time_text(app.create_time))]
    _print_secret(created, rows, created.api_key)


def _print_secret(created: Message, rows: list[tuple[str, object]], api_key: str) -> None:
    """A created application or key, with its API key, and (for people) that it is shown once."""
    fmt = session().format
    print_one(created, [*rows, ("api key", api_key)], fmt)
    if fmt == "table":
        click.echo("keep the API key now: it is never shown again", err=True)


@applications.command("list", help="List the applications and their keys, by id.")
@limit_option
@api_command("table", "json", "csv")
def list_applications(limit: int) -> None:
    state = session()
    found = state.client().auth.iter_applications(page_size=page_size(limit))
    print_list(limited(found, limit), APPLICATION_COLUMNS, state.format)


@click.group(help="API keys of applications (admins).")
def keys() -> None:
    pass


@keys.command("create", help="Another key for an application (to rotate keys); shown only once.")
@click.argument("application_id", type=int, metavar="APPLICATION_ID")
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    metavar="ORIGIN",
    help="make a publishable key for web pages on this origin (e.g. https://shop.example.com; "
    "repeat for several): it may only send events, over the HTTP port (docs/http.md)",
)
@api_command("table", "json")
def create_key(application_id: int, allowed_origins: tuple[str, ...]) -> None:
    state = session()
    created = state.client().auth.create_api_key(application_id, allowed_origins=allowed_origins)
    key = created.key
    rows = [("id", key.id), ("application", key.application_id)]
    if key.allowed_origins:
        rows += [("kind", "publishable"), ("allowed origins", " ".join(key.allowed_origins))]
    _print_secret(created, [*rows, ("created", time_text(key.create_time))], created.api_key)


@keys.command("revoke", help="Revoke a key: it is refused from now on.")
@click.argument("key_id", metavar="KEY_ID")
@api_command("table", "json")
def revoke_key(key_id: str) -> None:
    state = session()
    key = state.client().auth.revoke_api_key(key_id)
    print_one(
        key,
        [
            ("id", key.id),
            ("application", key.application_id),
            ("created", time_text(key.create_time)),
            ("revoked", time_text(key.revoke_time)),
        ],
        state.format,
    )


COMMANDS = [login, logout, whoami, accounts, applications, keys]
