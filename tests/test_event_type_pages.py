"""ListEventTypes pages (AIP-158) through the real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import peewee
import pytest

from quartet.client import Client, QuartetError
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from quartet.storage import events
from tests.conftest import Principal, mint_token
from tests.test_events import assert_served_by_an_index

SCHEMA = {"type": "object"}


def walk(client: Client, page_size: int) -> tuple[list[tuple[str, str, int]], int]:
    """Every type, page after page by hand, and the number of pages it took."""
    listed: list[tuple[str, str, int]] = []
    token, pages = "", 0
    while True:
        page = client.events.list_types(page_size=page_size, page_token=token)
        assert len(page.event_types) <= page_size
        listed += [(t.category, t.name, t.version) for t in page.event_types]
        pages += 1
        token = page.next_page_token
        if not token:
            return listed, pages


def register(client: Client, types: list[tuple[str, str]]) -> None:
    for category, name in types:
        client.events.create_type(category, name, SCHEMA)


def test_pages_walk_every_type_once_in_order(client: Client) -> None:
    # Lowercase letters and digits of one length sort alike in every collation.
    register(client, [(f"pages{c}", f"type{n}") for c in "cab" for n in "21"])
    register(client, [("pagesa", "type1"), ("pagesa", "type1")])  # versions 2 and 3
    listed, pages = walk(client, page_size=2)
    everything = client.events.list_types(page_size=1000)
    assert not everything.next_page_token
    assert listed == [(t.category, t.name, t.version) for t in everything.event_types]
    assert len({(category, name) for category, name, _ in listed}) == len(listed)
    assert pages == -(-len(listed) // 2)
    ours = [entry for entry in listed if entry[0].startswith("pages")]
    assert ours == [
        ("pagesa", "type1", 3),
        ("pagesa", "type2", 1),
        ("pagesb", "type1", 1),
        ("pagesb", "type2", 1),
        ("pagesc", "type1", 1),
        ("pagesc", "type2", 1),
    ]
    assert [(t.category, t.name, t.version) for t in client.events.iter_types(page_size=3)] == (
        listed
    )


def test_a_type_registered_during_a_walk_moves_nothing(client: Client) -> None:
    register(client, [("bwalk", f"type{n}") for n in range(4)])
    first = client.events.list_types(page_size=2)
    register(client, [("awalk", "type0")])  # sorts before the position the token holds
    rest = list(_rest(client, first.next_page_token, page_size=2))
    seen = [(t.category, t.name) for t in first.event_types] + rest
    assert len(seen) == len(set(seen))
    assert ("awalk", "type0") not in seen
    assert {("bwalk", f"type{n}") for n in range(4)} <= set(seen)


def _rest(client: Client, token: str, page_size: int) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    while token:
        page = client.events.list_types(page_size=page_size, page_token=token)
        found += [(t.category, t.name) for t in page.event_types]
        token = page.next_page_token
    return found


def test_default_and_maximum_page_sizes(client: Client) -> None:
    register(client, [("many", f"type{n:02d}") for n in range(55)])
    total = len(list(client.events.iter_types()))
    assert total >= 55
    default = client.events.list_types()
    assert len(default.event_types) == 50 and default.next_page_token
    largest = client.events.list_types(page_size=5000)  # more than 1000 is taken as 1000
    assert len(largest.event_types) == total and not largest.next_page_token


def expect_invalid_page(call: Callable[[], object], field: str, reason: str) -> None:
    with pytest.raises(QuartetError) as caught:
        call()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == reason
    assert [v.field for v in caught.value.field_violations] == [field]


def test_bad_page_tokens_and_sizes_are_invalid_argument(client: Client) -> None:
    register(client, [("bad", "type0"), ("bad", "type1")])
    listed = client.events.list_types
    expect_invalid_page(
        lambda: listed(page_token="not a token"), "page_token", "PAGE_TOKEN_INVALID"
    )
    # A token of another list (its position is a region's number) is refused too.
    regions_token = client.regions.list_health_regions(page_size=1).next_page_token
    assert regions_token
    expect_invalid_page(
        lambda: listed(page_token=regions_token), "page_token", "PAGE_TOKEN_INVALID"
    )
    expect_invalid_page(lambda: listed(page_size=-1), "page_size", "FIELD_INVALID")


def test_a_page_of_large_schemas_stops_at_the_byte_budget(
    settings: Settings, admin: Principal
) -> None:
    large = {"type": "object", "description": "x" * 30_000}
    small_pages = dataclasses.replace(settings, max_page_bytes=100_000)
    with (
        running_server(small_pages) as target,
        Client(target, token=mint_token(admin.id, "admin")) as client,
    ):
        for n in range(8):
            client.events.create_type("large", f"type{n}", large)
        page = client.events.list_types(page_size=100)
        assert page.next_page_token and page.ByteSize() <= 100_000
        assert [t.name for t in page.event_types if t.category == "large"] == [
            "type0",
            "type1",
            "type2",
        ]
        walked = [(t.category, t.name) for t in client.events.iter_types(page_size=100)]
        assert [name for category, name in walked if category == "large"] == [
            f"type{n}" for n in range(8)
        ]


@pytest.mark.parametrize("after", [None, ("page interaction", "cta click")], ids=str)
def test_every_page_is_served_by_an_index(
    db: peewee.Database, after: tuple[str, str] | None
) -> None:
    """No full scan of the versions and no sort: a page reads from its position on."""
    assert_served_by_an_index(db, events.event_types_query(after=after).limit(50))
