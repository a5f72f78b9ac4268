"""Atomic file writes: a file is either its old complete self or its new complete self, never half of each.

Every file sketchfind writes whole (weights, index artefacts, training checkpoints and caches, uploads,
pictures) goes through :func:`atomic_path`: the content is written to a temporary file in the same
folder, flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX), and the
folder entry is flushed too. A crash leaves at most a ``.tmp`` file behind, never a torn target.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"  # what an interrupted write leaves behind (index recovery deletes such files)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write to; on success it replaces ``path``.

    ``durable`` fsyncs the file and its folder (crash safety, not only atomicity). On an exception
    the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name the writer creates itself (so the file gets the usual permissions, unlike mkstemp's 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def fsync_path(path: Path) -> None:
    """Flushes a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
