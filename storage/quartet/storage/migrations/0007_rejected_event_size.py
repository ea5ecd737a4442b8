"""Rejected events record their size, and keep only the start of an event too large to store.

An EVENT_TOO_LARGE rejection kept the whole event (up to gRPC's 16 MiB message limit), which
undid the event size limit on disk. Such a rejection now keeps the event without its data, and
`data_prefix` the first characters of that; `size` is the event's size as sent, for every
rejection. Rows already stored keep what they hold, with no size.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    migrator.migrate(
        migrator.add_column("rejected_event", "size", peewee.BigIntegerField(null=True)),
        migrator.add_column("rejected_event", "data_prefix", peewee.TextField(null=True)),
    )
