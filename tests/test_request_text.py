"""Request text holding NUL or another control character: INVALID_ARGUMENT, never INTERNAL.

PostgreSQL cannot store NUL in text at all (psycopg2: "A string literal cannot contain NUL"), so
such text used to reach the database and come back INTERNAL; SQLite stored it. Every service now
refuses it, with a field violation, before anything is stored.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee
import pytest

from quartet import storage
from quartet.client import Client, QuartetError, event
from quartet.server import services
from quartet.server.errors import text_problem
from quartet.storage.events import RejectedEvent, RejectedEventReason
from quartet.storage.experiment_history import ImportRecord
from tests.test_auth import PASSWORD
from tests.test_experiments import SEED_COMPOUNDS, SEED_EXPERIMENTS, SEED_USERS

SESSION = "e2085be5-9137-4e4e-80b5-f1ffddc25423"
NUL = "a\x00b"


@dataclasses.dataclass
class Callers:
    admin: Client
    app: Client


@pytest.fixture
def callers(client: Client, target: str) -> Iterator[Callers]:
    with Client(target, token=client.auth.create_application("web").api_key) as app:
        yield Callers(client, app)


def pageview(**changes: Any) -> Any:
    fields: dict[str, Any] = {
        "session_id": SESSION,
        "category": "page interaction",
        "name": "pageview",
        "occurred_at": "2021-01-01 09:15:27",
    }
    return event(**{**fields, **changes})


def import_users(admin: Client, users: bytes, compounds: bytes = SEED_COMPOUNDS) -> object:
    return admin.experiments.import_files(
        io.BytesIO(users), io.BytesIO(compounds), io.BytesIO(SEED_EXPERIMENTS)
    )


# (call, the field violation expected, the error's reason)
CASES: dict[str, tuple[Callable[[Callers], object], str, str]] = {
    "score request_id": (
        lambda c: c.admin.scores.create(1, request_id=NUL),
        "request_id",
        "FIELD_INVALID",
    ),
    "score search filter": (lambda c: c.admin.scores.list(search=NUL), "search", "FIELD_INVALID"),
    "account email": (
        lambda c: c.admin.auth.create_account(f"{NUL}@example.com", PASSWORD),
        "email",
        "FIELD_INVALID",
    ),
    "application name": (
        lambda c: c.admin.auth.create_application(NUL),
        "name",
        "FIELD_INVALID",
    ),
    "api key id": (lambda c: c.admin.auth.revoke_api_key(NUL), "key_id", "FIELD_INVALID"),
    "event category": (
        lambda c: c.app.events.send(pageview(category=NUL)),
        "event.category",
        "EVENT_REJECTED",
    ),
    "event name": (
        lambda c: c.app.events.send(pageview(name=NUL)),
        "event.name",
        "EVENT_REJECTED",
    ),
    "event session_id": (
        lambda c: c.app.events.send(pageview(session_id=SESSION[:-1] + "\x00")),
        "event.session_id",
        "EVENT_REJECTED",
    ),
    "event id": (
        lambda c: c.app.events.send(pageview(event_id=SESSION[:-1] + "\x00")),
        "event.id",
        "EVENT_REJECTED",
    ),
    "events category filter": (
        lambda c: c.admin.events.list(category=NUL),
        "category",
        "FIELD_INVALID",
    ),
    "events name filter": (
        lambda c: c.admin.events.list(category="page interaction", name=NUL),
        "name",
        "FIELD_INVALID",
    ),
    "event id to get": (lambda c: c.admin.events.get(NUL), "id", "FIELD_INVALID"),
    "event type category": (
        lambda c: c.admin.events.create_type(NUL, "pageview", {"type": "object"}),
        "category",
        "FIELD_INVALID",
    ),
    "event type name": (
        lambda c: c.admin.events.create_type("page interaction", NUL, {"type": "object"}),
        "name",
        "FIELD_INVALID",
    ),
    "experiment user name": (
        lambda c: import_users(c.admin, SEED_USERS.replace(b"Carol", b"Car\x00ol")),
        "users.csv:5:name",
        "IMPORT_FILES_INVALID",
    ),
    "experiment compound structure": (
        lambda c: import_users(
            c.admin, SEED_USERS, SEED_COMPOUNDS.replace(b"C20H25N3O", b"C20\x00H25N3O")
        ),
        "compounds.csv:2:compound_structure",
        "IMPORT_FILES_INVALID",
    ),
    # Regions are answered from memory; they refuse such text too.
    "fsa": (lambda c: c.admin.regions.lookup_fsa("K1A\x00"), "fsa", "FSA_INVALID"),
    "province code": (
        lambda c: c.admin.regions.get_province("O\x00"),
        "alpha_code",
        "FIELD_INVALID",
    ),
}


# Regions check their codes' form themselves, and say what the form is.
OWN_DESCRIPTIONS = {"fsa", "province code"}


def row_counts(db: peewee.Database) -> dict[str, int]:
    """Rows per table a call may write. Rejected events and refused imports are kept by design,
    so not counted. (event_ids exists on PostgreSQL alone.)"""
    models = [m for m in services.MODELS if m not in storage.REFERENCE_MODELS]
    with db.connection_context():
        tables = set(db.get_tables())
        return {
            m._meta.table_name: m.select().count()
            for m in models
            if m not in (RejectedEvent, RejectedEventReason, ImportRecord)
            and m._meta.table_name in tables
        }


@pytest.mark.parametrize("case", CASES)
def test_nul_in_text_is_invalid_and_stores_nothing(
    callers: Callers, db: peewee.Database, case: str
) -> None:
    call, field, reason = CASES[case]
    before = row_counts(db)
    with pytest.raises(QuartetError) as caught:
        call(callers)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), error
    found = [v for v in error.field_violations if v.field == field]
    assert found, error.field_violations
    if case not in OWN_DESCRIPTIONS:
        assert any("control characters" in v.description for v in found), found
    assert row_counts(db) == before


@pytest.mark.parametrize("character", ["\x01", "\t", "\n", "\x1b", "\x7f"])
def test_other_control_characters_are_invalid_too(client: Client, character: str) -> None:
    with pytest.raises(QuartetError) as caught:
        client.auth.create_application(f"checkout{character}web")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["name"]
    assert list(client.auth.iter_applications()) == []


def test_login_with_nul_in_the_email_is_refused_before_any_account_is_read(
    anonymous: Client,
) -> None:
    """No account's email holds a control character, so saying the request is malformed tells
    nothing of who is registered; the refusal comes from the contract's text rule, before the
    login throttle or the database are touched."""
    anonymous.auth.create_account("peter@example.com", PASSWORD)
    with pytest.raises(QuartetError) as caught:
        anonymous.auth.login("peter@example.com\x00", PASSWORD)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
    )
    assert [v.field for v in caught.value.field_violations] == ["email"]


def test_text_problem() -> None:
    assert text_problem("checkout-web, ünïcode and spaces") is None
    assert text_problem("") is None
    problem = text_problem("a\x00b")
    assert problem is not None and "\\x00" in problem
