"""Events, rejected events, and the event types' schemas (with the seed's three examples)."""

from __future__ import annotations

import datetime
import json

import peewee
from playhouse.migrate import SchemaMigrator

_PAGE = {"type": "string", "minLength": 1, "maxLength": 2048}
# The three example events of the original challenge ("The Eye"), as version 1 of their types.
# Payloads must be objects with exactly these fields; a new version can relax or extend them.
SEED_TYPES = {
    ("page interaction", "pageview"): {
        "type": "object",
        "properties": {"host": _PAGE, "path": {**_PAGE, "pattern": "^/"}},
        "required": ["host", "path"],
        "additionalProperties": False,
    },
    ("page interaction", "cta click"): {
        "type": "object",
        "properties": {"host": _PAGE, "path": {**_PAGE, "pattern": "^/"}, "element": _PAGE},
        "required": ["host", "path", "element"],
        "additionalProperties": False,
    },
    ("form interaction", "submit"): {
        "type": "object",
        "properties": {
            "host": _PAGE,
            "path": {**_PAGE, "pattern": "^/"},
            "form": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            },
        },
        "required": ["host", "path", "form"],
        "additionalProperties": False,
    },
}


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # Frozen copies of the models as they were when this migration was written.
    class EventType(peewee.Model):
        id = peewee.BigAutoField()
        category = peewee.CharField(max_length=100)
        name = peewee.CharField(max_length=100)
        version = peewee.IntegerField()
        schema = peewee.TextField()
        create_time = peewee.DateTimeField(default=datetime.datetime.now)

        class Meta:
            database = db
            table_name = "event_type"
            indexes = ((("category", "name", "version"), True),)

    class Event(peewee.Model):
        seq = peewee.BigAutoField()
        id = peewee.CharField(max_length=36, unique=True)
        application_id = peewee.BigIntegerField()
        session_id = peewee.CharField(max_length=36)
        category = peewee.CharField(max_length=100)
        name = peewee.CharField(max_length=100)
        data = peewee.TextField()
        occur_time = peewee.DateTimeField()
        receive_time = peewee.DateTimeField()
        schema_version = peewee.IntegerField(default=0)

        class Meta:
            database = db
            table_name = "event"
            indexes = (
                (("session_id", "occur_time", "seq"), False),
                (("category", "occur_time", "seq"), False),
                (("category", "name", "occur_time", "seq"), False),
                (("occur_time", "seq"), False),
            )

    class RejectedEvent(peewee.Model):
        id = peewee.BigAutoField()
        application_id = peewee.BigIntegerField()
        event = peewee.TextField()
        violations = peewee.TextField()
        reasons = peewee.CharField(max_length=500)
        reject_time = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "rejected_event"
            indexes = (
                (("reject_time", "id"), False),
                (("application_id", "reject_time", "id"), False),
            )

    db.create_tables([EventType, Event, RejectedEvent])
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    for (category, name), schema in SEED_TYPES.items():
        EventType.create(
            category=category, name=name, version=1, schema=json.dumps(schema), create_time=now
        )
