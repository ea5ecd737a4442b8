"""RegionService: regions, provinces, health regions and FSA lookups, answered from memory."""

from __future__ import annotations

from typing import Any

import grpc

from quartet.errors.v1 import error_reason_pb2
from quartet.regions.v1 import region_service_pb2 as pb
from quartet.regions.v1 import region_service_pb2_grpc
from quartet.server.errors import FieldViolation, InvalidArgument, NotFound
from quartet.server.pagination import decode_page_token, page_size, paged
from quartet.server.regions.index import RegionIndex
from quartet.server.regions.postal import InvalidFsa, parse_fsa

Context = grpc.aio.ServicerContext[Any, Any]
MAX_BATCH = 1000
MAX_QUERY_ECHO = 64  # characters of a batch item repeated in its result
FSA_INVALID = error_reason_pb2.ErrorReason.Name(error_reason_pb2.FSA_INVALID)
NOT_FOUND = error_reason_pb2.ErrorReason.Name(error_reason_pb2.RESOURCE_NOT_FOUND)


class RegionServicer(region_service_pb2_grpc.RegionServiceServicer):
    """Validates requests and answers them from a RegionIndex; never touches the database."""

    def __init__(self, index: RegionIndex) -> None:
        self._index = index

    async def ListRegions(
        self, request: pb.ListRegionsRequest, context: Context
    ) -> pb.ListRegionsResponse:
        return pb.ListRegionsResponse(regions=self._index.regions.values())

    async def ListProvinces(
        self, request: pb.ListProvincesRequest, context: Context
    ) -> pb.ListProvincesResponse:
        provinces = list(self._index.provinces.values())
        if request.HasField("region_id"):
            region_id = request.region_id
            if region_id not in self._index.regions:
                raise NotFound(
                    f"there is no region {region_id}", resource=("region", str(region_id))
                )
            provinces = [p for p in provinces if p.region_id == region_id]
        return pb.ListProvincesResponse(provinces=provinces)

    async def GetProvince(self, request: pb.GetProvinceRequest, context: Context) -> pb.Province:
        which = request.WhichOneof("code")
        assert which is not None  # the oneof is required by its rules
        return self._province(which, getattr(request, which))

    async def ListHealthRegions(
        self, request: pb.ListHealthRegionsRequest, context: Context
    ) -> pb.ListHealthRegionsResponse:
        limit = page_size(request)
        after = decode_page_token(request, (int,))
        which = request.WhichOneof("province")
        province = None if which is None else self._province(which, getattr(request, which))
        found = self._index.health_regions_after(
            province.geo_code if province else None, after[0] if after else None, limit + 1
        )
        page, token = paged(request, found, limit, lambda region: (region.hr_uid,))
        return pb.ListHealthRegionsResponse(health_regions=page, next_page_token=token)

    async def GetHealthRegion(
        self, request: pb.GetHealthRegionRequest, context: Context
    ) -> pb.HealthRegion:
        found = self._index.health_regions.get(request.hr_uid)
        if found is None:
            raise NotFound(
                f"there is no health region {request.hr_uid}",
                resource=("health region", str(request.hr_uid)),
            )
        return found

    async def LookupFsa(self, request: pb.LookupFsaRequest, context: Context) -> pb.Fsa:
        try:
            code = parse_fsa(request.fsa)
        except InvalidFsa as exc:
            raise InvalidArgument(
                f"fsa {exc}",
                reason=error_reason_pb2.FSA_INVALID,
                violations=[FieldViolation("fsa", str(exc), FSA_INVALID)],
            ) from None
        found = self._index.fsas.get(code)
        if found is None:
            raise NotFound(f"FSA {code} is not in the data", resource=("fsa", code))
        return found

    async def BatchLookupFsas(
        self, request: pb.BatchLookupFsasRequest, context: Context
    ) -> pb.BatchLookupFsasResponse:
        count = len(request.fsas)
        if not 1 <= count <= MAX_BATCH:
            raise _invalid("fsas", f"holds {count} FSAs; 1 to {MAX_BATCH} are accepted")
        return pb.BatchLookupFsasResponse(results=[self._result(query) for query in request.fsas])

    def _result(self, query: str) -> pb.FsaLookupResult:
        result = pb.FsaLookupResult(query=query[:MAX_QUERY_ECHO])
        try:
            code = parse_fsa(query)
        except InvalidFsa as exc:
            result.error.reason, result.error.description = FSA_INVALID, str(exc)
            return result
        found = self._index.fsas.get(code)
        if found is None:
            result.error.reason = NOT_FOUND
            result.error.description = f"FSA {code} is not in the data"
        else:
            result.fsa.CopyFrom(found)
        return result

    def _province(self, field: str, value: int | str) -> pb.Province:
        """The province named by a geo-code or alpha-code field (GetProvince's or a filter's)."""
        if isinstance(value, int):
            geo_code: int | None = value
            key = str(value)
        else:
            key = value.strip().upper()
            geo_code = self._index.province_codes.get(key)
        province = self._index.provinces.get(geo_code) if geo_code is not None else None
        if province is None:
            raise NotFound(f"there is no province {key}", resource=("province", key))
        return province


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        f"the request is invalid: {field}: {description}",
        violations=[FieldViolation(field, description)],
    )
