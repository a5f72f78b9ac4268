"""Thumbnails made on demand with Pillow and kept in memory (LRU): nothing is written to the index."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from ..preprocess import read_photo


class ThumbnailCache:
    """JPEG thumbnails keyed by (photo file, content hash, size); the least recently used are dropped."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, content_hash: str, size: int) -> bytes:
        """The thumbnail (longer side ``size``) of the photo at ``path``, made once."""
        key = (str(path), content_hash, size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make_thumbnail(path, size)  # outside the lock: two threads may both make it, harmless
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data


def make_thumbnail(path: str | Path, size: int) -> bytes:
    """A JPEG whose longer side is at most ``size`` (EXIF orientation applied, transparency on white)."""
    image = read_photo(path).convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
