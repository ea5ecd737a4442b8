"""ScoreService through the SDK: the seed's seven tests, then what the seed got wrong or lacked."""

from __future__ import annotations

import base64
import datetime
import math
import struct
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from quartet.client import Client, FieldViolation, QuartetError
from quartet.score.v1 import score_service_pb2
from quartet.server.pagination import encode_page_token
from quartet.storage import accounts, scores
from tests.conftest import Principal

CREATE = "/quartet.score.v1.ScoreService/CreateScore"


def raw_create(client: Client, payload: bytes) -> score_service_pb2.Score:
    """Send hand-made bytes as a CreateScoreRequest, as a client with another contract might."""
    method: grpc.UnaryUnaryMultiCallable[bytes, score_service_pb2.Score] = (
        client.channel.unary_unary(
            CREATE,
            request_serializer=None,
            response_deserializer=score_service_pb2.Score.FromString,
        )
    )
    try:
        return method(payload, timeout=5, metadata=client.metadata)
    except grpc.RpcError as error:
        raise QuartetError.from_rpc_error(error) from None


def assert_invalid(error: QuartetError, field: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "FIELD_INVALID"
    assert field in [v.field for v in error.field_violations]


# --- the seed's tests (scores/tests.py), on the gRPC contract -------------------------------


def test_created_response(client: Client) -> None:
    score = client.scores.create(1)
    assert score.id > 0
    assert score.value == 2


def test_no_data(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        raw_create(client, b"")
    assert_invalid(caught.value, "input_value")
    assert caught.value.field_violations == [
        FieldViolation("input_value", "value is required", "FIELD_INVALID")
    ]


def test_wrong_parameter_name(client: Client) -> None:
    # {"input_values": 1}: a field the contract does not know, so input_value is still missing.
    unknown_field_15 = bytes([15 << 3 | 1]) + struct.pack("<d", 1.0)
    with pytest.raises(QuartetError) as caught:
        raw_create(client, unknown_field_15)
    assert_invalid(caught.value, "input_value")


def test_string_input_is_refused_before_sending(client: Client) -> None:
    # The seed coerced "1" to 1.0; the typed contract makes it a client-side error...
    with pytest.raises(TypeError):
        client.scores.create("1")  # type: ignore[arg-type]
    # ... and a string sent on the wire anyway never parses as the number field.
    string_in_field_1 = bytes([1 << 3 | 2, 1]) + b"a"
    with pytest.raises(QuartetError) as caught:
        raw_create(client, string_in_field_1)
    assert_invalid(caught.value, "input_value")


def test_anonymous_user(anonymous: Client) -> None:
    # The seed stored scores without a user; with accounts, every call carries credentials.
    with pytest.raises(QuartetError) as caught:
        anonymous.scores.create(1)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "CREDENTIALS_MISSING"


@pytest.mark.parametrize(
    ("input_value", "expected"), [(0, 1), (1, 2), (-1, 0), (-99999, -99998), (99999, 100000)]
)
def test_formula(client: Client, input_value: float, expected: float) -> None:
    assert client.scores.create(input_value).value == expected


# --- beyond the seed ----------------------------------------------------------------------------


def test_negative_zero_is_one_value_everywhere(client: Client) -> None:
    """-0.0 was echoed as -0.0 but read back as +0.0 on SQLite (which keeps no sign of zero)."""
    created = client.scores.create(-0.0)
    read = [created, client.scores.get(created.id), *client.scores.iter()]
    assert [(s.input_value, math.copysign(1, s.input_value)) for s in read] == [(0.0, 1.0)] * 3
    assert {s.value for s in read} == {1.0}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_invalid_and_stores_nothing(client: Client, bad: float) -> None:
    # The seed answered 500 for NaN (SQLite stored it as NULL and broke a constraint).
    with pytest.raises(QuartetError) as caught:
        client.scores.create(bad)
    assert_invalid(caught.value, "input_value")
    assert list(client.scores.iter()) == []


def test_score_is_stored_with_input_owner_and_time(sign_in: Callable[..., Principal]) -> None:
    alice = sign_in("user")
    before = datetime.datetime.now(datetime.UTC)
    score = alice.client.scores.create(1.5)
    after = datetime.datetime.now(datetime.UTC)
    assert (score.user_id, score.input_value, score.value) == (alice.id, 1.5, 2.5)
    assert before <= score.create_time.ToDatetime(datetime.UTC) <= after
    assert alice.client.scores.get(score.id) == score


def test_admin_stores_a_score_for_another_account(client: Client, run_in_db: Any) -> None:
    owner = run_in_db(accounts.create_account, "Alice@Example.com")
    assert client.scores.create(1, user_id=owner.id).user_id == owner.id


# --- who may see what ---------------------------------------------------------------------------


def test_users_see_only_their_own_scores(sign_in: Callable[..., Principal]) -> None:
    alice, bob = sign_in("user"), sign_in("user")
    mine = alice.client.scores.create(1)
    theirs = bob.client.scores.create(2)
    assert [s.id for s in alice.client.scores.iter()] == [mine.id]
    for attempt in (
        lambda: alice.client.scores.get(theirs.id),
        lambda: alice.client.scores.get(999_999),  # existence is not revealed either
        lambda: alice.client.scores.list(user_id=bob.id),
        lambda: alice.client.scores.create(5, user_id=bob.id),
    ):
        with pytest.raises(QuartetError) as caught:
            attempt()
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason == "ROLE_NOT_ALLOWED"
    assert [s.id for s in bob.client.scores.iter()] == [theirs.id]


def test_analysts_read_every_score(sign_in: Callable[..., Principal]) -> None:
    alice, analyst = sign_in("user"), sign_in("analyst")
    score = alice.client.scores.create(1)
    assert analyst.client.scores.get(score.id) == score
    assert [s.id for s in analyst.client.scores.iter(user_id=alice.id)] == [score.id]
    with pytest.raises(QuartetError) as caught:
        analyst.client.scores.create(1, user_id=alice.id)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_unknown_user_is_not_found_and_stores_nothing(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        client.scores.create(1, user_id=999)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "RESOURCE_NOT_FOUND"
    assert caught.value.resource == ("account", "999")
    assert list(client.scores.iter()) == []


def test_non_positive_user_id_is_invalid(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        client.scores.create(1, user_id=0)
    assert_invalid(caught.value, "user_id")


def test_get_unknown_score_is_not_found(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        client.scores.get(12345)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.resource == ("score", "12345")


def test_same_request_id_stores_once(client: Client) -> None:
    first = client.scores.create(7, request_id="9b1f6a1e-retry")
    again = client.scores.create(7, request_id="9b1f6a1e-retry")
    assert again == first
    assert [s.id for s in client.scores.iter()] == [first.id]


def test_request_id_of_another_owner_is_already_exists(client: Client, run_in_db: Any) -> None:
    owner = run_in_db(accounts.create_account, "bob@example.com")
    client.scores.create(7, request_id="shared-key", user_id=owner.id)
    with pytest.raises(QuartetError) as caught:
        client.scores.create(7, request_id="shared-key")
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "RESOURCE_ALREADY_EXISTS"


def test_overlong_request_id_is_invalid(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        client.scores.create(1, request_id="x" * 65)
    assert_invalid(caught.value, "request_id")


# --- listing: the admin view's filters and pagination -------------------------------------------


@pytest.fixture
def stored(client: Client, run_in_db: Any) -> dict[str, Any]:
    """Scores 2, 101 and 1001 for alice, 5 for bob, 0.5 the admin's own (no user_id given: the
    caller owns it); in that order."""
    alice = run_in_db(accounts.create_account, "alice@example.com")
    bob = run_in_db(accounts.create_account, "bob@example.org")
    made = [
        client.scores.create(1, user_id=alice.id),
        client.scores.create(100, user_id=alice.id),
        client.scores.create(1000, user_id=alice.id),
        client.scores.create(4, user_id=bob.id),
        client.scores.create(-0.5),
    ]
    return {"alice": alice.id, "bob": bob.id, "scores": made}


def values(page: Any) -> list[float]:
    return [s.value for s in page]


def test_list_is_newest_first(client: Client, stored: dict[str, Any]) -> None:
    assert values(client.scores.list().scores) == [0.5, 5, 1001, 101, 2]


@pytest.mark.parametrize(
    ("threshold", "expected"), [(1, [5, 1001, 101, 2]), (100, [1001, 101]), (1000, [1001])]
)
def test_score_greater_than(
    client: Client, stored: dict[str, Any], threshold: float, expected: list[float]
) -> None:
    assert values(client.scores.iter(score_greater_than=threshold)) == expected


def test_by_user(client: Client, stored: dict[str, Any]) -> None:
    assert values(client.scores.iter(user_id=stored["bob"])) == [5]
    assert values(client.scores.iter(user_id=stored["alice"], score_greater_than=100)) == [
        1001,
        101,
    ]


def test_by_time_range(client: Client, stored: dict[str, Any]) -> None:
    made = stored["scores"]
    second = made[1].create_time.ToDatetime(datetime.UTC)
    fourth = made[3].create_time.ToDatetime(datetime.UTC)
    between = client.scores.iter(created_after=second, created_before=fourth)
    assert values(between) == [1001, 101]
    assert values(client.scores.iter(created_after=fourth)) == [0.5, 5]
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    assert values(client.scores.iter(created_after=future)) == []


def test_search_by_email_or_value(client: Client, stored: dict[str, Any]) -> None:
    assert values(client.scores.iter(search="ALICE@")) == [1001, 101, 2]
    assert values(client.scores.iter(search="example.org")) == [5]
    assert values(client.scores.iter(search="101")) == [101]
    assert values(client.scores.iter(search="%")) == []  # LIKE wildcards are literal


def test_pages_cover_everything_once(client: Client, stored: dict[str, Any]) -> None:
    first = client.scores.list(page_size=2)
    second = client.scores.list(page_size=2, page_token=first.next_page_token)
    third = client.scores.list(page_size=2, page_token=second.next_page_token)
    assert values(first.scores) + values(second.scores) + values(third.scores) == [
        0.5,
        5,
        1001,
        101,
        2,
    ]
    assert first.next_page_token and second.next_page_token
    assert third.next_page_token == ""
    assert values(client.scores.iter(page_size=1)) == [0.5, 5, 1001, 101, 2]


def test_page_survives_new_scores(client: Client, stored: dict[str, Any]) -> None:
    first = client.scores.list(page_size=2)
    client.scores.create(999)  # newer than everything: must not shift the next page
    second = client.scores.list(page_size=2, page_token=first.next_page_token)
    assert values(second.scores) == [1001, 101]


def test_token_for_other_filters_is_refused(client: Client, stored: dict[str, Any]) -> None:
    token = client.scores.list(page_size=1).next_page_token
    with pytest.raises(QuartetError) as caught:
        client.scores.list(page_size=1, page_token=token, score_greater_than=1)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"
    # The page size may change between pages (AIP-158).
    assert len(client.scores.list(page_size=3, page_token=token).scores) == 3


def forged(*key: Any) -> str:
    """A token for ListScores without filters, as anyone can make one: the fingerprint is no
    secret, so the server must check every value it decodes."""
    return encode_page_token(score_service_pb2.ListScoresRequest(), key)


def forged_raw(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


A_TIME = datetime.datetime(2021, 1, 1, 9, 0)


MALFORMED_TOKENS = {
    "not base64": "garbage",
    "an object": "e30",
    "an empty list": "W10",
    "a wrong layout": "WzEsIngiLFtdXQ",
    "id beyond BIGINT": forged(A_TIME, 2**70),  # was OverflowError (INTERNAL) on SQLite
    "id 2**63": forged(A_TIME, 2**63),
    "id below BIGINT": forged(A_TIME, -(2**63) - 1),
    "aware time": forged(A_TIME.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=5))), 1),
    "aware time at the end of time": forged("9999-12-31T23:59:59.999999+00:00", 1),
    "time not as encoded": forged("2021-01-01 09:00:00\x00", 1),
    "id as text": forged(A_TIME.isoformat(), "1"),
    "id as a boolean": forged(A_TIME.isoformat(), True),
    "time as a number": forged(1, 1),
    "values not a list": forged_raw(f'[1,"{"0" * 16}","ab"]'),
    "deeply nested": forged_raw("[" * 5000 + "]" * 5000),
    "too long": "A" * 5000,
}


@pytest.mark.parametrize("token", MALFORMED_TOKENS.values(), ids=MALFORMED_TOKENS.keys())
def test_malformed_token_is_invalid(client: Client, token: str) -> None:
    with pytest.raises(QuartetError) as caught:
        client.scores.list(page_token=token)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "PAGE_TOKEN_INVALID"
    assert [v.field for v in caught.value.field_violations] == ["page_token"]


def test_negative_page_size_is_invalid(client: Client) -> None:
    with pytest.raises(QuartetError) as caught:
        client.scores.list(page_size=-1)
    assert_invalid(caught.value, "page_size")


def test_page_size_is_capped_at_1000(client: Client, run_in_db: Any) -> None:
    run_in_db(
        lambda: scores.Score.insert_many(
            [{"input_value": i, "value": i + 1} for i in range(1001)]
        ).execute()
    )
    page = client.scores.list(page_size=5000)
    assert len(page.scores) == 1000
    assert len(client.scores.list(page_token=page.next_page_token).scores) == 1


def test_nan_threshold_and_bad_times_are_invalid(client: Client) -> None:
    """The threshold's rule is declared in the proto (checked before the servicer), the times'
    range by the servicer: each is refused naming its field."""
    method = client.channel.unary_unary(
        "/quartet.score.v1.ScoreService/ListScores",
        request_serializer=score_service_pb2.ListScoresRequest.SerializeToString,
        response_deserializer=score_service_pb2.ListScoresResponse.FromString,
    )
    nan = score_service_pb2.ListScoresRequest(score_greater_than=math.nan)
    bad_time = score_service_pb2.ListScoresRequest()
    bad_time.create_time_start.seconds = 10**12  # beyond year 9999
    for stub_request, field in [(nan, "score_greater_than"), (bad_time, "create_time_start")]:
        with pytest.raises(grpc.RpcError) as caught:
            method(stub_request, timeout=5, metadata=client.metadata)
        error = QuartetError.from_rpc_error(caught.value)
        assert [v.field for v in error.field_violations] == [field]
