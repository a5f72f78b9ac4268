"""Milvus as ann's vector backend, on Milvus Lite (files under tmp_path; zse-tiny, random weights).

Rankings through Milvus equal FAISS's; adding, updating and removing photos keeps the collection in step;
a writer killed between the store commit and the Milvus write is repaired by the next index run; two
Searchers (as two ``sketchfind serve`` processes) and a CLI process share one collection on a Milvus Lite
server; the CLI takes --backend/--milvus-uri; a wrong URI is a clean error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchfind.cli import app
from sketchfind.errors import ConfigError, VectorBackendError
from sketchfind.index import IndexStore, build_index, remove_photos
from sketchfind.index.milvus import open_collection, photo_versions
from sketchfind.index.vectors import backend_spec
from sketchfind.metrics import retrieval_metrics
from sketchfind.models.factory import save_weights
from sketchfind.search import Searcher

from .index_helpers import SKETCHY, copy_photos, sketches, tiny

CLASSES = ("cup", "airplane", "swan")
SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def lite_servers():
    """Milvus Lite serves each .db file from a thread of this process: stopped when the module is done."""
    yield
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_all()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("milvus-photos")
    copy_photos(root, classes=CLASSES, per_class=6)  # 18 photos
    return root


def _build(photos, index_dir, model, **kwargs):
    return build_index([photos], index_dir, model, batch_size=8, label_from_folder=True, runtime="torch", **kwargs)


def _in_step(index_dir: Path) -> tuple[dict[int, int], dict[int, int], int | None, int]:
    """(store id -> version, collection id -> version, collection generation, store generation)."""
    with IndexStore.open(index_dir) as store:
        snap = store.snapshot()
        live = dict(zip(snap.ids.tolist(), photo_versions(store, snap).tolist(), strict=True))
        with open_collection(backend_spec(store.meta), store) as vectors:
            return live, vectors.rows(), vectors.generation(), snap.generation


def _assert_in_step(index_dir: Path) -> None:
    live, rows, mirrored, generation = _in_step(index_dir)
    assert rows == live and mirrored == generation


def _ranking(searcher, query, k=None) -> list[tuple[int, float]]:
    hits, _ = searcher.search_tokens(query, k, "ann")
    return [(h.photo_id, h.score) for h in hits]


# ----------------------------------------------------------------------------- rankings


@pytest.fixture(scope="module")
def flat_index(photos, model, tmp_path_factory):
    """FAISS Flat (exact, float) beside the collection: both first stages should agree to the last digit."""
    root = tmp_path_factory.mktemp("milvus-flat")
    _build(photos, root / "idx", model, ann_type="Flat", backend="milvus", milvus_uri=str(root / "vectors.db"))
    return root / "idx"


def test_rankings_through_milvus_equal_faiss(flat_index, model):
    with (
        Searcher.open(flat_index, model, backend="faiss", qe_weight=0.5, qe_top=3) as faiss_s,
        Searcher.open(flat_index, model, qe_weight=0.5, qe_top=3) as milvus_s,  # the backend the index records
    ):
        assert milvus_s.info()["vectors"]["backend"] == "milvus" and faiss_s.info()["vectors"]["backend"] == "faiss"
        for sketch in sketches(CLASSES, 1):
            query = faiss_s.encode_query(sketch)
            for k in (None, 5):
                want, got = _ranking(faiss_s, query, k), _ranking(milvus_s, query, k)
                np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
                # the same photos in the same order, up to photos whose scores differ by float noise only
                # (FAISS hands back its own float copy of [Ret], Milvus' path decodes the stored one: 3e-8)
                by_id = dict(want)
                assert all(i in by_id for i, _ in got)
                np.testing.assert_allclose([by_id[i] for i, _ in got], [s for _, s in want], atol=1e-5)
    _assert_in_step(flat_index)


def test_map_through_milvus_equals_faiss(photos, model, tmp_path):
    """The small-scale version of benchmarks/bench_milvus.py: mAP@all with the default FAISS index (SQ8)."""
    _build(photos, tmp_path / "idx", model, milvus_uri=str(tmp_path / "vectors.db"))
    queries = sketches(CLASSES, 3)
    maps = {}
    for backend in ("faiss", "milvus"):
        with Searcher.open(tmp_path / "idx", model, backend=backend) as searcher:
            ids, labels = searcher.state.snapshot.ids, np.array(searcher.state.labels)
            scores = np.zeros((len(queries), len(ids)), np.float32)
            for row, sketch in enumerate(queries):
                for rank, (photo_id, _) in enumerate(_ranking(searcher, searcher.encode_query(sketch))):
                    scores[row, np.searchsorted(ids, photo_id)] = len(ids) - rank  # rank order as a score
            q_labels = np.array([p.parent.name for p in queries])
            maps[backend] = retrieval_metrics(-scores, q_labels, labels)["map_all"]
    assert abs(maps["milvus"] - maps["faiss"]) <= 0.005, maps


# ----------------------------------------------------------------------------- changes


def test_add_update_and_remove_keep_the_collection_in_step(photos, model, tmp_path):
    gallery = tmp_path / "photos"
    shutil.copytree(photos / "cup", gallery / "cup")
    _build(gallery, tmp_path / "idx", model, milvus_uri=str(tmp_path / "vectors.db"))
    _assert_in_step(tmp_path / "idx")
    with Searcher.open(tmp_path / "idx", model) as searcher:
        report = searcher.add_photos([photos / "swan"], label_from_folder=True)  # through the Searcher
        assert len(report.new) == 6 and len(searcher) == 12
        _assert_in_step(tmp_path / "idx")
        query = searcher.encode_query(sketches(("swan",), 1)[0])
        assert {i for i, _ in _ranking(searcher, query)} == set(report.added_ids) | set(searcher.state.snapshot.ids)

        changed = sorted((gallery / "cup").glob("*.jpg"))[0]  # same path, other content: same id, new version
        before = _in_step(tmp_path / "idx")[1]
        shutil.copy(sorted((SKETCHY / "photos" / "apple").glob("*.jpg"))[0], changed)
        report = searcher.add_photos([gallery], label_from_folder=True)
        assert report.updated == [str(changed)]
        after = _in_step(tmp_path / "idx")[1]
        assert after[report.ids[str(changed)]] != before[report.ids[str(changed)]]
        _assert_in_step(tmp_path / "idx")

        gone = report.ids[str(changed)]
        assert searcher.remove_photos([gone]) == 1
        assert remove_photos(tmp_path / "idx", [str(gallery / "cup")]) == 5  # as `sketchfind remove` does
        _assert_in_step(tmp_path / "idx")
        searcher.refresh()
        assert {i for i, _ in _ranking(searcher, query)} == set(searcher.state.snapshot.ids.tolist())
        assert len(searcher) == 6


BUILD = """
import sys, torch, sketchfind
from sketchfind.index import build_index
torch.set_num_threads(1)
torch.manual_seed(0)
model = sketchfind.load_model("zse-tiny", random_init=True)
build_index([sys.argv[1]], sys.argv[2], model, batch_size=8, workers=1, label_from_folder=True, runtime="torch")
"""


def test_a_crash_between_store_and_milvus_is_repaired_by_the_next_index(photos, model, tmp_path, monkeypatch):
    from milvus_lite.server_manager import server_manager_instance

    db, idx = tmp_path / "vectors.db", tmp_path / "idx"
    _build(photos / "cup", idx, model, milvus_uri=str(db))
    server_manager_instance.release_server(str(db))  # the file is served by one process at a time

    env = {**os.environ, "PYTHONPATH": str(SRC), "SKETCHFIND_CRASH_AT": "vectors-sync:1"}
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(photos), str(idx)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    live, rows, mirrored, generation = _in_step(idx)
    assert len(live) == 18 and len(rows) == 6 and mirrored < generation  # the store committed, Milvus did not

    with Searcher.open(idx, model) as reader:  # a reader meanwhile: Milvus's photos first, the rest completed
        query = reader.encode_query(sketches(("swan",), 1)[0])
        assert {i for i, _ in _ranking(reader, query)} == set(live)

    report = _build(photos, idx, model)  # nothing to encode; the collection is repaired
    assert len(report.unchanged) == 18 and not report.new
    _assert_in_step(idx)

    import sketchfind.index.milvus as milvus

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill between the store's commit and Milvus's write

    monkeypatch.setattr(milvus.MilvusVectors, "delete", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_photos(idx, [str(photos / "airplane")])
    monkeypatch.undo()
    live, rows, mirrored, generation = _in_step(idx)
    assert len(live) == 12 and len(rows) == 18
    with Searcher.open(idx, model) as reader:  # removed photos Milvus still holds are never returned
        hits = _ranking(reader, query, k=5)
        assert len(hits) == 5 and {i for i, _ in hits} <= set(live)
    _build(photos / "cup", idx, model)
    _assert_in_step(idx)


# ----------------------------------------------------------------------------- sharing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def lite_server(tmp_path):
    """A Milvus Lite server process (as a Milvus server would be): several processes share its collections."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "shared.db"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the Milvus Lite server did not start"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_processes_share_one_collection(photos, tmp_path, lite_server):
    weights = tmp_path / "tiny.safetensors"
    model = tiny()
    save_weights(model, weights)
    idx = tmp_path / "idx"
    _build(photos / "cup", idx, model, weights=weights, milvus_uri=lite_server, collection="shared")
    with Searcher.open(idx, model) as first, Searcher.open(idx, model) as second:  # two serve processes
        query = first.encode_query(sketches(("swan",), 1)[0])
        report = first.add_photos([photos / "swan"], label_from_folder=True)
        second.refresh()  # what the service does at most once a second
        assert {i for i, _ in _ranking(second, query)} == set(second.state.snapshot.ids.tolist())
        assert set(report.added_ids) <= {i for i, _ in _ranking(second, query)} and len(second) == 12
        _assert_in_step(idx)

        out = subprocess.run(  # a third process, the CLI: the index records the server and the collection
            [sys.executable, "-c", "from sketchfind.cli import app; app()", "search", str(sketches(("swan",), 1)[0]),
             "--index", str(idx), "--format", "json", "-k", "all", "--runtime", "torch"],
            env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["results"]) == 12

        with pytest.raises(VectorBackendError, match="served by one process at a time"):
            Searcher.open(idx, model, milvus_uri=str(tmp_path / "shared.db"))  # the server process holds the file

        second.remove_photos(report.added_ids[:3])
        first.refresh()
        assert len({i for i, _ in _ranking(first, query)}) == 9
        _assert_in_step(idx)


# ----------------------------------------------------------------------------- CLI and errors


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_cli_index_info_and_search_with_milvus(photos, tmp_path):
    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny(), weights)
    idx, db = tmp_path / "idx", tmp_path / "vectors.db"
    common = ("--index", idx, "--runtime", "torch")
    made = _run("index", photos / "cup", photos / "swan", *common, "--weights", weights, "--backend", "milvus",
                "--milvus-uri", db, "--collection", "photos_v1")  # fmt: skip
    assert made.exit_code == 0 and "12 new" in made.output, made.output
    info = _run("info", "--index", idx)
    assert "Milvus HNSW" in info.output and "photos_v1" in info.output and str(db) in info.output
    sketch = sketches(("swan",), 1)[0]
    found = _run("search", sketch, *common, "--format", "json", "-k", "all")  # no flags: the index's backend
    through_faiss = _run("search", sketch, *common, "--format", "json", "-k", "all", "--backend", "faiss")
    assert found.exit_code == 0 and through_faiss.exit_code == 0, found.output + through_faiss.output
    paths = [r["path"] for r in json.loads(found.output)["results"]]
    assert len(paths) == 12 and set(paths) == {r["path"] for r in json.loads(through_faiss.output)["results"]}


def test_wrong_uris_are_clean_errors(photos, tmp_path, model):
    idx = tmp_path / "idx"
    for uri, words in (
        ("http://127.0.0.1:1", "Milvus at http://127.0.0.1:1: connecting failed"),
        ("not-a-uri", "neither a Milvus server"),
        (str(tmp_path / "missing" / "vectors.db"), "not exists"),
    ):
        result = _run("index", photos / "cup", "--index", idx, "--milvus-uri", uri, "--runtime", "torch")
        assert result.exit_code == 1 and "error:" in result.output and words in result.output, result.output
        assert not idx.exists()  # refused before anything was created
    result = _run("index", photos / "cup", "--index", idx, "--backend", "milvus")
    assert result.exit_code == 1 and "needs --milvus-uri" in result.output
    result = _run("index", photos / "cup", "--index", idx, "--milvus-uri", "http://alice:secret@127.0.0.1:1")
    assert result.exit_code == 1 and "http://127.0.0.1:1" in result.output and "secret" not in result.output

    _build(photos / "cup", idx, model)  # FAISS
    with pytest.raises(VectorBackendError, match="has no collection 'nothing_here'"):
        Searcher.open(idx, model, milvus_uri=str(tmp_path / "other.db"), collection="nothing_here")
    with pytest.raises(ConfigError, match="invalid Milvus collection name"):
        Searcher.open(idx, model, milvus_uri=str(tmp_path / "other.db"), collection="no-dashes")
    _build(photos / "swan", tmp_path / "idx2", model, milvus_uri=str(tmp_path / "other.db"))
    with pytest.raises(VectorBackendError, match="belongs to another index"):
        Searcher.open(idx, model, milvus_uri=str(tmp_path / "other.db"))


def test_http_answers_503_when_milvus_fails(photos, tmp_path, model, monkeypatch):
    from fastapi.testclient import TestClient
    from pymilvus.exceptions import MilvusException

    from sketchfind.service import Settings, create_app

    _build(photos / "cup", tmp_path / "idx", model, milvus_uri=str(tmp_path / "vectors.db"))
    with Searcher.open(tmp_path / "idx", model) as searcher:
        app_ = create_app(Settings(index=tmp_path / "idx"), searcher_factory=lambda _: searcher)
        with TestClient(app_) as client:
            sketch = sketches(("cup",), 1)[0].read_bytes()
            assert client.post("/api/search", files={"sketch": ("s.png", sketch, "image/png")}).status_code == 200

            def down(*args, **kwargs):
                raise MilvusException(message="server unavailable")

            monkeypatch.setattr(searcher._milvus.client, "search", down)
            answer = client.post("/api/search", files={"sketch": ("s.png", sketch, "image/png")})
            assert answer.status_code == 503 and answer.json()["code"] == "vectors_unavailable"
            assert "server unavailable" in answer.json()["detail"]
