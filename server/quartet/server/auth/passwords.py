"""Password hashing: argon2id (argon2-cffi), its parameters stored in each hash.

Hashes of earlier releases (the standard library's scrypt) still verify, and are replaced by an
argon2id hash at the account's next login (see needs_rehash), as are argon2id hashes made with
other parameters than today's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

import argon2

# OWASP's Password Storage Cheat Sheet (2025): argon2id with 19 MiB, 2 passes, 1 lane. About
# 70 ms per hash on the 2-core development machine, and 19 MiB per login under way where scrypt
# took 32 MiB (its N=2**15 was below that sheet's N=2**17).
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password: str, encoded: str | None) -> bool:
    """Whether password matches encoded. Without a hash (unknown account, or an account that
    has no password) it still spends the same time, so timing does not tell the cases apart."""
    if encoded is not None and encoded.startswith("scrypt$"):
        return _verify_scrypt(password, encoded)
    try:
        return _HASHER.verify(encoded or _dummy_hash(), password) and encoded is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(encoded: str) -> bool:
    return encoded.startswith("scrypt$") or _HASHER.check_needs_rehash(encoded)


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, made once, checked in place of a missing one."""
    return _HASHER.hash(secrets.token_urlsafe(32))


def _verify_scrypt(password: str, encoded: str) -> bool:
    """An earlier release's `scrypt$N$r$p$salt$digest`."""
    try:
        _, n, r, p, salt, digest = encoded.split("$")
        actual = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=32,
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(digest))


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
