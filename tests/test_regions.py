"""RegionService through the SDK: regions, provinces, health regions and FSA lookups."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from quartet import storage
from quartet.client import Client, QuartetError
from quartet.regions.v1 import region_service_pb2 as pb
from quartet.regions.v1 import region_service_pb2_grpc
from quartet.storage import accounts, regions
from tests.conftest import SECRET, Principal, mint_token
from tests.helpers import server_process

# N0B and the population of its part in each of its seven health regions, largest first.
N0B = [(3565, 32341), (3566, 29786), (3575, 3700), (3527, 1438), (3537, 1001), (3539, 923)]
N0B += [(3536, 506)]


def raw_call(client: Client, method: str, request: Message) -> Message:
    """Call a method with a request the SDK would not build."""
    stub = region_service_pb2_grpc.RegionServiceStub(client.channel)
    try:
        return getattr(stub, method)(request, timeout=5, metadata=client.metadata)  # type: ignore[no-any-return]
    except grpc.RpcError as error:
        raise QuartetError.from_rpc_error(error) from None


def expect(code: grpc.StatusCode, reason: str, call: Callable[[], object]) -> QuartetError:
    with pytest.raises(QuartetError) as caught:
        call()
    assert (caught.value.code, caught.value.reason) == (code, reason), caught.value
    return caught.value


def expect_invalid(field: str, call: Callable[[], object], reason: str = "FIELD_INVALID") -> str:
    """The description of the one field violation of an INVALID_ARGUMENT answer."""
    error = expect(grpc.StatusCode.INVALID_ARGUMENT, reason, call)
    (violation,) = error.field_violations
    assert violation.field == field
    return violation.description


def expect_not_found(resource: tuple[str, str], call: Callable[[], object]) -> None:
    error = expect(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", call)
    assert error.resource == resource


# --- regions and provinces ------------------------------------------------------------------


def test_list_regions(client: Client) -> None:
    listed = [(r.id, r.name_en, r.name_fr) for r in client.regions.list_regions()]
    assert listed == [
        (1, "Atlantic", "Atlantique"),
        (2, "Quebec", "Québec"),
        (3, "Ontario", "Ontario"),
        (4, "Prairies", "Prairies"),
        (5, "British Columbia", "Colombie-Britannique"),
        (6, "Territories", "Territoires"),
    ]


def test_list_provinces(client: Client) -> None:
    provinces = client.regions.list_provinces()
    assert [p.alpha_code for p in provinces] == [
        "NL", "PE", "NS", "NB", "QC", "ON", "MB", "SK", "AB", "BC", "YT", "NT", "NU",
    ]  # fmt: skip
    assert [p.geo_code for p in provinces] == sorted(p.geo_code for p in provinces)
    yukon = provinces[10]
    assert (yukon.geo_code, yukon.name_en, yukon.region_id) == (60, "Yukon", 6)
    assert provinces[1].name_fr == "Île-du-Prince-Édouard"


def test_list_provinces_of_a_region(client: Client) -> None:
    assert [p.alpha_code for p in client.regions.list_provinces(region_id=1)] == [
        "NL", "PE", "NS", "NB",
    ]  # fmt: skip
    assert [p.alpha_code for p in client.regions.list_provinces(region_id=6)] == [
        "YT", "NT", "NU",
    ]  # fmt: skip
    for bad in (0, -1):
        expect_invalid("region_id", functools.partial(client.regions.list_provinces, region_id=bad))
    for unknown in (7, 99):
        listed = functools.partial(client.regions.list_provinces, region_id=unknown)
        expect_not_found(("region", str(unknown)), listed)


@pytest.mark.parametrize("code", [35, "ON", "on", " On "])
def test_get_province_by_either_code(client: Client, code: int | str) -> None:
    province = client.regions.get_province(code)
    assert (province.geo_code, province.alpha_code, province.name_fr) == (35, "ON", "Ontario")


def test_get_province_errors(client: Client) -> None:
    # The `code` oneof is required by its rule, which names the oneof.
    description = expect_invalid(
        "code", lambda: raw_call(client, "GetProvince", pb.GetProvinceRequest())
    )
    assert "required" in description
    expect_invalid("geo_code", lambda: client.regions.get_province(0))
    for bad in ("", "ONT", "O", "35", "Q1"):
        expect_invalid("alpha_code", functools.partial(client.regions.get_province, bad))
    expect_not_found(("province", "99"), lambda: client.regions.get_province(99))
    expect_not_found(("province", "CA"), lambda: client.regions.get_province("ca"))
    expect_not_found(("province", "ZZ"), lambda: client.regions.get_province("ZZ"))


# --- health regions ---------------------------------------------------------------------------


def test_health_regions_page_by_page(client: Client) -> None:
    first = client.regions.list_health_regions(page_size=10)
    assert len(first.health_regions) == 10 and first.next_page_token
    every = list(client.regions.iter_health_regions(page_size=10))
    assert len(every) == 92
    uids = [hr.hr_uid for hr in every]
    assert uids == sorted(set(uids)) and uids[:10] == [hr.hr_uid for hr in first.health_regions]
    assert not {1, 99} & set(uids)
    assert list(client.regions.iter_health_regions()) == every  # one page of up to 50, then 42
    last = client.regions.list_health_regions(page_size=92)
    assert len(last.health_regions) == 92 and not last.next_page_token


@pytest.mark.parametrize(("province", "count"), [(35, 34), ("ON", 34), ("qc", 18), ("PE", 1)])
def test_health_regions_of_a_province(client: Client, province: int | str, count: int) -> None:
    found = list(client.regions.iter_health_regions(province=province, page_size=5))
    assert len(found) == count
    geo_code = client.regions.get_province(province).geo_code
    assert {hr.province_geo_code for hr in found} == {geo_code}


def test_health_region_filter_and_page_errors(client: Client) -> None:
    expect_not_found(("province", "99"), lambda: client.regions.list_health_regions(province=99))
    expect_not_found(("province", "XX"), lambda: client.regions.list_health_regions(province="xx"))
    listed = client.regions.list_health_regions
    expect_invalid("province_alpha_code", lambda: listed(province="Ontario"))
    expect_invalid("province_geo_code", lambda: listed(province=-35))
    expect_invalid("page_size", lambda: listed(page_size=-1))
    token = client.regions.list_health_regions(province="ON", page_size=2).next_page_token
    expect_invalid(
        "page_token",
        lambda: client.regions.list_health_regions(province="QC", page_token=token),
        reason="PAGE_TOKEN_INVALID",
    )
    expect_invalid(
        "page_token",
        lambda: client.regions.list_health_regions(page_token="not a token"),
        reason="PAGE_TOKEN_INVALID",
    )


def test_get_health_region(client: Client) -> None:
    toronto = client.regions.get_health_region(3595)
    assert (toronto.province_geo_code, toronto.short_name) == (35, "Toronto")
    assert toronto.name_en == "City of Toronto Health Unit"
    assert toronto.name_fr == "Circonscription sanitaire de la cité de Toronto"
    assert toronto.HasField("population") and toronto.population == 2956024
    assert (toronto.website_en, toronto.website_fr) == ("http://www.toronto.ca/health", "")
    assert toronto.vaccine_website_fr == "https://covid-19.ontario.ca/rendezvous-vaccin/"
    nunavik = client.regions.get_health_region(2417)
    assert (nunavik.name_fr, nunavik.short_name) == ("Région du Nunavik", "Nunavik")


def test_get_health_region_errors(client: Client) -> None:
    for bad in (0, -3595):
        expect_invalid("hr_uid", functools.partial(client.regions.get_health_region, bad))
    for unknown in (1, 99, 3500):  # 1 and 99 were the seed's Canada and Repatriated
        got = functools.partial(client.regions.get_health_region, unknown)
        expect_not_found(("health region", str(unknown)), got)


# --- FSA lookups ------------------------------------------------------------------------------


def test_fsa_in_one_health_region(client: Client) -> None:
    fsa = client.regions.lookup_fsa("K1A")
    assert (fsa.code, fsa.province.alpha_code, fsa.population) == ("K1A", "ON", 3756)
    (part,) = fsa.health_regions
    assert part.health_region == client.regions.get_health_region(3551)
    assert (part.estimated_population, part.population_share) == (3756, 1.0)


def test_n0b_is_in_seven_health_regions(client: Client) -> None:
    fsa = client.regions.lookup_fsa("N0B")
    parts = [(p.health_region.hr_uid, p.estimated_population) for p in fsa.health_regions]
    assert parts == N0B
    total = sum(population for _, population in N0B)
    assert fsa.population == total
    shares = [p.population_share for p in fsa.health_regions]
    assert shares == [population / total for _, population in N0B]
    assert math.isclose(sum(shares), 1.0)
    assert {p.health_region.province_geo_code for p in fsa.health_regions} == {35}


@pytest.mark.parametrize(
    "text", ["K1A 0B1", "k1a0b1", "  k1a  ", "\tK1A 0B1\n", "k1A   0b1", "K1A0B1 "]
)
def test_postal_codes_any_case_and_spacing(client: Client, text: str) -> None:
    assert client.regions.lookup_fsa(text) == client.regions.lookup_fsa("K1A")


def test_unknown_populations_stay_unknown(client: Client) -> None:
    fsa = client.regions.lookup_fsa("B0N")
    assert not fsa.HasField("population")
    parts = {p.health_region.hr_uid: p for p in fsa.health_regions}
    assert [p.health_region.hr_uid for p in fsa.health_regions] == [1204, 1202, 1201]
    assert not parts[1201].HasField("estimated_population")
    assert (parts[1202].estimated_population, parts[1204].estimated_population) == (16580, 17349)
    assert not any(p.HasField("population_share") for p in fsa.health_regions)


def test_zero_is_a_known_population(client: Client) -> None:
    offices = client.regions.lookup_fsa("M5X")  # First Canadian Place: nobody lives there
    assert offices.HasField("population") and offices.population == 0
    assert offices.health_regions[0].population_share == 1.0
    split = client.regions.lookup_fsa("E1V")
    assert [(p.estimated_population, p.population_share) for p in split.health_regions] == [
        (13036, 1.0),
        (0, 0.0),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is required"),
        ("   ", "is required"),
        ("K1", "not an FSA"),
        ("K1AB", "not an FSA"),
        ("K1A 0B", "not an FSA"),
        ("K1A-0B1", "not an FSA"),
        ("K1A 0B1 2", "not an FSA"),
        ("K 1A", "not an FSA"),
        ("x" * 1000, "is not an FSA"),
        ("1A1", "not letter, digit, letter"),
        ("KKA", "not letter, digit, letter"),
        ("K11", "not letter, digit, letter"),
        ("É1A", "not letter, digit, letter"),
        ("K\uff11A", "not letter, digit, letter"),  # a full-width digit
        *((f"{letter}1A", f"starts with {letter}") for letter in "DFIOQUWZ"),
        *((f"K1{letter}", f"has {letter} third") for letter in "DFIOQU"),
        ("K1A A0B", "second half"),
        ("K1A 0D1", "has D"),
        ("k1a 0u1", "has U"),
    ],
)
def test_malformed_fsa_is_invalid_argument(client: Client, text: str, says: str) -> None:
    error = expect(
        grpc.StatusCode.INVALID_ARGUMENT, "FSA_INVALID", lambda: client.regions.lookup_fsa(text)
    )
    (violation,) = error.field_violations
    assert violation.field == "fsa" and says in violation.description
    assert len(error.message) < 200  # a long input is not echoed back


@pytest.mark.parametrize("text", ["H0H", "h0h 0h0", "Y9Z"])
def test_well_formed_but_unknown_fsa_is_not_found(client: Client, text: str) -> None:
    expect_not_found(("fsa", text[:3].upper()), lambda: client.regions.lookup_fsa(text))


def test_batch_answers_each_fsa_on_its_own(client: Client) -> None:
    queries = ["K1A", "n0b", "H0H 0H0", "D1A", " k1a 0b1", "K1A"]
    results = client.regions.lookup_fsas(queries)
    assert [r.query for r in results] == queries
    outcomes = [r.WhichOneof("result") for r in results]
    assert outcomes == ["fsa", "fsa", "error", "error", "fsa", "fsa"]
    assert results[0].fsa == results[4].fsa == results[5].fsa == client.regions.lookup_fsa("K1A")
    assert len(results[1].fsa.health_regions) == 7
    assert (results[2].error.reason, results[2].error.description) == (
        "RESOURCE_NOT_FOUND",
        "FSA H0H is not in the data",
    )
    assert results[3].error.reason == "FSA_INVALID"
    assert "starts with D" in results[3].error.description


def test_batch_never_echoes_more_than_64_characters(client: Client) -> None:
    (valid, junk) = client.regions.lookup_fsas(["K1A" + " " * 100_000, "K" * 100_000])
    assert valid.query == "K1A" + " " * 61 and valid.fsa.code == "K1A"
    assert junk.query == "K" * 64 and junk.error.reason == "FSA_INVALID"


def test_batch_size_limits(client: Client) -> None:
    assert len(client.regions.lookup_fsas(["K1A"] * 1000)) == 1000
    for size in (0, 1001):
        request = pb.BatchLookupFsasRequest(fsas=["K1A"] * size)
        call = functools.partial(raw_call, client, "BatchLookupFsas", request)
        description = expect_invalid("fsas", call)
        assert f"holds {size} FSAs" in description
    assert client.regions.lookup_fsas([]) == []  # the SDK sends nothing


def test_every_fsa_of_the_data_is_found(client: Client) -> None:
    codes = sorted(regions.packaged().fsa_provinces)
    assert len(codes) == 1636
    results = client.regions.lookup_fsas(codes)  # two calls: 1000, then 636
    assert [r.fsa.code for r in results] == codes
    multi = [r.fsa for r in results if len(r.fsa.health_regions) > 1]
    assert len(multi) == 243
    assert sum(len(r.fsa.health_regions) for r in results) == 1956
    for fsa in multi:
        shares = [p.population_share for p in fsa.health_regions if p.HasField("population_share")]
        assert not shares or math.isclose(sum(shares), 1.0)


def test_served_data_matches_the_database_copy(client: Client, run_in_db: Any) -> None:
    def n0b() -> list[tuple[int, int | None]]:
        query = regions.FsaHealthRegion.select().where(regions.FsaHealthRegion.fsa == "N0B")
        return sorted((row.health_region_id, row.estimated_population) for row in query)

    served = client.regions.lookup_fsa("N0B")
    parts = [(p.health_region.hr_uid, p.estimated_population) for p in served.health_regions]
    assert sorted(parts) == run_in_db(n0b)
    assert run_in_db(lambda: regions.Fsa.get_by_id("N0B").province_id) == served.province.geo_code


# --- who may call -----------------------------------------------------------------------------


def test_anonymous_callers_are_refused(anonymous: Client) -> None:
    for call in (
        anonymous.regions.list_regions,
        lambda: anonymous.regions.lookup_fsa("K1A"),
        lambda: anonymous.regions.lookup_fsas(["K1A"]),
        lambda: anonymous.regions.get_health_region(3595),
    ):
        expect(grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING", call)


@pytest.mark.parametrize("role", ["user", "analyst"])
def test_every_signed_in_account_may_read(sign_in: Callable[..., Principal], role: str) -> None:
    reader = sign_in(role).client
    assert reader.regions.lookup_fsa("k1a 0b1").code == "K1A"
    assert len(reader.regions.list_provinces()) == 13


def test_applications_may_read(client: Client, target: str) -> None:
    key = client.auth.create_application("postal-widget").api_key
    with Client(target, token=key) as application:
        assert [r.fsa.code for r in application.regions.lookup_fsas(["N0B"])] == ["N0B"]
        assert application.regions.get_province("QC").name_fr == "Québec"


# --- a real multi-worker server -------------------------------------------------------------


def test_every_worker_of_a_served_process_answers_lookups(tmp_path: Path) -> None:
    env = {**os.environ, "QUARTET_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    with server_process("--workers", "2", env=env) as server:
        # Tokens are checked against their account: one must exist (the server migrated).
        database = storage.open_database(env["DATABASE_URL"])
        storage.bind(database)
        with database.connection_context():
            token = mint_token(accounts.create_account("reader@example.com").id, "user")
        storage.close(database)
        served: set[object] = set()
        for _ in range(200):  # new connections, until the kernel has given both workers some
            with Client(server.address, token=token) as client:
                found = client.regions.lookup_fsa("N0B")
            assert [
                (p.health_region.hr_uid, p.estimated_population) for p in found.health_regions
            ] == N0B
            lines = [json.loads(line) for line in server.log if line.startswith("{")]
            served = {r["pid"] for r in lines if str(r.get("method", "")).endswith("LookupFsa")}
            if len(served) == 2:
                break
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    assert len(served) == 2 and server.process.pid not in served
    # The supervisor loaded the database once; the workers only built their index.
    assert sum("loaded regions dataset" in str(r["message"]) for r in lines) == 1
