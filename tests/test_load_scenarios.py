"""The load scenarios (scripts/load/*.json) stay true to the contracts, and the load script's
fallback renders and types them as ghz would."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from quartet.client import Client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import load  # noqa: E402

SCENARIOS = sorted(p.stem for p in (REPO / "scripts" / "load").glob("*.json"))


def test_every_scenario_has_a_credential() -> None:
    assert set(SCENARIOS) == set(load.CREDENTIALS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_calls_a_served_method_with_valid_data(client: Client, name: str) -> None:
    config: dict[str, Any] = json.loads((REPO / "scripts" / "load" / f"{name}.json").read_text())
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(client.channel))
    service, _, method = config["call"].rpartition(".")
    request_type = pool.FindServiceByName(service).methods_by_name[method].input_type
    message = message_factory.GetMessageClass(request_type)()
    json_format.ParseDict(load.render_once(config["data"]), message)  # raises if fields drift
    assert message.ByteSize() > 0


def test_fallback_rendering() -> None:
    rendered = load.render_once(
        {
            "id": "{{newUUID}}",
            "session": "{{.UUID}}",
            "again": "{{.UUID}}",
            "n": "{{.RequestNumber}}",
        }
    )
    assert rendered["id"] == ""  # an idempotency key: the server assigns one per call
    assert len(rendered["session"]) == 36 and rendered["session"] == rendered["again"]
    with pytest.raises(ValueError):
        load.render_once({"x": "{{randomString 8}}"})


def test_metrics_are_read_by_method_and_code(tmp_path: Path) -> None:
    series = 'grpc_server_handled_total{{grpc_code="{}",grpc_method="{}",grpc_service="{}"}} {}'
    events = "quartet.events.v1.EventService"
    page = tmp_path / "metrics"
    page.write_text(
        "\n".join(
            [
                "# TYPE grpc_server_handled_total counter",
                series.format("OK", "SendEvent", events, "7.0"),
                series.format("INTERNAL", "SendEvent", events, "2.0"),
                series.format("OK", "GetEvent", events, "5.0"),
            ]
        )
    )
    assert load.handled(page.as_uri(), events, "SendEvent") == {"OK": 7, "INTERNAL": 2}
