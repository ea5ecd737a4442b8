"""Accounts, tokens, applications and the rules every method enforces, through the SDK."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import trustme
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from quartet import storage
from quartet.auth.v1 import auth_service_pb2 as pb
from quartet.client import Client, QuartetError
from quartet.server.auth import RULES, Authenticator, Caller, TokenIssuer, authenticator
from quartet.server.auth.authenticator import ExpiringCache
from quartet.server.auth.tokens import new_api_key
from quartet.server.errors import Unauthenticated
from quartet.server.pagination import encode_page_token
from quartet.server.services import SERVICE_NAMES
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import accounts, applications
from tests.conftest import SECRET, Principal, mint_token
from tests.helpers import Background, server_process, table_locked

PASSWORD = "correct horse battery"


def expect(
    code: grpc.StatusCode, reason: str, call: Callable[..., object], *args: Any
) -> QuartetError:
    """Assert that call(*args) fails with this code and reason; return the error."""
    with pytest.raises(QuartetError) as caught:
        call(*args)
    assert (caught.value.code, caught.value.reason) == (code, reason), caught.value
    return caught.value


# --- the seed's account tests (accounts/tests.py), on the contract -------------------------------


def test_valid_account_can_be_created(anonymous: Client) -> None:
    created = anonymous.auth.create_account("Peter@Example.com", PASSWORD)
    assert created.account.email == "peter@example.com"
    assert created.account.role == pb.ROLE_USER
    assert created.tokens.access_token and created.tokens.refresh_token


def test_account_cannot_be_created_twice(anonymous: Client) -> None:
    anonymous.auth.create_account("peter@example.com", PASSWORD)
    error = expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "RESOURCE_ALREADY_EXISTS",
        lambda: anonymous.auth.create_account("PETER@example.com", "another password"),
    )
    assert error.resource == ("account", "peter@example.com")


def test_user_can_login(anonymous: Client) -> None:
    anonymous.auth.create_account("peter@example.com", PASSWORD)
    pair = anonymous.login("peter@example.com", PASSWORD)
    assert pair.access_token and pair.refresh_token
    assert anonymous.auth.current_account().email == "peter@example.com"


def test_non_existing_user_cannot_login(anonymous: Client) -> None:
    anonymous.auth.create_account("peter@example.com", PASSWORD)
    unknown = expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "LOGIN_FAILED",
        lambda: anonymous.auth.login("nobody@example.com", PASSWORD),
    )
    wrong = expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "LOGIN_FAILED",
        lambda: anonymous.auth.login("peter@example.com", "wrong password"),
    )
    assert unknown.message == wrong.message  # no hint which one was wrong


def test_user_can_refresh_token(anonymous: Client, target: str) -> None:
    tokens = anonymous.auth.create_account("peter@example.com", PASSWORD).tokens
    refreshed = anonymous.auth.refresh(tokens.refresh_token)
    assert refreshed.access_token and refreshed.refresh_token != tokens.refresh_token
    with Client(target, token=refreshed.access_token) as client:
        assert client.auth.current_account().email == "peter@example.com"


def test_non_existing_user_cannot_refresh_token(anonymous: Client) -> None:
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
        lambda: anonymous.auth.refresh("not-a-token"),
    )
    forged = jwt.encode({"sub": "1", "typ": "refresh", "jti": "x"}, "another secret " * 3)
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
        lambda: anonymous.auth.refresh(forged),
    )


# The seed's three asset tests exercised an owned resource with a unique name; quartet's owned
# resource is the score and its uniquely named one the application.


def test_user_can_create_an_owned_resource(sign_in: Callable[..., Principal]) -> None:
    user = sign_in("user")
    assert user.client.scores.create(1).user_id == user.id


def test_user_cannot_duplicate_a_unique_name(client: Client) -> None:
    client.auth.create_application("checkout-web")
    expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "RESOURCE_ALREADY_EXISTS",
        lambda: client.auth.create_application("checkout-web"),
    )


def test_unauthenticated_user_cannot_create(anonymous: Client) -> None:
    expect(
        grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING", lambda: anonymous.scores.create(1)
    )


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "password", "fields"),
    [
        ("not-an-email", PASSWORD, {"email"}),
        ("a@example.com", "short", {"password"}),
        ("", "", {"email", "password"}),
        ("a@example.com", "x" * 129, {"password"}),
    ],
)
def test_invalid_account_fields(
    anonymous: Client, email: str, password: str, fields: set[str]
) -> None:
    error = expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        lambda: anonymous.auth.create_account(email, password),
    )
    assert {v.field for v in error.field_violations} == fields


def test_only_admins_create_privileged_accounts(
    anonymous: Client, sign_in: Callable[..., Principal], client: Client
) -> None:
    for caller in (anonymous, sign_in("user").client, sign_in("analyst").client):
        expect(
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
            functools.partial(caller.auth.create_account, role=pb.ROLE_ADMIN),
            "x@example.com",
            PASSWORD,
        )
    made = client.auth.create_account("analyst@example.com", PASSWORD, role=pb.ROLE_ANALYST)
    assert made.account.role == pb.ROLE_ANALYST


def test_admin_sets_roles_and_lists_accounts(
    client: Client, sign_in: Callable[..., Principal]
) -> None:
    user = sign_in("user")
    assert client.auth.set_role(user.id, pb.ROLE_ANALYST).role == pb.ROLE_ANALYST
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        lambda: client.auth.set_role(user.id, pb.ROLE_UNSPECIFIED),
    )
    expect(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        lambda: client.auth.set_role(9999, pb.ROLE_USER),
    )
    emails = [a.email for a in client.auth.iter_accounts(page_size=1)]
    assert emails == ["admin@example.net", "user1@example.com"]


@pytest.mark.parametrize("after", [2**70, -(2**63) - 1, 1.5, "1"])
def test_forged_account_page_token_is_invalid(client: Client, after: object) -> None:
    token = encode_page_token(pb.ListAccountsRequest(), (after,))  # anyone can make one
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_TOKEN_INVALID",
        lambda: client.auth.list_accounts(page_token=token),
    )


# --- tokens ---------------------------------------------------------------------------------------


def test_refresh_token_is_single_use_and_reuse_revokes_the_login(
    anonymous: Client, target: str
) -> None:
    first = anonymous.auth.create_account("peter@example.com", PASSWORD).tokens
    second = anonymous.auth.refresh(first.refresh_token)
    # Someone replays the first refresh token: it leaked, so the whole login is revoked...
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_REVOKED",
        lambda: anonymous.auth.refresh(first.refresh_token),
    )
    # ... including the token its legitimate holder got by rotating.
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_REVOKED",
        lambda: anonymous.auth.refresh(second.refresh_token),
    )
    # Access tokens are not revoked (as documented): each works until it expires.
    with Client(target, token=second.access_token) as holder:
        assert holder.auth.current_account().email == "peter@example.com"
    # A fresh login is unaffected.
    assert anonymous.auth.login("peter@example.com", PASSWORD).access_token


def test_racing_refreshes_revoke_the_login_they_say_they_revoke(
    anonymous: Client, database_url: str
) -> None:
    first = anonymous.auth.create_account("peter@example.com", PASSWORD).tokens
    # Both exchanges wait on the lock, so both read the token as unused before either commits.
    with table_locked(database_url, "refresh_token"):
        racers = [Background(functools.partial(anonymous.auth.refresh, first.refresh_token))]
        racers.append(Background(functools.partial(anonymous.auth.refresh, first.refresh_token)))
        for racer in racers:
            racer.start()
        time.sleep(0.5)
    outcomes: list[Any] = []
    for racer in racers:
        try:
            outcomes.append(racer.join_result())
        except QuartetError as error:
            outcomes.append((error.code, error.reason))
    refused = (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_REVOKED")
    assert refused in outcomes, outcomes
    won = [pair for pair in outcomes if isinstance(pair, pb.TokenPair)]
    assert len(won) <= 1
    for pair in won:  # the loser was told the login is revoked: so it must be, the winner's too
        expect(*refused, anonymous.auth.refresh, pair.refresh_token)


def bad_tokens(account_id: int) -> dict[str, tuple[str, str]]:
    """Credentials that must be refused, and the reason for each."""
    now = datetime.datetime.now(datetime.UTC)
    claims = {"sub": str(account_id), "role": "admin", "typ": "access", "iss": "quartet"}
    good = mint_token(account_id, "admin")
    header, payload, signature = good.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["sub"] = str(account_id + 1)
    tampered_payload = base64.urlsafe_b64encode(json.dumps(tampered).encode()).decode().rstrip("=")
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    return {
        "expired": (
            jwt.encode(
                {
                    **claims,
                    "iat": now - datetime.timedelta(hours=2),
                    "exp": now - datetime.timedelta(hours=1),
                },
                SECRET,
            ),
            "CREDENTIALS_EXPIRED",
        ),
        "tampered": (f"{header}.{tampered_payload}.{signature}", "CREDENTIALS_INVALID"),
        "other secret": (
            jwt.encode({**claims, "iat": now, "exp": now + datetime.timedelta(hours=1)}, "x" * 40),
            "CREDENTIALS_INVALID",
        ),
        "wrong algorithm": (
            jwt.encode(
                {**claims, "iat": now, "exp": now + datetime.timedelta(hours=1)},
                SECRET,
                algorithm="HS512",
            ),
            "CREDENTIALS_INVALID",
        ),
        "alg none": (f"{unsigned_header}.{payload}.", "CREDENTIALS_INVALID"),
        "refresh as access": (
            jwt.encode(
                {**claims, "typ": "refresh", "iat": now, "exp": now + datetime.timedelta(hours=1)},
                SECRET,
            ),
            "CREDENTIALS_INVALID",
        ),
        "garbage": ("garbage", "CREDENTIALS_INVALID"),
        "unknown api key": ("qk_0123456789abcdef_secret", "CREDENTIALS_INVALID"),
    }


def protected_methods() -> list[str]:
    return [name for name, rule in RULES.items() if rule.credentials == "required"]


def call_raw(
    client: Client,
    method: str,
    metadata: tuple[tuple[str, str], ...],
    *,
    first_only: bool = False,
    timeout: float = 5,
) -> None:
    """Call any method with an empty request and the given metadata; raise QuartetError.

    A streamed answer is read to its end, or with first_only to its first message (Health/Watch
    and reflection never end by themselves)."""
    service, name = method.lstrip("/").split("/")
    descriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    request = message_factory.GetMessageClass(descriptor.input_type)()
    kind = ("stream" if descriptor.client_streaming else "unary") + (
        "_stream" if descriptor.server_streaming else "_unary"
    )
    callable_ = getattr(client.channel, kind)(
        method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )
    argument = iter([request]) if descriptor.client_streaming else request
    try:
        result = callable_(argument, timeout=timeout, metadata=metadata)
        if descriptor.server_streaming and first_only:
            next(result, None)
            result.cancel()
        elif descriptor.server_streaming:
            list(result)
    except grpc.RpcError as error:
        raise QuartetError.from_rpc_error(error) from None


def test_every_method_has_a_rule() -> None:
    registered = {
        f"/{service}/{method.name}"
        for service in SERVICE_NAMES
        for method in descriptor_pool.Default().FindServiceByName(service).methods
    }
    assert registered <= RULES.keys(), registered - RULES.keys()


def test_every_protected_method_refuses_missing_and_bad_credentials(
    anonymous: Client, admin: Principal
) -> None:
    created = admin.client.auth.create_application("revoked")
    admin.client.auth.revoke_api_key(created.application.api_keys[0].id)
    refused = {**bad_tokens(admin.id), "revoked key": (created.api_key, "CREDENTIALS_REVOKED")}
    for method in protected_methods():
        expect(
            grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING", call_raw, anonymous, method, ()
        )
        for kind, (token, reason) in refused.items():
            metadata = (("authorization", f"Bearer {token}"),)
            error = expect(
                grpc.StatusCode.UNAUTHENTICATED, reason, call_raw, anonymous, method, metadata
            )
            assert error.message, (method, kind)


def test_malformed_authorization_metadata(anonymous: Client, admin: Principal) -> None:
    token = mint_token(admin.id, "admin")
    for value in (token, f"Basic {token}", "Bearer", "Bearer  "):
        metadata = (("authorization", value),)
        method = "/quartet.auth.v1.AuthService/GetCurrentAccount"
        expect(
            grpc.StatusCode.UNAUTHENTICATED,
            "CREDENTIALS_INVALID",
            call_raw,
            anonymous,
            method,
            metadata,
        )


def test_roles_are_enforced_on_every_admin_method(sign_in: Callable[..., Principal]) -> None:
    admin_only = [name for name, rule in RULES.items() if rule.grants == frozenset({"admin"})]
    assert admin_only
    for role in ("user", "analyst"):
        principal = sign_in(role)
        for method in admin_only:
            client = principal.client
            expect(
                grpc.StatusCode.PERMISSION_DENIED,
                "ROLE_NOT_ALLOWED",
                call_raw,
                client,
                method,
                client.metadata,
            )


# Methods whose servicer decides more than the policy: Login and RefreshToken authenticate with
# the request's own credentials (an empty one is UNAUTHENTICATED).
SERVICER_DECIDES = {
    "/quartet.auth.v1.AuthService/Login": grpc.StatusCode.UNAUTHENTICATED,
    "/quartet.auth.v1.AuthService/RefreshToken": grpc.StatusCode.UNAUTHENTICATED,
}


def test_every_method_admits_exactly_the_callers_its_rule_names(
    client: Client, anonymous: Client, sign_in: Callable[..., Principal]
) -> None:
    app = client.auth.create_application("rules")
    callers: dict[str, tuple[Caller | None, tuple[tuple[str, str], ...]]] = {
        "no credential": (None, ()),
        "application": (
            Caller("application", app.application.id, "application"),
            (("authorization", f"Bearer {app.api_key}"),),
        ),
    }
    for role in ("user", "analyst", "admin"):
        principal = sign_in(role)
        callers[role] = (Caller("account", principal.id, role), principal.client.metadata)
    outcomes: dict[tuple[str, str], str] = {}
    for method, rule in RULES.items():
        for kind, (caller, metadata) in callers.items():
            try:
                call_raw(anonymous, method, metadata, first_only=True, timeout=10)
                error = None
            except QuartetError as caught:
                error = caught
            if caller is None and rule.credentials == "required":
                expected = "UNAUTHENTICATED"
            elif caller is not None and rule.grants and not any(map(caller.may, rule.grants)):
                expected = "PERMISSION_DENIED"
            else:
                expected = "admitted"
            if error is None:
                outcome = "admitted"
            elif (error.code, error.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CREDENTIALS_MISSING",
            ):
                outcome = "UNAUTHENTICATED"
            elif error.code == grpc.StatusCode.PERMISSION_DENIED and "role" in error.metadata:
                outcome = "PERMISSION_DENIED"  # the policy's refusal names the caller's role
            elif error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                # Admitted by the policy, refused by a servicer that decides more: only where
                # expected, and never for want of a credential the policy asked for.
                assert SERVICER_DECIDES.get(method) == error.code, (method, kind, error)
                outcome = "admitted"
            else:
                outcome = "admitted"  # INVALID_ARGUMENT, NOT_FOUND...: the handler ran
            outcomes[method, kind] = outcome
            assert outcome == expected, (method, kind, error)
    # Health and reflection are open to every caller, and the table did reach every kind.
    for method in RULES:
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            assert {outcomes[method, kind] for kind in callers} == {"admitted"}
    assert set(outcomes.values()) == {"admitted", "UNAUTHENTICATED", "PERMISSION_DENIED"}


def test_reflection_answers_without_credentials(anonymous: Client) -> None:
    database = ProtoReflectionDescriptorDatabase(anonymous.channel)
    assert "quartet.score.v1.ScoreService" in set(database.get_services())


def test_expired_access_token_is_refreshed_by_the_sdk(settings: Settings) -> None:
    short = dataclasses.replace(settings, access_token_minutes=1 / 60)  # one second
    with running_server(short) as target, Client(target) as client:
        client.auth.create_account("peter@example.com", PASSWORD)
        client.login("peter@example.com", PASSWORD)
        first = client.metadata
        time.sleep(1.5)
        assert client.auth.current_account().email == "peter@example.com"
        assert client.metadata != first  # a new access token was fetched and is used


def test_kept_tokens_are_used_again_and_each_refreshed_pair_is_handed_over(
    settings: Settings,
) -> None:
    # Three seconds, so that a loaded machine uses each token before it expires.
    short = dataclasses.replace(settings, access_token_minutes=3 / 60)
    with running_server(short) as target, Client(target) as first:
        pair = first.auth.create_account("peter@example.com", PASSWORD).tokens
        kept: list[pb.TokenPair] = []
        with Client(target) as later:
            later.use_tokens(pair, on_refresh=kept.append)
            assert later.auth.current_account().email == "peter@example.com"
            time.sleep(3.5)
            assert later.auth.current_account().email == "peter@example.com"
        assert len(kept) == 1 and kept[0].refresh_token != pair.refresh_token
        with Client(target) as third:  # the kept pair is the one that works now
            third.use_tokens(kept[0])
            assert third.auth.refresh(kept[0].refresh_token).access_token


def test_a_token_used_before_it_expires_is_refused_after(settings: Settings) -> None:
    # Five seconds, so that a loaded machine uses the token before it expires; then wait for that.
    short = dataclasses.replace(settings, access_token_minutes=5 / 60)
    with running_server(short) as target, Client(target) as client:
        tokens = client.auth.create_account("peter@example.com", PASSWORD).tokens
        with Client(target, token=tokens.access_token) as holder:
            assert holder.auth.current_account().email == "peter@example.com"  # verified once
            expires = tokens.access_token_expire_time.ToDatetime(datetime.UTC)
            time.sleep(
                max(0.0, (expires - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.5
            )
            expect(
                grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_EXPIRED", holder.auth.current_account
            )


# --- applications and API keys -----------------------------------------------------------------


def test_application_keys_identify_the_application_until_revoked(
    client: Client, target: str
) -> None:
    created = client.auth.create_application("checkout-web")
    assert created.api_key.startswith("qk_")
    (key,) = created.application.api_keys
    assert created.api_key.startswith(f"qk_{key.id}_")
    with Client(target, token=created.api_key) as app:
        # Authenticated as the application, which may not read accounts.
        error = expect(
            grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED", app.auth.current_account
        )
        assert error.metadata == {"role": "application"}
        revoked = client.auth.revoke_api_key(key.id)
        assert revoked.HasField("revoke_time")
        expect(grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_REVOKED", app.auth.current_account)
    rotated = client.auth.create_api_key(created.application.id)
    with Client(target, token=rotated.api_key) as app:
        expect(grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED", app.auth.current_account)
    with Client(target, token=rotated.api_key[:-2] + "xx") as forger:
        expect(grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID", forger.auth.current_account)


class CountingRunner:
    """Stands in for the DatabaseRunner: answers find_api_key from a dict, counting lookups."""

    def __init__(self, keys: dict[str, applications.ApiKey]) -> None:
        self.keys = keys
        self.lookups = 0

    async def run(self, fn: Callable[..., Any], key_id: str) -> applications.ApiKey | None:
        assert fn is applications.find_api_key
        self.lookups += 1
        return self.keys.get(key_id)


def test_api_key_cache_is_bounded_and_made_up_keys_do_not_evict_real_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(authenticator, "KEY_MISS_CACHE_SIZE", 50)
    full_key, key_id, secret_hash = new_api_key()
    key = applications.ApiKey(id=key_id, application_id=7, secret_hash=secret_hash)
    runner = CountingRunner({key_id: key})
    issuer = TokenIssuer(SECRET, datetime.timedelta(minutes=1), datetime.timedelta(days=1))
    checker = Authenticator(issuer, runner)  # type: ignore[arg-type]
    header = [("authorization", f"Bearer {full_key}")]

    async def calls() -> None:
        assert (await checker.authenticate(header)) == Caller("application", 7, "application")
        for number in range(500):  # made-up ids, as anyone may send without a credential
            with pytest.raises(Unauthenticated):
                await checker.authenticate([("authorization", f"Bearer qk_{number:016x}_x")])
        with pytest.raises(Unauthenticated):  # a repeated made-up id is remembered a while
            await checker.authenticate([("authorization", f"Bearer qk_{499:016x}_x")])
        assert (await checker.authenticate(header)) == Caller("application", 7, "application")

    asyncio.run(calls())
    assert runner.lookups == 1 + 500  # the real key once, each made-up id once
    assert len(checker._missing) == 50 and len(checker._keys) == 1


class ChangedWhileRead:
    """Stands in for the DatabaseRunner: the first lookup returns the row as it was before a
    change that commits, and is announced, while the lookup is under way; later ones the row as
    it is after."""

    def __init__(self, before: object, after: object) -> None:
        self.before, self.after = before, after
        self.announce: Callable[[], None] = lambda: None
        self.lookups = 0

    async def run(self, fn: Callable[..., Any], key: object) -> object:
        self.lookups += 1
        if self.lookups > 1:
            return self.after
        self.announce()
        return self.before


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
@pytest.mark.parametrize("change", ["key revoked", "key created", "account disabled"])
def test_a_credential_changed_while_being_looked_up_is_not_remembered_as_it_was(
    change: str, named: bool
) -> None:
    """The announcement names the key or account (PostgreSQL), or not (SQLite: every key or
    every account is forgotten)."""
    full_key, key_id, secret_hash = new_api_key()
    now = datetime.datetime.now()
    key = applications.ApiKey(id=key_id, application_id=7, secret_hash=secret_hash)
    revoked = applications.ApiKey(
        id=key_id, application_id=7, secret_hash=secret_hash, revoke_time=now
    )
    header = [("authorization", f"Bearer {full_key}")]
    application = Caller("application", 7, "application")
    before: Caller | str  # what the call under way gets: its caller, or why it is refused
    after: Caller | str  # what the next call gets
    if change == "key revoked":
        runner, before, after = ChangedWhileRead(key, revoked), application, "was revoked"
    elif change == "key created":
        runner, before, after = ChangedWhileRead(None, key), "is not valid", application
    else:
        account = accounts.Account(id=3, role="admin")
        runner = ChangedWhileRead(account, accounts.Account(id=3, role="admin", disable_time=now))
        header = [("authorization", f"Bearer {mint_token(3, 'admin')}")]
        before, after = Caller("account", 3, "admin"), "is disabled"
    checker = Authenticator(
        TokenIssuer(SECRET, datetime.timedelta(minutes=1), datetime.timedelta(days=1)),
        runner,  # type: ignore[arg-type]
    )

    def announce() -> None:  # as quartet.server.coherence does
        if change.startswith("key"):
            checker.forget_key(key_id) if named else checker.forget_keys()
        else:
            checker.forget_account(3) if named else checker.forget_accounts()

    runner.announce = announce

    async def attempt() -> Caller | str | None:
        try:
            return await checker.authenticate(header)
        except Unauthenticated as error:
            return error.message

    async def both() -> tuple[Caller | str | None, Caller | str | None]:
        return await attempt(), await attempt()

    # The call under way when the change committed sees the row as it was, as if it had come
    # first; but what it read is not kept: the next call looks again.
    first, second = asyncio.run(both())
    for outcome, expected in ((first, before), (second, after)):
        if isinstance(expected, Caller):
            assert outcome == expected
        else:
            assert isinstance(outcome, str) and expected in outcome
    assert runner.lookups == 2


def test_expiring_cache_forgets_after_its_time() -> None:
    now = [100.0]
    cache: ExpiringCache[int] = ExpiringCache(size=3, seconds=10, clock=lambda: now[0])
    for number in range(5):
        cache.put(str(number), number)
    assert [cache.get(str(n)) for n in range(5)] == [None, None, 2, 3, 4]  # the oldest went
    now[0] += 5
    cache.put("5", 5)
    now[0] += 6  # 11 s after the first three puts, 6 s after the last one
    assert [cache.get(str(n)) for n in range(6)] == [None, None, None, None, None, 5]
    cache.put("6", 6)
    assert len(cache) == 2  # expired entries are dropped on put, even when never read again


def test_listed_applications_never_show_secrets(client: Client) -> None:
    created = client.auth.create_application("checkout-web")
    client.auth.create_api_key(created.application.id)
    (listed,) = client.auth.iter_applications()
    assert listed.name == "checkout-web" and len(listed.api_keys) == 2
    assert created.api_key not in str(listed)
    expect(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", lambda: client.auth.create_api_key(999))
    expect(
        grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", lambda: client.auth.revoke_api_key("nope")
    )
    error = expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        lambda: client.auth.create_application(" "),
    )
    assert [v.field for v in error.field_violations] == ["name"]


# --- TLS, secrets and the first admin -----------------------------------------------------------


def test_tls_round_trip(settings: Settings, tmp_path: Path, admin: Principal) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    tls = dataclasses.replace(settings, tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    token = mint_token(admin.id, "admin")
    with running_server(tls) as target:
        with Client(target, tls=authority.cert_pem.bytes(), token=token) as client:
            assert client.scores.create(41).value == 42
            assert client.health.check()
        with Client(target, token=token, timeout=2) as plaintext:
            error = expect(grpc.StatusCode.UNAVAILABLE, "", plaintext.health.check)
            assert error.reason == ""


def test_production_refuses_to_start_without_a_real_secret(tmp_path: Path) -> None:
    env = {**os.environ, "QUARTET_ENV": "production", "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    env.pop("QUARTET_SECRET", None)
    for secret in ("", "change-me"):
        result = subprocess.run(
            [sys.executable, "-m", "quartet.server", "serve", "--port", "0"],
            env={**env, "QUARTET_SECRET": secret},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert "QUARTET_SECRET" in result.stderr


def test_production_reads_the_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env = {
        **os.environ,
        "QUARTET_ENV": "production",
        "QUARTET_SECRET_FILE": str(secret_file),
        "DATABASE_URL": f"sqlite:///{tmp_path}/q.db",
    }
    with server_process(env=env) as server:
        assert not any("QUARTET_SECRET is not set" in line for line in server.log)


def test_development_keeps_its_secret_so_that_tokens_survive_a_restart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTET_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/q.db"
    with server_process(env=env) as server, Client(server.address) as client:
        pair = client.auth.create_account("peter@example.com", PASSWORD).tokens
        notes = [json.loads(line) for line in server.log if "QUARTET_SECRET" in line]
    assert notes and notes[0]["level"] == "WARNING"  # made: said once, loudly
    secret_file = tmp_path / "secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    with server_process(env=env) as server, Client(server.address) as client:
        notes = [json.loads(line) for line in server.log if "QUARTET_SECRET" in line]
        assert notes and notes[0]["level"] == "INFO"
        client.use_tokens(pair)
        assert client.auth.current_account().email == "peter@example.com"
    secret_file.chmod(0o644)
    refused = subprocess.run(
        [sys.executable, "-m", "quartet.server", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1 and "chmod 600" in refused.stderr


def test_create_admin_command_bootstraps_the_first_admin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    command = [sys.executable, "-m", "quartet.server", "create-admin", "Ops@Example.com"]
    env = {**os.environ, "QUARTET_ADMIN_PASSWORD": PASSWORD}
    made = subprocess.run(
        [*command, "--database-url", url], env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("created: ops@example.com")
    short = subprocess.run(
        [*command, "--database-url", url],
        env={**os.environ, "QUARTET_ADMIN_PASSWORD": "short"},
        capture_output=True,
        text=True,
    )
    assert short.returncode == 1 and "8 to 128" in short.stderr
    with running_server(Settings(database_url=url, secret=SECRET)) as target, Client(target) as c:
        c.login("ops@example.com", PASSWORD)
        assert c.auth.current_account().role == pb.ROLE_ADMIN


@pytest.mark.parametrize("email", ["not-an-email", "ops@", "ops@example.com\x01", "a@@example.com"])
def test_create_admin_command_refuses_a_malformed_email(tmp_path: Path, email: str) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    made = subprocess.run(
        [sys.executable, "-m", "quartet.server", "create-admin", email, "--database-url", url],
        env={**os.environ, "QUARTET_ADMIN_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
    )
    assert made.returncode == 1, made.stdout
    assert "email" in made.stderr and not made.stdout
    database = storage.open_database(url)
    storage.migrate(database)
    with database.connection_context():
        (count,) = database.execute_sql("SELECT COUNT(*) FROM account").fetchone()  # type: ignore[no-untyped-call]
    assert count == 0  # nothing was created
    storage.close(database)
