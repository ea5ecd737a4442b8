"""client.regions: regions, provinces, health regions, and which health regions an FSA is in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from quartet.client import _aio_base, _base
from quartet.client._base import Call, call, fields
from quartet.regions.v1 import region_service_pb2 as pb

Region = pb.Region
Province = pb.Province
HealthRegion = pb.HealthRegion
Fsa = pb.Fsa
FsaLookupResult = pb.FsaLookupResult
MAX_BATCH = 1000  # FSAs per BatchLookupFsas call, the server's limit
SERVICE = pb.DESCRIPTOR.services_by_name["RegionService"]


def _regions(response: pb.ListRegionsResponse) -> list[Region]:
    return list(response.regions)


def _provinces(response: pb.ListProvincesResponse) -> list[Province]:
    return list(response.provinces)


def _results(response: pb.BatchLookupFsasResponse) -> list[FsaLookupResult]:
    return list(response.results)


def _health_regions(page: pb.ListHealthRegionsResponse) -> Sequence[HealthRegion]:
    return page.health_regions


class RegionCalls:
    """The RegionService's calls, described once for both clients."""

    @staticmethod
    def list_regions(*, timeout: float | None = None) -> Call[list[Region]]:
        """The six regions (Atlantic, Quebec, ...), by id."""
        request = pb.ListRegionsRequest()
        return call(SERVICE, "ListRegions", request, pb.ListRegionsResponse, timeout, _regions)

    @staticmethod
    def list_provinces(
        *, region_id: int | None = None, timeout: float | None = None
    ) -> Call[list[Province]]:
        """The provinces and territories by geographic code, or only those of region_id."""
        request = pb.ListProvincesRequest(**fields(region_id=region_id))
        return call(
            SERVICE, "ListProvinces", request, pb.ListProvincesResponse, timeout, _provinces
        )

    @staticmethod
    def get_province(code: int | str, *, timeout: float | None = None) -> Call[Province]:
        """A province or territory by geographic code (35) or postal abbreviation ("ON")."""
        if isinstance(code, str):
            request = pb.GetProvinceRequest(alpha_code=code)
        else:
            request = pb.GetProvinceRequest(geo_code=code)
        return call(SERVICE, "GetProvince", request, Province, timeout)

    @staticmethod
    def list_health_regions(
        *,
        province: int | str | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Call[pb.ListHealthRegionsResponse]:
        """One page of health regions by hr_uid; all of them, or those of one province (by
        geographic code or postal abbreviation)."""
        request = pb.ListHealthRegionsRequest(page_size=page_size, page_token=page_token)
        if isinstance(province, str):
            request.province_alpha_code = province
        elif province is not None:
            request.province_geo_code = province
        return call(SERVICE, "ListHealthRegions", request, pb.ListHealthRegionsResponse, timeout)

    @staticmethod
    def get_health_region(hr_uid: int, *, timeout: float | None = None) -> Call[HealthRegion]:
        """The health region with this hr_uid; QuartetError NOT_FOUND if there is none."""
        request = pb.GetHealthRegionRequest(hr_uid=hr_uid)
        return call(SERVICE, "GetHealthRegion", request, HealthRegion, timeout)

    @staticmethod
    def lookup_fsa(fsa: str, *, timeout: float | None = None) -> Call[Fsa]:
        """The FSA of an FSA or postal code ("K1A", "k1a 0b1"), with every health region it is
        in. QuartetError INVALID_ARGUMENT (reason FSA_INVALID) if malformed, NOT_FOUND if the
        data does not have it."""
        return call(SERVICE, "LookupFsa", pb.LookupFsaRequest(fsa=fsa), Fsa, timeout)

    @staticmethod
    def lookup_fsas(
        fsas: Iterable[str], *, timeout: float | None = None
    ) -> list[Call[list[FsaLookupResult]]]:
        """One result per FSA or postal code, in order: the FSA, or an error (reason
        "FSA_INVALID" or "RESOURCE_NOT_FOUND") that does not fail the others. Any number may be
        given; they are sent 1000 to a call. `timeout` applies to each call."""
        queries = list(fsas)
        return [
            call(
                SERVICE,
                "BatchLookupFsas",
                pb.BatchLookupFsasRequest(fsas=queries[start : start + MAX_BATCH]),
                pb.BatchLookupFsasResponse,
                timeout,
                _results,
            )
            for start in range(0, len(queries), MAX_BATCH)
        ]


class Regions(_base.Service):
    """The RegionService, through `Client.regions`. Every method is a read, retried safely."""

    SERVICE = SERVICE
    list_regions = _base.unary(RegionCalls.list_regions)
    list_provinces = _base.unary(RegionCalls.list_provinces)
    get_province = _base.unary(RegionCalls.get_province)
    list_health_regions = _base.unary(RegionCalls.list_health_regions)
    iter_health_regions = _base.paged(RegionCalls.list_health_regions, _health_regions)
    get_health_region = _base.unary(RegionCalls.get_health_region)
    lookup_fsa = _base.unary(RegionCalls.lookup_fsa)

    def lookup_fsas(
        self, fsas: Iterable[str], *, timeout: float | None = None
    ) -> list[FsaLookupResult]:
        """One result per FSA or postal code, in order: see `RegionCalls.lookup_fsas`."""
        calls = RegionCalls.lookup_fsas(fsas, timeout=timeout)
        return [result for each in calls for result in self._transport.invoke(each)]


class AsyncRegions(_aio_base.AsyncService):
    """The RegionService, through `quartet.client.aio.Client.regions`: the methods of
    `Regions`, as coroutines (and an async iterator for `iter_health_regions`)."""

    SERVICE = SERVICE
    list_regions = _aio_base.unary(RegionCalls.list_regions)
    list_provinces = _aio_base.unary(RegionCalls.list_provinces)
    get_province = _aio_base.unary(RegionCalls.get_province)
    list_health_regions = _aio_base.unary(RegionCalls.list_health_regions)
    iter_health_regions = _aio_base.paged(RegionCalls.list_health_regions, _health_regions)
    get_health_region = _aio_base.unary(RegionCalls.get_health_region)
    lookup_fsa = _aio_base.unary(RegionCalls.lookup_fsa)

    async def lookup_fsas(
        self, fsas: Iterable[str], *, timeout: float | None = None
    ) -> list[FsaLookupResult]:
        """One result per FSA or postal code, in order: see `RegionCalls.lookup_fsas`."""
        calls = RegionCalls.lookup_fsas(fsas, timeout=timeout)
        return [result for each in calls for result in await self._transport.invoke(each)]
