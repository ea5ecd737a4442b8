"""Every correction quartet makes to the seed's regions data, in one place.

The shipped files stay byte-identical to their source (see data/regions/PROVENANCE.md); `apply`
turns what they say into what quartet serves. docs/regions.md lists the same fixes for readers.
Reading itself only trims spaces around values and reads a blank cell as unknown, never as 0.
"""

from __future__ import annotations

import dataclasses

Row = dict[str, str]


class DatasetError(ValueError):
    """The regions data contradicts itself or lacks something quartet needs."""


@dataclasses.dataclass(frozen=True)
class Tables:
    """The four files as rows of trimmed strings, keyed by the files' own column names."""

    regions: list[Row]  # Region.csv
    provinces: list[Row]  # Province.csv
    health_regions: list[Row]  # hr_websites.csv
    fsa_parts: list[Row]  # FSA_HR2018.csv


# 1. Rows that are not places. "Canada" (region 99, province 99 "CA", health region 1) holds the
#    national totals of the original dashboards, and "Repatriated" (health region 99) counted
#    Canadians repatriated from abroad. No FSA belongs to them; served as places they would make
#    Canada a province of itself and count every person twice in any sum.
PSEUDO_REGIONS = frozenset({99})
PSEUDO_PROVINCES = frozenset({99})
PSEUDO_HEALTH_REGIONS = frozenset({1, 99})

# 2. French names that Province.csv and Region.csv fold to ASCII ("Ile-du-Prince-Edouard").
#    English "Quebec" stays: it is the official English name.
PROVINCE_NAMES_FR = {11: "Île-du-Prince-Édouard", 12: "Nouvelle-Écosse", 24: "Québec"}
REGION_NAMES_FR = {2: "Québec"}

# 3. Health region names. hr_websites.csv has one short name per region ("Toronto"), the same in
#    both languages; the official names, in English and in French, are in the
#    concordance's ENGNAME and FRENAME columns, so name_en and name_fr come from there and the
#    short name is kept beside them. Nunavik (2417) is the one health region no FSA row names:
#    its official name is supplied here.
MISSING_OFFICIAL_NAMES = {2417: ("Région du Nunavik", "Région du Nunavik")}

# 4. Province spellings in hr_websites.csv that are neither a province's English name nor its
#    postal abbreviation.
PROVINCE_ALIASES = {"PEI": "PE", "NWT": "NT"}

# 5. A website without its scheme, which clients would take for a relative link.
WEBSITES = {"www.ckpublichealth.com": "http://www.ckpublichealth.com"}

# What is deliberately NOT changed: blank populations stay unknown (FSA.csv, the seed's other
# copy, turned them into 0); hr_websites.csv's blank website cells stay blank (HealthRegion.csv
# filled each with the other language's page, which hides that no such page exists and lost
# Laval's English one); populations of 0 stay 0 (FSAs of offices and airports, such as M5X).


def apply(tables: Tables) -> Tables:
    """The tables with every correction above made."""
    names = _official_names(tables.fsa_parts)
    return Tables(
        regions=[
            _renamed_fr(row, REGION_NAMES_FR.get(int(row["id"])))
            for row in tables.regions
            if int(row["id"]) not in PSEUDO_REGIONS
        ],
        provinces=[
            _renamed_fr(row, PROVINCE_NAMES_FR.get(int(row["geo_code"])))
            for row in tables.provinces
            if int(row["geo_code"]) not in PSEUDO_PROVINCES
        ],
        health_regions=[
            _health_region(row, names)
            for row in tables.health_regions
            if int(row["HR_UID"]) not in PSEUDO_HEALTH_REGIONS
        ],
        fsa_parts=tables.fsa_parts,
    )


def _renamed_fr(row: Row, name_fr: str | None) -> Row:
    return row if name_fr is None else {**row, "name_fr": name_fr}


def _official_names(fsa_parts: list[Row]) -> dict[int, tuple[str, str]]:
    """Each health region's (English, French) official name, as the concordance's rows give it."""
    names = dict(MISSING_OFFICIAL_NAMES)
    for row in fsa_parts:
        hr_uid, name = int(row["HR_UID"]), (row["ENGNAME"], row["FRENAME"])
        if names.setdefault(hr_uid, name) != name:
            raise DatasetError(f"health region {hr_uid} has two names: {names[hr_uid]}, {name}")
    return names


def _health_region(row: Row, names: dict[int, tuple[str, str]]) -> Row:
    hr_uid = int(row["HR_UID"])
    if hr_uid not in names:
        raise DatasetError(f"health region {hr_uid} has no official name")
    name_en, name_fr = names[hr_uid]
    websites = {
        column: WEBSITES.get(row[column], row[column])
        for column in ("En_website", "Fr_website", "en_prov_vaccine_site", "fr_prov_vaccine_site")
    }
    province = PROVINCE_ALIASES.get(row["Province"], row["Province"])
    return {**row, **websites, "Province": province, "name_en": name_en, "name_fr": name_fr}
