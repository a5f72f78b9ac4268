"""The on-disk photo index: committed store, derived search structures, building and updating."""

from .build import (
    BuildReport,
    build_index,
    finish_index,
    index_info,
    recluster,
    remove_photos,
    scan_photos,
    write_encoded,
)
from .store import IndexStore, PhotoRecord, PhotoRow, index_exists

__all__ = [
    "BuildReport",
    "IndexStore",
    "PhotoRecord",
    "PhotoRow",
    "build_index",
    "finish_index",
    "index_exists",
    "index_info",
    "recluster",
    "remove_photos",
    "scan_photos",
    "write_encoded",
]
