"""Regions reference data: the packaged dataset, its tables, and loading one into the other."""

from quartet.storage.regions.dataset import (
    Dataset,
    FsaPartRow,
    HealthRegionRow,
    ProvinceRow,
    RegionRow,
    packaged,
)
from quartet.storage.regions.fixes import DatasetError
from quartet.storage.regions.load import Changes, LoadReport, load
from quartet.storage.regions.models import (
    MODELS,
    Fsa,
    FsaHealthRegion,
    HealthRegion,
    Province,
    Region,
    RegionDataset,
)

__all__ = [
    "MODELS",
    "Changes",
    "Dataset",
    "DatasetError",
    "Fsa",
    "FsaHealthRegion",
    "FsaPartRow",
    "HealthRegion",
    "HealthRegionRow",
    "LoadReport",
    "Province",
    "ProvinceRow",
    "Region",
    "RegionDataset",
    "RegionRow",
    "load",
    "packaged",
]
