"""The ann ranking pipeline (query expansion, fused head) on hand-made cases."""

from __future__ import annotations

import numpy as np

from sketchfind.rerank import RankSettings, augment, expand_query, pipeline_scores, settings_key, validation_grid


def unit(*rows):
    x = np.array(rows, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_expansion_adds_the_mean_of_the_nearest_photos():
    q = unit([1, 0, 0])[0]
    near = unit([1, 1, 0], [1, -1, 0], [0, 0, 1])
    got = expand_query(q, near[:2], 1.0)  # mean of the two is along x: the query keeps its direction
    np.testing.assert_allclose(got, [1, 0, 0], atol=1e-12)
    got = expand_query(q, near[2:], 1.0)  # one neighbour along z, same weight: halfway
    np.testing.assert_allclose(got, unit([1, 0, 1])[0], atol=1e-12)
    batched = expand_query(np.stack([q, q]), np.stack([near[:2], near[1:]]), 0.5)
    assert batched.shape == (2, 3) and np.allclose(np.linalg.norm(batched, axis=1), 1)


def test_alpha_weighted_expansion_counts_each_photo_by_its_cosine():
    q = unit([1, 0, 0])[0]
    near = unit([1, 0, 0], [0, 1, 0], [1, 1, 0])  # cosines to the query 1, 0, 0.707
    # alpha 0: the plain mean; alpha > 0: the orthogonal photo weighs nothing, the diagonal one 0.707 ** alpha
    np.testing.assert_allclose(expand_query(q, near, 1.0, 0.0), expand_query(q, near, 1.0))
    for alpha in (1.0, 3.0):
        w = np.sqrt(0.5) ** alpha
        mean = unit(near[0] + w * near[2])[0]
        np.testing.assert_allclose(expand_query(q, near, 1.0, alpha), unit(q + mean)[0], atol=1e-12)
    assert expand_query(q, near[1:2], 1.0, 3.0) @ q == 1.0  # only photos at cosine <= 0: the query as it was
    batched = expand_query(np.stack([q, q]), np.stack([near[:2], near[1:]]), 0.5, 3.0)
    np.testing.assert_allclose(batched[1], expand_query(q, near[1:], 0.5, 3.0), atol=1e-12)
    # more photos can be averaged without a drawing with a few photos of its kind being pulled to the others:
    # three photos of its kind (near the sketch) and seven of another kind (farther)
    kind = unit([1, 0.1, 0], [1, -0.1, 0.1], [1, 0, -0.1])
    other = unit(*[[0.3, 1, 0.05 * i] for i in range(7)])
    photos, sketch = np.concatenate([kind, other]), unit([1, 0.3, 0])
    plain = pipeline_scores(sketch, photos, None, RankSettings(qe_top=10, qe_weight=3.0, dba_top=0))
    weighted = pipeline_scores(sketch, photos, None, RankSettings(qe_top=10, qe_weight=3.0, qe_alpha=3.0, dba_top=0))
    assert set(np.argsort(-plain[0])[:3]) != {0, 1, 2}  # the larger kind took over the plain mean
    assert set(np.argsort(-weighted[0])[:3]) == {0, 1, 2}


def test_expansion_pulls_in_photos_like_the_first_hits():
    # photos 0-2 form a group around (0, 1); the sketch is close to photo 0 only; photo 3 is a near decoy
    photos = unit([0.3, 1, 0], [-0.3, 1, 0.3], [0, 1, -0.4], [1, 0.35, 0])
    sketch = unit([0.75, 0.9, 0])
    plain = pipeline_scores(sketch, photos, None, RankSettings(qe_weight=0.0, dba_top=0))
    expanded = pipeline_scores(sketch, photos, None, RankSettings(qe_top=1, qe_weight=2.0, dba_top=0))
    assert np.argsort(-plain[0]).tolist() == [0, 3, 2, 1]  # the decoy comes second
    assert np.argsort(-expanded[0]).tolist() == [0, 2, 1, 3]  # photo 0's group first, the decoy last


def test_head_is_fused_and_stays_above_the_tail():
    photos = unit([1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1])
    sketch = unit([1, 0.05])
    relation = np.array([[0.0, 0.1, 1.0, 1.0]])
    s = RankSettings(rerank_k=2, fusion=0.5, qe_weight=0.0, dba_top=0)
    scores = pipeline_scores(sketch, photos, relation, s)
    cos = (sketch @ photos.T)[0]
    # head = the 2 nearest by cosine (0, 1), re-scored; photo 2 (relation 1.0) is outside the head
    np.testing.assert_allclose(scores[0, :2], 0.5 * cos[:2] + 0.5 * relation[0, :2])
    assert np.argsort(-scores[0]).tolist() == [1, 0, 2, 3]
    # fusion 1 needs no relation scores at all
    no_dba = RankSettings(fusion=1.0, dba_top=0)
    np.testing.assert_allclose(pipeline_scores(sketch, photos, None, no_dba), sketch @ photos.T)


def test_settings_round_trip_through_metadata_and_keys_are_unique():
    s = RankSettings(rerank_k=10, fusion=0.75, qe_top=5, qe_weight=1.0, qe_alpha=3.0, dba_top=100, dba_k=3)
    assert RankSettings.from_metadata(s.to_metadata()) == s
    assert RankSettings.from_metadata({}) == RankSettings()
    grid = validation_grid()
    assert len({settings_key(g) for g in grid}) == len(grid)


def test_augment_adds_each_photos_nearest_neighbours():
    photos = unit([1, 0, 0], [0.9, 0.3, 0], [0.9, -0.3, 0], [0.1, 0.05, 1])
    got = augment(photos, 2)
    # photo 0's two nearest are 1 and 2 (their mean lies along x): it keeps its direction
    np.testing.assert_allclose(got[0], [1, 0, 0], atol=1e-6)
    # photo 3 is alone: its two nearest (0 and 1, a little nearer than 2) pull it towards them
    np.testing.assert_allclose(got[3], unit(photos[3] + photos[0] + photos[1])[0], atol=1e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1)
    np.testing.assert_array_equal(augment(photos[:1], 5), photos[:1])  # nothing to average with


def test_augmentation_ranks_real_photos_of_the_sketched_kind_higher():
    # 8 training classes of sketchy-mini: 4 sketches and all 25 photos of each, the shipped model
    import torch

    from sketchfind.models import load_model
    from sketchfind.preprocess import preprocess_sketch
    from sketchfind.protocols import encode_photo_files, ranking_metrics

    from .conftest import SKETCHY

    model = load_model()
    classes = ("alarm_clock", "bell", "bench", "cabin", "candle", "car_(sedan)", "chair", "couch")
    photos = [f for c in classes for f in sorted((SKETCHY / "photos" / c).iterdir())]
    sketches = [f for c in classes for f in sorted((SKETCHY / "sketches" / c).iterdir())[:4]]
    p_emb = model.retrieval_embedding(encode_photo_files(model, photos))
    with torch.inference_mode():
        images = torch.stack([preprocess_sketch(f, model.cfg.preprocess) for f in sketches])
        s_emb = model.retrieval_embedding(model.encode_sketch(images).numpy())
    p_lab, s_lab = [f.parent.name for f in photos], [f.parent.name for f in sketches]

    def mean_ap(settings):
        return ranking_metrics(pipeline_scores(s_emb, p_emb, None, settings), s_lab, p_lab)["map_all"]

    assert RankSettings().dba_top > 0  # on by default
    for expansion in (0.0, 2.0):
        plain = mean_ap(RankSettings(qe_weight=expansion, dba_top=0))
        assert mean_ap(RankSettings(qe_weight=expansion)) > plain + 0.01
