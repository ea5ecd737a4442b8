"""Fixtures: a real quartet server on a free port, over SQLite and (when configured) PostgreSQL.

Every test that takes `client` (or `database_url`) runs once per backend. SQLite always runs; set
QUARTET_TEST_POSTGRES_URL to an existing PostgreSQL database (the CI does) and each such test also
runs against a database created for this session. If that server cannot be reached the tests
error: a configured backend is never skipped silently.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import peewee
import psycopg2
import pytest
from psycopg2.extras import execute_values

from quartet import storage
from quartet.client import Client
from quartet.server import services
from quartet.server.auth import TokenIssuer
from quartet.server.settings import Settings
from quartet.server.testing import running_server, running_servers
from quartet.storage import accounts
from quartet.storage.base import utcnow

T = TypeVar("T")

POSTGRES_URL = os.environ.get("QUARTET_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class PostgresServer:
    """Creates scratch databases on the configured server and drops them at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created: list[str] = []
        try:
            self._admin = psycopg2.connect(url, connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise RuntimeError(
                f"QUARTET_TEST_POSTGRES_URL={url!r} is set but unreachable: {exc}".strip()
            ) from exc
        self._admin.autocommit = True

    def create(self) -> str:
        name = f"quartet_test_{uuid.uuid4().hex[:12]}"
        with self._admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _with_database(self.url, name)

    def drop_all(self) -> None:
        with self._admin.cursor() as cursor:
            for name in self.created:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not POSTGRES_URL:
        raise RuntimeError("set QUARTET_TEST_POSTGRES_URL to run the PostgreSQL tests")
    server = PostgresServer(POSTGRES_URL)
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once; each test gets a copy instead of migrating again."""
    path = tmp_path_factory.mktemp("template") / "quartet.db"
    database = storage.open_database(f"sqlite:///{path}")
    storage.migrate(database)
    storage.close(database)
    return path


@dataclasses.dataclass
class MigratedState:
    """The rows a fresh migration leaves (seed data, reference data), per table."""

    url: str
    rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]]


@pytest.fixture(scope="session")
def migrated_postgres(postgres: PostgresServer) -> MigratedState:
    """A PostgreSQL database migrated once for the session, and what the migration put in it."""
    url = postgres.create()
    database = storage.open_database(url)
    storage.migrate(database)
    rows = {}
    with database.connection_context():
        for table in _tables():
            cursor = database.execute_sql(f"SELECT * FROM {table}")  # type: ignore[no-untyped-call]
            found = cursor.fetchall()
            if found:
                rows[table] = ([c[0] for c in cursor.description], found)
    storage.close(database)
    return MigratedState(url, rows)


def _tables() -> list[str]:
    """The tables a test may write: every one but the reference data's, which no call writes."""
    return [m._meta.table_name for m in services.MODELS if m not in storage.REFERENCE_MODELS]


def _auto_keys() -> dict[str, str]:
    """Each table's auto-increment key column, if it has one."""
    return {
        m._meta.table_name: m._meta.primary_key.column_name
        for m in services.MODELS
        if isinstance(m._meta.primary_key, peewee.AutoField)
    }


def _restore(state: MigratedState) -> None:
    """Put the database back as the migration left it: empty every table, then restore the
    migration's own rows and move each id sequence past them. (Copying a template database
    instead costs 0.3 s a test here.)"""
    database = storage.open_database(state.url)
    with database.connection_context(), database.atomic():
        cursor = database.cursor()  # type: ignore[no-untyped-call]
        cursor.execute(f"TRUNCATE {', '.join(_tables())} RESTART IDENTITY CASCADE")
        for table, (columns, rows) in state.rows.items():
            execute_values(cursor, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", rows)
            key = _auto_keys().get(table)
            if key:
                sequence = "pg_get_serial_sequence(%s, %s)"
                cursor.execute(
                    f"SELECT setval({sequence}, (SELECT MAX({key}) FROM {table}))", (table, key)
                )
    storage.close(database)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a migrated database holding no rows but the reference data."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite_template")
        shutil.copyfile(template, tmp_path / "quartet.db")
        yield f"sqlite:///{tmp_path / 'quartet.db'}"
        return
    state: MigratedState = request.getfixturevalue("migrated_postgres")
    yield state.url
    _restore(state)


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with no tables at all, for migration tests."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create()


SECRET = "test-secret-long-enough-for-production-and-for-signing-with-hs512-too"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, grace_seconds=0, db_threads=4, secret=SECRET)


@pytest.fixture
def target(settings: Settings) -> Iterator[str]:
    """The host:port of a real quartet server serving `settings`."""
    with running_server(settings) as address:
        yield address


@pytest.fixture
def http_servers(settings: Settings) -> Iterator[tuple[str, str]]:
    """A real server serving `settings` on gRPC and on an HTTP port: (host:port, base URL). A
    module using it overrides `target` with its gRPC address, for the SDK fixtures."""
    with running_servers(settings) as addresses:
        yield addresses


def mint_token(account_id: int, role: str, secret: str = SECRET) -> str:
    """An access token as the server issues them, without a login (password hashes are slow)."""
    issuer = TokenIssuer(secret, datetime.timedelta(minutes=15), datetime.timedelta(days=1))
    return issuer.access(account_id, role, utcnow()).token


@dataclasses.dataclass
class Principal:
    """A client signed in as an account of some role."""

    account: accounts.Account
    client: Client

    @property
    def id(self) -> int:
        return int(self.account.id)


@pytest.fixture
def sign_in(target: str, run_in_db: Any) -> Iterator[Callable[..., Principal]]:
    """sign_in(role="user", email=None): a new account of that role and a client using it."""
    opened: list[Client] = []
    counter = itertools.count(1)

    def sign_in(role: str = "user", email: str | None = None) -> Principal:
        email = email or f"{role}{next(counter)}@example.com"
        account = run_in_db(accounts.create_account, email, None, role)
        client = Client(target, token=mint_token(account.id, role))
        opened.append(client)
        return Principal(account, client)

    yield sign_in
    for client in opened:
        client.close()


@pytest.fixture
def admin(sign_in: Callable[..., Principal]) -> Principal:
    return sign_in("admin", "admin@example.net")


@pytest.fixture
def client(admin: Principal) -> Client:
    """A client signed in as an admin, who may call everything."""
    return admin.client


@pytest.fixture
def anonymous(target: str) -> Iterator[Client]:
    """A client that sends no credentials."""
    with Client(target) as client:
        yield client


@pytest.fixture
def db(target: str) -> peewee.Database:
    """The server's own database, for arranging rows a test needs and checking what was stored."""
    return storage.base.db.obj  # type: ignore[no-any-return]


@pytest.fixture
def run_in_db(db: peewee.Database) -> Any:
    """Call a storage function inside a connection of the server's database."""

    def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with db.connection_context():
            return fn(*args, **kwargs)

    return run
