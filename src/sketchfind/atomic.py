"""Atomic file writes: a file is either its old complete self or its new complete self, never half of each.

Every file sketchfind writes whole (weights, index artefacts, training checkpoints and caches, uploads,
pictures) goes through :func:`atomic_path`: the content is written to a temporary file in the same
folder, flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX), and the
folder entry is flushed too. A crash leaves at most a ``.tmp`` file behind, never a torn target.

:func:`crash_point` marks the steps of every commit protocol (here and in :mod:`sketchfind.index`) where a
test can have the process killed, deterministically, with ``SKETCHFIND_CRASH_AT=name:n``.
"""

from __future__ import annotations

import os
import signal
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
        crash_point("atomic-tmp-written")  # the new content complete beside the target, not renamed yet
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point("atomic-replaced")  # renamed; the folder entry not flushed yet
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


CRASH_ENV = "SKETCHFIND_CRASH_AT"  # 'name:n': SIGKILL at the n-th time crash point ``name`` is reached
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process (no cleanup, no buffered write flushed) the n-th time ``name`` is
    reached when ``SKETCHFIND_CRASH_AT=name:n`` is set; a no-op otherwise."""
    spec = os.environ.get(CRASH_ENV)
    if not spec or spec.rpartition(":")[0] != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(spec.rpartition(":")[2]):
        os.kill(os.getpid(), signal.SIGKILL)


def crash_armed(name: str) -> bool:
    """Whether ``SKETCHFIND_CRASH_AT`` names crash point ``name`` (for hooks that must prepare a torn state)."""
    return os.environ.get(CRASH_ENV, "").rpartition(":")[0] == name
