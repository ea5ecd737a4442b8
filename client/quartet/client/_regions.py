"""client.regions: regions, provinces, health regions, and which health regions an FSA is in."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

from google.protobuf.descriptor import ServiceDescriptor

from quartet.client._base import Transport, fields, pages
from quartet.regions.v1 import region_service_pb2 as pb
from quartet.regions.v1 import region_service_pb2_grpc

Region = pb.Region
Province = pb.Province
HealthRegion = pb.HealthRegion
Fsa = pb.Fsa
FsaLookupResult = pb.FsaLookupResult
MAX_BATCH = 1000  # FSAs per BatchLookupFsas call, the server's limit


class Regions:
    """The RegionService, through `Client.regions`. Every method is a read, retried safely."""

    # The service it calls (tests/test_registration.py: a Client attribute for every service).
    SERVICE: ClassVar[ServiceDescriptor] = pb.DESCRIPTOR.services_by_name["RegionService"]

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = region_service_pb2_grpc.RegionServiceStub(transport.channel)

    def list_regions(self, *, timeout: float | None = None) -> list[Region]:
        """The six regions (Atlantic, Quebec, ...), by id."""
        response = self._transport.invoke(self._stub.ListRegions, pb.ListRegionsRequest(), timeout)
        return list(response.regions)

    def list_provinces(
        self, *, region_id: int | None = None, timeout: float | None = None
    ) -> list[Province]:
        """The provinces and territories by geographic code, or only those of region_id."""
        request = pb.ListProvincesRequest(**fields(region_id=region_id))
        return list(self._transport.invoke(self._stub.ListProvinces, request, timeout).provinces)

    def get_province(self, code: int | str, *, timeout: float | None = None) -> Province:
        """A province or territory by geographic code (35) or postal abbreviation ("ON")."""
        if isinstance(code, str):
            request = pb.GetProvinceRequest(alpha_code=code)
        else:
            request = pb.GetProvinceRequest(geo_code=code)
        return self._transport.invoke(self._stub.GetProvince, request, timeout)

    def list_health_regions(
        self,
        *,
        province: int | str | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListHealthRegionsResponse:
        """One page of health regions by hr_uid; all of them, or those of one province (by
        geographic code or postal abbreviation)."""
        request = pb.ListHealthRegionsRequest(page_size=page_size, page_token=page_token)
        if isinstance(province, str):
            request.province_alpha_code = province
        elif province is not None:
            request.province_geo_code = province
        return self._transport.invoke(self._stub.ListHealthRegions, request, timeout)

    def iter_health_regions(
        self,
        *,
        province: int | str | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[HealthRegion]:
        """Every health region (of one province, or all), fetching page after page."""
        return pages(
            lambda token: self.list_health_regions(
                province=province, page_size=page_size, page_token=token, timeout=timeout
            ),
            lambda page: page.health_regions,
        )

    def get_health_region(self, hr_uid: int, *, timeout: float | None = None) -> HealthRegion:
        """The health region with this hr_uid; QuartetError NOT_FOUND if there is none."""
        request = pb.GetHealthRegionRequest(hr_uid=hr_uid)
        return self._transport.invoke(self._stub.GetHealthRegion, request, timeout)

    def lookup_fsa(self, fsa: str, *, timeout: float | None = None) -> Fsa:
        """The FSA of an FSA or postal code ("K1A", "k1a 0b1"), with every health region it is
        in. QuartetError INVALID_ARGUMENT (reason FSA_INVALID) if malformed, NOT_FOUND if the
        data does not have it."""
        request = pb.LookupFsaRequest(fsa=fsa)
        return self._transport.invoke(self._stub.LookupFsa, request, timeout)

    def lookup_fsas(
        self, fsas: Iterable[str], *, timeout: float | None = None
    ) -> list[FsaLookupResult]:
        """One result per FSA or postal code, in order: the FSA, or an error (reason
        "FSA_INVALID" or "RESOURCE_NOT_FOUND") that does not fail the others. Any number may be
        given; they are sent 1000 to a call. `timeout` applies to each call."""
        queries = list(fsas)
        results: list[FsaLookupResult] = []
        for start in range(0, len(queries), MAX_BATCH):
            request = pb.BatchLookupFsasRequest(fsas=queries[start : start + MAX_BATCH])
            response = self._transport.invoke(self._stub.BatchLookupFsas, request, timeout)
            results.extend(response.results)
        return results
