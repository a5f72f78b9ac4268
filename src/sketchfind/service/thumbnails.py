"""Thumbnails made on demand with Pillow and kept in memory (LRU): nothing is written to the index.

A thumbnail comes from a reduced decode (JPEG DCT scaling to the size asked for; other formats are
decoded once and reduced) and sizes are rounded up to a few buckets, so a client cannot make the server
decode one photo again and again by asking for every size between 32 and 1024."""

from __future__ import annotations

import bisect
import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from ..preprocess import read_photo

SIZE_BUCKETS = (64, 128, 256, 512, 1024)  # a requested size is rounded up to one of these


def size_bucket(size: int) -> int:
    """The bucket a requested longer side is served at (the smallest bucket at least that large)."""
    return SIZE_BUCKETS[min(bisect.bisect_left(SIZE_BUCKETS, size), len(SIZE_BUCKETS) - 1)]


class ThumbnailCache:
    """JPEG thumbnails keyed by (photo file, content hash, size bucket); the least recently used are dropped."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, content_hash: str, size: int) -> bytes:
        """The thumbnail (longer side ``size_bucket(size)``) of the photo at ``path``, made once."""
        key = (str(path), content_hash, size_bucket(size))
        cached = self.peek(path, content_hash, size)
        if cached is not None:
            return cached
        data = make_thumbnail(path, key[2])  # outside the lock: two threads may both make it, harmless
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data

    def peek(self, path: str | Path, content_hash: str, size: int) -> bytes | None:
        """The cached thumbnail, or None (never decodes)."""
        key = (str(path), content_hash, size_bucket(size))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None


def make_thumbnail(path: str | Path, size: int) -> bytes:
    """A JPEG whose longer side is at most ``size`` (EXIF orientation applied, transparency on white)."""
    image = read_photo(path, max_side=size).convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
