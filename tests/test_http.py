"""The HTTP port: every service over the Connect protocol (JSON, binary, GET) and gRPC-Web, the
same rules and errors as gRPC, and publishable keys for web pages (CORS, origins, rate limits)."""

from __future__ import annotations

import base64
import dataclasses
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.rpc import error_details_pb2

from quartet.auth.v1 import auth_service_pb2
from quartet.client import Client, QuartetError
from quartet.events.v1 import event_service_pb2
from quartet.server.settings import Settings
from quartet.server.testing import running_servers
from tests.conftest import Principal, mint_token

PAGE = "http://shop.example.com:8000"
SEND_EVENTS = "/quartet.events.v1.EventService/SendEvents"
WHERE = {"host": "www.ca.com", "path": "/"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Few calls a second per address, for test_rate_limit_per_address."""
    return dataclasses.replace(settings, http_calls_per_address=5)


@pytest.fixture
def target(http_servers: tuple[str, str]) -> str:
    """The gRPC address, for the SDK fixtures (admin, client, sign_in) of conftest."""
    return http_servers[0]


@pytest.fixture
def http(http_servers: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_servers[1], timeout=10) as client:
        yield client


def post(
    http: httpx.Client, path: str, body: dict[str, Any], token: str | None = None, **headers: str
) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return http.post(path, json=body, headers=headers)


def token(principal: Principal) -> str:
    return mint_token(principal.id, principal.account.role)


def events(session: str) -> list[dict[str, Any]]:
    """The seed's three example events (docs/events.md), as the JSON mapping sends them."""
    occur = "2026-01-01T09:15:27.243860Z"
    made = [
        ("page interaction", "pageview", WHERE),
        ("page interaction", "cta click", {**WHERE, "element": "chat bubble"}),
        ("form interaction", "submit", {**WHERE, "form": {"first_name": "John"}}),
    ]
    return [
        {
            "id": str(uuid.uuid4()),
            "sessionId": session,
            "category": category,
            "name": name,
            "data": data,
            "occurTime": occur,
        }
        for category, name, data in made
    ]


def test_one_call_per_service_in_json(http: httpx.Client, admin: Principal) -> None:
    bearer = token(admin)
    account = post(http, "/quartet.auth.v1.AuthService/GetCurrentAccount", {}, bearer)
    assert account.status_code == 200, account.text
    assert account.headers["content-type"] == "application/json"
    assert account.json()["email"] == "admin@example.net"
    score = post(http, "/quartet.score.v1.ScoreService/CreateScore", {"inputValue": 2.5}, bearer)
    assert score.status_code == 200, score.text
    fetched = post(
        http, "/quartet.score.v1.ScoreService/GetScore", {"id": score.json()["id"]}, bearer
    )
    assert fetched.json() == score.json()
    listed = post(http, "/quartet.events.v1.EventService/ListEventTypes", {}, bearer)
    assert {t["name"] for t in listed.json()["eventTypes"]} >= {"pageview", "submit"}
    experiments = post(
        http, "/quartet.experiments.v1.ExperimentService/ListExperiments", {}, bearer
    )
    assert experiments.status_code == 200, experiments.text
    fsa = post(http, "/quartet.regions.v1.RegionService/LookupFsa", {"fsa": "K1A"}, bearer)
    assert fsa.status_code == 200, fsa.text
    assert fsa.json()["province"]


def test_sent_over_http_is_stored_once(http: httpx.Client, client: Client) -> None:
    """The same writer path as gRPC: acknowledged events are stored, a retried id once."""
    key = client.auth.create_application("web").api_key
    sent = events(str(uuid.uuid4()))
    first = post(http, SEND_EVENTS, {"events": sent}, key)
    assert first.status_code == 200, first.text
    again = post(http, SEND_EVENTS, {"events": sent}, key)
    assert [r["status"] for r in again.json()["results"]] == ["EVENT_STATUS_DUPLICATE"] * 3
    stored = client.events.get(sent[0]["id"])
    assert stored.name == "pageview"


def test_binary_proto_body(http: httpx.Client, admin: Principal) -> None:
    response = http.post(
        "/quartet.auth.v1.AuthService/GetCurrentAccount",
        content=b"",
        headers={"content-type": "application/proto", "authorization": f"Bearer {token(admin)}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"


def test_get_for_a_read_only_call(http: httpx.Client, admin: Principal) -> None:
    response = http.get(
        "/quartet.regions.v1.RegionService/LookupFsa",
        params={"encoding": "json", "message": '{"fsa": "K1A"}', "connect": "v1"},
        headers={"authorization": f"Bearer {token(admin)}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["province"]


def test_a_write_is_not_served_by_get(http: httpx.Client, admin: Principal) -> None:
    response = http.get(
        "/quartet.score.v1.ScoreService/CreateScore",
        params={"encoding": "json", "message": "{}"},
        headers={"authorization": f"Bearer {token(admin)}"},
    )
    assert response.status_code == 405


def test_error_body_carries_the_grpc_details(http: httpx.Client, admin: Principal) -> None:
    response = post(
        http, "/quartet.score.v1.ScoreService/CreateScore", {"inputValue": "NaN"}, token(admin)
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    kinds = {d["type"]: base64.b64decode(d["value"] + "==") for d in body["details"]}
    info = error_details_pb2.ErrorInfo.FromString(kinds["google.rpc.ErrorInfo"])
    assert (info.domain, info.reason) == ("quartet", "FIELD_INVALID")
    bad = error_details_pb2.BadRequest.FromString(kinds["google.rpc.BadRequest"])
    assert [v.field for v in bad.field_violations] == ["input_value"]


def test_malformed_bodies_are_invalid_argument(http: httpx.Client, admin: Principal) -> None:
    path = "/quartet.auth.v1.AuthService/GetCurrentAccount"
    bearer = {"authorization": f"Bearer {token(admin)}"}
    for content_type, body in [
        ("application/json", b"{not json"),
        ("application/json", b'{"unknownField": 1}'),
        ("application/proto", b"\xff\xff\xff"),
    ]:
        response = http.post(path, content=body, headers={"content-type": content_type, **bearer})
        assert response.status_code == 400, body
        assert response.json()["code"] == "invalid_argument"
        reason = error_details_pb2.ErrorInfo.FromString(
            base64.b64decode(response.json()["details"][0]["value"] + "==")
        ).reason
        assert reason == "REQUEST_UNDECODABLE"


def test_body_size_is_limited(settings: Settings) -> None:
    small = dataclasses.replace(settings, max_message_bytes=4096)
    with running_servers(small) as (_, url), httpx.Client(base_url=url) as http:
        response = http.post(SEND_EVENTS, json={"events": [{"name": "x" * 10_000}]})
    assert response.status_code == 429
    assert response.json()["code"] == "resource_exhausted"


def test_credentials_are_required(http: httpx.Client) -> None:
    response = post(http, "/quartet.score.v1.ScoreService/ListScores", {})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    forged = post(http, "/quartet.score.v1.ScoreService/ListScores", {}, "qk_nope_nope")
    assert forged.status_code == 401


def _grpc_web_frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def test_grpc_web(http: httpx.Client, client: Client) -> None:
    key = client.auth.create_application("web").api_key
    request = event_service_pb2.SendEventsRequest()
    for event in events(str(uuid.uuid4())):
        sent = request.events.add(
            id=event["id"],
            session_id=event["sessionId"],
            category=event["category"],
            name=event["name"],
        )
        sent.data.update(event["data"])
        sent.occur_time.FromJsonString(event["occurTime"])
    response = http.post(
        SEND_EVENTS,
        content=_grpc_web_frame(request.SerializeToString()),
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "authorization": f"Bearer {key}",
        },
    )
    assert response.status_code == 200
    body = response.content
    flags, length = struct.unpack(">BI", body[:5])
    assert flags == 0
    reply = event_service_pb2.SendEventsResponse.FromString(body[5 : 5 + length])
    assert [r.status for r in reply.results] == [event_service_pb2.EVENT_STATUS_STORED] * 3
    trailers = body[5 + length + 5 :].decode()
    assert "grpc-status: 0" in trailers.lower() or "grpc-status:0" in trailers.lower()


def publishable(client: Client, *origins: str) -> tuple[str, str]:
    """A new application's publishable key for origins: (full key, key id)."""
    application = client.auth.create_application(f"web-{uuid.uuid4().hex[:8]}").application
    created = client.auth.create_api_key(application.id, allowed_origins=origins or (PAGE,))
    assert created.key.kind == auth_service_pb2.API_KEY_KIND_PUBLISHABLE
    assert list(created.key.allowed_origins) == list(origins or (PAGE,))
    return created.api_key, created.key.id


def preflight(http: httpx.Client, origin: str) -> httpx.Response:
    return http.options(
        SEND_EVENTS,
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": (
                "authorization, content-type, connect-protocol-version"
            ),
        },
    )


def test_publishable_key_from_its_origin(http: httpx.Client, client: Client) -> None:
    key, _ = publishable(client)
    allowed = preflight(http, PAGE)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == PAGE
    assert "connect-protocol-version" in allowed.headers["access-control-allow-headers"]
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    sent = post(http, SEND_EVENTS, {"events": events(str(uuid.uuid4()))}, key, origin=PAGE)
    assert sent.status_code == 200, sent.text
    assert sent.headers["access-control-allow-origin"] == PAGE
    assert [r["status"] for r in sent.json()["results"]] == ["EVENT_STATUS_STORED"] * 3


def _reason(response: httpx.Response) -> str:
    details = response.json()["details"]
    return error_details_pb2.ErrorInfo.FromString(
        base64.b64decode(details[0]["value"] + "==")
    ).reason


def test_publishable_key_from_another_origin(http: httpx.Client, client: Client) -> None:
    key, _ = publishable(client)
    other = "https://evil.example.org"
    refused = preflight(http, other)
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    assert (refused.json()["code"], _reason(refused)) == ("permission_denied", "ORIGIN_NOT_ALLOWED")
    sent = post(http, SEND_EVENTS, {"events": events(str(uuid.uuid4()))}, key, origin=other)
    assert sent.status_code == 403
    assert _reason(sent) == "ORIGIN_NOT_ALLOWED"
    # Another key's origin opens the preflight, not this key's calls.
    publishable(client, other)
    sent = post(http, SEND_EVENTS, {"events": events(str(uuid.uuid4()))}, key, origin=other)
    assert _reason(sent) == "ORIGIN_NOT_ALLOWED"
    # Without an origin (curl, a server) the key is refused too.
    assert _reason(post(http, SEND_EVENTS, {"events": []}, key)) == "ORIGIN_NOT_ALLOWED"


def test_publishable_key_sends_events_only(http: httpx.Client, client: Client, target: str) -> None:
    key, _ = publishable(client)
    refused = post(http, "/quartet.events.v1.EventService/ListEvents", {}, key, origin=PAGE)
    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_denied"
    # Over gRPC as well: the rule lives in the call core.
    with Client(target, token=key) as sdk, pytest.raises(QuartetError) as raised:
        sdk.events.list()
    assert raised.value.code.name == "PERMISSION_DENIED"


def test_revoked_publishable_key(http: httpx.Client, client: Client) -> None:
    key, key_id = publishable(client)
    client.auth.revoke_api_key(key_id)
    refused = post(http, SEND_EVENTS, {"events": events(str(uuid.uuid4()))}, key, origin=PAGE)
    assert refused.status_code == 401
    assert _reason(refused) == "CREDENTIALS_REVOKED"


def test_publishable_key_needs_origins(client: Client) -> None:
    application = client.auth.create_application("web").application
    with pytest.raises(QuartetError) as raised:
        client.auth.create_api_key(application.id, allowed_origins=["not an origin"])
    assert raised.value.code.name == "INVALID_ARGUMENT"


def test_rate_limit_per_address(http: httpx.Client, client: Client) -> None:
    """The fixture allows 5 calls a second per address, bursts of 10."""
    key, _ = publishable(client)
    codes = [
        post(http, SEND_EVENTS, {"events": events(str(uuid.uuid4()))[:1]}, key, origin=PAGE)
        for _ in range(15)
    ]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    body = limited[0].json()
    assert body["code"] == "resource_exhausted"
    assert {d["type"] for d in body["details"]} >= {"google.rpc.ErrorInfo", "google.rpc.RetryInfo"}
