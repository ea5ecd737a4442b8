"""Exceptions the storage layer raises for conditions a caller may cause (the server maps them)."""

from __future__ import annotations


class RecordNotFound(LookupError):
    """No row of `kind` has `key`."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key} does not exist")
        self.kind = kind
        self.key = key


class RecordExists(Exception):
    """A row of `kind` with unique `key` already exists."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key} already exists")
        self.kind = kind
        self.key = key


class DeadlineExceeded(TimeoutError):
    """The caller's deadline passed before the database work started, so none was done."""


class DatabaseUnavailable(Exception):
    """The database cannot be used now (its files are read-only or gone), found before any
    statement ran; like the driver errors that `unavailable()` recognises, not the caller's."""
