"""Killing a writer (SIGKILL) at any step of the commit protocols leaves an index that opens, is consistent,
has lost nothing committed before the kill, and that running the same command again completes.

The matrix runs each CLI operation (index into an existing index, index a new one, remove with compaction,
recluster) once per crash point of :mod:`sketchfind.index` (``SKETCHFIND_CRASH_AT=name:n``), in a process of
its own forked from a server that has imported sketchfind already (a fresh interpreter per case would cost
~2 s of imports). Every case starts from a copy of one base index built once. Random kill times are covered
by ``test_sigkill_at_random_times``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchfind.cli import app
from sketchfind.cluster import cluster_count
from sketchfind.errors import IncompleteIndexError
from sketchfind.index import IndexStore, build_index
from sketchfind.index.artefacts import DEFAULT_ANN, build_ann, load_or_build, read_info, ret_embeddings
from sketchfind.models.factory import save_weights
from sketchfind.search import Searcher

from .index_helpers import SKETCHY, copy_photos, run_cli, sketches, tiny

INCOMPLETE = -1  # ``done`` of a case whose index creation never committed

# (operation, crash point, how many of the operation's changes are committed when it dies)
# The base index: 4 cup + 4 swan photos of sketchy-mini, committed in batches of 2, in 2 clusters.
#   index:     3 changes in batches of 1 (one photo's content replaced, two new photos) + one touched mtime
#   index-new: the 10 photos into a new index in batches of 4
#   remove:    1 change (the 4 cups, in one transaction), then compaction (half of the rows are garbage)
#   recluster: 0 changes to photos; the cluster count changes 2 -> 1
MATRIX = [
    ("index", "shard-partial:1", 0),  # half of batch 1's token bytes on disk
    ("index", "shard-appended:1", 0),  # batch 1's tokens fsynced, its global embeddings not written
    ("index", "shard-appended:2", 0),  # both of batch 1's shard files fsynced
    ("index", "shard-written:2", 1),  # batch 2 on disk, its SQLite transaction not begun
    ("index", "batch-pending:2", 1),  # batch 2's rows inserted, COMMIT not reached
    ("index", "batch-committed:1", 1),
    ("index", "batch-committed:3", 3),  # every photo committed, nothing derived written
    ("index", "touch-pending:1", 3),
    ("index", "touch-committed:1", 3),
    ("index", "atomic-tmp-written:1", 3),  # the FAISS file complete under its temporary name
    ("index", "atomic-replaced:2", 3),  # the clusters file renamed into place, folder not fsynced
    ("index", "artefacts-written:1", 3),  # both new files written, index_info.json names the old ones
    ("index", "checkpointed:1", 3),  # the write-ahead log folded into the database
    ("index", "atomic-tmp-written:3", 3),  # the new index_info.json complete, not renamed
    ("index", "info-written:1", 3),  # index_info.json names the new files, the old ones not deleted
    ("index", "artefact-dropped:1", 3),  # one of the two old files deleted
    ("index-new", "db-opened:1", INCOMPLETE),  # a database file without tables
    ("index-new", "create-pending:1", INCOMPLETE),
    ("index-new", "create-committed:1", 0),
    ("index-new", "shard-written:1", 0),  # first batch's shard files created, not committed
    ("index-new", "batch-committed:1", 4),
    ("index-new", "artefacts-written:1", 10),  # no index_info.json at all yet
    ("remove", "remove-pending:1", 0),
    ("remove", "remove-committed:1", 1),  # removed, the shards not compacted, the artefacts stale
    ("remove", "shard-appended:1", 1),  # compaction: the new token shard written
    ("remove", "shard-appended:2", 1),  # compaction: both new shards written
    ("remove", "compact-written:1", 1),
    ("remove", "compact-pending:1", 1),  # photos switched to the new shards, COMMIT not reached
    ("remove", "compact-committed:1", 1),  # the old shard files unreferenced, not deleted
    ("remove", "shard-dropped:1", 1),  # one old shard file deleted, the other not
    ("remove", "artefacts-written:1", 1),
    ("remove", "atomic-tmp-written:3", 1),
    ("remove", "info-written:1", 1),
    ("remove", "artefact-dropped:2", 1),
    ("recluster", "meta-pending:1", 0),
    ("recluster", "meta-committed:1", 0),  # the new cluster count committed, the clusters not rebuilt
    ("recluster", "atomic-tmp-written:1", 0),
    ("recluster", "atomic-replaced:2", 0),
    ("recluster", "artefacts-written:1", 0),
    ("recluster", "info-written:1", 0),
    ("recluster", "artefact-dropped:1", 0),
]


@dataclass
class World:
    """The photos, the base index every case copies, and the crash-free outcome of each operation."""

    root: Path
    weights: Path
    photos: Path
    base: Path
    base_state: dict
    changed: list[str]  # paths the index operation encodes, in commit order
    reference: dict  # operation -> (state, info, files) of a crash-free run

    def argv(self, op: str, index: Path) -> list[str]:
        """The CLI command line of an operation on ``index``."""
        if op in ("index", "index-new"):
            batch = "1" if op == "index" else "4"
            return ["index", str(self.photos), "-i", str(index), "--weights", str(self.weights)] + [
                "--batch-size",
                batch,
                "--label-from-folder",
            ]
        if op == "remove":
            return ["remove", str(self.photos / "cup"), "-i", str(index)]
        return ["recluster", "-i", str(index), "--clusters", "1"]

    def start(self, op: str, case: Path) -> Path:
        """A fresh index directory for one run of ``op``."""
        index = case / "idx"
        if op != "index-new":
            shutil.copytree(self.base, index)
        return index


def cli(argv: list[str], log: Path, crash_at: str | None = None) -> int:
    """Exit status of ``sketchfind ARGV`` in its own process (forked from a server with sketchfind loaded)."""
    proc = multiprocessing.get_context("forkserver").Process(target=run_cli, args=(argv, crash_at, str(log)))
    proc.start()
    proc.join(timeout=120)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        pytest.fail(f"sketchfind {' '.join(argv)} did not finish: {log.read_text()[-2000:]}")
    return proc.exitcode


def read_state(index: Path) -> dict[str, tuple]:
    """path -> (id, sha256, label, token codes, global codes) of every committed photo, read-only."""
    with IndexStore.open(index) as store:
        snap = store.snapshot()
        records = {r.id: r for r in store.photos(snap.ids)}
        tokens = store.read_codes(snap, np.arange(len(snap)))
        globals_ = store.read_codes(snap, np.arange(len(snap)), "global")
        decoded = store.tokens(snap, np.arange(len(snap)))
        assert decoded.shape == (len(snap), store.codec.T, store.codec.D) and np.isfinite(decoded).all()
        state = {}
        for i, photo_id in enumerate(snap.ids):
            r = records[int(photo_id)]
            state[r.path] = (r.id, r.sha256, r.label, tokens[i].tobytes(), globals_[i].tobytes())
        assert len(state) == len(snap), "two photos with one path"
        return state


def files(index: Path) -> dict[str, int]:
    """name -> size of the index's files, generation numbers masked (SQLite's own files and the lock left out)."""
    out = {}
    for path in sorted(index.rglob("*")):
        name = str(path.relative_to(index))
        if path.is_file() and not name.startswith((".lock", "index.sqlite")):
            masked = re.sub(r"^(ann|clusters)-\d+", r"\1-GEN", name)
            out[masked] = path.stat().st_size if name.startswith("shards/") else 0
    return out


def comparable(info: dict) -> dict:
    """index_info.json without what legitimately differs between equal indexes (times, generation, bytes)."""
    info = json.loads(json.dumps(info))
    for key in ("updated", "generation", "bytes"):
        info.pop(key, None)
    info["ann"].pop("file")
    info["clusters"].pop("file")
    return info


def outcome(index: Path) -> tuple:
    return read_state(index), comparable(read_info(index)), files(index)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("crash-matrix")
    weights = root / "tiny.safetensors"
    save_weights(tiny(), weights)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sketchfind.cli", "sketchfind.index", "tests.index_helpers"])
    photos = root / "photos"
    cups = copy_photos(photos, classes=("cup",), per_class=4)
    copy_photos(photos, classes=("swan",), per_class=4)
    base = root / "base"
    world = World(root, weights, photos, base, {}, [], {})
    argv = ["index", str(photos), "-i", str(base), "--weights", str(weights), "--batch-size", "2"]
    assert cli([*argv, "--label-from-folder"], root / "base.log") == 0, (root / "base.log").read_text()
    world.base_state = read_state(base)
    # what the index operation then finds: one photo with new content, one only touched, two new photos
    cups[0].write_bytes(sorted((SKETCHY / "photos" / "cup").glob("*.jpg"))[5].read_bytes())
    stat = cups[1].stat()
    os.utime(cups[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = copy_photos(root / "more", classes=("swan",), per_class=6)[4:]
    world.changed = [str(cups[0])] + [str(Path(shutil.copy(p, photos / "swan" / p.name))) for p in new]
    for op in ("index", "index-new", "remove", "recluster"):
        index = world.start(op, root / f"ref-{op}")
        assert cli(world.argv(op, index), root / f"ref-{op}.log") == 0, (root / f"ref-{op}.log").read_text()
        world.reference[op] = outcome(index)
    return world


def expected_state(world: World, op: str, done: int) -> dict:
    """The committed photos after ``done`` of the operation's changes."""
    final = world.reference[op][0]
    if op == "index-new":
        return {path: final[path] for path in sorted(final)[:done]}
    if op == "remove":
        return final if done else world.base_state
    if op == "index":
        return {**world.base_state, **{path: final[path] for path in world.changed[:done]}}
    return world.base_state


def check_readable(index: Path, op: str, done: int, world: World) -> None:
    """What readers see after the crash: the index opens, is consistent and holds every committed photo."""
    runner = CliRunner()
    if done == INCOMPLETE:
        with pytest.raises(IncompleteIndexError):
            IndexStore.open(index)
        result = runner.invoke(app, ["info", "-i", str(index)])
        assert result.exit_code == 1 and "interrupted" in result.output and "Traceback" not in result.output
        return
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in index.rglob("*") if not p.name.endswith("-shm")}
    state = read_state(index)
    assert state == expected_state(world, op, done), "committed photos lost, or uncommitted ones visible"

    result = runner.invoke(app, ["info", "-i", str(index), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["photos"] == len(state)

    with IndexStore.open(index) as store:  # the search structures in force match the committed photos
        snap = store.snapshot()
        art = load_or_build(store, snap, persist=False)
        if snap.ids.size:
            requested = store.meta["n_clusters"]
            assert art.ann.ntotal == len(snap) and len(art.clusters.assign) == len(snap)
            assert art.clusters.n_clusters == cluster_count(len(snap), requested) == art.info["clusters"]["n_clusters"]
            assert art.info["clusters"]["requested"] == requested
            assert art.info["ann"]["requested"] == store.meta.get("ann_type", DEFAULT_ANN)  # auto: exact SQ8 here
            fresh = build_ann(ret_embeddings(store, snap), art.info["ann"]["type"])
            np.testing.assert_allclose(art.ann.reconstruct_n(0, len(snap)), fresh.reconstruct_n(0, len(snap)))
            ids = set(snap.ids.tolist())
            with Searcher.open(index, world_model(), runtime="torch", rerank_k=4) as searcher:
                for strategy in ("ann", "clustered"):
                    hits = searcher.search(sketches(("cup",), 1)[0], k=3, strategy=strategy).hits
                    assert len(hits) == min(3, len(snap)) and {h.photo_id for h in hits} <= ids
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in index.rglob("*") if not p.name.endswith("-shm")}
    assert after == before, "a reader wrote to the index"


_MODEL = []


def world_model():
    """The tiny model, loaded once per module."""
    if not _MODEL:
        _MODEL.append(tiny())
    return _MODEL[0]


@pytest.mark.parametrize(("op", "crash_at", "done"), MATRIX, ids=[f"{op}-{point}" for op, point, _ in MATRIX])
def test_sigkill_matrix(world, tmp_path, op, crash_at, done):
    index = world.start(op, tmp_path)
    log = tmp_path / "crash.log"
    status = cli(world.argv(op, index), log, crash_at)
    assert status == -signal.SIGKILL, f"crash point {crash_at} not reached (exit {status}): {log.read_text()}"
    check_readable(index, op, done, world)

    # running the same command again finishes the job: the same index as a run that never crashed
    status = cli(world.argv(op, index), tmp_path / "resume.log")
    output = (tmp_path / "resume.log").read_text()
    assert "Traceback" not in output
    nothing_left = op == "remove" and done  # removed already: the CLI says so, and still finishes the rest
    assert status == (1 if nothing_left else 0), output
    state, info, names = outcome(index)
    ref_state, ref_info, ref_names = world.reference[op]
    assert state == ref_state
    assert info == ref_info
    assert names == ref_names, "leftover or missing files"


# -- random kill times ------------------------------------------------------------------------------------
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
    return {path: values[3] for path, values in read_state(index_dir).items()}


def _start(photos: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("SKETCHFIND_CRASH_AT", None)
    code = BUILD.format(batch=BATCH)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(photos), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _check_consistent(out: Path, reference: dict[str, bytes]) -> int:
    """The index opens, every committed row matches the uninterrupted build, and search works."""
    codes = _codes_by_path(out)
    for path, code in codes.items():
        assert code == reference[path], f"{path}: committed tokens differ from a clean build"
    if codes:
        with Searcher.open(out, tiny(), strategy="ann", rerank_k=5, runtime="torch") as searcher:
            result = searcher.search(sketches(per_class=1)[0], k=3)
            assert len(result.hits) == min(3, len(codes))
    return len(codes)


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
    proc = _start(gallery[0], out)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert _check_consistent(out, reference_codes) == len(gallery[1])
    report = build_index([gallery[0]], out, tiny(), batch_size=BATCH, runtime="torch")  # nothing left to do
    assert report.photos == len(gallery[1]) and not report.skipped and not report.new


def _count(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'index.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    except sqlite3.Error:
        return -1


def test_open_searcher_follows_a_killed_recluster(world, tmp_path):
    """A reader open across another process's recluster (killed after committing the new cluster count)
    rebuilds its clusters with the new count, not with the settings it read when it opened."""
    index = world.start("recluster", tmp_path)
    with Searcher.open(index, world_model(), runtime="torch") as searcher:
        assert searcher.state.artefacts.clusters.n_clusters == 2
        assert cli(world.argv("recluster", index), tmp_path / "log", "meta-committed:1") == -signal.SIGKILL
        searcher.refresh()
        assert searcher.state.artefacts.clusters.n_clusters == 1
