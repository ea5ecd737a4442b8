"""RegionService: the servicer, its in-memory index, and the FSA and postal code rules."""

from quartet.regions.v1 import region_service_pb2, region_service_pb2_grpc
from quartet.server.regions.index import RegionIndex
from quartet.server.regions.service import RegionServicer
from quartet.server.registration import Service
from quartet.storage import regions

SERVICE = Service(
    descriptor=region_service_pb2.DESCRIPTOR.services_by_name["RegionService"],
    # Answers from an index loaded into memory: it serves whatever the database does.
    servicer=lambda provided: RegionServicer(RegionIndex()),
    add_to_server=region_service_pb2_grpc.add_RegionServiceServicer_to_server,
    needs_database=False,
    models=tuple(regions.MODELS),
)

__all__ = ["SERVICE", "RegionIndex", "RegionServicer"]
