"""RegionService: the servicer, its in-memory index, and the FSA and postal code rules."""

from quartet.server.regions.index import RegionIndex
from quartet.server.regions.service import RegionServicer

__all__ = ["RegionIndex", "RegionServicer"]
