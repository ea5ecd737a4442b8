"""Account security (issue 12, items 10-13): login throttling, disabled and deleted accounts,
self sign-up, and weak production secrets. Through a real server, on every backend."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest

from quartet import storage
from quartet.auth.v1 import auth_service_pb2 as pb
from quartet.client import Client, QuartetError, event
from quartet.events.v1 import event_service_pb2 as events_pb
from quartet.events.v1 import event_service_pb2_grpc
from quartet.experiments.v1 import experiment_service_pb2 as experiments_pb
from quartet.experiments.v1 import experiment_service_pb2_grpc
from quartet.server.auth import authenticator, passwords, service
from quartet.server.settings import GOOD_SECRET_COMMAND, Settings, SettingsError
from quartet.server.testing import running_server
from quartet.storage import accounts
from tests.conftest import SECRET, Principal, mint_token

PASSWORD = "correct horse battery"
WRONG = "wrong password"


def failure(call: Callable[[], object]) -> QuartetError:
    with pytest.raises(QuartetError) as caught:
        call()
    return caught.value


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    """("OK", "") or (status code name, reason) of a call."""
    try:
        call()
    except QuartetError as error:
        return error.code.name, error.reason
    return "OK", ""


FAILED = ("UNAUTHENTICATED", "LOGIN_FAILED")
THROTTLED = ("RESOURCE_EXHAUSTED", "LOGIN_THROTTLED")


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords the (in-process) server verified, in order."""
    verified: list[str] = []
    real = passwords.verify_password

    def counting(password: str, encoded: str | None) -> bool:
        verified.append(password)
        return real(password, encoded)

    monkeypatch.setattr(service, "verify_password", counting)
    return verified


@dataclasses.dataclass
class Served:
    """A running server, its database, and helpers to arrange rows."""

    target: str
    database: peewee.Database

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.database.connection_context():
            return fn(*args)

    def client(self, token: str | None = None) -> Client:
        return Client(self.target, token=token)

    def account(self, role: str = "user", email: str = "", password: str = PASSWORD) -> int:
        """A new account with this password (hashed once here, not by the server)."""
        email = email or f"{role}-{secrets.token_hex(4)}@example.com"
        encoded = passwords.hash_password(password)
        return int(self.run(accounts.create_account, email, encoded, role).id)


@contextlib.contextmanager
def serve(settings: Settings, **changes: Any) -> Iterator[Served]:
    with running_server(dataclasses.replace(settings, **changes)) as target:
        yield Served(target, storage.base.db.obj)


# Small settings, so that the tests wait seconds rather than minutes.
THROTTLE = {
    "login_failures_per_account": 3,
    "login_failures_per_address": 0,
    "login_delay_seconds": 2.0,
    "login_max_delay_seconds": 60.0,
    "login_failure_window_seconds": 120.0,
}


# --- item 10: login throttling --------------------------------------------------------------------


def test_wrong_passwords_past_the_threshold_are_refused_then_the_right_one_until_the_delay(
    settings: Settings, hashes: list[str]
) -> None:
    with serve(settings, **THROTTLE) as server, server.client() as anonymous:
        server.account(email="peter@example.com")
        login = anonymous.auth.login
        assert [outcome(lambda: login("peter@example.com", WRONG)) for _ in range(3)] == [
            FAILED
        ] * 3
        refused = failure(lambda: login("peter@example.com", WRONG))
        assert (refused.code.name, refused.reason) == THROTTLED
        assert refused.retry_delay is not None and 0 < refused.retry_delay <= 2
        # The right password is refused too, and neither refusal computed a hash.
        right = failure(lambda: login("peter@example.com", PASSWORD))
        assert (right.code.name, right.reason) == THROTTLED and right.retry_delay is not None
        assert hashes == [WRONG] * 3
        time.sleep(right.retry_delay + 0.2)
        assert login("peter@example.com", PASSWORD).access_token
        # A success starts the count again: the next failure is answered, not throttled.
        assert outcome(lambda: login("peter@example.com", WRONG)) == FAILED


def test_the_delay_grows_with_each_failure_after_the_threshold(settings: Settings) -> None:
    with serve(settings, **THROTTLE) as server, server.client() as anonymous:
        login = anonymous.auth.login
        for _ in range(3):
            assert outcome(lambda: login("growing@example.com", WRONG)) == FAILED
        first = failure(lambda: login("growing@example.com", WRONG)).retry_delay
        assert first is not None
        time.sleep(first + 0.2)
        assert outcome(lambda: login("growing@example.com", WRONG)) == FAILED
        second = failure(lambda: login("growing@example.com", WRONG)).retry_delay
        # Doubled: 4 s from the failure that blocked, rounded up, less the time spent since (over
        # a second on a loaded machine, with its hash); the first delay is never more than 2 s.
        assert second is not None and 2 < second <= 4 and second > first


def test_an_unknown_email_is_throttled_exactly_like_a_registered_one(settings: Settings) -> None:
    # A delay no loaded machine's password hash outlasts, so that each refusal is seen.
    with (
        serve(settings, **{**THROTTLE, "login_delay_seconds": 30.0}) as server,
        server.client() as anonymous,
    ):
        server.account(email="known@example.com")
        answers = {}
        for email in ("known@example.com", "unknown@example.com"):
            seen = []
            for _ in range(5):
                try:
                    anonymous.auth.login(email, WRONG)
                except QuartetError as error:
                    seen.append((error.code, error.reason, error.message, error.retry_delay))
            answers[email] = [(code, reason, message) for code, reason, message, _ in seen]
            assert [delay is not None for *_, delay in seen] == [False] * 3 + [True] * 2
        assert answers["known@example.com"] == answers["unknown@example.com"]


def test_concurrent_guesses_get_no_more_tries_than_sequential_ones(
    settings: Settings, hashes: list[str]
) -> None:
    with serve(settings, **THROTTLE) as server, server.client() as anonymous:
        server.account(email="burst@example.com")
        results: list[tuple[str, str]] = []
        start = threading.Barrier(12)

        def guess() -> None:
            start.wait()
            results.append(outcome(lambda: anonymous.auth.login("burst@example.com", WRONG)))

        threads = [threading.Thread(target=guess) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(results) == sorted([FAILED] * 3 + [THROTTLED] * 9)
        assert len(hashes) == 3


def test_past_the_address_limit_another_account_is_refused_from_that_address(
    settings: Settings, hashes: list[str]
) -> None:
    limits = {**THROTTLE, "login_failures_per_account": 100, "login_failures_per_address": 4}
    with serve(settings, **limits) as server, server.client() as anonymous:
        server.account(email="victim@example.com")
        for number in range(4):  # a different email each time: only the address adds up
            guess = functools.partial(anonymous.auth.login, f"x{number}@example.com", WRONG)
            assert outcome(guess) == FAILED
        refused = failure(lambda: anonymous.auth.login("victim@example.com", PASSWORD))
        assert (refused.code.name, refused.reason) == THROTTLED and refused.retry_delay
        assert len(hashes) == 4


def test_successful_logins_do_not_use_up_the_address_limit(settings: Settings) -> None:
    limits = {**THROTTLE, "login_failures_per_address": 2}
    with serve(settings, **limits) as server, server.client() as anonymous:
        server.account(email="often@example.com")
        for _ in range(4):
            assert anonymous.auth.login("often@example.com", PASSWORD).access_token


def test_sign_ups_that_hit_a_taken_email_count_against_the_address(settings: Settings) -> None:
    limits = {**THROTTLE, "login_failures_per_address": 2}
    with serve(settings, **limits) as server, server.client() as anonymous:
        for number in range(3):  # new accounts are no failures
            anonymous.auth.create_account(f"new{number}@example.com", PASSWORD)
        taken = [
            outcome(lambda: anonymous.auth.create_account("new0@example.com", PASSWORD))
            for _ in range(3)
        ]
        assert taken == [("ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS")] * 2 + [THROTTLED]
        # ... and so do failed logins: the address is blocked for both.
        assert outcome(lambda: anonymous.auth.login("new1@example.com", PASSWORD)) == THROTTLED


def test_a_successful_login_writes_once_after_its_attempt_is_counted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count, then the refresh token's row with the success forgiven: two transactions (on
    SQLite, two turns of the single writer), where resetting the email's count and refunding the
    address's apart took four."""
    limits = {**THROTTLE, "login_failures_per_address": 10}
    with serve(settings, **limits) as server, server.client() as anonymous:
        server.account(email="writes@example.com")
        begun: list[object] = []
        real = server.database.begin

        def counting(*args: Any, **kwargs: Any) -> Any:
            begun.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(server.database, "begin", counting)
        assert anonymous.auth.login("writes@example.com", PASSWORD).access_token
        assert len(begun) == 2
        monkeypatch.undo()
        # Both keys were forgiven: the email starts again, the address lost this attempt.
        stored = server.run(lambda: {row.key[:3]: row.failures for row in accounts.LoginThrottle})
        assert stored == {"ip:": 0}


def test_the_counts_live_in_the_database(settings: Settings) -> None:
    """Every worker and replica shares them: a server started afresh on the same database still
    refuses, where a count in memory would have been lost."""
    with serve(settings, **THROTTLE) as server, server.client() as anonymous:
        for _ in range(3):
            assert outcome(lambda: anonymous.auth.login("shared@example.com", WRONG)) == FAILED
    with serve(settings, **THROTTLE) as server, server.client() as anonymous:
        assert outcome(lambda: anonymous.auth.login("shared@example.com", WRONG)) == THROTTLED
        stored = server.run(lambda: list(accounts.LoginThrottle.select()))
        assert [row.failures for row in stored] == [3]
        # Neither the email nor its plain hash, which a list of candidate emails would reverse.
        plain = hashlib.sha256(b"shared@example.com").hexdigest()[:48]
        assert "shared" not in stored[0].key and plain not in stored[0].key


# --- item 11: disabled and deleted accounts -------------------------------------------------------


@pytest.fixture
def quick_cache(monkeypatch: pytest.MonkeyPatch) -> float:
    """Account lookups cached 1 s instead of 10, for servers started after this fixture."""
    monkeypatch.setattr(authenticator, "ACCOUNT_CACHE_SECONDS", 1.0)
    return 1.0


def eventually(call: Callable[[], object], expected: tuple[str, str], within: float) -> float:
    """Seconds until call's outcome is expected; fails if that takes longer than within."""
    start = time.monotonic()
    while outcome(call) != expected:
        assert time.monotonic() - start < within, outcome(call)
        time.sleep(0.05)
    return time.monotonic() - start


def scrypt_hash(password: str) -> str:
    """A hash as releases before argon2id stored them: scrypt$N$r$p$salt$digest."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    text = [base64.urlsafe_b64encode(raw).decode().rstrip("=") for raw in (salt, digest)]
    return f"scrypt${2**14}$8$1${text[0]}${text[1]}"


def test_an_earlier_releases_scrypt_hash_logs_in_once_and_is_replaced_by_argon2id(
    sign_in: Callable[..., Principal], target: str, run_in_db: Any
) -> None:
    user = sign_in("user")
    run_in_db(accounts.set_password_hash, user.id, scrypt_hash(PASSWORD))
    with Client(target) as anonymous:
        assert outcome(lambda: anonymous.auth.login(user.account.email, WRONG)) == FAILED
        assert outcome(lambda: anonymous.auth.login(user.account.email, PASSWORD)) == ("OK", "")
        stored = run_in_db(accounts.find_account_by_id, user.id).password_hash
        # OWASP's argon2id parameters, stored with the hash; the password still logs in.
        assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert not passwords.needs_rehash(stored)
        assert outcome(lambda: anonymous.auth.login(user.account.email, PASSWORD)) == ("OK", "")
    assert not passwords.verify_password(PASSWORD, None)
    assert not passwords.verify_password(PASSWORD, "$argon2id$not a hash")


def test_a_disabled_account_is_refused_everywhere_until_enabled(
    client: Client, sign_in: Callable[..., Principal], target: str, run_in_db: Any
) -> None:
    user = sign_in("user")
    run_in_db(accounts.set_password_hash, user.id, passwords.hash_password(PASSWORD))
    with Client(target) as anonymous:
        tokens = anonymous.auth.login(user.account.email, PASSWORD)
    calls = {
        "ListScores": lambda: user.client.scores.list(),
        "ListRegions": lambda: user.client.regions.list_regions(),
        "GetCurrentAccount": lambda: user.client.auth.current_account(),
    }
    assert {outcome(call) for call in calls.values()} == {("OK", "")}
    disabled = client.auth.disable_account(user.id)
    assert disabled.HasField("disable_time")
    refused = ("UNAUTHENTICATED", "ACCOUNT_DISABLED")
    assert {name: outcome(call) for name, call in calls.items()} == dict.fromkeys(calls, refused)
    with Client(target) as anonymous:
        assert outcome(lambda: anonymous.auth.refresh(tokens.refresh_token)) == refused
        assert outcome(lambda: anonymous.auth.login(user.account.email, PASSWORD)) == refused
        # A wrong password says nothing about the account's state.
        assert outcome(lambda: anonymous.auth.login(user.account.email, WRONG)) == FAILED
    again = client.auth.disable_account(user.id)  # keeps the first time
    assert again.disable_time == disabled.disable_time
    assert not client.auth.enable_account(user.id).HasField("disable_time")
    assert {outcome(call) for call in calls.values()} == {("OK", "")}
    with Client(target) as anonymous:
        assert anonymous.auth.refresh(tokens.refresh_token).access_token
        assert anonymous.auth.login(user.account.email, PASSWORD).access_token


def test_only_admins_disable_and_no_admin_disables_themselves(
    client: Client, admin: Principal, sign_in: Callable[..., Principal]
) -> None:
    user = sign_in("user")
    analyst = sign_in("analyst")
    denied = ("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")
    for caller in (user.client, analyst.client):
        assert outcome(functools.partial(caller.auth.disable_account, user.id)) == denied
        assert outcome(functools.partial(caller.auth.enable_account, user.id)) == denied
    own = failure(lambda: client.auth.disable_account(admin.id))
    assert (own.code, [v.field for v in own.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["account_id"],
    )
    assert outcome(lambda: client.auth.disable_account(9999)) == (
        "NOT_FOUND",
        "RESOURCE_NOT_FOUND",
    )
    assert outcome(lambda: client.auth.enable_account(0)) == ("INVALID_ARGUMENT", "FIELD_INVALID")


def test_a_deleted_account_is_refused_within_the_cache_bound(
    settings: Settings, quick_cache: float
) -> None:
    with serve(settings) as server:
        account_id = server.account(email="gone@example.com")
        with server.client() as anonymous:
            tokens = anonymous.auth.login("gone@example.com", PASSWORD)
        with server.client(tokens.access_token) as holder:
            assert holder.scores.list() is not None  # looked up, and cached
            assert holder.regions.list_regions()
            server.run(
                lambda: accounts.Account.delete().where(accounts.Account.id == account_id).execute()
            )
            gone = ("UNAUTHENTICATED", "ACCOUNT_NOT_FOUND")
            waited = eventually(holder.scores.list, gone, within=quick_cache + 5)
            assert outcome(holder.regions.list_regions) == gone
        with server.client() as anonymous:
            assert outcome(lambda: anonymous.auth.refresh(tokens.refresh_token)) == gone
        assert waited <= quick_cache + 5


def test_a_role_comes_from_the_database_not_the_token(
    settings: Settings, quick_cache: float
) -> None:
    with serve(settings) as server:
        boss = server.account("admin")
        demoted = server.account("admin")
        with (
            server.client(mint_token(boss, "admin")) as admin,
            server.client(mint_token(demoted, "admin")) as holder,
        ):
            assert list(holder.auth.iter_accounts())
            # Through the server: at once.
            admin.auth.set_role(demoted, pb.ROLE_USER)
            denied = ("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")
            assert outcome(lambda: list(holder.auth.iter_accounts())) == denied
            # A token claiming a role the account never had gets only the account's.
            with server.client(mint_token(server.account("user"), "admin")) as forged:
                assert outcome(lambda: list(forged.auth.iter_accounts())) == denied
            # Straight in the database (another replica, a script): within the bound.
            admin.auth.set_role(demoted, pb.ROLE_ADMIN)
            assert list(holder.auth.iter_accounts())
            server.run(
                lambda: (
                    accounts.Account.update(role="analyst")
                    .where(accounts.Account.id == demoted)
                    .execute()
                )
            )
            eventually(lambda: list(holder.auth.iter_accounts()), denied, quick_cache + 5)
            assert holder.events.list() is not None  # still an analyst


def _held_stream(first: list[Any], then: Callable[[], Any], go: threading.Event) -> Iterator[Any]:
    """The messages of a stream: `first`, then, once `go` is set, then() every 50 ms, 200 at
    most: the worker that made the change looks the caller up again, in the background, at the
    first message after it, and refuses one of the next."""
    yield from first
    go.wait(30)
    for _ in range(200):
        yield then()
        time.sleep(0.05)


def test_an_open_import_stops_at_the_next_message_once_its_account_is_disabled(
    client: Client, sign_in: Callable[..., Principal]
) -> None:
    importer = sign_in("admin")
    files = [
        experiments_pb.ImportExperimentDataRequest(file=experiments_pb.DATA_FILE_USERS, data=b"x"),
        experiments_pb.ImportExperimentDataRequest(file=experiments_pb.DATA_FILE_COMPOUNDS),
    ]
    more = experiments_pb.ImportExperimentDataRequest(file=experiments_pb.DATA_FILE_EXPERIMENTS)
    go = threading.Event()
    stub = experiment_service_pb2_grpc.ExperimentServiceStub(importer.client.channel)
    replies = stub.ImportExperimentData(
        _held_stream(files, lambda: more, go), metadata=importer.client.metadata, timeout=60
    )
    try:
        assert next(replies).stage == experiments_pb.IMPORT_STAGE_RECEIVING  # under way
        client.auth.disable_account(importer.id)
        go.set()
        with pytest.raises(grpc.RpcError) as caught:
            list(replies)
    finally:
        go.set()
    refused = QuartetError.from_rpc_error(caught.value)
    assert (refused.code.name, refused.reason) == ("UNAUTHENTICATED", "ACCOUNT_DISABLED")
    assert client.experiments.get_report().user_count == 0  # nothing imported


def test_an_open_event_stream_stops_at_the_next_message_once_its_key_is_revoked(
    client: Client, target: str
) -> None:
    created = client.auth.create_application("streamer")
    sent: list[str] = []

    def message() -> events_pb.StreamEventsRequest:
        pageview = event(
            session_id=uuid.uuid4(),
            category="page interaction",
            name="pageview",
            occurred_at="2021-01-01 09:15:27",
            data={"host": "a.example", "path": "/"},
        )
        sent.append(pageview.id)
        return events_pb.StreamEventsRequest(events=[pageview])

    go = threading.Event()
    with Client(target, token=created.api_key) as sender:
        stub = event_service_pb2_grpc.EventServiceStub(sender.channel)
        messages = _held_stream([message()], message, go)
        reply = stub.StreamEvents.future(messages, metadata=sender.metadata, timeout=60)
        try:
            deadline = time.monotonic() + 30
            while not list(client.events.iter()):  # the first message is in: the call began
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.auth.revoke_api_key(created.application.api_keys[0].id)
        finally:
            go.set()
        with pytest.raises(grpc.RpcError) as caught:
            reply.result()
    refused = QuartetError.from_rpc_error(caught.value)
    assert (refused.code.name, refused.reason) == ("UNAUTHENTICATED", "CREDENTIALS_REVOKED")
    stored = {e.id for e in client.events.iter()}
    assert stored < set(sent) and len(stored) < 50  # the rest refused


def test_a_recheck_never_waits_for_the_database_thread_an_import_holds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one database thread, held by the import for its whole length, a check that looked
    the account up itself would wait for that thread forever (until the call's deadline)."""
    monkeypatch.setattr(authenticator, "ACCOUNT_CACHE_SECONDS", 0.2)
    seed = Path(storage.__file__).parent / "data/experiments"
    kinds = {"users": "USERS", "compounds": "COMPOUNDS", "user_experiments": "EXPERIMENTS"}
    files = [
        experiments_pb.ImportExperimentDataRequest(
            file=getattr(experiments_pb, f"DATA_FILE_{kind}"),
            data=(seed / f"{name}.csv").read_bytes(),
        )
        for name, kind in kinds.items()
    ]

    def slowly() -> Iterator[experiments_pb.ImportExperimentDataRequest]:
        for request in files:
            time.sleep(0.5)  # the account's cache entry expires between messages
            yield request

    with serve(settings, db_threads=1) as server:
        token = mint_token(server.account("admin"), "admin")
        with server.client(token) as importer:
            stub = experiment_service_pb2_grpc.ExperimentServiceStub(importer.channel)
            replies = list(
                stub.ImportExperimentData(slowly(), metadata=importer.metadata, timeout=20)
            )
            assert replies[-1].stage == experiments_pb.IMPORT_STAGE_DONE
            assert importer.experiments.get_report().user_count == 10


# --- item 12: self sign-up ------------------------------------------------------------------------


def test_sign_up_is_open_in_development_and_closed_in_production_by_default() -> None:
    assert Settings(secret=SECRET).signup_open
    assert not Settings(secret=SECRET, environment="production").signup_open
    assert Settings(secret=SECRET, environment="production", signup="open").signup_open
    assert not Settings(secret=SECRET, signup="closed").signup_open
    with pytest.raises(SettingsError, match="QUARTET_SIGNUP"):
        Settings(secret=SECRET, signup="maybe").validated()
    assert not Settings.from_env(
        {"QUARTET_ENV": "production", "QUARTET_SECRET": SECRET}
    ).signup_open


@pytest.mark.parametrize("changes", [{"signup": "closed"}, {"environment": "production"}])
def test_closed_sign_up_leaves_account_creation_to_admins(
    settings: Settings, changes: dict[str, str]
) -> None:
    with serve(settings, **changes) as server:
        user = server.account("user")
        closed = ("PERMISSION_DENIED", "SIGNUP_CLOSED")
        with server.client() as anonymous, server.client(mint_token(user, "user")) as member:
            for caller in (anonymous, member):
                create = caller.auth.create_account
                assert outcome(functools.partial(create, "a@example.com", PASSWORD)) == closed
                # Closed says nothing about which emails are taken.
                assert outcome(functools.partial(create, "admin0@example.com", PASSWORD)) == closed
        with server.client(mint_token(server.account("admin"), "admin")) as admin:
            made = admin.auth.create_account("a@example.com", PASSWORD)
            assert made.account.role == pb.ROLE_USER


def test_open_sign_up_lets_anyone_create_a_user(settings: Settings) -> None:
    with serve(settings, signup="open", environment="production") as server:
        with server.client() as anonymous:
            made = anonymous.auth.create_account("Someone@Example.com", PASSWORD)
            assert made.account.email == "someone@example.com"


# --- item 13: weak production secrets -------------------------------------------------------------

WEAK = [
    "a" * 32,
    "password" * 4,
    "Password1!" * 4,
    "abc" * 11,
    "0123456789" * 4,
    "change-me-change-me-change-me-now",
    "aaaabbbbccccddddeeeeffffgggghhhh",
    "short-but-random-Zq8",
]


@pytest.mark.parametrize("secret", WEAK)
def test_production_refuses_an_obviously_weak_secret(secret: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(secret=secret, environment="production").validated()
    assert "QUARTET_SECRET" in str(refused.value) and GOOD_SECRET_COMMAND in str(refused.value)
    Settings(secret=secret).validated()  # development takes anything


def test_production_accepts_random_secrets() -> None:
    makers: list[Callable[[], str]] = [
        lambda: secrets.token_urlsafe(24),  # 32 characters
        lambda: secrets.token_hex(16),  # 32 hex digits: 128 bits
        lambda: secrets.token_urlsafe(48),  # what the message suggests
        lambda: secrets.token_hex(64),
    ]
    for make in makers:
        for _ in range(500):
            secret = make()
            assert Settings(secret=secret, environment="production").validated().secret == secret
    _, *arguments = shlex.split(GOOD_SECRET_COMMAND)
    command = subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, check=True
    )
    Settings(secret=command.stdout.strip(), environment="production").validated()


@pytest.mark.parametrize("secret", ["a" * 32, "password" * 4])
def test_the_server_refuses_to_start_with_a_weak_secret(tmp_path: Any, secret: str) -> None:
    env = {
        **os.environ,
        "QUARTET_ENV": "production",
        "QUARTET_SECRET": secret,
        "DATABASE_URL": f"sqlite:///{tmp_path}/q.db",
    }
    result = subprocess.run(
        [sys.executable, "-m", "quartet.server", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "QUARTET_SECRET" in result.stderr and "secrets.token_urlsafe(48)" in result.stderr
    assert secret not in result.stderr  # never printed
