"""Accounts can be disabled; failed logins are counted per email and per client address.

`account.disable_time` is set while an admin has disabled the account (its tokens and logins are
refused). `login_throttle` holds the recent failures of each throttled key, shared by every
worker and replica, so that guessing passwords is slowed down everywhere at once.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    migrator.migrate(
        migrator.add_column("account", "disable_time", peewee.DateTimeField(null=True))
    )

    # A frozen copy of the model as it was when this migration was written.
    class LoginThrottle(peewee.Model):
        key = peewee.CharField(max_length=80, primary_key=True)
        failures = peewee.IntegerField()
        blocked_until = peewee.DateTimeField()
        window_end = peewee.DateTimeField(index=True)

        class Meta:
            database = db
            table_name = "login_throttle"

    db.create_tables([LoginThrottle])
