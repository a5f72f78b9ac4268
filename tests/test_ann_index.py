"""The first-stage index (issue 13): exact below the size threshold, a tuned approximate index above it."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from sketchfind.index import ann
from sketchfind.index.artefacts import read_info

from .index_helpers import copy_photos, sketches, tiny


def mixture(n: int, dim: int = 128, seed: int = 0, components: int = 200) -> np.ndarray:
    """(n, dim) unit vectors around fixed random centres (the same centres for every seed)."""
    centres = np.random.default_rng(1234).normal(size=(components, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, components, n)] + 0.08 * rng.normal(size=(n, dim)) * np.sqrt(dim) / 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_and_held_out_helpers_on_hand_computed_cases():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert ann.recall_at(found, truth, k=4) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert ann.without_self(np.array([[7, 1, 2], [3, 4, 5]]), np.array([7, 9]), k=2).tolist() == [[1, 2], [3, 4]]
    assert ann.nlist_for(1_000_000) == 4000 and ann.nlist_for(390) == 10
    # the exact top-2 among the first 3 returned
    assert ann.recall_at(np.array([[9, 2, 1, 3]]), np.array([[1, 2]]), k=2, depth=3) == 1.0
    assert ann.recall_at(np.array([[9, 2, 1, 3]]), np.array([[1, 2]]), k=2) == 0.5
    kinds = (
        "SQ4",
        "IVF16,SQ4",
        "IVF16,SQ6",
        "IVF16,PQ8x8np",
        "SQ8",
        "IVF16,SQ8",
        "HNSW32,SQ8",
        "IVF16,PQ8x8np,Refine(SQ8)",
    )
    coarse = [ann.coarse(faiss.index_factory(32, kind, faiss.METRIC_INNER_PRODUCT)) for kind in kinds]
    assert coarse == [True] * 4 + [False] * 4


def test_auto_is_the_exact_scan_below_the_threshold():
    x = mixture(3000)
    first = ann.build_first_stage(x, ann.AUTO, None, None)
    assert first.record["type"] == "SQ8" and not first.record["approximate"] and first.trained is None
    exact = faiss.index_factory(x.shape[1], "SQ8", faiss.METRIC_INNER_PRODUCT)
    exact.train(x)
    exact.add(x)
    queries = mixture(20, seed=5)
    assert np.array_equal(first.index.search(queries, 50)[1], exact.search(queries, 50)[1])


def test_auto_above_the_threshold_keeps_recall_on_new_queries(monkeypatch):
    monkeypatch.setattr(ann, "APPROX_FROM", 10_000)
    x = mixture(20_000)
    first = ann.build_first_stage(x, ann.AUTO, None, None)
    record = first.record
    assert record["approximate"] and record["type"].startswith("IVF") and record["nlist"] == ann.nlist_for(20_000)
    assert record["recall_at_100"] >= ann.TUNE_TARGET and set(record["search_params"]) == {"nprobe"}
    assert first.trained.ntotal == 0 and first.index.ntotal == len(x)
    queries = mixture(300, seed=7)  # not in the gallery
    _, truth = faiss.knn(queries, x, 100, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = first.index.search(queries, 100)
    assert ann.recall_at(found, truth) >= ann.RECALL_TARGET
    _, whole = ann.first_stage(first.index, queries[:1], len(x), len(x))  # whole gallery: every photo, once
    assert sorted(whole[0].tolist()) == list(range(len(x)))


def test_where_nothing_else_fits_the_budget_4_bit_codes_hold_the_exact_top_100_in_their_first_300(monkeypatch):
    monkeypatch.setattr(ann, "APPROX_FROM", 10_000)
    x = mixture(20_000)
    sq4 = next(c for c in ann.CANDIDATES if c.name == "ivf-sq4")
    monkeypatch.setattr(ann, "MEMORY_BUDGET", int(sq4.bytes_per_vector(x.shape[1]) * len(x)) + 1)
    record = ann.build_first_stage(x, ann.AUTO, None, None).record
    assert [c["name"] for c in record["tuning"]["candidates"] if "skipped" in c] == [
        "ivf-sq8",
        "ivf-pq-refine",
        "hnsw-sq8",
    ]
    assert record["type"] == f"IVF{ann.nlist_for(len(x))},SQ4" and record["judged_at"] == ann.RESCORED_K == 300
    assert record["recall_at_100"] >= ann.TUNE_TARGET
    index = faiss.index_factory(x.shape[1], record["type"], faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    ann.set_search_params(index, record["search_params"])
    queries = mixture(300, seed=7)  # not in the gallery
    _, truth = faiss.knn(queries, x, 100, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, ann.RESCORED_K)
    assert ann.recall_at(found, truth, depth=ann.RESCORED_K) >= ann.RECALL_TARGET


# ----------------------------------------------------------------------------- through the index store


def write_synthetic(index_dir, model, n: int, start: int = 0, ann_type: str | None = None):
    """Commits n photos whose [Ret] tokens are mixture vectors (other tokens random)."""
    from sketchfind.index import PhotoRow, write_encoded
    from sketchfind.index.embedders import BackboneEmbedder

    T, D, G, k = model.cfg.num_tokens, model.cfg.width, BackboneEmbedder(model).dim, model.cfg.ret_tokens
    rng = np.random.default_rng(start)
    tokens = rng.normal(size=(n, T, D)).astype(np.float32)
    tokens[:, :k] = (mixture(n, k * D, seed=start, components=60) * np.sqrt(k * D)).reshape(n, k, D)
    rows = [PhotoRow(f"/synthetic/{start + i}.jpg", os.urandom(32), 1000, 0) for i in range(n)]
    return write_encoded(index_dir, model, [(rows, tokens, rng.random((n, G)))], n_clusters=8, ann_type=ann_type)


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(ann, "APPROX_FROM", 2000)


def test_parameters_are_recorded_and_set_at_load_with_overrides(small_threshold, tmp_path):
    from sketchfind.search import Searcher

    model = tiny()
    write_synthetic(tmp_path / "idx", model, 4000)
    info = read_info(tmp_path / "idx")["ann"]
    assert info["approximate"] and info["requested"] == "auto" and info["trained"]["photos"] == 4000
    assert (tmp_path / "idx" / info["trained"]["file"]).is_file() and info["recall_at_100"] >= ann.RECALL_TARGET
    nprobe = info["search_params"]["nprobe"]
    with Searcher.open(tmp_path / "idx", model) as default:
        assert faiss.extract_index_ivf(default.state.artefacts.ann).nprobe == nprobe
        assert default.info()["ann"]["search_params"] == {"nprobe": nprobe}
    with Searcher.open(tmp_path / "idx", model, ann_params={"nprobe": nprobe + 7, "efSearch": 9}) as custom:
        assert faiss.extract_index_ivf(custom.state.artefacts.ann).nprobe == nprobe + 7  # efSearch: not IVF, ignored
        hits = custom.search(sketches(("cup",), 1)[0], k=None).hits
        assert len(hits) == 4000 and len({h.photo_id for h in hits}) == 4000


def test_appended_photos_are_added_and_retrained_only_when_the_gallery_has_doubled(small_threshold, tmp_path):
    from sketchfind.index import remove_photos
    from sketchfind.search import Searcher

    model, root = tiny(), tmp_path / "idx"
    write_synthetic(root, model, 3000)
    first = read_info(root)["ann"]
    assert first["update"] == "trained"
    write_synthetic(root, model, 2000, start=3000)  # 5000 <= 2 x 3000: added to the previous index
    grown = read_info(root)["ann"]
    assert grown["update"] == "added 2000" and grown["trained"] == first["trained"] and grown["photos_added"] == 5000
    assert grown["search_params"] == first["search_params"] and (root / first["trained"]["file"]).is_file()
    assert remove_photos(root, [1, 2, 3]) == 3  # positions move: every vector re-added to the trained index
    shrunk = read_info(root)["ann"]
    assert shrunk["update"] == "re-added" and shrunk["trained"] == first["trained"] and shrunk["photos_added"] == 4997
    with Searcher.open(root, model) as searcher:  # the extended index ranks like a fresh one
        positions = np.arange(0, 4997, 50)
        queries = searcher.state.ret_embeddings(positions)
        _, found = searcher.state.artefacts.ann.search(queries, 1)
        assert (found[:, 0] == positions).mean() > 0.9
    write_synthetic(root, model, 2000, start=5000)  # 6997 > 2 x 3000: retrained and retuned
    again = read_info(root)["ann"]
    assert again["update"] == "trained" and again["trained"]["photos"] == 6997
    assert (
        again["trained"]["file"] != first["trained"]["file"]
        and again["nlist"] == ann.nlist_for(6997)
        and not (root / first["trained"]["file"]).exists()
    )
    assert sorted(p.name for p in root.glob("ann-*")) == sorted([again["file"], again["trained"]["file"]])


def test_ann_re_scores_the_head_of_a_coarse_first_stage_exactly_without_the_neighbour_augmentation(tmp_path):
    import torch

    from sketchfind.rerank import RankSettings, expand_query
    from sketchfind.search import Searcher, ann_query, ann_ranking

    model, root = tiny(), tmp_path / "idx"
    write_synthetic(root, model, 3000, ann_type="IVF16,SQ4")
    with Searcher.open(root, model, ann_params={"nprobe": 16}) as searcher:  # every list: only the codes are coarse
        state = searcher.state
        assert state.approximate
        every = state.ret_embeddings(np.arange(3000))
        settings = RankSettings(qe_weight=0.0, dba_top=0)
        for photo in (5, 1234, 2999):
            query = torch.from_numpy(state.tokens(np.array([photo])))  # a photo's tokens: its [Ret] as the query
            found, scores, searched = ann_ranking(state, query, settings, 50)  # fewer asked than re-scored
            exact = every @ searched
            assert np.allclose(scores, exact[found], atol=1e-5) and np.all(np.diff(scores) <= 0)
            # its own component's ~50 photos (beyond them the cosines of other components are near-ties)
            assert found[0] == photo and ann.recall_at(found[None], np.argsort(-exact)[None, :40], k=40) >= 0.95
        # the query expansion takes the exact nearest photos too, not the codes' nearest
        query = torch.from_numpy(state.tokens(np.array([77])))
        ret, searched = ann_query(state, query, RankSettings(qe_top=10, qe_weight=2.0, qe_alpha=3.0, dba_top=0))
        near = every[np.argsort(-(every @ ret[0]), kind="stable")[:10]]
        assert np.allclose(searched, expand_query(ret, near[None], 2.0, 3.0), atol=1e-5)


def test_a_real_small_index_ranks_as_before(tmp_path):
    from sketchfind.index import build_index
    from sketchfind.search import Searcher

    model = tiny()
    copy_photos(tmp_path / "photos", per_class=6)
    build_index([tmp_path / "photos"], tmp_path / "auto", model)
    build_index([tmp_path / "photos"], tmp_path / "sq8", model, ann_type="SQ8")  # the type before 'auto'
    assert read_info(tmp_path / "auto")["ann"]["type"] == "SQ8"
    with Searcher.open(tmp_path / "auto", model) as auto, Searcher.open(tmp_path / "sq8", model) as sq8:
        for sketch in sketches(per_class=1):
            ranked = [[(h.path, h.score) for h in s.search(sketch, k=None).hits] for s in (auto, sq8)]
            assert ranked[0] == ranked[1]


@pytest.mark.parametrize("parts", [2, 3])
def test_the_split_exact_scan_returns_what_the_whole_scan_returns(parts):
    x = mixture(5000)
    x[4000:4010] = x[10]  # exact ties across the parts: same codes, same score
    whole = faiss.index_factory(x.shape[1], "SQ8", faiss.METRIC_INNER_PRODUCT)
    whole.train(x)
    whole.add(x)
    split = ann.ParallelScan(faiss.clone_index(whole), parts)
    assert split.ntotal == 5000 and sum(part.ntotal for _, part in split.parts) == 5000
    queries = np.concatenate([mixture(8, seed=9), x[10:11]])
    for k in (1, 10, 300, 5000, 5003):  # the whole gallery, and more than it holds (padded as FAISS pads)
        want_scores, want_ids = whole.search(queries, k)
        got_scores, got_ids = split.search(queries, k)
        assert got_ids.shape == want_ids.shape == (9, k)
        np.testing.assert_array_equal(got_scores, want_scores)  # the same scores in the same order
        for got, want, scores in zip(got_ids, want_ids, got_scores, strict=True):
            assert sorted(got[got >= 0]) == sorted(want[want >= 0])
            # equal scores in position order (FAISS's heap leaves their order unspecified)
            same = scores[1:] == scores[:-1]
            assert (got[1:][same & (got[1:] >= 0)] > got[:-1][same & (got[1:] >= 0)]).all()
        assert (got_ids[:, 5000:] == -1).all()
    tied = split.search(x[10:11], 11)[1][0]
    assert sorted(tied) == [10, *range(4000, 4010)]
    ids = np.array([4999, 0, 2500, 1667, 3334, 17])  # every part, out of order
    np.testing.assert_array_equal(split.reconstruct_batch(ids), whole.reconstruct_batch(ids))


def test_searchers_split_large_exact_scans_over_their_threads(monkeypatch, tmp_path):
    import torch

    from sketchfind.index import build_index
    from sketchfind.search import Searcher

    model = tiny()
    copy_photos(tmp_path / "photos", per_class=6)
    build_index([tmp_path / "photos"], tmp_path / "idx", model)
    with Searcher.open(tmp_path / "idx", model) as whole:
        assert isinstance(whole.state.first_stage, faiss.Index)  # below PARALLEL_FROM photos
        want = [[(h.path, h.score) for h in whole.search(s, k=None).hits] for s in sketches(per_class=1)]
    monkeypatch.setattr(ann, "PARALLEL_FROM", 10)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with Searcher.open(tmp_path / "idx", model) as split:
        assert isinstance(split.state.first_stage, ann.ParallelScan) and len(split.state.first_stage.parts) == 2
        got = [[(h.path, h.score) for h in split.search(s, k=None).hits] for s in sketches(per_class=1)]
        for strategy in ("ann", "clustered"):
            assert split.search(sketches(per_class=1)[0], k=5, strategy=strategy).hits
    assert got == want
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with Searcher.open(tmp_path / "idx", model) as one_thread:
        assert isinstance(one_thread.state.first_stage, faiss.Index)


def test_ann_param_pairs_from_the_command_line():
    from sketchfind.cli import parse_ann_params
    from sketchfind.errors import SketchfindError

    assert parse_ann_params(["nprobe=32", "k_factor_rf=1.5"]) == {"nprobe": 32, "k_factor_rf": 1.5}
    with pytest.raises(SketchfindError, match="NAME=NUMBER"):
        parse_ann_params(["nprobe"])


def test_a_lost_trained_index_is_retrained(small_threshold, tmp_path):
    from sketchfind.index import remove_photos

    model, root = tiny(), tmp_path / "idx"
    write_synthetic(root, model, 3000)
    first = read_info(root)["ann"]
    (root / first["trained"]["file"]).unlink()  # e.g. deleted by hand
    write_synthetic(root, model, 500, start=3000)  # appended: the previous full index is extended all the same
    assert read_info(root)["ann"]["update"] == "added 500"
    assert remove_photos(root, [1]) == 1  # re-adding needs the trained index: retrained
    again = read_info(root)["ann"]
    assert again["update"] == "trained" and again["trained"]["photos"] == 3499
    assert (root / again["trained"]["file"]).is_file()
