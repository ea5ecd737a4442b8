"""AIP-158 pagination: page sizes, and opaque page tokens bound to the request that issued them.

A token carries the keyset position after the last item of its page and a fingerprint of the
request's filters, so a token reused with other filters is refused instead of silently giving a
wrong page. Tokens are not secret: they only say where a page ends, and every page is still
filtered by what the caller may see. Nor are they signed, so anyone can forge one: the decoder
accepts only values of the shape the encoder writes and the database can take (a 64-bit integer,
a naive UTC time in ISO format, text without control characters, a finite number).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import FieldViolation, InvalidArgument, text_problem

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_VERSION = 1
MAX_TOKEN_LENGTH = 1024  # the tokens quartet issues are under 200 characters
INT64_RANGE = (-(2**63), 2**63 - 1)  # ids are BIGINT

Key = tuple[Any, ...]
Row = TypeVar("Row")
M = TypeVar("M", bound=Message)
# A repeated message field's tag and length prefix, at most, for messages under 2 GiB.
_FIELD_OVERHEAD = 6


class PagedRequest(Protocol):
    page_size: int
    page_token: str


def page_size(request: PagedRequest, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The effective page size: the default for 0, at most MAX_PAGE_SIZE. (A negative size is
    refused by the `int32.gte = 0` rule every page_size field declares; a test checks they do.)"""
    return min(request.page_size or default, MAX_PAGE_SIZE)


def paged(
    request: Message, rows: Sequence[Row], limit: int, key: Callable[[Row], Key]
) -> tuple[Sequence[Row], str]:
    """The rows of the page and the token of the next ("" if none), given up to limit + 1 rows
    fetched after the request's position: the extra row only says another page exists."""
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], encode_page_token(request, key(rows[limit - 1]))


def paged_messages(
    request: Message,
    rows: Sequence[Row],
    limit: int,
    key: Callable[[Row], Key],
    to_message: Callable[[Row], M],
    max_bytes: int,
) -> tuple[list[M], str]:
    """Like paged(), with the rows made messages, and a byte budget besides the row count: the
    page stops before the message that would take it past max_bytes (keeping at least one) and
    its token continues from there. A client thus never asks for a reply larger than that,
    whatever the rows hold."""
    page, token = paged(request, rows, limit, key)
    messages: list[M] = []
    size = 0
    for row in page:
        message = to_message(row)
        size += message.ByteSize() + _FIELD_OVERHEAD
        if messages and size > max_bytes:
            return messages, encode_page_token(request, key(page[len(messages) - 1]))
        messages.append(message)
    return messages, token


def encode_page_token(request: Message, key: Key) -> str:
    """A token for the page that starts after key, valid only with request's filters."""
    payload = [_VERSION, _fingerprint(request), [_encode(v) for v in key]]
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(request: Message, types: tuple[type, ...]) -> Key | None:
    """The keyset position in request.page_token (None for the first page), typed as `types`."""
    token: str = request.page_token  # type: ignore[attr-defined]
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("too long to be a page token")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, fingerprint, values = json.loads(raw)
        if version != _VERSION or not isinstance(values, list) or len(values) != len(types):
            raise ValueError("unknown token layout")
        key = tuple(_decode(value, kind) for value, kind in zip(values, types, strict=True))
    # RecursionError: JSON nested too deep; OverflowError: a number too large for a float.
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError, OverflowError):
        raise _invalid("page_token is malformed; pass back a next_page_token unchanged") from None
    if fingerprint != _fingerprint(request):
        raise _invalid("page_token was issued for a request with different filters")
    return key


def _fingerprint(request: Message) -> str:
    filters = type(request)()
    filters.CopyFrom(request)
    filters.ClearField("page_token")
    filters.ClearField("page_size")
    return hashlib.sha256(filters.SerializeToString(deterministic=True)).hexdigest()[:16]


def _encode(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def _decode(value: object, kind: type) -> object:
    """value as `kind`, if it is what _encode writes for one; TypeError or ValueError if not."""
    if kind is datetime.datetime and isinstance(value, str):
        decoded = datetime.datetime.fromisoformat(value)
        # Times are stored naive (UTC): an aware one compares wrongly with them, or not at all.
        if decoded.tzinfo is None and decoded.isoformat() == value:
            return decoded
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        low, high = INT64_RANGE
        if low <= value <= high:
            return value
    elif kind is str and isinstance(value, str):
        if text_problem(value) is None:
            return value
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    raise TypeError(f"expected {kind.__name__} as page tokens hold it")


def _invalid(description: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid page_token: {description}",
        reason=error_reason_pb2.PAGE_TOKEN_INVALID,
        violations=[FieldViolation("page_token", description)],
    )
