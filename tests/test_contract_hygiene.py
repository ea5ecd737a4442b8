"""The protos say what a caller sees: list methods paginate (AIP-158), and comments name no server
setting nor SDK behaviour (docs/operations.md and the SDK's docs hold those)."""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf.descriptor import MethodDescriptor

from quartet.client import contract

PROTOS = Path(__file__).resolve().parent.parent / "protos" / "quartet"
# Fixed sets of reference data that fit any reply (6 regions, 13 provinces and territories);
# README.md, "Where the API departs from Google's AIPs", says why they have no pages.
UNPAGINATED = {
    "quartet.regions.v1.RegionService.ListRegions",
    "quartet.regions.v1.RegionService.ListProvinces",
}


def paginates(method: MethodDescriptor) -> bool:
    request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
    return (
        "page_size" in request
        and "page_token" in request
        and "next_page_token" in response
        and request["page_size"].type == request["page_size"].TYPE_INT32
    )


def test_every_list_method_paginates() -> None:
    lists = [method for method in contract.methods() if method.name.startswith("List")]
    assert "quartet.events.v1.EventService.ListEventTypes" in {m.full_name for m in lists}
    assert {m.full_name for m in lists if not paginates(m)} == UNPAGINATED


def test_proto_comments_name_no_server_setting_nor_the_sdk() -> None:
    protos = sorted(PROTOS.rglob("*.proto"))
    assert len(protos) >= 7
    found = [
        f"{path.relative_to(PROTOS)}:{number}: {line.strip()}"
        for path in protos
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bQUARTET_[A-Z_]+|\bSDK\b", line)
    ]
    assert found == []
