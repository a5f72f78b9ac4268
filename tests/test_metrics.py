"""Retrieval metrics: hand-computed cases and the official goldens (metrics.npz, outputs.npz)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from sketchfind.metrics import (
    average_precision,
    average_precision_at_k,
    per_query_metrics,
    precision_at_k,
    precision_recall_curve,
    ranked_relevance,
    retrieval_metrics,
    scores_to_distance,
)

REFERENCE = Path(__file__).parents[2] / "shared" / "reference" / "zse-sbir"
KEYS = ["map_all", "map_200", "p_100", "p_200"]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "metrics.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def outputs() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "outputs.npz") as data:
        return {key: data[key] for key in ("rn_dist", "sa_dist", "rn_score", "valid_metrics_rn", "valid_metrics_sa")}


# ----------------------------------------------------------------------------- hand-computed


def test_average_precision_by_hand():
    # hits at ranks 1 and 3: precision 1 and 2/3, each covering half of the recall
    assert average_precision([1, 0, 1], 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)
    assert average_precision([1, 1, 0], 2) == 1.0
    # one of three positives found at rank 2: recall 1/3 at precision 1/2, the rest counts 0
    assert average_precision([0, 1], 3) == pytest.approx(1 / 6, abs=1e-15)
    assert average_precision([0, 0, 0], 2) == 0.0


def test_average_precision_is_interpolated():
    # precisions at the hits are 1/2 and 2/3; interpolation lifts the first to 2/3 (plain AP: 0.5833)
    assert average_precision([0, 1, 1], 2) == pytest.approx(2 / 3, abs=1e-15)


def test_average_precision_at_k_by_hand():
    # top 2 = [1, 0], denominator min(2, npos=2) = 2 -> recall 1/2 at precision 1
    assert average_precision_at_k([1, 0, 0, 1], 2, k=2) == pytest.approx(0.5, abs=1e-15)
    # denominator is min(k, npos) = 3 even though 5 positives exist
    assert average_precision_at_k([1, 1, 0, 1, 1], 5, k=3) == pytest.approx(2 / 3, abs=1e-15)
    # k beyond the gallery keeps all items
    assert average_precision_at_k([1, 0, 1], 2, k=200) == average_precision([1, 0, 1], 2)


def test_precision_at_k_is_r_precision_below_k_positives():
    rel = [1, 0, 1, 1] + [0] * 300
    assert precision_at_k(rel, 3, k=100) == pytest.approx(2 / 3, abs=1e-15)  # mean(rel[:3])
    assert precision_at_k([1] * 50 + [0] * 200, 150, k=100) == pytest.approx(0.5, abs=1e-15)


def test_queries_without_positives_are_nan_and_excluded():
    for fn in (lambda: average_precision([0, 0], 0), lambda: precision_at_k([0], 0, 100)):
        assert np.isnan(fn())
    assert np.isnan(average_precision_at_k([0, 0], 0, 200))
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    per_query = per_query_metrics(dist, np.array([0, 9]), np.array([0, 1, 0]))
    assert np.isnan(per_query[1]).all() and not np.isnan(per_query[0]).any()
    metrics = retrieval_metrics(dist, np.array([0, 9]), np.array([0, 1, 0]))
    assert metrics["map_all"] == pytest.approx(average_precision([1, 0, 1], 2), abs=1e-15)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        all_missing = retrieval_metrics(dist, np.array([8, 9]), np.array([0, 1, 0]))
    assert np.isnan(list(all_missing.values())).all() and not record


def test_ranking_is_by_ascending_distance():
    rel, npos = ranked_relevance(np.array([0.9, 0.1, 0.5]), "cat", np.array(["cat", "dog", "cat"]))
    assert rel.tolist() == [0.0, 1.0, 1.0] and npos == 2


def test_scores_become_distances():
    scores = np.array([[0.9, 0.2]], dtype=np.float16)
    dist = scores_to_distance(scores)
    assert dist.dtype == np.float16 and dist.tolist() == [[-0.89990234375, -0.199951171875]]
    metrics = retrieval_metrics(dist, np.array([1]), np.array([1, 0]))
    assert metrics["map_all"] == 1.0


def test_custom_ks_name_the_keys():
    dist = np.array([[0.1, 0.2, 0.3]])
    metrics = retrieval_metrics(dist, [0], [0, 1, 0], map_ks=(1, 2), precision_ks=(1,))
    assert list(metrics) == ["map_all", "map_1", "map_2", "p_1"]
    assert metrics["map_1"] == 1.0 and metrics["map_2"] == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1], [0, 1])


def test_precision_recall_curve():
    levels, precision = precision_recall_curve(np.array([[0.1, 0.2, 0.3, 0.4]]), [1], [1, 1, 0, 0])
    np.testing.assert_allclose(levels, np.linspace(0, 1, 11))
    np.testing.assert_allclose(precision, np.ones(11))
    # hits at ranks 2 and 4: recall 1/2 at precision 1/2, recall 1 at precision 1/2
    levels, precision = precision_recall_curve(np.array([[0.1, 0.2, 0.3, 0.4]]), [1], [0, 1, 0, 1], 101)
    assert len(levels) == 101
    np.testing.assert_allclose(precision, np.full(101, 0.5))
    _, precision = precision_recall_curve(np.array([[0.1, 0.2, 0.3]]), [1], [1, 0, 0])
    assert precision.tolist() == [1.0] * 11


# ----------------------------------------------------------------------------- official goldens


@pytest.mark.parametrize("case", ["small", "large", "fp16"])
def test_official_per_query_and_means(golden, case):
    dist = golden[f"{case}_dist"]
    labels = golden[f"{case}_query_labels"], golden[f"{case}_gallery_labels"]
    per_query = per_query_metrics(dist, *labels)
    expected = golden[f"{case}_per_query"]
    np.testing.assert_array_equal(np.isnan(per_query), np.isnan(expected))
    np.testing.assert_allclose(per_query, expected, rtol=0, atol=1e-12)
    metrics = retrieval_metrics(dist, *labels)
    assert list(metrics) == KEYS
    np.testing.assert_allclose([metrics[k] for k in KEYS], golden[f"{case}_metrics"], rtol=0, atol=1e-12)


def test_fp16_distances_are_ranked_in_fp16(golden):
    dist = golden["fp16_dist"]
    assert dist.dtype == np.float16  # the official rn test hands numpy fp16 distances
    labels = golden["fp16_gallery_labels"]
    for row, label in zip(dist, golden["fp16_query_labels"], strict=True):
        rel, _ = ranked_relevance(row, label, labels)
        np.testing.assert_array_equal(rel, labels[np.argsort(row)] == label)
    np.testing.assert_array_equal(golden["fp16_class_same"], golden["fp16_query_labels"][:, None] == labels)


@pytest.mark.parametrize("mode", ["rn", "sa"])
def test_official_valid_metrics(outputs, mode):
    labels = np.arange(4)
    metrics = retrieval_metrics(outputs[f"{mode}_dist"], labels, labels)
    np.testing.assert_allclose([metrics[k] for k in KEYS], outputs[f"valid_metrics_{mode}"], rtol=0, atol=1e-12)


def test_rn_distance_is_negative_score(outputs):
    np.testing.assert_array_equal(scores_to_distance(outputs["rn_score"]), outputs["rn_dist"])
