"""Turn a call's `authorization` metadata into a Caller: JWT access tokens and API keys."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

from quartet import storage
from quartet.errors.v1 import error_reason_pb2
from quartet.server.auth.policy import Caller, check, current_caller, current_rule
from quartet.server.auth.tokens import TokenIssuer, hash_api_secret, split_api_key
from quartet.server.errors import Unauthenticated
from quartet.storage import DatabaseRunner, accounts, applications

# How long a key lookup is reused. Events arrive by the thousand per second with the same few
# keys: without the cache each would cost a database round trip. A key created or revoked through
# any process is dropped from every process's cache when the change is announced
# (quartet.server.coherence: within about a second, usually milliseconds, on every worker of
# every replica); this expiry is only the bound for a process that cannot follow the
# announcements (its listener lost the database), which keeps accepting a revoked key for up to
# this long.
KEY_CACHE_SECONDS = 10.0
# Keys found (valid or revoked) kept at most; the oldest lookups go first.
KEY_CACHE_SIZE = 10_000
# Key ids looked up and not found, kept apart and fewer, so that a caller sending made-up keys
# (which needs no credential) can neither grow memory nor push the real keys out; each new
# made-up id still costs one lookup.
KEY_MISS_CACHE_SIZE = 1_000
# Access tokens verified, kept until they expire. Checking a JWT's signature costs about 40 µs,
# a tenth of a small call; a token that verified once stays valid until its expiry, and any other
# text (a tampered token included) is another key, so it is verified in full.
TOKEN_CACHE_SIZE = 10_000
# Each call with an access token takes the account's role and state from the database, not from
# the token: a role change, a disabled or a deleted account takes effect as a revoked API key
# does (announced to every process; this expiry only bounds a process that cannot follow the
# announcements). Accounts looked up (found or not: only this server signs the ids in tokens)
# are kept this long, this many at most.
ACCOUNT_CACHE_SECONDS = KEY_CACHE_SECONDS
ACCOUNT_CACHE_SIZE = 10_000


V = TypeVar("V")
M = TypeVar("M")
Metadata = Sequence[tuple[str, str | bytes]]


class ExpiringCache(Generic[V]):
    """At most `size` values, each kept `seconds` after it was put; the oldest go first.

    Every entry lives equally long and a put moves its key to the end, so the entries are in
    expiry order and the expired ones are dropped from the front, cheaply, on every put.

    `generation` counts the entries dropped on purpose (pop, clear: a change was announced). A
    value read from the database is put with the generation taken before the read, and not kept
    if anything was dropped meanwhile: the read may have seen the row before the change (a key
    looked up while it was being revoked would otherwise be accepted until it expired).
    """

    def __init__(
        self, size: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.seconds = seconds
        self._clock = clock
        self._items: collections.OrderedDict[str, tuple[float, V]] = collections.OrderedDict()
        self.generation = 0

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._items[key]
            return None
        return item[1]

    def put(self, key: str, value: V, since: int | None = None) -> None:
        """Keep value for key; unless since (a generation) is given and has passed."""
        if since is not None and since != self.generation:
            return
        now = self._clock()
        self._items.pop(key, None)
        self._items[key] = (now + self.seconds, value)
        while len(self._items) > self.size or next(iter(self._items.values()))[0] <= now:
            self._items.popitem(last=False)
            if not self._items:
                break

    def pop(self, key: str) -> None:
        self.generation += 1
        self._items.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def account_disabled() -> Unauthenticated:
    """The refusal of a disabled account's token, refresh token or login."""
    return Unauthenticated(
        "this account is disabled; an admin may enable it again",
        reason=error_reason_pb2.ACCOUNT_DISABLED,
    )


def account_gone() -> Unauthenticated:
    """The refusal of a token whose account no longer exists."""
    return Unauthenticated(
        "the account of this token no longer exists", reason=error_reason_pb2.ACCOUNT_NOT_FOUND
    )


def _credential(metadata: Metadata) -> str | None:
    """The token or API key of `authorization: Bearer ...`, None if there is no such metadata;
    Unauthenticated if it is not of that form."""
    header = next((v for k, v in metadata if k == "authorization"), None)
    if header is None:
        return None
    scheme, _, credential = str(header).strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated("authorization metadata must be `Bearer <token or API key>`")
    return credential


async def _quietly(lookup: Callable[[], Awaitable[object]]) -> None:
    # Wanted for the cache it fills, not for its refusal; a database that could not answer is
    # asked again by the next check. Anything else is a bug, left for asyncio to log.
    try:
        await lookup()
    except Unauthenticated:
        pass
    except Exception as error:
        if not (storage.unavailable(error) or isinstance(error, storage.DeadlineExceeded)):
            raise


class Authenticator:
    def __init__(self, issuer: TokenIssuer, runner: DatabaseRunner) -> None:
        self.issuer = issuer
        self._runner = runner
        # key id -> (secret hash, application id, revoked, a publishable key's origins), for
        # keys that exist
        self._keys: ExpiringCache[tuple[str, int, bool, frozenset[str] | None]] = ExpiringCache(
            KEY_CACHE_SIZE, KEY_CACHE_SECONDS
        )
        # key ids that do not exist
        self._missing: ExpiringCache[bool] = ExpiringCache(KEY_MISS_CACHE_SIZE, KEY_CACHE_SECONDS)
        # access token -> (expiry as a Unix time, account id)
        self._tokens: dict[str, tuple[float, int]] = {}
        # account id -> (role, disabled); role None for an account that does not exist
        self._accounts: ExpiringCache[tuple[str | None, bool]] = ExpiringCache(
            ACCOUNT_CACHE_SIZE, ACCOUNT_CACHE_SECONDS
        )
        # lookups of open streams' callers under way in the background, by account or key
        self._lookups: dict[str, asyncio.Future[None]] = {}

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller | None:
        """The caller named by the metadata, None if it has no credentials; Unauthenticated if
        they are malformed, forged, expired or revoked. Remembered for the current call, so that
        `rechecked` can check the caller again while the call goes on."""
        metadata = tuple(metadata)
        _authenticated.set((self, metadata))
        credential = _credential(metadata)
        if credential is None:
            return None
        key = split_api_key(credential)
        if key is not None:
            return await self._application(*key)
        return await self._account(credential)

    async def _account(self, token: str) -> Caller:
        cached = self._tokens.get(token)
        if cached is not None and cached[0] > time.time():
            account_id = cached[1]
        else:
            account_id, _, expires = self.issuer.verify_access(token)  # raises if expired too
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()  # crude, but bounded, and refilled at once by live tokens
            self._tokens[token] = (expires, account_id)
        return Caller("account", account_id, await self._account_role(account_id))

    async def _account_role(self, account_id: int) -> str:
        """The role of an account that exists and is enabled, from the database or a cache of
        it; Unauthenticated, saying why, if it is disabled or no longer exists."""
        key = str(account_id)
        state = self._accounts.get(key)
        if state is None:
            since = self._accounts.generation
            found = await self._runner.run(accounts.find_account_by_id, account_id)
            state = (None, False) if found is None else (found.role, found.disable_time is not None)
            self._accounts.put(key, state, since)
        role, disabled = state
        if role is None:
            raise account_gone()
        if disabled:
            raise account_disabled()
        return role

    async def recheck(self, caller: Caller, metadata: Metadata) -> Caller:
        """The caller of a call under way, as it stands now: an account's state and role (an
        access token that has expired since the call began is not refused: gRPC checks a call's
        credentials once, when it starts), or an API key's revocation.

        From the caches only: a stream may hold the worker's only database thread (an import,
        with QUARTET_DB_THREADS=1), so a check never waits for the database. Where the cached
        state has expired, a lookup starts in the background and the caller passes as it was when
        the call began; a message after the lookup sees its answer."""
        if caller.kind == "account":
            if self._accounts.get(str(caller.id)) is None:
                self._look_up_soon(f"account:{caller.id}", lambda: self._account_role(caller.id))
                return caller
            return Caller("account", caller.id, await self._account_role(caller.id))
        key = split_api_key(_credential(metadata) or "")
        if key is None:  # unreachable: the same metadata held an API key when the call began
            raise Unauthenticated("the API key is not valid")
        if self._keys.get(key[0]) is None and not self._missing.get(key[0]):
            self._look_up_soon(f"key:{key[0]}", lambda: self._application(*key))
            return caller
        return await self._application(*key)

    def _look_up_soon(self, name: str, lookup: Callable[[], Awaitable[object]]) -> None:
        """Run lookup in the background (once at a time per name), for the cache it fills."""
        if name in self._lookups:
            return
        task = asyncio.ensure_future(_quietly(lookup))
        self._lookups[name] = task
        task.add_done_callback(lambda _: self._lookups.pop(name, None))

    def forget_account(self, account_id: int) -> None:
        """Drop an account from the cache (after its role or state changed, here or
        elsewhere)."""
        self._accounts.pop(str(account_id))

    async def _application(self, key_id: str, secret: str) -> Caller:
        cached = self._keys.get(key_id)
        if cached is None:
            if self._missing.get(key_id):
                raise Unauthenticated("the API key is not valid")
            since = (self._keys.generation, self._missing.generation)
            found = await self._runner.run(applications.find_api_key, key_id)
            if found is None:
                self._missing.put(key_id, True, since[1])
                raise Unauthenticated("the API key is not valid")
            cached = (
                found.secret_hash,
                found.application_id,
                found.revoke_time is not None,
                frozenset(found.origins) if found.kind == "publishable" else None,
            )
            self._keys.put(key_id, cached, since[0])
        secret_hash, application_id, revoked, origins = cached
        if not hmac.compare_digest(secret_hash, hash_api_secret(secret)):
            raise Unauthenticated("the API key is not valid")
        if revoked:
            raise Unauthenticated(
                "the API key was revoked", reason=error_reason_pb2.CREDENTIALS_REVOKED
            )
        return Caller("application", application_id, "application", origins)

    def forget_key(self, key_id: str) -> None:
        """Drop a key from the caches (after it was created or revoked, here or elsewhere)."""
        self._keys.pop(key_id)
        self._missing.pop(key_id)

    def forget_keys(self) -> None:
        """Drop every key from the caches (some changed, which is not known)."""
        self._keys.clear()
        self._missing.clear()

    def forget_accounts(self) -> None:
        """Drop every account from the cache (some changed, which is not known)."""
        self._accounts.clear()


# The authenticator and metadata of the current call, recorded by `authenticate`.
_authenticated: contextvars.ContextVar[tuple[Authenticator, Metadata] | None] = (
    contextvars.ContextVar("authenticated", default=None)
)


def rechecked(requests: AsyncIterator[M]) -> AsyncIterator[M]:
    """The current call's stream of requests, its caller checked again before each message after
    the first, so that a stream opened before its account was disabled or deleted, its role
    lowered or its API key revoked stops at the next message (UNAUTHENTICATED or
    PERMISSION_DENIED, as a new call would be answered), not when the client ends it. A check
    costs a cache lookup; the database is asked once per cache period (10 s) at most, or after
    a change of the caller was announced.

    Call it in the call's own task: the caller and its credentials are taken at once."""
    caller = current_caller()
    rule = current_rule()
    authenticated = _authenticated.get()
    if caller is None or authenticated is None:
        return requests
    authenticator, metadata = authenticated

    async def checked() -> AsyncIterator[M]:
        first = True
        async for message in requests:
            if not first:
                check(rule, await authenticator.recheck(caller, metadata))
            first = False
            yield message

    return checked()
