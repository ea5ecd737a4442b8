"""The regions dataset as ready-made reply messages, built once when the server starts.

The data is small (about 1 MB as messages) and only changes with a new release of quartet, so
each worker process keeps all of it in memory: a lookup is a dictionary access, with no database
round trip. The messages are shared between calls and must never be modified.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

from quartet.regions.v1 import region_service_pb2 as pb
from quartet.storage.regions import Dataset, FsaPartRow, HealthRegionRow, packaged


def population_shares(populations: Sequence[int | None]) -> list[float | None]:
    """Each part's fraction of the whole. A lone part is all of it, whatever its population;
    otherwise every fraction is unknown when any part's population is, or when they sum to 0."""
    if len(populations) == 1:
        return [1.0]
    known = [p for p in populations if p is not None]
    total = sum(known)
    if len(known) < len(populations) or total == 0:
        return [None] * len(populations)
    return [p / total for p in known]


class RegionIndex:
    """Every region, province, health region and FSA of a dataset (by default the packaged
    one), as messages, by key."""

    def __init__(self, dataset: Dataset | None = None) -> None:
        dataset = dataset or packaged()
        self.regions = {
            r.id: pb.Region(id=r.id, name_en=r.name_en, name_fr=r.name_fr)
            for r in sorted(dataset.regions, key=lambda r: r.id)
        }
        self.provinces = {
            p.geo_code: pb.Province(
                geo_code=p.geo_code,
                alpha_code=p.alpha_code,
                name_en=p.name_en,
                name_fr=p.name_fr,
                region_id=p.region_id,
            )
            for p in sorted(dataset.provinces, key=lambda p: p.geo_code)
        }
        self.province_codes = {p.alpha_code: p.geo_code for p in self.provinces.values()}
        self.health_regions = {
            hr.hr_uid: _health_region(hr)
            for hr in sorted(dataset.health_regions, key=lambda hr: hr.hr_uid)
        }
        self._hr_uids: dict[int | None, list[int]] = defaultdict(list)
        for hr_uid, hr in self.health_regions.items():
            self._hr_uids[None].append(hr_uid)
            self._hr_uids[hr.province_geo_code].append(hr_uid)
        parts: dict[str, list[FsaPartRow]] = defaultdict(list)
        for part in dataset.fsa_parts:
            parts[part.fsa].append(part)
        self.fsas = {
            code: self._fsa(code, dataset.fsa_provinces[code], parts[code])
            for code in sorted(parts)
        }

    def health_regions_after(
        self, province: int | None, after: int | None, limit: int
    ) -> list[pb.HealthRegion]:
        """Up to limit health regions (of one province, or all) with hr_uid above after."""
        uids = self._hr_uids.get(province, [])
        start = 0 if after is None else bisect.bisect_right(uids, after)
        return [self.health_regions[uid] for uid in uids[start : start + limit]]

    def _fsa(self, code: str, province: int, parts: list[FsaPartRow]) -> pb.Fsa:
        # The largest part first; parts of unknown population last, then by hr_uid.
        parts = sorted(
            parts,
            key=lambda p: (
                p.estimated_population is None,
                -(p.estimated_population or 0),
                p.hr_uid,
            ),
        )
        populations = [p.estimated_population for p in parts]
        fsa = pb.Fsa(code=code, province=self.provinces[province])
        for part, share in zip(parts, population_shares(populations), strict=True):
            entry = fsa.health_regions.add(health_region=self.health_regions[part.hr_uid])
            if part.estimated_population is not None:
                entry.estimated_population = part.estimated_population
            if share is not None:
                entry.population_share = share
        if None not in populations:
            fsa.population = sum(p for p in populations if p is not None)
        return fsa


def _health_region(row: HealthRegionRow) -> pb.HealthRegion:
    message = pb.HealthRegion(
        hr_uid=row.hr_uid,
        province_geo_code=row.province_geo_code,
        name_en=row.name_en,
        name_fr=row.name_fr,
        short_name=row.short_name,
        website_en=row.website_en or "",
        website_fr=row.website_fr or "",
        vaccine_website_en=row.vaccine_website_en or "",
        vaccine_website_fr=row.vaccine_website_fr or "",
    )
    if row.population is not None:
        message.population = row.population
    return message
