"""The on-disk photo index: committed store, derived search structures, building and updating."""

from .build import BuildReport, build_index, index_info, recluster, remove_photos, scan_photos
from .store import IndexStore, PhotoRecord

__all__ = [
    "BuildReport",
    "IndexStore",
    "PhotoRecord",
    "build_index",
    "index_info",
    "recluster",
    "remove_photos",
    "scan_photos",
]
