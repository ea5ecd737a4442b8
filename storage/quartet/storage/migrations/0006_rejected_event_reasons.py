"""Rejected events' reasons move to rows of their own, so that a reason filter uses an index.

`rejected_event.reasons` held them as ",A,B,", matched with LIKE '%,A,%': a full scan of the
table for every page. `rejected_event_reason` holds one row per (rejected event, reason), keyed
by (reason, reject_time, rejected_id), the order the list is paged in. Existing rows are
converted, a page of ids at a time, and the old column is dropped.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator

_PAGE = 5000


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    # Frozen copies of the models as they were when this migration was written.
    class RejectedEvent(peewee.Model):
        id = peewee.BigAutoField()
        reasons = peewee.CharField(max_length=500)
        reject_time = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "rejected_event"

    class RejectedEventReason(peewee.Model):
        reason = peewee.CharField(max_length=100)
        reject_time = peewee.DateTimeField()
        rejected_id = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "rejected_event_reason"
            primary_key = peewee.CompositeKey("reason", "reject_time", "rejected_id")

    db.create_tables([RejectedEventReason])
    last = 0
    while True:
        page = list(
            RejectedEvent.select(RejectedEvent.id, RejectedEvent.reasons, RejectedEvent.reject_time)
            .where(RejectedEvent.id > last)
            .order_by(RejectedEvent.id)
            .limit(_PAGE)
        )
        if not page:
            break
        rows = [
            (reason, row.reject_time, row.id)
            for row in page
            for reason in sorted(set(row.reasons.strip(",").split(",")) - {""})
        ]
        for start in range(0, len(rows), _PAGE):
            RejectedEventReason.insert_many(
                rows[start : start + _PAGE],
                fields=[
                    RejectedEventReason.reason,
                    RejectedEventReason.reject_time,
                    RejectedEventReason.rejected_id,
                ],
            ).execute()
        last = page[-1].id
    migrator.migrate(migrator.drop_column("rejected_event", "reasons"))
