"""Login throttling: a soft lockout with growing delays, per email and per client address.

OWASP ASVS (v4 2.2.1, v5 6.3) asks for anti-automation that stops password guessing without
letting an attacker lock a user out for long: after `threshold` failures in a row a key waits a
delay before its next attempt, doubled at each further failure up to a maximum, instead of a
permanent lock. The counts live in the database (`login_throttle`), so every worker and replica
shares them. Each attempt is counted before the password is checked, so a burst of concurrent
guesses gets no more tries than a sequence would, and a refused attempt costs one statement and
no password hash.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import math

from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import ResourceExhausted
from quartet.server.settings import Settings
from quartet.storage import DatabaseRunner, accounts
from quartet.storage.base import utcnow

# IPv6 clients are counted by /64: one host commonly holds a whole /64, so counting single
# addresses would let it try 2**64 of them.
IPV6_PREFIX = 64


class Throttle:
    """Counts attempts per email and per client address, and refuses those over the limits."""

    def __init__(self, settings: Settings, runner: DatabaseRunner) -> None:
        self._db = runner
        self._per_account = settings.login_failures_per_account
        self._per_address = settings.login_failures_per_address
        self._delay = settings.login_delay_seconds
        self._max_delay = settings.login_max_delay_seconds
        self._window = datetime.timedelta(seconds=settings.login_failure_window_seconds)
        self._secret = settings.secret.encode()

    async def attempt(self, email: str | None, peer: str) -> None:
        """Count an attempt for email (None: a sign-up, counted only per address) and the peer's
        address, or raise ResourceExhausted, with the delay to wait, if either is blocked."""
        now = utcnow()
        rules = []
        if email is not None:
            rules.append(self._rule(email_key(email, self._secret), self._per_account, now))
        if self._per_address:
            rules.append(self._rule(address_key(peer), self._per_address, now))
        until = await self._db.run(accounts.take_attempt, rules, now)
        if until is not None:
            seconds = max(1, math.ceil((until - now).total_seconds()))
            raise ResourceExhausted(
                f"too many failed attempts for this email or from this address: try again in "
                f"{seconds} s",
                reason=error_reason_pb2.LOGIN_THROTTLED,
                retry_delay=datetime.timedelta(seconds=seconds),
            )

    async def succeeded(self, email: str | None, peer: str) -> None:
        """The attempt was no failure: forgive it (see `forgiveness`)."""
        forgiven = self.forgiveness(email, peer)
        if forgiven is not None:
            await self._db.run(accounts.forgive_attempt, forgiven)

    def forgiveness(self, email: str | None, peer: str) -> accounts.Forgiveness | None:
        """What forgives an attempt that was no failure, to write with the login's other rows:
        the email's count starts again, and the address's count forgets this attempt (an
        address's failures are never reset by its own successes, which an attacker holding one
        account could use). None if there is nothing to forgive."""
        if email is None and not self._per_address:
            return None
        return accounts.Forgiveness(
            reset=None if email is None else email_key(email, self._secret),
            refund=address_key(peer) if self._per_address else None,
            threshold=self._per_address,
            now=utcnow(),
        )

    def _rule(self, key: str, threshold: int, now: datetime.datetime) -> accounts.ThrottleRule:
        """The key's rule: no wait below the threshold, then delays doubling up to the maximum."""
        blocked_after = [now] * (threshold - 1)
        delay = self._delay
        while delay < self._max_delay:
            blocked_after.append(now + datetime.timedelta(seconds=delay))
            delay *= 2
        blocked_after.append(now + datetime.timedelta(seconds=self._max_delay))
        return accounts.ThrottleRule(key, blocked_after, now + self._window)


def email_key(email: str, secret: bytes) -> str:
    """The key of an email, registered or not: an HMAC keyed with the server's secret, so that
    the table names nobody, even to someone who reads it and hashes a list of candidate emails
    (which would find the emails behind a plain hash). A new secret starts every count afresh."""
    normalized = accounts.normalize_email(email).encode(errors="replace")
    return "email:" + hmac.new(secret, normalized, hashlib.sha256).hexdigest()[:48]


def address_key(peer: str) -> str:
    """The key of a gRPC peer ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678", "unix:..."): its IP
    address without the port, IPv6 by /64. Behind a proxy, this is the proxy's address."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0].strip("[]")
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return "peer:" + hashlib.sha256(peer.encode()).hexdigest()[:48]
        if address.version == 6:
            return f"ip:{ipaddress.ip_network(f'{address}/{IPV6_PREFIX}', strict=False)}"
        return f"ip:{address}"
    return f"peer:{kind}"
