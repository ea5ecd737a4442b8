"""Rejected events record their latest replay (ReplayRejectedEvents): its state, time and, when
the event stayed rejected, the problems found then. Rows never replayed hold NULLs.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    migrator.migrate(
        migrator.add_column("rejected_event", "replay_state", peewee.SmallIntegerField(null=True)),
        migrator.add_column("rejected_event", "replay_time", peewee.DateTimeField(null=True)),
        migrator.add_column("rejected_event", "replay_violations", peewee.TextField(null=True)),
    )
