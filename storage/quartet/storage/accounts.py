"""Accounts (people and services that log in) and their single-use refresh tokens."""

from __future__ import annotations

import datetime

import peewee

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
            return Account.create(email=email, password_hash=password_hash, role=role)
    except peewee.IntegrityError:
        raise RecordExists("account", email) from None


def get_account(account_id: int) -> Account:
    account: Account | None = Account.get_or_none(Account.id == account_id)
    if account is None:
        raise RecordNotFound("account", account_id)
    return account


def find_account(email: str) -> Account | None:
    account: Account | None = Account.get_or_none(Account.email == normalize_email(email))
    return account


def set_role(account_id: int, role: str) -> Account:
    with db.atomic():
        if not Account.update(role=role).where(Account.id == account_id).execute():
            raise RecordNotFound("account", account_id)
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
    jti: str, account_id: int, family: str, expire_time: datetime.datetime
) -> None:
    with db.atomic():
        RefreshToken.create(jti=jti, account=account_id, family=family, expire_time=expire_time)


def use_refresh_token(
    jti: str, now: datetime.datetime, replacement: str, replacement_expire_time: datetime.datetime
) -> tuple[RefreshToken | None, Account | None]:
    """Exchange a refresh token: mark it used and record its replacement (the jti of the token
    issued in exchange, in the same family), in one transaction; return it with its account.

    Returns (None, None) for a token never issued or expired. A token already used means it leaked
    (its legitimate holder rotated it), and so does one that a concurrent exchange claimed first:
    every unused token of its family is used up at once, and (token, None) is returned so the
    caller refuses the exchange. Because a replacement is recorded in the transaction that claims
    its token, that includes the replacement a concurrent exchange got: a login said to be revoked
    is revoked.
    """
    with db.atomic():
        token: RefreshToken | None = RefreshToken.get_or_none(RefreshToken.jti == jti)
        if token is None or token.expire_time <= now:
            return None, None
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
