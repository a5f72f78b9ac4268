"""The Searcher on a small real index: the three strategies, full rankings, settings, changes, errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from sketchfind.errors import EmptySketchError, IndexStoreError, SketchfindError
from sketchfind.index import build_index
from sketchfind.search import Searcher

from .index_helpers import copy_photos, sketches, tiny

CLASSES = ("cup", "airplane", "swan", "apple")


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def index_dir(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    copy_photos(root / "photos", classes=CLASSES, per_class=8)  # 32 photos
    build_index(
        [root / "photos"], root / "idx", model, batch_size=8, token_storage="fp32", n_clusters=6, label_from_folder=True
    )
    return root / "idx"


@pytest.fixture(scope="module")
def searcher(index_dir, model):
    with Searcher.open(index_dir, model) as s:
        yield s


@pytest.fixture(scope="module")
def query(searcher):
    return searcher.encode_query(sketches(CLASSES, 1)[0])


def _all_scores(searcher, query) -> np.ndarray:
    ids = searcher.state.snapshot.ids
    with torch.inference_mode():
        return searcher.model.relation_scores(query, searcher.photo_tokens(ids))[0].numpy()


def test_exhaustive_is_the_relation_network_over_every_photo(searcher, query):
    hits, _ = searcher.search_tokens(query, k=None, strategy="exhaustive")
    scores = _all_scores(searcher, query)
    ids = searcher.state.snapshot.ids
    assert len(hits) == len(ids) == 32 and len({h.photo_id for h in hits}) == 32
    got = {h.photo_id: h.score for h in hits}
    np.testing.assert_allclose([got[int(i)] for i in ids], scores, rtol=1e-5)
    assert [h.rank for h in hits] == list(range(1, 33))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    top5, _ = searcher.search_tokens(query, k=5, strategy="exhaustive")
    assert [h.photo_id for h in top5] == [h.photo_id for h in hits[:5]]


def test_ann_reranks_the_faiss_head_and_keeps_the_rest_by_cosine(searcher, query, index_dir, model):
    with Searcher.open(index_dir, model, rerank_k=100, fusion=0.0) as wide:  # pure relation re-ranking
        hits, timings = wide.search_tokens(query, k=None, strategy="ann")
    assert len({h.photo_id for h in hits}) == 32 and {"first_stage", "rerank"} <= set(timings)
    exhaustive, _ = searcher.search_tokens(query, k=None, strategy="exhaustive")
    assert [h.photo_id for h in hits] == [h.photo_id for h in exhaustive]  # K'=100 >= gallery: same ranking

    with Searcher.open(index_dir, model, rerank_k=5, dba_top=0) as small:  # FAISS order, no augmentation
        head_tail, _ = small.search_tokens(query, k=None, strategy="ann")
        ret = model.retrieval_embedding(query).numpy()[0]
        emb = model.retrieval_embedding(small.photo_tokens([h.photo_id for h in head_tail]))
        cos = emb.numpy() @ ret
        top5_by_cos = set(np.array([h.photo_id for h in head_tail])[np.argsort(-cos)[:5]])
        assert {h.photo_id for h in head_tail[:5]} == top5_by_cos  # the head is FAISS's top-5
        assert np.all(np.diff(cos[5:]) <= 1e-2)  # the tail follows the (8-bit) cosine order
        assert len(small.search_tokens(query, k=12, strategy="ann")[0]) == 12


def test_fusion_mixes_cosine_into_the_head(index_dir, model, query):
    with Searcher.open(index_dir, model, fusion=1.0) as fused:
        hits, _ = fused.search_tokens(query, k=10, strategy="ann")
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0


def test_clustered_is_the_reference_two_stage_search(searcher, query):
    clusters = searcher.state.artefacts.clusters
    assert clusters.n_clusters == 6 and clusters.sizes.sum() == 32
    reps = torch.from_numpy(clusters.representatives)
    with torch.inference_mode():
        cluster_scores = searcher.model.relation_scores(query, reps)[0].numpy()
    order = np.argsort(-cluster_scores)
    k = 7
    taken, count = [], 0
    for c in order:
        taken.append(c)
        count += clusters.sizes[c]
        if count >= k:
            break
    members = set(np.array(searcher.state.snapshot.ids)[np.isin(clusters.assign, taken)].tolist())
    hits, _ = searcher.search_tokens(query, k=k, strategy="clustered")
    assert len(hits) == k and {h.photo_id for h in hits} <= members
    scores = dict(zip(searcher.state.snapshot.ids.tolist(), _all_scores(searcher, query), strict=True))
    best = sorted(members, key=lambda i: -scores[i])[:k]
    assert [h.photo_id for h in hits] == best
    everything, _ = searcher.search_tokens(query, k=None, strategy="clustered")
    assert len({h.photo_id for h in everything}) == 32


def test_representatives_are_member_token_means(searcher):
    clusters = searcher.state.artefacts.clusters
    ids = searcher.state.snapshot.ids
    c = int(np.argmax(clusters.sizes))
    tokens = searcher.photo_tokens(ids[clusters.assign == c]).numpy()
    np.testing.assert_allclose(clusters.representatives[c], tokens.mean(0), atol=1e-3)  # stored as fp16


def test_search_from_files_and_result_json(searcher):
    paths = sketches(CLASSES, 1)
    results = searcher.search_many(paths, k=3, strategy="clustered")
    assert [r.query for r in results] == [str(p) for p in paths]
    row = results[0].to_dict()
    assert set(row) == {"query", "strategy", "seconds", "results"} and row["strategy"] == "clustered"
    assert [set(r) for r in row["results"]] == [{"rank", "path", "score"}] * 3
    assert all(r.seconds >= r.timings["encode"] > 0 for r in results)
    assert searcher.photo(results[0].hits[0].photo_id).path == results[0].hits[0].path


def test_bad_input_is_a_clear_error(searcher, tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    with pytest.raises(EmptySketchError):
        searcher.search(blank)
    with pytest.raises(SketchfindError, match="unknown strategy"):
        searcher.search(sketches(CLASSES, 1)[0], strategy="magic")
    with pytest.raises(SketchfindError, match="k must be"):
        searcher.search(sketches(CLASSES, 1)[0], k=0)
    with pytest.raises(IndexStoreError, match="unknown photo id"):
        searcher.photo_tokens([12345])


def test_wrong_model_and_missing_index_are_refused(index_dir, tmp_path):
    with pytest.raises(IndexStoreError, match="other 'zse-tiny' weights"):
        Searcher.open(index_dir, tiny(seed=3))
    with pytest.raises(IndexStoreError, match="cannot be loaded"):
        Searcher.open(index_dir)  # random weights were never saved: nothing to load
    with pytest.raises(IndexStoreError, match="no sketchfind index"):
        Searcher.open(tmp_path)


def test_add_and_remove_through_the_searcher(model, tmp_path):
    photos = copy_photos(tmp_path / "photos", classes=("cup",), per_class=6)
    build_index([tmp_path / "photos"], tmp_path / "idx", model)
    with Searcher.open(tmp_path / "idx", model) as searcher:
        assert len(searcher) == 6
        extra = copy_photos(tmp_path / "more", classes=("swan",), per_class=3)
        report = searcher.add_photos(extra)
        assert len(report.new) == 3 and len(searcher) == 9
        new_ids = [h.photo_id for h in searcher.search(sketches(("swan",), 1)[0], k=None).hits if "swan" in h.path]
        assert searcher.remove_photos(new_ids) == 3 and len(searcher) == 6
        assert all("cup" in h.path for h in searcher.search(sketches(("swan",), 1)[0], k=None).hits)
        assert searcher.info()["counts"]["photos"] == len(photos)


def test_search_params_are_set_explicitly_at_load(model, tmp_path):
    copy_photos(tmp_path / "photos", classes=("cup", "swan"), per_class=6)
    build_index([tmp_path / "photos"], tmp_path / "idx", model, ann_type="HNSW8,Flat")
    with Searcher.open(tmp_path / "idx", model) as default:
        assert faiss.downcast_index(default.state.artefacts.ann).hnsw.efSearch == 128
        assert default.info()["search_settings"]["ann_params"] == {"efSearch": 128}
    with Searcher.open(tmp_path / "idx", model, ann_params={"efSearch": 7}) as custom:
        assert faiss.downcast_index(custom.state.artefacts.ann).hnsw.efSearch == 7
        assert len(custom.search(sketches(("cup",), 1)[0], k=4).hits) == 4


def test_a_searcher_survives_compaction_by_another_writer(model, tmp_path):
    from sketchfind.index import remove_photos

    copy_photos(tmp_path / "photos", classes=("cup", "swan", "apple"), per_class=4)
    build_index([tmp_path / "photos"], tmp_path / "idx", model)
    with Searcher.open(tmp_path / "idx", model) as searcher:
        assert remove_photos(tmp_path / "idx", [str(tmp_path / "photos" / c) for c in ("cup", "swan")]) == 8
        hits = searcher.search(sketches(("apple",), 1)[0], k=None, strategy="exhaustive").hits
        assert len(hits) == 4 and all("apple" in h.path for h in hits)


@pytest.mark.parametrize("alpha", [0.0, 3.0])  # plain and alpha-weighted expansion
def test_ann_with_query_expansion_is_the_rerank_pipeline(model, query, tmp_path, alpha):
    from sketchfind.rerank import RankSettings, pipeline_scores

    copy_photos(tmp_path / "photos", classes=CLASSES, per_class=8)
    build_index([tmp_path / "photos"], tmp_path / "idx", model, token_storage="fp32", ann_type="Flat", n_clusters=4)
    settings = RankSettings(rerank_k=6, fusion=0.5, qe_top=3, qe_weight=1.0, qe_alpha=alpha)
    with Searcher.open(tmp_path / "idx", model, **settings.__dict__) as s:
        hits, _ = s.search_tokens(query, k=None, strategy="ann")
        ids = s.state.snapshot.ids
        tokens = s.photo_tokens(ids)
        with torch.inference_mode():
            relation = model.relation_scores(query, tokens).numpy()
        query_emb = model.retrieval_embedding(query).numpy()
        expected = pipeline_scores(query_emb, model.retrieval_embedding(tokens).numpy(), relation, settings)[0]
        # the same order (photos with equal scores, e.g. identical embeddings, may come in either order)
        by_id = dict(zip(ids.tolist(), expected.tolist(), strict=True))
        assert sorted(h.photo_id for h in hits) == sorted(by_id)
        assert np.all(np.diff([by_id[h.photo_id] for h in hits]) <= 1e-6)
        np.testing.assert_allclose([h.score for h in hits[:6]], np.sort(expected)[::-1][:6], rtol=1e-5)
        # no expansion and fusion 1: the plain FAISS cosine order, no relation network
        with Searcher.open(tmp_path / "idx", model, fusion=1.0, qe_weight=0.0, dba_top=0) as plain:
            hits, timings = plain.search_tokens(query, k=None, strategy="ann")
        plain_settings = RankSettings(dba_top=0)
        cos = pipeline_scores(query_emb, model.retrieval_embedding(tokens).numpy(), None, plain_settings)[0]
        assert [h.photo_id for h in hits] == [int(ids[i]) for i in np.argsort(-cos, kind="stable")]


def test_ann_settings_come_from_the_weights_metadata(index_dir, model):
    saved = model.weights_metadata
    model.weights_metadata = {"fusion": "0.75", "qe_top": "4", "qe_weight": "1.5", "rerank_k": "7", "qe_alpha": "3.0"}
    try:
        with Searcher.open(index_dir, model) as s:
            got = s.settings.rank
            assert (got.fusion, got.qe_top, got.qe_weight, got.rerank_k, got.qe_alpha) == (0.75, 4, 1.5, 7, 3.0)
        with Searcher.open(index_dir, model, qe_weight=0.0, rerank_k=3, qe_alpha=0) as s:  # explicit values win
            got = s.settings.rank
            assert (got.qe_weight, got.rerank_k, got.fusion, got.qe_alpha) == (0.0, 3, 0.75, 0.0)
        with pytest.raises(SketchfindError, match="fusion"):
            Searcher.open(index_dir, model, fusion=1.5)
    finally:
        model.weights_metadata = saved


def _files_state(root):
    """(name, size, mtime) of every file an index writer owns (SQLite's own -wal/-shm excluded)."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    )


def test_a_reader_never_writes_even_when_the_artefacts_are_stale(model, tmp_path):
    import json

    copy_photos(tmp_path / "photos", classes=("cup", "swan"), per_class=4)
    build_index([tmp_path / "photos"], tmp_path / "idx", model)
    info_file = tmp_path / "idx" / "index_info.json"
    info = json.loads(info_file.read_text())
    info["generation"] = -1  # as if a writer had crashed after its commit, before refreshing the artefacts
    info_file.write_text(json.dumps(info))
    before = _files_state(tmp_path / "idx")
    with Searcher.open(tmp_path / "idx", model) as searcher:
        assert len(searcher.search(sketches(("cup",), 1)[0], k=None).hits) == 8  # rebuilt in memory
        searcher.refresh(force=True)
    assert _files_state(tmp_path / "idx") == before


def test_a_reader_opens_an_index_it_may_not_write(model, tmp_path):
    """A read-only index folder (a backup disk, a read-only volume): SQLite cannot create its -shm/-wal files
    there, so the reader opens the database immutable; it searches without writing anything."""
    import os
    import shutil
    import subprocess

    copy_photos(tmp_path / "photos", classes=("cup",), per_class=4)
    build_index([tmp_path / "photos"], tmp_path / "idx", model)
    assert not (tmp_path / "idx" / "index.sqlite-shm").exists()  # the writer checkpointed and closed cleanly
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        shutil.copytree(tmp_path / "idx", ro, dirs_exist_ok=True)
        for path in [ro, *ro.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        unmount = None
    else:  # root writes through permission bits: mount the index read-only instead
        subprocess.run(["mount", "--bind", str(tmp_path / "idx"), str(ro)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        unmount = ["umount", str(ro)]
    try:
        with pytest.raises(OSError):
            (ro / "probe").write_bytes(b"")
        with Searcher.open(ro, model) as searcher:
            hits = searcher.search(sketches(("cup",), 1)[0], k=None).hits
            assert len(hits) == 4
    finally:
        if unmount:
            subprocess.run(unmount, check=True)


def test_from_photos_builds_then_updates_and_add_photos_reports_ids(model, tmp_path):
    copy_photos(tmp_path / "photos", classes=("cup",), per_class=4)
    searcher, report = Searcher.from_photos([tmp_path / "photos"], tmp_path / "idx", model)
    with searcher:
        assert len(searcher) == 4 and len(report.new) == 4 and sorted(report.added_ids) == sorted(report.ids.values())
        extra = copy_photos(tmp_path / "more", classes=("swan",), per_class=2)
        added = searcher.add_photos(extra)
        assert len(added.added_ids) == 2
        records = searcher.photos(added.added_ids)
        assert sorted(r.path for r in records) == sorted(str(p.resolve()) for p in extra)
        assert searcher.photos([99999, *added.added_ids])[0].id == added.added_ids[0]  # unknown ids are left out
    again, report = Searcher.from_photos([tmp_path / "photos"], tmp_path / "idx", model)  # an existing index
    with again:
        assert len(report.unchanged) == 4 and not report.new and len(again) == 6


def test_explain_through_the_searcher(searcher):
    from sketchfind.errors import UnknownPhotoError

    photo_id = int(searcher.state.snapshot.ids[0])
    explanation, images = searcher.explain(sketches(CLASSES, 1)[0], photo_id)
    assert 0 < explanation.score < 1 and set(images) == {"sketch", "photo", "combined"}
    with pytest.raises(UnknownPhotoError):
        searcher.explain(sketches(CLASSES, 1)[0], 123456)


def test_hits_carry_the_labels(searcher, query):
    hits, _ = searcher.search_tokens(query, k=None, strategy="ann")
    records = {r.id: r for r in searcher.photos([h.photo_id for h in hits])}
    assert all(h.label == records[h.photo_id].label and h.label in CLASSES for h in hits)
