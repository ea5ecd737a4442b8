"""quartet regions: provinces, health regions, and which health regions FSAs are in."""

from __future__ import annotations

import click

from quartet.cli.output import Column, as_dict, print_list
from quartet.cli.session import api_command, limit_option, limited, page_size, session
from quartet.regions.v1 import region_service_pb2 as pb

PROVINCE_COLUMNS: list[Column[pb.Province]] = [
    Column("code", lambda p: p.geo_code, "right"),
    Column("abbreviation", lambda p: p.alpha_code),
    Column("name", lambda p: p.name_en),
    Column("nom", lambda p: p.name_fr),
    Column("region", lambda p: p.region_id, "right"),
]

HEALTH_REGION_COLUMNS: list[Column[pb.HealthRegion]] = [
    Column("hr_uid", lambda h: h.hr_uid, "right"),
    Column("province", lambda h: h.province_geo_code, "right"),
    Column("name", lambda h: h.name_en),
    Column("population", lambda h: h.population if h.HasField("population") else "", "right"),
    Column("website", lambda h: h.website_en),
]


def _parts(result: pb.FsaLookupResult) -> str:
    if not result.HasField("fsa"):
        return ""
    parts = []
    for part in result.fsa.health_regions:
        share = f" {part.population_share:.0%}" if part.HasField("population_share") else ""
        parts.append(f"{part.health_region.hr_uid} {part.health_region.name_en}{share}")
    return "; ".join(parts)


LOOKUP_COLUMNS: list[Column[pb.FsaLookupResult]] = [
    Column("query", lambda r: r.query),
    Column("fsa", lambda r: r.fsa.code if r.HasField("fsa") else ""),
    Column(
        "population",
        lambda r: r.fsa.population if r.HasField("fsa") and r.fsa.HasField("population") else "",
        "right",
    ),
    Column("health regions", _parts),
    Column(
        "error", lambda r: f"{r.error.reason}: {r.error.description}" if r.HasField("error") else ""
    ),
]


@click.group(help="Canadian provinces, health regions, and FSA or postal code lookups.")
def regions() -> None:
    pass


@regions.command(help="List the provinces and territories.")
@click.option("--region", type=int, metavar="ID", help="only those of this region (1 to 6)")
@api_command("table", "json", "csv")
def provinces(region: int | None) -> None:
    state = session()
    found = state.client().regions.list_provinces(region_id=region)
    print_list(found, PROVINCE_COLUMNS, state.format)


@regions.command("health-regions", help="List the health regions, by hr_uid.")
@click.option("--province", metavar="CODE", help="only this province's (ON, or 35)")
@limit_option
@api_command("table", "json", "csv")
def health_regions(province: str | None, limit: int) -> None:
    state = session()
    code: int | str | None = int(province) if province and province.isdigit() else province
    found = state.client().regions.iter_health_regions(province=code, page_size=page_size(limit))
    print_list(limited(found, limit), HEALTH_REGION_COLUMNS, state.format)


@regions.command(
    help='The health regions of each FSA or postal code given (K1A, "k1a 0b1"); exits 3 if '
    "any could not be answered."
)
@click.argument("codes", nargs=-1, required=True, metavar="FSA_OR_POSTAL_CODE...")
@api_command("table", "json", "csv")
def lookup(codes: tuple[str, ...]) -> None:
    state = session()
    results = state.client().regions.lookup_fsas(codes)
    print_list(results, LOOKUP_COLUMNS, state.format, to_json=as_dict)
    if any(r.HasField("error") for r in results):
        raise SystemExit(3)


COMMANDS = [regions]
