"""Two replicas (separate `quartet server serve` processes, each with its own workers, on two
ports) over one database, as deployed behind a load balancer: what one replica changes, the other
honours within a second, and nothing done on both at once is done twice or half.

PostgreSQL is the database replicas share in production; SQLite runs the same tests with both
servers on one file (one host), which exercises the change counters instead of LISTEN/NOTIFY.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import grpc
import peewee
import psycopg2
import pytest

from quartet import storage
from quartet.auth.v1 import auth_service_pb2
from quartet.client import Client, QuartetError, event
from quartet.events.v1 import event_service_pb2
from quartet.experiments.v1 import experiment_service_pb2
from quartet.server.auth.authenticator import KEY_CACHE_SECONDS
from quartet.server.events import registry
from quartet.storage import accounts, events
from tests.conftest import SECRET, mint_token
from tests.helpers import Background, ServerProcess, database_unreachable, server_process
from tests.test_experiments import FIXTURE_EXPERIMENTS, FIXTURE_USERS, figures, load, report

# The bound the replicas promise (docs/operations.md, "Replicas and cache coherence").
BOUND_SECONDS = 1.0
WORKERS = "2"  # per replica, so that changes cross worker processes as well as replicas
SESSION = "e2085be5-9137-4e4e-80b5-f1ffddc25423"
STORED = event_service_pb2.EVENT_STATUS_STORED


@contextlib.contextmanager
def replicas(database_url: str, workers: str = WORKERS) -> Iterator[tuple[str, str]]:
    """Two servers over database_url, started one after the other; their addresses."""
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": database_url}
    with (
        server_process("--workers", workers, env=env) as a,
        server_process("--workers", workers, env=env) as b,
    ):
        try:
            yield a.address, b.address
        except BaseException:
            for name, server in (("A", a), ("B", b)):  # why a call failed, if the server knows
                print(f"--- replica {name}'s log ---", *server.log[-40:], sep="\n")
            raise


def make_admin(database_url: str, email: str = "ops@example.com") -> str:
    """An admin's access token, the account made directly in the database."""
    return mint_token(create_account(database_url, email, "admin"), "admin")


def new_application(address: str, admin: str) -> auth_service_pb2.CreateApplicationResponse:
    """An application registered through the server at address, with its first key."""
    with Client(address, token=admin) as client:
        return client.auth.create_application("web")


def create_account(
    database_url: str, email: str, role: str, password_hash: str | None = None
) -> int:
    database = storage.open_database(database_url)
    storage.bind(database)
    with database.connection_context():
        account = accounts.create_account(email, password_hash, role)
    storage.close(database)
    return int(account.id)


def seconds_until(condition: Callable[[], bool], limit: float = 10.0) -> float:
    """How long until condition() holds, polling; fails if it never does within limit."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, f"not within {limit} s"
        time.sleep(0.01)
    return time.monotonic() - start


def refused(call: Callable[[], object], code: grpc.StatusCode) -> bool:
    try:
        call()
    except QuartetError as exc:
        assert exc.code == code, exc
        return True
    return False


def figures_of(report: experiment_service_pb2.ExperimentReport) -> bytes:
    """What a data set's report says, whichever import published it."""
    return figures(report).SerializeToString(deterministic=True)


def page_view(
    category: str = "page interaction", name: str = "pageview", event_id: str | None = None
) -> event_service_pb2.Event:
    return event(
        session_id=SESSION,
        category=category,
        name=name,
        occurred_at="2021-01-01 00:00:00",
        data={"host": "h", "path": "/"},
        event_id=event_id,
    )


def test_a_token_from_one_replica_works_on_the_other(database_url: str) -> None:
    from quartet.server.auth.passwords import hash_password

    create_account(database_url, "ada@example.com", "user", hash_password("correct horse 1"))
    with replicas(database_url) as (a, b), Client(a) as on_a:
        pair = on_a.auth.login("ada@example.com", "correct horse 1")
        with Client(b, token=pair.access_token) as on_b:
            assert on_b.auth.current_account().email == "ada@example.com"


def test_a_type_registered_on_one_replica_is_accepted_at_once_on_the_other(
    database_url: str,
) -> None:
    with replicas(database_url) as (a, b):
        admin = make_admin(database_url)
        key = new_application(a, admin).api_key
        with Client(b, token=key) as sender:
            with pytest.raises(QuartetError) as caught:  # B looked the type up: unknown
                sender.events.send(page_view(category="shop", name="order"))
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with Client(a, token=admin) as on_a:
                schema = {"type": "object", "required": ["host"]}
                on_a.events.create_type("shop", "order", schema)
                on_a.events.create_type("shop", "refund", schema)
            # Sent right after the registration: stored, not rejected (looked up, or announced).
            assert not sender.events.send(page_view(category="shop", name="refund")).duplicate
            # The type B had found missing a moment ago is accepted too.
            order = functools.partial(sender.events.send, page_view(category="shop", name="order"))
            seconds = seconds_until(lambda: not refused(order, grpc.StatusCode.INVALID_ARGUMENT))
            assert seconds < BOUND_SECONDS


def test_a_key_revoked_on_one_replica_is_refused_on_the_other_within_a_second(
    database_url: str,
) -> None:
    with replicas(database_url) as (a, b):
        admin = make_admin(database_url)
        created = new_application(a, admin)
        with Client(b, token=created.api_key) as sender:
            sender.events.send(page_view())  # B's worker caches the key as valid
            with Client(a, token=admin) as on_a:
                on_a.auth.revoke_api_key(created.application.api_keys[0].id)
            send = functools.partial(sender.events.send, page_view())
            seconds = seconds_until(lambda: refused(send, grpc.StatusCode.UNAUTHENTICATED))
    print(f"revoked on A, refused on B after {seconds * 1000:.0f} ms")
    assert seconds < BOUND_SECONDS


def test_a_role_change_and_a_disabled_account_are_seen_on_the_other_replica_within_a_second(
    database_url: str,
) -> None:
    with replicas(database_url) as (a, b):
        admin = make_admin(database_url)
        demoted = create_account(database_url, "demoted@example.com", "admin")
        disabled = create_account(database_url, "disabled@example.com", "user")
        with (
            Client(b, token=mint_token(demoted, "admin")) as as_demoted,
            Client(b, token=mint_token(disabled, "user")) as as_disabled,
        ):
            as_demoted.auth.list_accounts()  # cached on B as an admin
            as_disabled.auth.current_account()  # cached on B as enabled
            with Client(a, token=admin) as on_a:
                on_a.auth.set_role(demoted, auth_service_pb2.ROLE_USER)
                on_a.auth.disable_account(disabled)
            role_seconds = seconds_until(
                lambda: refused(as_demoted.auth.list_accounts, grpc.StatusCode.PERMISSION_DENIED)
            )
            disable_seconds = seconds_until(
                lambda: refused(as_disabled.auth.current_account, grpc.StatusCode.UNAUTHENTICATED)
            )
    assert role_seconds < BOUND_SECONDS
    assert disable_seconds < BOUND_SECONDS


def test_the_same_event_sent_to_both_replicas_is_stored_once(database_url: str) -> None:
    with replicas(database_url) as (a, b):
        key = new_application(a, make_admin(database_url)).api_key
        with Client(a, token=key) as to_a, Client(b, token=key) as to_b:
            for _ in range(20):
                message = page_view(event_id=str(uuid.uuid4()))
                sends = [
                    Background(lambda c=client, m=message: c.events.send(m))
                    for client in (to_a, to_b)
                ]
                for send in sends:
                    send.start()
                duplicates = sorted(send.join_result().duplicate for send in sends)  # type: ignore[attr-defined]
                assert duplicates == [False, True]
    database = storage.open_database(database_url)
    with database.connection_context():
        cursor = database.execute_sql("SELECT COUNT(*), COUNT(DISTINCT id) FROM event")  # type: ignore[no-untyped-call]
        assert cursor.fetchone() == (20, 20)
    storage.close(database)


def test_imports_started_on_both_replicas_leave_one_whole_data_set(database_url: str) -> None:
    with replicas(database_url) as (a, b):
        admin = make_admin(database_url)
        with Client(a, token=admin) as on_a, Client(b, token=admin) as on_b:
            # What each data set alone gives.
            load(on_a, users=FIXTURE_USERS, experiments=FIXTURE_EXPERIMENTS)
            fixture = (report(on_a), [e.id for e in on_a.experiments.iter()])
            fixture_figures = figures_of(on_a.experiments.get_report())
            load(on_a)
            seed = (report(on_a), [e.id for e in on_a.experiments.iter()])
            seed_figures = figures_of(on_a.experiments.get_report())
            assert fixture != seed
            for _ in range(3):
                imports = [
                    Background(lambda: load(on_a)),
                    Background(
                        lambda: load(on_b, users=FIXTURE_USERS, experiments=FIXTURE_EXPERIMENTS)
                    ),
                ]
                for each in imports:
                    each.start()
                for each in imports:
                    each.join_result(60)  # both publish: the second waits for the first
                shown = [(report(c), [e.id for e in c.experiments.iter()]) for c in (on_a, on_b)]
                assert shown[0] == shown[1]
                assert shown[0] in (fixture, seed)
                # The report names the import whose data set it shows: the one published last.
                history = on_a.experiments.get_report()
                assert history.import_id == on_b.experiments.get_report().import_id
                assert figures_of(history) == (
                    seed_figures if shown[0] == seed else fixture_figures
                )


def test_replicas_starting_together_on_a_fresh_database_migrate_once(
    empty_database_url: str,
) -> None:
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": empty_database_url}
    started: list[ServerProcess] = []

    def start(stack: contextlib.ExitStack) -> None:
        started.append(stack.enter_context(server_process("--workers", "1", env=env)))

    with contextlib.ExitStack() as stack:
        starts = [Background(lambda: start(stack)) for _ in range(2)]
        for each in starts:
            each.start()
        for each in starts:
            each.join_result(120)
        for server in started:
            with Client(server.address) as client:
                assert client.health.check()
    database = storage.open_database(empty_database_url)
    with database.connection_context():
        cursor = database.execute_sql("SELECT name, COUNT(*) FROM schema_migration GROUP BY name")  # type: ignore[no-untyped-call]
        counts = dict(cursor.fetchall())
    storage.close(database)
    assert counts and set(counts.values()) == {1}
    applied = [line for server in started for line in server.log if "applied migrations" in line]
    assert len(applied) == 1, applied


def test_a_listener_that_lost_the_database_forgets_every_cached_key_when_it_is_back(
    database_url: str, client: Client, target: str, db: peewee.Database
) -> None:
    created = client.auth.create_application("web")
    key_id = created.application.api_keys[0].id
    with Client(target, token=created.api_key) as sender:
        sender.events.send(page_view())
        cached = time.monotonic()
        # Revoked behind quartet's back: nothing is announced, so the cached key still passes.
        revoke_unannounced(database_url, key_id)
        sender.events.send(page_view())
        with database_unreachable(database_url, db):
            time.sleep(1.0)  # the listener fails (PostgreSQL: its connection is terminated)

        def refused_now() -> bool:
            try:
                sender.events.send(page_view())
            except QuartetError as exc:
                if exc.code == grpc.StatusCode.UNAVAILABLE:  # pooled connections died too
                    return False
                assert exc.code == grpc.StatusCode.UNAUTHENTICATED, exc
                return True
            return False

        seconds_until(refused_now)
    # Refused before the cache entry expired: the listener's return emptied the cache.
    assert time.monotonic() - cached < KEY_CACHE_SECONDS


def revoke_unannounced(database_url: str, key_id: str) -> None:
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(urlsplit(database_url).path[1:])
        with connection:
            connection.execute(
                "UPDATE api_key SET revoke_time = '2026-01-01 00:00:00' WHERE id = ?", (key_id,)
            )
        connection.close()
        return
    with psycopg2.connect(database_url) as postgres, postgres.cursor() as cursor:
        cursor.execute("UPDATE api_key SET revoke_time = now() WHERE id = %s", (key_id,))
    postgres.close()


def test_made_up_types_are_looked_up_once_until_a_registration_is_announced(
    client: Client, target: str, run_in_db: Callable[..., object]
) -> None:
    def made_up() -> list[event_service_pb2.Event]:
        return [page_view(category="made up", name=f"type {n}") for n in range(100)]

    with Client(target, token=client.auth.create_application("web").api_key) as sender:

        def stored() -> set[int]:
            results = sender.events.send_batch(made_up()).results
            return {n for n, r in enumerate(results) if r.status == STORED}

        assert stored() == set()
        # Registered behind quartet's back, unannounced: the types found missing a moment ago are
        # not looked up again, so the batch costs no query and is rejected as before.
        run_in_db(insert_unannounced_type, "made up", "type 7")
        assert stored() == set()
        # A registration anywhere is announced, and that ends it (every missing type is looked
        # up again, the unannounced one too).
        run_in_db(events.add_event_type, "made up", "type 8", {"type": "object"})
        assert seconds_until(lambda: stored() == {7, 8}) < BOUND_SECONDS


def insert_unannounced_type(category: str, name: str) -> None:
    events.EventType.insert(
        category=category, name=name, version=1, schema='{"type": "object"}'
    ).execute()


def test_a_replay_looks_up_the_types_it_does_not_know(
    client: Client, target: str, run_in_db: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is remembered as missing, so that only the replay's own lookup can find the type
    # registered below without an announcement (as by another replica a moment ago).
    monkeypatch.setattr(registry, "MISSING_SECONDS", 0.0)
    with Client(target, token=client.auth.create_application("web").api_key) as sender:
        sent = sender.events.send_batch([page_view(category="late", name="type") for _ in range(3)])
    assert {r.status for r in sent.results} == {event_service_pb2.EVENT_STATUS_REJECTED}
    run_in_db(insert_unannounced_type, "late", "type")
    *_, progress = client.events.replay_rejected(category="late")
    assert (progress.stored_count, progress.still_rejected_count) == (3, 0)
