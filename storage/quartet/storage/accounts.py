"""Accounts: the people (and services) that own scores and call quartet."""

from __future__ import annotations

import peewee

from quartet.storage.base import BaseModel, db, utcnow
from quartet.storage.errors import RecordExists


class Account(BaseModel):
    """One account, identified by its email address (stored lower-cased)."""

    id = peewee.BigAutoField()
    email = peewee.CharField(max_length=254, unique=True)
    create_time = peewee.DateTimeField(default=utcnow)


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively: store and look them up lower-cased and trimmed."""
    return email.strip().lower()


def create_account(email: str) -> Account:
    """Create an account; RecordExists if the email is taken."""
    email = normalize_email(email)
    try:
        with db.atomic():
            return Account.create(email=email)
    except peewee.IntegrityError:
        raise RecordExists("account", email) from None


def account_exists(account_id: int) -> bool:
    return Account.select().where(Account.id == account_id).exists()
