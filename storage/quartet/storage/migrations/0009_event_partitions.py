"""On PostgreSQL, `event` becomes a table range-partitioned by week of `occur_time`, every row
kept (see quartet.storage.partitions), and `event_ids` holds each event's id.

The events stored so far go to the partition `event_before` (every time before this week), or to
the week partitions from this one on (an event may be a little in the future). `seq` goes on
from the same sequence. The id's unique index cannot be kept on a partitioned table (a unique
index must hold the partition key), so `event_ids` (id primary key, occur_time) takes its place:
it is what recognises a resent event, and how an event is found by id.

SQLite keeps its table as it is: its retention deletes old rows in small batches, through the
index on (occur_time, seq) it has.
"""

from __future__ import annotations

import datetime

import peewee
from playhouse.migrate import SchemaMigrator

_COLUMNS = (
    "seq, id, application_id, session_id, category, name, data, occur_time, receive_time,"
    " schema_version"
)
# As migration 0003 made them (Peewee's names), now on the partitioned table.
_INDEXES = {
    "event_session_id_occur_time_seq": "session_id, occur_time, seq",
    "event_category_occur_time_seq": "category, occur_time, seq",
    "event_category_name_occur_time_seq": "category, name, occur_time, seq",
    "event_occur_time_seq": "occur_time, seq",
}


def up(migrator: SchemaMigrator, db: peewee.Database) -> None:
    if not isinstance(db, peewee.PostgresqlDatabase):
        return
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    monday = datetime.datetime.combine(now.date(), datetime.time()) - datetime.timedelta(
        days=now.weekday()
    )
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    cursor.execute(
        "ALTER TABLE event RENAME TO event_unpartitioned;"
        " ALTER SEQUENCE event_seq_seq OWNED BY NONE;"
        " CREATE TABLE event ("
        "  seq bigint NOT NULL DEFAULT nextval('event_seq_seq'),"
        "  id varchar(36) NOT NULL, application_id bigint NOT NULL,"
        "  session_id varchar(36) NOT NULL, category varchar(100) NOT NULL,"
        "  name varchar(100) NOT NULL, data text NOT NULL,"
        "  occur_time timestamp NOT NULL, receive_time timestamp NOT NULL,"
        "  schema_version integer NOT NULL"
        " ) PARTITION BY RANGE (occur_time);"
        " CREATE TABLE event_before PARTITION OF event FOR VALUES FROM (MINVALUE) TO (%s);"
        " SELECT max(occur_time) FROM event_unpartitioned",
        (monday,),
    )
    latest = cursor.fetchone()[0] or now
    start = monday
    while start <= max(latest, now):
        cursor.execute(
            f"CREATE TABLE event_p{start:%Y%m%d} PARTITION OF event FOR VALUES FROM (%s) TO (%s)",
            (start, start + datetime.timedelta(days=7)),
        )
        start += datetime.timedelta(days=7)
    # Rows first, keys and indexes after: building an index once is cheaper than growing it.
    cursor.execute(
        f"INSERT INTO event ({_COLUMNS}) SELECT {_COLUMNS} FROM event_unpartitioned;"
        " CREATE TABLE event_ids (id varchar(36) NOT NULL PRIMARY KEY,"
        "  occur_time timestamp NOT NULL);"
        " INSERT INTO event_ids (id, occur_time) SELECT id, occur_time FROM event_unpartitioned;"
        " DROP TABLE event_unpartitioned;"
        " ALTER SEQUENCE event_seq_seq OWNED BY event.seq;"
        " ALTER TABLE event ADD PRIMARY KEY (seq, occur_time);"
        + "".join(f" CREATE INDEX {index} ON event ({on});" for index, on in _INDEXES.items())
    )
