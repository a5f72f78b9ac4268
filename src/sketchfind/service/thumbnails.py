"""Thumbnails made with Pillow and kept in memory (LRU): nothing is written to the index.

A thumbnail comes from a reduced decode (JPEG DCT scaling to the size asked for; other formats are
decoded once and reduced) and sizes are rounded up to a few buckets, so a client cannot make the server
decode one photo again and again by asking for every size between 32 and 1024.

When the whole gallery fits in the cache, its thumbnails (default size) are made in the background when the
server starts (:func:`warm`, one photo at a time, at the lowest CPU priority), so the page's results never
wait for one to be made; search results link them under versioned URLs (:func:`content_version`) that
browsers keep for good."""

from __future__ import annotations

import bisect
import io
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from ..errors import SketchfindError
from ..preprocess import read_photo

SIZE_BUCKETS = (64, 128, 256, 512, 1024)  # a requested size is rounded up to one of these
THUMBNAIL_CACHE = "private, max-age=300"  # an unversioned thumbnail URL: the photo may change under it
THUMBNAIL_IMMUTABLE = "private, max-age=31536000, immutable"  # a current versioned URL: never changes
WARM_NICE = 19  # the CPU priority (nice) of the start-up warm-up thread: searches always come first

log = logging.getLogger("sketchfind.service")


def content_version(record) -> str | None:
    """The version of an indexed photo's content in its thumbnail URL (a prefix of its SHA-256)."""
    return (record.sha256 or "")[:16] or None


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


def warm(cache: ThumbnailCache, searcher, size: int, stop: threading.Event) -> int:
    """Make the thumbnails (``size``) of every indexed photo the cache can hold, one at a time, until done or
    ``stop`` is set; a photo that cannot be read is skipped (its request answers 404 as before). -> made."""
    _lower_priority()
    ids = searcher.photo_ids()
    if len(ids) > cache.capacity:  # they would push each other out: made on demand instead
        return 0
    made = 0
    for start in range(0, len(ids), 256):
        for record in searcher.photos(ids[start : start + 256]):
            if stop.is_set():
                return made
            if cache.peek(record.path, record.sha256 or "", size) is None:
                try:
                    cache.get(record.path, record.sha256 or "", size)
                    made += 1
                except (SketchfindError, OSError):
                    continue
    return made


def start_warming(cache: ThumbnailCache, searcher, size: int) -> threading.Event | None:
    """:func:`warm` in a daemon thread; set the returned event to stop it (None: nothing to warm)."""
    if searcher is None or cache.capacity == 0:
        return None
    stop = threading.Event()

    def run():
        try:
            made = warm(cache, searcher, size, stop)
            log.info("thumbnails: %d made in the background", made)
        except Exception:  # never fatal: thumbnails are then made on demand
            log.exception("thumbnails: warming the cache failed")

    threading.Thread(target=run, name="sketchfind-thumbnails", daemon=True).start()
    return stop


def _lower_priority() -> None:
    """This thread at nice ``WARM_NICE`` (Linux: a thread's own priority; elsewhere left as it is)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_NICE)
    except (AttributeError, OSError):
        pass
