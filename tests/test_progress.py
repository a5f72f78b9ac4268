"""The progress helper and the atomic-write helper: behaviour on real streams and files."""

from __future__ import annotations

import io
import os

import pytest

from sketchfind.atomic import atomic_path, atomic_write_bytes
from sketchfind.progress import progress


def test_progress_off_a_terminal_prints_periodic_plain_lines():
    stream = io.StringIO()  # not a terminal, like a log file or `docker logs`
    with progress(100, "indexing", every=0.0, stream=stream) as advance:
        for _ in range(4):
            advance(25, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # one per advance (every=0) and the closing line
    assert lines[0].startswith("indexing: 25/100 (25%), ") and "/s, about" in lines[0] and "left" in lines[0]
    assert "loss 0.500" in lines[0]
    assert lines[-1].startswith("indexing: 100/100 (100%)") and "done in" in lines[-1]


def test_progress_counts_from_a_resumed_start_and_can_be_off():
    stream = io.StringIO()
    with progress(10, "training", done=6, every=3600, stream=stream) as advance:
        advance(4)
    assert stream.getvalue().startswith("training: 10/10 (100%)")
    quiet = io.StringIO()
    with progress(10, "x", enabled=False, stream=quiet) as advance:
        advance(10)
    assert quiet.getvalue() == ""


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "weights.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["weights.bin"]  # no temp left
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["weights.bin"]
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())  # ordinary permissions, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
