"""Retrieval metrics, pure numpy, exactly as the official ZSE-SBIR evaluation (``utils/ap.py``).

Per query the gallery is ranked by ascending distance with ``np.argsort`` (numpy's default kind, as
the official code; it is not stable, so ties keep numpy's order), ``rel`` is the 0/1 same-class vector
in that order and ``npos`` the number of positives in the whole gallery.

* AP: VOC all-point interpolated average precision.
* AP@K: the first ``min(K, G)`` items, recall denominator ``min(K, npos)``.
* P@K: ``mean(rel[:min(K, npos)])`` (R-precision when a query has fewer than K positives).

Queries without positives give NaN and are left out of the means (``np.nanmean``).
Scores (higher = more similar, e.g. the relation-network score) become distances with
:func:`scores_to_distance`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def scores_to_distance(scores: np.ndarray) -> np.ndarray:
    """Similarity scores -> distances (official: distance = -score), keeping the dtype."""
    return -np.asarray(scores)


def average_precision(rel: Sequence[int] | np.ndarray, npos: int) -> float:
    """VOC all-point interpolated AP of a ranked 0/1 relevance vector with npos positives in total."""
    if npos <= 0:
        return float("nan")
    rel = np.asarray(rel, dtype=np.float64)
    tp, fp = np.cumsum(rel), np.cumsum(1.0 - rel)
    recall = np.concatenate(([0.0], tp / npos, [1.0]))
    precision = np.concatenate(([0.0], tp / (tp + fp), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # non-increasing from the right
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def average_precision_at_k(rel: Sequence[int] | np.ndarray, npos: int, k: int) -> float:
    """AP over the first min(k, G) ranked items with recall denominator min(k, npos) (official AP@K)."""
    if npos <= 0:
        return float("nan")
    return average_precision(np.asarray(rel)[:k], min(k, npos))


def precision_at_k(rel: Sequence[int] | np.ndarray, npos: int, k: int) -> float:
    """Official P@K: mean of rel over the first min(k, npos) items (R-precision below k positives)."""
    if npos <= 0:
        return float("nan")
    return float(np.mean(np.asarray(rel, dtype=np.float64)[: min(k, npos)]))


def ranked_relevance(dist_row: np.ndarray, query_label: object, gallery_labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(0/1 relevance in ascending-distance order, total positives) for one query."""
    # Sort the row in its own dtype (float16 stays float16) with numpy's default kind, as official.
    order = np.argsort(dist_row)
    same = gallery_labels == query_label
    return same[order].astype(np.float64), int(same.sum())


def per_query_metrics(
    dist: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks_map: Sequence[int] = (200,),
    ks_prec: Sequence[int] = (100, 200),
) -> np.ndarray:
    """(Q, 1 + len(ks_map) + len(ks_prec)) array: [AP, AP@k for ks_map..., P@k for ks_prec...] per query."""
    dist, query_labels, gallery_labels = _check_inputs(dist, query_labels, gallery_labels)
    rows = []
    for dist_row, label in zip(dist, query_labels, strict=True):
        rel, npos = ranked_relevance(dist_row, label, gallery_labels)
        row = [average_precision(rel, npos)]
        row += [average_precision_at_k(rel, npos, k) for k in ks_map]
        row += [precision_at_k(rel, npos, k) for k in ks_prec]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 1 + len(ks_map) + len(ks_prec))


def retrieval_metrics(
    dist: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    map_ks: Sequence[int] = (200,),
    precision_ks: Sequence[int] = (100, 200),
) -> dict[str, float]:
    """Official mean metrics over queries with positives: {'map_all', 'map_<k>'..., 'p_<k>'...}."""
    table = per_query_metrics(dist, query_labels, gallery_labels, map_ks, precision_ks)
    names = ["map_all"] + [f"map_{k}" for k in map_ks] + [f"p_{k}" for k in precision_ks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN, without a warning
        means = np.nanmean(table, axis=0) if len(table) else np.full(len(names), np.nan)
    return {name: float(value) for name, value in zip(names, means, strict=True)}


def precision_recall_curve(
    dist: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, num_points: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at num_points recall levels (11 or 101), averaged over queries with positives."""
    dist, query_labels, gallery_labels = _check_inputs(dist, query_labels, gallery_labels)
    levels = np.linspace(0.0, 1.0, num_points)
    curves = []
    for dist_row, label in zip(dist, query_labels, strict=True):
        rel, npos = ranked_relevance(dist_row, label, gallery_labels)
        if npos > 0:
            curves.append(_interpolated_precision(rel, npos, levels))
    mean = np.mean(curves, axis=0) if curves else np.full(num_points, np.nan)
    return levels, mean


def _interpolated_precision(rel: np.ndarray, npos: int, levels: np.ndarray) -> np.ndarray:
    """max precision at recall >= r for each level r (0 where that recall is never reached)."""
    tp = np.cumsum(rel)
    recall = tp / npos
    precision = tp / np.arange(1, len(rel) + 1)
    best_from = np.maximum.accumulate(np.append(precision, 0.0)[::-1])[::-1]  # best precision at i or later
    first = np.searchsorted(recall, levels - 1e-12, side="left")  # first rank reaching each level
    return best_from[first]


def _check_inputs(
    dist: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dist = np.asarray(dist)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    if dist.ndim != 2:
        raise ValueError(f"dist must be a (queries, gallery) matrix, got shape {dist.shape}")
    if dist.shape != (len(query_labels), len(gallery_labels)):
        raise ValueError(
            f"dist shape {dist.shape} does not match {len(query_labels)} query labels "
            f"and {len(gallery_labels)} gallery labels"
        )
    return dist, query_labels, gallery_labels
