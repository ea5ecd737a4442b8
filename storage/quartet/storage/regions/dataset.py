"""The regions reference data shipped with quartet: read from its files, corrected, checked.

The files in quartet/storage/data/regions/ are verbatim copies of the seed's (PROVENANCE.md there
says where from); `fixes.apply` makes every correction. `packaged()` does all of it once per
process and returns immutable records, which the database load and the server's in-memory index
both start from, so they cannot disagree.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.resources
import io
import json
import re
from collections import Counter
from importlib.resources.abc import Traversable

from quartet.storage.regions import fixes
from quartet.storage.regions.fixes import DatasetError

DATA = importlib.resources.files("quartet.storage") / "data" / "regions"
_FSA = re.compile(r"[A-Z][0-9][A-Z]")
_ALPHA_CODE = re.compile(r"[A-Z]{2}")


@dataclasses.dataclass(frozen=True)
class RegionRow:
    """One of the six regions the provinces are grouped in (Atlantic, Quebec, ...)."""

    id: int
    name_en: str
    name_fr: str


@dataclasses.dataclass(frozen=True)
class ProvinceRow:
    """A province or territory: its SGC geographic code and postal abbreviation."""

    geo_code: int
    alpha_code: str
    name_en: str
    name_fr: str
    region_id: int


@dataclasses.dataclass(frozen=True)
class HealthRegionRow:
    """A health region, by HR_UID. None is unknown."""

    hr_uid: int
    province_geo_code: int
    name_en: str
    name_fr: str
    short_name: str
    population: int | None
    website_en: str | None
    website_fr: str | None
    vaccine_website_en: str | None
    vaccine_website_fr: str | None


@dataclasses.dataclass(frozen=True)
class FsaPartRow:
    """The part of an FSA inside one health region; its population None when unknown."""

    fsa: str
    hr_uid: int
    estimated_population: int | None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The corrected, checked reference data."""

    regions: tuple[RegionRow, ...]
    provinces: tuple[ProvinceRow, ...]
    health_regions: tuple[HealthRegionRow, ...]
    fsa_parts: tuple[FsaPartRow, ...]

    @functools.cached_property
    def fsa_provinces(self) -> dict[str, int]:
        """Each FSA's province (geo code), which is that of its health regions."""
        province = {hr.hr_uid: hr.province_geo_code for hr in self.health_regions}
        return {part.fsa: province[part.hr_uid] for part in self.fsa_parts}

    @functools.cached_property
    def checksum(self) -> str:
        """A SHA-256 of the content: equal checksums, equal data (the files and the fixes)."""
        content = {
            name: [dataclasses.astuple(row) for row in getattr(self, name)]
            for name in ("regions", "provinces", "health_regions", "fsa_parts")
        }
        encoded = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


@functools.cache
def packaged() -> Dataset:
    """The data shipped with this version of quartet (read once per process)."""
    return read(DATA)


def read(directory: Traversable) -> Dataset:
    """Read the four files in directory, correct them, and check the result."""
    raw = fixes.Tables(
        regions=_rows(directory / "Region.csv"),
        provinces=_rows(directory / "Province.csv"),
        health_regions=_rows(directory / "hr_websites.csv"),
        fsa_parts=_rows(directory / "FSA_HR2018.csv"),
    )
    return _check(_build(fixes.apply(raw)))


def _rows(path: Traversable) -> list[fixes.Row]:
    """The rows of a UTF-8 CSV file (CRLF or LF), with spaces around every value trimmed."""
    reader = csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""))
    rows = []
    for row in reader:
        if None in row or None in row.values():  # more or fewer cells than the header has
            raise DatasetError(f"{path.name} line {reader.line_num}: wrong number of values")
        rows.append({key.strip(): value.strip() for key, value in row.items()})
    return rows


def _build(tables: fixes.Tables) -> Dataset:
    provinces = tuple(
        ProvinceRow(
            geo_code=_int(row["geo_code"]),
            alpha_code=row["alpha_code"],
            name_en=row["name_en"],
            name_fr=row["name_fr"],
            region_id=_int(row["fk_region_id"]),
        )
        for row in tables.provinces
    )
    province_codes = {p.name_en: p.geo_code for p in provinces}
    province_codes.update({p.alpha_code: p.geo_code for p in provinces})
    return Dataset(
        regions=tuple(
            RegionRow(id=_int(row["id"]), name_en=row["name_en"], name_fr=row["name_fr"])
            for row in tables.regions
        ),
        provinces=provinces,
        health_regions=tuple(
            HealthRegionRow(
                hr_uid=_int(row["HR_UID"]),
                province_geo_code=_province(province_codes, row["Province"], row["HR_UID"]),
                name_en=row["name_en"],
                name_fr=row["name_fr"],
                short_name=row["health_region"],
                population=_int_or_none(row["pop"]),
                website_en=row["En_website"] or None,
                website_fr=row["Fr_website"] or None,
                vaccine_website_en=row["en_prov_vaccine_site"] or None,
                vaccine_website_fr=row["fr_prov_vaccine_site"] or None,
            )
            for row in tables.health_regions
        ),
        fsa_parts=tuple(_fsa_part(row, _int(row["Prov"])) for row in tables.fsa_parts),
    )


def _fsa_part(row: fixes.Row, province: int) -> FsaPartRow:
    part = FsaPartRow(
        fsa=row["FSA"],
        hr_uid=_int(row["HR_UID"]),
        estimated_population=_int_or_none(row["EstimatedPop"]),
    )
    # The concordance names each row's province too: it must be its health region's.
    if str(part.hr_uid)[:2] != str(province):
        raise DatasetError(f"FSA {part.fsa}: health region {part.hr_uid} is not in {province}")
    return part


def _province(codes: dict[str, int], name: str, hr_uid: str) -> int:
    if name not in codes:
        raise DatasetError(f"health region {hr_uid}: unknown province {name!r}")
    return codes[name]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{text!r} is not a whole number") from None


def _int_or_none(text: str) -> int | None:
    return None if text == "" else _int(text)


def _check(data: Dataset) -> Dataset:
    """data, or DatasetError naming the first thing that is inconsistent."""
    _unique("region id", [r.id for r in data.regions])
    _unique("province geo code", [p.geo_code for p in data.provinces])
    _unique("province alpha code", [p.alpha_code for p in data.provinces])
    _unique("health region", [hr.hr_uid for hr in data.health_regions])
    _unique("FSA and health region", [(part.fsa, part.hr_uid) for part in data.fsa_parts])
    region_ids = {r.id for r in data.regions}
    province_codes = {p.geo_code for p in data.provinces}
    hr_uids = {hr.hr_uid for hr in data.health_regions}
    for province in data.provinces:
        _require(_ALPHA_CODE.fullmatch(province.alpha_code), f"alpha code {province.alpha_code}")
        _require(province.region_id in region_ids, f"region of province {province.geo_code}")
    for hr in data.health_regions:
        # An HR_UID starts with its province's geographic code.
        _require(
            hr.province_geo_code in province_codes
            and str(hr.hr_uid).startswith(str(hr.province_geo_code)),
            f"province of health region {hr.hr_uid}",
        )
        _require(hr.population is None or hr.population >= 0, f"population of {hr.hr_uid}")
        for url in (hr.website_en, hr.website_fr, hr.vaccine_website_en, hr.vaccine_website_fr):
            _require(url is None or url.startswith(("http://", "https://")), f"website {url}")
    for part in data.fsa_parts:
        _require(_FSA.fullmatch(part.fsa), f"FSA {part.fsa!r}")
        _require(part.hr_uid in hr_uids, f"health region {part.hr_uid} of FSA {part.fsa}")
        population = part.estimated_population
        _require(population is None or population >= 0, f"population of FSA {part.fsa}")
    names = [(r.name_en, r.name_fr) for r in data.regions]
    names += [(p.name_en, p.name_fr) for p in data.provinces]
    names += [(hr.name_en, hr.name_fr) for hr in data.health_regions]
    _require(all(en and fr for en, fr in names), "every name in both languages")
    return data


def _unique(what: str, keys: list[object]) -> None:
    repeated = [key for key, count in Counter(keys).items() if count > 1]
    if repeated:
        raise DatasetError(f"repeated {what}: {repeated[:5]}")


def _require(ok: object, what: str) -> None:
    if not ok:
        raise DatasetError(f"invalid {what}")
