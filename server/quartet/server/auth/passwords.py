"""Password hashing with the standard library's scrypt, parameters stored in each hash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# 32 MiB and about 100 ms per hash on the 2-core development machine. Stored with each hash, so
# raising them later re-hashes accounts at their next login (see needs_rehash).
N, R, P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024
_DUMMY = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password, salt, N, R, P)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str | None) -> bool:
    """Whether password matches encoded. Without a hash (unknown account, or an account that
    has no password) it still spends the same time, so timing does not tell the cases apart."""
    try:
        _, n, r, p, salt, digest = (encoded or _DUMMY).split("$")
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return encoded is not None and hmac.compare_digest(actual, _unb64(digest))


def needs_rehash(encoded: str) -> bool:
    return not encoded.startswith(f"scrypt${N}${R}${P}$")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
