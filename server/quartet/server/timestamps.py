"""Conversions between protobuf Timestamps and the naive UTC datetimes stored in the database."""

from __future__ import annotations

import datetime

from google.protobuf import timestamp_pb2

from quartet.server.errors import Violations

# Timestamp's own valid range (0001-01-01 to 9999-12-31), per google/protobuf/timestamp.proto.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
_EPOCH = datetime.datetime(1970, 1, 1)


def to_timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    """The Timestamp of value, a naive datetime being read as UTC: what FromDatetime() computes,
    at a third of its cost (every stored row read goes through here)."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    since = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def from_timestamp(
    timestamp: timestamp_pb2.Timestamp, field: str, violations: Violations
) -> datetime.datetime | None:
    """The UTC datetime of timestamp, or None (with a violation added) if it is out of range."""
    if not (_MIN_SECONDS <= timestamp.seconds <= _MAX_SECONDS) or not (
        0 <= timestamp.nanos < 1_000_000_000
    ):
        violations.add(field, "is not a valid timestamp (year 1 to 9999, nanos 0 to 999999999)")
        return None
    # What ToDatetime() computes (nanoseconds truncated to microseconds), at a fifth of its cost.
    return _EPOCH + datetime.timedelta(
        seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000
    )


def optional_timestamp(
    message: object, name: str, violations: Violations, prefix: str = ""
) -> datetime.datetime | None:
    """The datetime of message's Timestamp field `name`, or None when it is not set."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    return from_timestamp(getattr(message, name), prefix + name, violations)
