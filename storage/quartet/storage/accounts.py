"""Accounts (people and services that log in), their single-use refresh tokens, and the counts
of failed logins that throttle guessing."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import peewee

from quartet.storage import changes
from quartet.storage.base import BaseModel, db, utcnow
from quartet.storage.errors import RecordExists, RecordNotFound

ROLES = ("user", "analyst", "admin")


class Account(BaseModel):
    """One account, identified by its email address (stored lower-cased)."""

    id = peewee.BigAutoField()
    email = peewee.CharField(max_length=254, unique=True)
    create_time = peewee.DateTimeField(default=utcnow)
    password_hash = peewee.CharField(max_length=200, null=True)
    role = peewee.CharField(max_length=16, default="user")
    # Set while an admin has disabled the account: its tokens and logins are refused.
    disable_time = peewee.DateTimeField(null=True)


class RefreshToken(BaseModel):
    """An issued refresh token. `family` links every token descended from one login."""

    jti = peewee.CharField(max_length=32, primary_key=True)
    account = peewee.ForeignKeyField(Account, on_delete="CASCADE")
    family = peewee.CharField(max_length=32, index=True)
    create_time = peewee.DateTimeField(default=utcnow)
    expire_time = peewee.DateTimeField()
    use_time = peewee.DateTimeField(null=True)
    account_id: int


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively: store and look them up lower-cased and trimmed."""
    return email.strip().lower()


def create_account(email: str, password_hash: str | None = None, role: str = "user") -> Account:
    """Create an account; RecordExists if the email is taken."""
    email = normalize_email(email)
    try:
        with db.atomic():
            account: Account = Account.create(email=email, password_hash=password_hash, role=role)
            # A process may cache the id as unknown (ids are reused after a restore).
            changes.notify(changes.ACCOUNTS, account.id)
            return account
    except peewee.IntegrityError:
        raise RecordExists("account", email) from None


def get_account(account_id: int) -> Account:
    account: Account | None = Account.get_or_none(Account.id == account_id)
    if account is None:
        raise RecordNotFound("account", account_id)
    return account


def find_account_by_id(account_id: int) -> Account | None:
    account: Account | None = Account.get_or_none(Account.id == account_id)
    return account


def find_account(email: str) -> Account | None:
    account: Account | None = Account.get_or_none(Account.email == normalize_email(email))
    return account


def set_role(account_id: int, role: str) -> Account:
    with db.atomic():
        if not Account.update(role=role).where(Account.id == account_id).execute():
            raise RecordNotFound("account", account_id)
        changes.notify(changes.ACCOUNTS, account_id)
    return get_account(account_id)


def set_disabled(account_id: int, disabled: bool, now: datetime.datetime) -> Account:
    """Disable (keeping the first disable_time) or enable an account; RecordNotFound if none."""
    with db.atomic():
        if disabled:
            query = Account.update(disable_time=peewee.fn.COALESCE(Account.disable_time, now))
        else:
            query = Account.update(disable_time=None)
        if not query.where(Account.id == account_id).execute():
            raise RecordNotFound("account", account_id)
        changes.notify(changes.ACCOUNTS, account_id)
    return get_account(account_id)


def set_password_hash(account_id: int, password_hash: str) -> None:
    with db.atomic():
        Account.update(password_hash=password_hash).where(Account.id == account_id).execute()


def list_accounts(*, limit: int, after_id: int | None = None) -> list[Account]:
    query = Account.select().order_by(Account.id)
    if after_id is not None:
        query = query.where(Account.id > after_id)
    return list(query.limit(limit))


def record_refresh_token(
    jti: str,
    account_id: int,
    family: str,
    expire_time: datetime.datetime,
    forgiven: Forgiveness | None = None,
) -> None:
    """Record a new login's refresh token, and forgive the attempt that logged in (if given) in
    the same transaction: a successful login writes once after its attempt was counted."""
    with db.atomic():
        RefreshToken.create(jti=jti, account=account_id, family=family, expire_time=expire_time)
        if forgiven is not None:
            forgive_attempt(forgiven)


def use_refresh_token(
    jti: str, now: datetime.datetime, replacement: str, replacement_expire_time: datetime.datetime
) -> tuple[RefreshToken | None, Account | None]:
    """Exchange a refresh token: mark it used and record its replacement (the jti of the token
    issued in exchange, in the same family), in one transaction; return it with its account.

    Returns (None, None) for a token never issued or expired, and leaves the token of a disabled
    account unused (the caller refuses it, seeing account.disable_time). A token already used
    means it leaked (its legitimate holder rotated it), and so does one that a concurrent
    exchange claimed first: every unused token of its family is used up at once, and (token,
    None) is returned so the caller refuses the exchange. Because a replacement is recorded in
    the transaction that claims its token, that includes the replacement a concurrent exchange
    got: a login said to be revoked is revoked.
    """
    with db.atomic():
        token: RefreshToken | None = RefreshToken.get_or_none(RefreshToken.jti == jti)
        if token is None or token.expire_time <= now:
            return None, None
        owner: Account | None = Account.get_or_none(Account.id == token.account_id)
        if owner is not None and owner.disable_time is not None:
            return token, owner  # refused, and left unused: it works again once enabled
        claimed = token.use_time is None and (
            RefreshToken.update(use_time=now)
            .where((RefreshToken.jti == jti) & RefreshToken.use_time.is_null())
            .execute()
        )
        if not claimed:
            # Used before, or by a concurrent exchange that won (on PostgreSQL this statement runs
            # after the winner committed: its UPDATE of the same row waited for it).
            (
                RefreshToken.update(use_time=now)
                .where((RefreshToken.family == token.family) & RefreshToken.use_time.is_null())
                .execute()
            )
            return token, None
        account: Account | None = Account.get_or_none(Account.id == token.account_id)
        if account is not None:
            RefreshToken.create(
                jti=replacement,
                account=token.account_id,
                family=token.family,
                expire_time=replacement_expire_time,
            )
        return token, account


class LoginThrottle(BaseModel):
    """Recent failed logins (and sign-ups) of one key: an email's hash or a client address.

    Shared by every worker and replica through the database. `failures` counts the failures since
    the key was last quiet for a whole window; no attempt is let through before `blocked_until`.
    """

    key = peewee.CharField(max_length=80, primary_key=True)
    failures = peewee.IntegerField()
    blocked_until = peewee.DateTimeField()
    # The count is forgotten after this time (a window after the last failure); expired rows are
    # deleted as new failures arrive.
    window_end = peewee.DateTimeField(index=True)


@dataclass(frozen=True)
class ThrottleRule:
    """How one kind of key is throttled: `blocked_after[i]` is when the (i+1)-th failure in a row
    blocks the key until (now when it blocks nothing), the last item for every failure after;
    `window_end` is when a key's count is forgotten if no failure follows."""

    key: str
    blocked_after: Sequence[datetime.datetime]
    window_end: datetime.datetime


def take_attempt(rules: Sequence[ThrottleRule], now: datetime.datetime) -> datetime.datetime | None:
    """Count an attempt against every rule's key, as a failure until proven otherwise, or none of
    them if one key is blocked: then return the time it is blocked until.

    Each key is counted in one statement (an upsert whose update applies only if the key is not
    blocked), so concurrent attempts, in any process, are each counted once and are let through
    only as far as the counts allow.
    """
    # Most refusals need no write (and, on SQLite, not the one writer's lock): while an attack
    # goes on, its keys stay blocked, and this read is all each further attempt costs.
    blocking = LoginThrottle.select().where(
        LoginThrottle.key.in_([rule.key for rule in rules]) & (LoginThrottle.blocked_until > now)
    )
    if until := max((row.blocked_until for row in blocking), default=None):
        return until
    try:
        with db.atomic():
            LoginThrottle.delete().where(LoginThrottle.window_end < now).execute()
            for rule in rules:
                if not _count(rule, now):
                    blocked: LoginThrottle | None = LoginThrottle.get_or_none(
                        LoginThrottle.key == rule.key
                    )
                    # Rolls back the counts already taken for the other keys: no failure there.
                    raise _Blocked(blocked.blocked_until if blocked is not None else now)
    except _Blocked as blocked:
        return blocked.until
    return None


class _Blocked(Exception):
    def __init__(self, until: datetime.datetime) -> None:
        super().__init__(until)
        self.until = until


def _count(rule: ThrottleRule, now: datetime.datetime) -> bool:
    """Count one failure against rule.key, unless it is blocked; whether it was counted."""
    table = LoginThrottle
    failures = peewee.Case(None, [(table.window_end <= now, 1)], table.failures + 1)
    times = [
        peewee.Value(when, converter=table.blocked_until.db_value) for when in rule.blocked_after
    ]
    blocked_until = peewee.Case(
        None, [(failures == number + 1, when) for number, when in enumerate(times[:-1])], times[-1]
    )
    query = table.insert(
        key=rule.key, failures=1, blocked_until=rule.blocked_after[0], window_end=rule.window_end
    ).on_conflict(
        conflict_target=[table.key],
        update={
            table.failures: failures,
            table.blocked_until: blocked_until,
            table.window_end: rule.window_end,
        },
        where=table.blocked_until <= now,
    )
    return bool(query.as_rowcount().execute())


@dataclass(frozen=True)
class Forgiveness:
    """An attempt counted by take_attempt that was no failure after all: the `reset` key's count
    starts again (an email, after a success), and the `refund` key's count forgets this one
    attempt (an address), lifting the block it set if the count is below `threshold` again."""

    reset: str | None
    refund: str | None
    threshold: int
    now: datetime.datetime


def forgive_attempt(forgiven: Forgiveness) -> None:
    """Apply forgiven, in one transaction."""
    table = LoginThrottle
    with db.atomic():
        if forgiven.reset is not None:
            table.delete().where(table.key == forgiven.reset).execute()
        if forgiven.refund is not None:
            _refund(forgiven.refund, forgiven.threshold, forgiven.now)


def _refund(key: str, threshold: int, now: datetime.datetime) -> None:
    table = LoginThrottle
    (
        table.update(
            failures=table.failures - 1,
            blocked_until=peewee.Case(
                None,
                [(table.failures - 1 < threshold, table.blocked_until.to_value(now))],
                table.blocked_until,
            ),
        )
        .where((table.key == key) & (table.failures > 0))
        .execute()
    )
