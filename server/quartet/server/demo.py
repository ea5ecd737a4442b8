"""Realistic fake data for demos and load tests (what django-seed did for the seed), via Faker.

Everything goes through the same rules as real traffic: events are checked by the EventChecker
against the registered schemas (a few are sent invalid on purpose, so that rejected events have
something to show), and scores use the real formula.
"""

from __future__ import annotations

import datetime
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peewee
from faker import Faker

from quartet.events.v1 import event_service_pb2 as pb
from quartet.server.auth.passwords import hash_password
from quartet.server.auth.tokens import new_api_key
from quartet.server.events import EventChecker, Policy, Registry
from quartet.server.score import compute_score
from quartet.storage import accounts, applications, events, scores
from quartet.storage.base import db, utcnow

DEMO_PASSWORD = "quartet-demo"
PAGES = ("/", "/pricing", "/products", "/products/compare", "/blog", "/contact", "/signup")
ELEMENTS = ("chat bubble", "buy now", "sign up", "learn more", "play video")


@dataclass
class Filled:
    """What fill() created."""

    users: int = 0
    scores: int = 0
    events: int = 0
    rejected: int = 0
    api_key: str = ""


def fill(
    database: peewee.Database,
    *,
    users: int = 50,
    sessions: int = 200,
    seed: int | None = None,
) -> Filled:
    """Add demo users with scores, and an application with sessions of events, to database
    (already bound and migrated). Demo users log in with DEMO_PASSWORD."""
    fake = Faker("en_CA")
    Faker.seed(seed)
    rng = random.Random(seed)
    filled = Filled()
    # One hash for every demo account: they share a published password anyway, and scrypt is
    # slow on purpose.
    password_hash = hash_password(DEMO_PASSWORD)
    with database.connection_context():
        with db.atomic():
            for _ in range(users):
                email = f"{uuid.uuid4().hex[:6]}.{fake.email()}"
                account = accounts.create_account(email, password_hash, "user")
                filled.users += 1
                for _ in range(rng.randint(0, 20)):
                    value = round(rng.uniform(-100, 1500), 2)
                    scores.create_score(
                        input_value=value,
                        value=compute_score(value),
                        user_id=account.id,
                        request_id=None,
                    )
                    filled.scores += 1
        full_key, key_id, secret_hash = new_api_key()
        application, _ = applications.create_application(
            f"demo-web-{key_id[:6]}", key_id, secret_hash
        )
        filled.api_key = full_key
        registry = Registry()
        registry.replace(events.latest_event_types())
        checker = EventChecker(registry, Policy(False, datetime.timedelta(seconds=60), 65536))
        now = utcnow()
        batch: list[events.NewEvent | events.Rejection] = []
        for message in _sessions(fake, rng, sessions, now):
            batch.append(checker.check(message, application.id, now))
            if len(batch) >= 1000:
                _store(batch, now, filled)
                batch = []
        _store(batch, now, filled)
    return filled


def _store(
    batch: list[events.NewEvent | events.Rejection], now: datetime.datetime, filled: Filled
) -> None:
    new = [item for item in batch if isinstance(item, events.NewEvent)]
    rejected = [item for item in batch if isinstance(item, events.Rejection)]
    with db.atomic():
        filled.events += len(events.store(new, rejected, now))
    filled.rejected += len(rejected)


def _sessions(
    fake: Faker, rng: random.Random, count: int, now: datetime.datetime
) -> Iterator[pb.Event]:
    """Visits: pageviews, a call-to-action click or two, sometimes a signup form."""
    for _ in range(count):
        session = str(uuid.uuid4())
        host = fake.domain_name()
        moment = now - datetime.timedelta(seconds=rng.randint(60, 7 * 24 * 3600))
        for _ in range(rng.randint(1, 12)):
            moment += datetime.timedelta(seconds=rng.randint(2, 90))
            path = rng.choice(PAGES)
            roll = rng.random()
            if roll < 0.65:
                yield _event(session, "page interaction", "pageview", moment, host=host, path=path)
            elif roll < 0.9:
                element = rng.choice(ELEMENTS)
                yield _event(
                    session, "page interaction", "cta click", moment, host=host, path=path,
                    element=element,
                )  # fmt: skip
            elif roll < 0.98:
                form = {"first_name": fake.first_name(), "last_name": fake.last_name()}
                yield _event(
                    session, "form interaction", "submit", moment, host=host, path="/signup",
                    form=form,
                )  # fmt: skip
            else:  # a buggy sender: an event from the future, kept among the rejected events
                yield _event(
                    session, "page interaction", "pageview",
                    now + datetime.timedelta(days=1), host=host, path=path,
                )  # fmt: skip


def _event(
    session: str, category: str, name: str, moment: datetime.datetime, **data: Any
) -> pb.Event:
    message = pb.Event(id=str(uuid.uuid4()), session_id=session, category=category, name=name)
    message.data.update(data)
    message.occur_time.FromDatetime(moment)
    return message
