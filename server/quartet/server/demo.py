"""Realistic fake data for demos and load tests (what django-seed did for the seed), via Faker.

Everything goes through the same rules as real traffic: events are checked by the EventChecker
against the registered schemas (a few are sent invalid on purpose, so that rejected events have
something to show), scores use the real formula, and the experiment data set is written as CSV
files with the seed's quirks and loaded by the real importer.
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
from quartet.experiments.v1 import experiment_service_pb2 as pb_experiments
from quartet.server.auth.passwords import hash_password
from quartet.server.auth.tokens import new_api_key
from quartet.server.events import EventChecker, Policy, Registry
from quartet.server.events.validation import new_event_id
from quartet.server.experiments.csvfiles import DataFile
from quartet.server.experiments.importer import run_import
from quartet.server.score import compute_score
from quartet.storage import accounts, applications, events, scores
from quartet.storage.base import db, utcnow

DEMO_PASSWORD = "quartet-demo"
DEMO_CALLER = "demo-data"  # the caller the import history names for the demo import
# Real compounds and their formulas (the seed's Compound B and C are THC and dopamine by formula).
COMPOUNDS = (
    ("Caffeine", "C8H10N4O2"), ("Tetrahydrocannabinol", "C21H30O2"), ("Dopamine", "C8H11NO2"),
    ("Aspirin", "C9H8O4"), ("Ibuprofen", "C13H18O2"), ("Paracetamol", "C8H9NO2"),
    ("Serotonin", "C10H12N2O"), ("Melatonin", "C13H16N2O2"), ("Capsaicin", "C18H27NO3"),
    ("Nicotine", "C10H14N2"), ("Glucose", "C6H12O6"), ("Morphine", "C17H19NO3"),
)  # fmt: skip
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
    experiment_users: int = 0
    experiments: int = 0


def fill(
    database: peewee.Database,
    *,
    users: int = 50,
    sessions: int = 200,
    experiments: int = 500,
    seed: int | None = None,
) -> Filled:
    """Add demo users with scores, an application with sessions of events, and an experiment
    data set (replacing the stored one) to database (already bound and migrated). Demo users log
    in with DEMO_PASSWORD."""
    fake = Faker("en_CA")
    Faker.seed(seed)
    rng = random.Random(seed)
    filled = Filled()
    # One hash for every demo account: they share a published password anyway, and a password
    # hash is slow on purpose.
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
        registry.update(events.latest_event_types(), since=registry.generation)
        checker = EventChecker(registry, Policy(False, datetime.timedelta(seconds=60), 65536))
        now = utcnow()
        batch: list[events.NewEvent | events.Rejection] = []
        for message in _sessions(fake, rng, sessions, now):
            batch.append(checker.check(message, application.id, now))
            if len(batch) >= 1000:
                _store(batch, now, filled)
                batch = []
        _store(batch, now, filled)
        if experiments:
            files = _experiment_files(fake, rng, max(1, experiments // 5), experiments)
            chunks = ((kind, data, False) for kind, data in files.items())
            run_import(chunks, lambda progress: None, DEMO_CALLER)
            filled.experiment_users, filled.experiments = max(1, experiments // 5), experiments
    return filled


def _experiment_files(
    fake: Faker, rng: random.Random, users: int, experiments: int
) -> dict[DataFile, bytes]:
    """users.csv, compounds.csv and user_experiments.csv with the seed's quirks: ", " plus a tab
    between cells, a blank first line in users.csv, no newline at the end."""

    def csv(header: str, rows: list[str]) -> bytes:
        return "\n".join([header, *rows]).replace(",", ",\t").encode()

    signup = datetime.date(2023, 1, 1)
    people = [
        f"{n},{fake.name().replace(',', '')},{fake.email()},"
        f"{signup + datetime.timedelta(days=rng.randint(0, 365))}"
        for n in range(1, users + 1)
    ]
    compounds = [f"{n},{name},{formula}" for n, (name, formula) in enumerate(COMPOUNDS, 1)]
    runs = []
    for n in range(1, experiments + 1):
        used = rng.sample(range(1, len(COMPOUNDS) + 1), rng.randint(1, 3))
        runs.append(f"{n},{rng.randint(1, users)},{';'.join(map(str, used))},{rng.randint(5, 90)}")
    return {
        pb_experiments.DATA_FILE_USERS: b"\n" + csv("user_id,name,email,signup_date", people),
        pb_experiments.DATA_FILE_COMPOUNDS: csv(
            "compound_id,compound_name,compound_structure", compounds
        ),
        pb_experiments.DATA_FILE_EXPERIMENTS: csv(
            "experiment_id,user_id,experiment_compound_ids,experiment_run_time", runs
        ),
    }


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
    message = pb.Event(id=new_event_id(), session_id=session, category=category, name=name)
    message.data.update(data)
    message.occur_time.FromDatetime(moment)
    return message
