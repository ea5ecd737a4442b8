"""JWT access and refresh tokens (PyJWT, HS256), and application API keys."""

from __future__ import annotations

import datetime
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import jwt

from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import Unauthenticated

ALGORITHM = "HS256"
ISSUER = "quartet"
API_KEY_PREFIX = "qk_"


@dataclass(frozen=True)
class Issued:
    """A signed token and the naive UTC time it expires."""

    token: str
    expire_time: datetime.datetime


@dataclass(frozen=True)
class RefreshClaims:
    jti: str
    account_id: int
    family: str


class TokenIssuer:
    """Signs and verifies the JWTs. Only HS256 is accepted, so a token signed with another
    algorithm (or with "none") is refused, whatever its header says."""

    def __init__(
        self, secret: str, access_ttl: datetime.timedelta, refresh_ttl: datetime.timedelta
    ) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def access(self, account_id: int, role: str, now: datetime.datetime) -> Issued:
        expire = now + self.access_ttl
        claims = {"sub": str(account_id), "role": role, "typ": "access"}
        return Issued(self._sign(claims, now, expire), expire)

    def refresh(
        self, account_id: int, family: str, now: datetime.datetime
    ) -> tuple[Issued, RefreshClaims]:
        expire = now + self.refresh_ttl
        jti = uuid.uuid4().hex
        claims = {"sub": str(account_id), "typ": "refresh", "jti": jti, "fam": family}
        return Issued(self._sign(claims, now, expire), expire), RefreshClaims(
            jti, account_id, family
        )

    def verify_access(self, token: str) -> tuple[int, str, float]:
        """(account id, role, expiry as a Unix time) of a valid access token; Unauthenticated
        otherwise."""
        claims = self._verify(token, "access")
        return _account_id(claims), str(claims.get("role", "")), float(str(claims["exp"]))

    def verify_refresh(self, token: str) -> RefreshClaims:
        claims = self._verify(token, "refresh")
        return RefreshClaims(
            str(claims.get("jti", "")), _account_id(claims), str(claims.get("fam", ""))
        )

    def _sign(
        self, claims: dict[str, str], now: datetime.datetime, expire: datetime.datetime
    ) -> str:
        payload = {**claims, "iss": ISSUER, "iat": now, "exp": expire}
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def _verify(self, token: str, kind: str) -> dict[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                f"the {kind} token has expired", reason=error_reason_pb2.CREDENTIALS_EXPIRED
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthenticated(f"the {kind} token is not valid") from None
        if claims.get("typ") != kind:
            raise Unauthenticated(f"this is not an {kind} token")
        return claims


def _account_id(claims: dict[str, object]) -> int:
    try:
        return int(str(claims["sub"]))
    except ValueError:
        raise Unauthenticated("the token names no account") from None


def new_api_key() -> tuple[str, str, str]:
    """(full key, key id, secret hash) for a new API key: qk_<id>_<secret>.

    The secret has 256 bits of entropy, so a plain SHA-256 is enough to store it: a slow hash
    would only slow down every event sent.
    """
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return f"{API_KEY_PREFIX}{key_id}_{secret}", key_id, hash_api_secret(secret)


def hash_api_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_api_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, or None."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    key_id, _, secret = key[len(API_KEY_PREFIX) :].partition("_")
    if len(key_id) != 16 or not secret:
        return None
    return key_id, secret
