"""Turn a call's `authorization` metadata into a Caller: JWT access tokens and API keys."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable

from quartet.errors.v1 import error_reason_pb2
from quartet.server.auth.policy import Caller
from quartet.server.auth.tokens import TokenIssuer, hash_api_secret, split_api_key
from quartet.server.errors import Unauthenticated
from quartet.storage import DatabaseRunner, applications

# How long a key lookup is reused. Events arrive by the thousand per second with the same few
# keys: without the cache each would cost a database round trip. A key revoked through this server
# is dropped from its cache at once; other processes see the revocation within this time.
KEY_CACHE_SECONDS = 10.0
# Access tokens verified, kept until they expire. Checking a JWT's signature costs about 40 µs,
# a tenth of a small call; a token that verified once stays valid until its expiry, and any other
# text (a tampered token included) is another key, so it is verified in full.
TOKEN_CACHE_SIZE = 10_000


class Authenticator:
    def __init__(self, issuer: TokenIssuer, runner: DatabaseRunner) -> None:
        self.issuer = issuer
        self._runner = runner
        # key id -> (valid until, secret hash or "" if unknown, application id, revoked)
        self._keys: dict[str, tuple[float, str, int, bool]] = {}
        # access token -> (expiry as a Unix time, account id, role)
        self._tokens: dict[str, tuple[float, int, str]] = {}

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller | None:
        """The caller named by the metadata, None if it has no credentials; Unauthenticated if
        they are malformed, forged, expired or revoked."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is None:
            return None
        scheme, _, credential = str(header).strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("authorization metadata must be `Bearer <token or API key>`")
        key = split_api_key(credential)
        if key is not None:
            return await self._application(*key)
        return self._account(credential)

    def _account(self, token: str) -> Caller:
        cached = self._tokens.get(token)
        if cached is not None and cached[0] > time.time():
            return Caller("account", cached[1], cached[2])
        account_id, role, expires = self.issuer.verify_access(token)  # raises if expired too
        if len(self._tokens) >= TOKEN_CACHE_SIZE:
            self._tokens.clear()  # crude, but bounded, and refilled at once by live tokens
        self._tokens[token] = (expires, account_id, role)
        return Caller("account", account_id, role)

    async def _application(self, key_id: str, secret: str) -> Caller:
        cached = self._keys.get(key_id)
        if cached is None or cached[0] < time.monotonic():
            found = await self._runner.run(applications.find_api_key, key_id)
            cached = (
                time.monotonic() + KEY_CACHE_SECONDS,
                found.secret_hash if found else "",
                found.application_id if found else 0,
                found is not None and found.revoke_time is not None,
            )
            self._keys[key_id] = cached
        _, secret_hash, application_id, revoked = cached
        if not secret_hash or not hmac.compare_digest(secret_hash, hash_api_secret(secret)):
            raise Unauthenticated("the API key is not valid")
        if revoked:
            raise Unauthenticated(
                "the API key was revoked", reason=error_reason_pb2.CREDENTIALS_REVOKED
            )
        return Caller("application", application_id, "application")

    def forget_key(self, key_id: str) -> None:
        """Drop a key from the cache (after it was revoked here)."""
        self._keys.pop(key_id, None)
