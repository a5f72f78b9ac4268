"""The ann ranking pipeline (query expansion, fused head) on hand-made cases."""

from __future__ import annotations

import numpy as np

from sketchfind.rerank import RankSettings, expand_query, pipeline_scores, settings_key, validation_grid


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


def test_expansion_pulls_in_photos_like_the_first_hits():
    # photos 0-2 form a group around (0, 1); the sketch is close to photo 0 only; photo 3 is a near decoy
    photos = unit([0.3, 1, 0], [-0.3, 1, 0.3], [0, 1, -0.4], [1, 0.35, 0])
    sketch = unit([0.75, 0.9, 0])
    plain = pipeline_scores(sketch, photos, None, RankSettings(qe_weight=0.0))
    expanded = pipeline_scores(sketch, photos, None, RankSettings(qe_top=1, qe_weight=2.0))
    assert np.argsort(-plain[0]).tolist() == [0, 3, 2, 1]  # the decoy comes second
    assert np.argsort(-expanded[0]).tolist() == [0, 2, 1, 3]  # photo 0's group first, the decoy last


def test_head_is_fused_and_stays_above_the_tail():
    photos = unit([1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1])
    sketch = unit([1, 0.05])
    relation = np.array([[0.0, 0.1, 1.0, 1.0]])
    s = RankSettings(rerank_k=2, fusion=0.5, qe_weight=0.0)
    scores = pipeline_scores(sketch, photos, relation, s)
    cos = (sketch @ photos.T)[0]
    # head = the 2 nearest by cosine (0, 1), re-scored; photo 2 (relation 1.0) is outside the head
    np.testing.assert_allclose(scores[0, :2], 0.5 * cos[:2] + 0.5 * relation[0, :2])
    assert np.argsort(-scores[0]).tolist() == [1, 0, 2, 3]
    # fusion 1 needs no relation scores at all
    np.testing.assert_allclose(pipeline_scores(sketch, photos, None, RankSettings(fusion=1.0)), sketch @ photos.T)


def test_settings_round_trip_through_metadata_and_keys_are_unique():
    s = RankSettings(rerank_k=10, fusion=0.75, qe_top=5, qe_weight=1.0)
    assert RankSettings.from_metadata(s.to_metadata()) == s
    assert RankSettings.from_metadata({}) == RankSettings()
    grid = validation_grid()
    assert len({settings_key(g) for g in grid}) == len(grid)
