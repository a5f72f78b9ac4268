"""Killing the indexer (SIGKILL) at any point leaves an index that opens, is consistent and resumes.

Deterministic kill points come from the ``SKETCHFIND_CRASH_AT`` hook in the commit protocol; random
ones from killing the process after a random delay once it has started committing.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sketchfind.index import IndexStore, build_index
from sketchfind.search import Searcher

from .index_helpers import copy_photos, sketches, tiny

BATCH = 4
BUILD = """
import sys, torch, sketchfind
from sketchfind.index import build_index
torch.set_num_threads(1)
torch.manual_seed(0)
model = sketchfind.load_model("zse-tiny", random_init=True)
build_index([sys.argv[1]], sys.argv[2], model, batch_size={batch}, workers=1, label_from_folder=True)
"""


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("crash-photos")
    return root, copy_photos(root, per_class=8)  # 24 photos -> 6 batches


@pytest.fixture(scope="module")
def reference_codes(gallery, tmp_path_factory) -> dict[str, bytes]:
    """path -> token codes of an uninterrupted build (same process settings, so bitwise comparable)."""
    out = tmp_path_factory.mktemp("crash-ref") / "idx"
    proc = _start(gallery[0], out)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    return _codes_by_path(out)


def _codes_by_path(index_dir: Path) -> dict[str, bytes]:
    with IndexStore.open(index_dir) as store:
        snap = store.snapshot()
        codes = store.read_codes(snap, np.arange(len(snap)))
        return {p: c.tobytes() for p, c in zip(store.paths(snap), codes, strict=True)}


def _start(photos: Path, out: Path, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("SKETCHFIND_CRASH_AT", None)
    if crash_at:
        env["SKETCHFIND_CRASH_AT"] = crash_at
    code = BUILD.format(batch=BATCH)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(photos), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _check_consistent(out: Path, reference: dict[str, bytes], expect: int | None = None) -> int:
    """The index opens, every committed row matches the uninterrupted build, and search works."""
    codes = _codes_by_path(out)
    if expect is not None:
        assert len(codes) == expect
    for path, code in codes.items():
        assert code == reference[path], f"{path}: committed tokens differ from a clean build"
    with IndexStore.open(out) as store:
        snap = store.snapshot()
        assert len(set(store.paths(snap))) == len(snap)
    if codes:
        with Searcher.open(out, tiny(), strategy="ann", rerank_k=5) as searcher:
            result = searcher.search(sketches(per_class=1)[0], k=3)
            assert len(result.hits) == min(3, len(codes))
    return len(codes)


def _resume(gallery: tuple[Path, list[Path]], out: Path, reference: dict[str, bytes]) -> None:
    proc = _start(gallery[0], out)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    _check_consistent(out, reference, expect=len(gallery[1]))
    report = build_index([gallery[0]], out, tiny(), batch_size=BATCH)  # nothing left to do
    assert report.photos == len(gallery[1]) and not report.skipped and not report.new
    info = (out / "index_info.json").read_text()
    assert '"photos": 24' in info


@pytest.mark.parametrize(
    ("crash_at", "committed"),
    [
        ("shard-partial:3", 2 * BATCH),  # half of batch 3's bytes in the shard, never committed
        ("shard-written:2", 1 * BATCH),  # batch 2 fully in the shard, SQLite commit not reached
        ("committed:4", 4 * BATCH),  # right after the 4th commit
        ("artefacts-written:1", 24),  # all committed; FAISS/cluster files written, index_info.json not
    ],
)
def test_sigkill_at_commit_points(gallery, reference_codes, tmp_path, crash_at, committed):
    out = tmp_path / "idx"
    proc = _start(gallery[0], out, crash_at)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    assert _check_consistent(out, reference_codes) == committed
    _resume(gallery, out, reference_codes)


def test_sigkill_at_random_times(gallery, reference_codes, tmp_path):
    rng = random.Random(5)
    out = tmp_path / "idx"
    kills = 0
    for _ in range(3):
        proc = _start(gallery[0], out)
        # wait until this run has committed something new (or finished), then kill at a random moment
        deadline = time.monotonic() + 120
        before = _count(out)
        while proc.poll() is None and _count(out) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        _check_consistent(out, reference_codes)
    assert kills >= 1
    _resume(gallery, out, reference_codes)


def _count(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'index.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    except sqlite3.Error:
        return -1


REMOVE = """
import sys
from sketchfind.index import remove_photos
remove_photos(sys.argv[1], sys.argv[2:])
"""


def test_sigkill_during_compaction(gallery, reference_codes, tmp_path):
    out = tmp_path / "idx"
    assert _start(gallery[0], out).wait(timeout=300) == 0
    env = {**os.environ, "SKETCHFIND_CRASH_AT": "compact-written:1"}
    targets = [str(gallery[0] / "cup"), str(gallery[0] / "airplane")]  # 2/3 of the rows become garbage
    proc = subprocess.run([sys.executable, "-c", REMOVE, str(out), *targets], env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    # the removal committed before compaction started; the half-made new shards are not part of the index
    assert _check_consistent(out, reference_codes) == 8
    with IndexStore.open(out, writable=True) as store:  # recovery drops the uncommitted shard files
        assert sorted(p.name for p in (out / "shards").iterdir()) == ["global-00000.bin", "tokens-00000.bin"]
        assert store.compact()
    assert _check_consistent(out, reference_codes) == 8
    _resume(gallery, out, reference_codes)
