"""Clustering for the reference system's two-stage search: FAISS K-means over global embeddings, and
cluster representatives = the mean of the members' encoder tokens.

The reference (LTBach/ZSE-SBIR_CLIP) clusters the gallery into 125 groups by CLIP image embeddings;
we keep 125 by default and cap it for small galleries (at least ``MIN_CLUSTER_SIZE`` photos each).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
import torch

DEFAULT_CLUSTERS = 125
MIN_CLUSTER_SIZE = 4


@dataclass
class Clusters:
    """Cluster centroids, per-photo assignment and per-cluster token representatives."""

    centroids: np.ndarray  # (C, G) float32, L2-normalised
    assign: np.ndarray  # (N,) int32 cluster of each photo, snapshot order
    representatives: np.ndarray  # (C, T, D) float32 mean member tokens (zeros for an empty cluster)
    sizes: np.ndarray  # (C,) int64 members per cluster

    @property
    def n_clusters(self) -> int:
        """Number of clusters C."""
        return len(self.centroids)


def cluster_count(n_photos: int, requested: int = DEFAULT_CLUSTERS) -> int:
    """The number of clusters used: ``requested`` capped so clusters average MIN_CLUSTER_SIZE photos."""
    return max(1, min(requested, n_photos // MIN_CLUSTER_SIZE))


def kmeans(embeddings: np.ndarray, n_clusters: int, *, niter: int = 20, seed: int = 0) -> np.ndarray:
    """(N, G) L2-normalised embeddings -> (C, G) spherical K-means centroids (FAISS)."""
    x = np.ascontiguousarray(embeddings, np.float32)
    n_clusters = min(n_clusters, len(x))
    km = faiss.Kmeans(
        x.shape[1],
        n_clusters,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, len(x) // max(1, n_clusters)),
    )
    km.train(x)
    return km.centroids.astype(np.float32)


def assign(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, G) x (C, G) -> (N,) index of the most similar centroid (inner product)."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    _, nearest = index.search(np.ascontiguousarray(embeddings, np.float32), 1)
    return nearest[:, 0].astype(np.int32)


def representatives(
    token_chunks: Iterable[tuple[slice, np.ndarray]], assignment: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean member tokens per cluster from (positions, (n, T, D) tokens) chunks -> ((C, T, D), sizes (C,))."""
    sums, sizes = None, np.bincount(assignment, minlength=n_clusters).astype(np.int64)
    labels = torch.from_numpy(assignment.astype(np.int64))
    for positions, tokens in token_chunks:
        chunk = torch.from_numpy(tokens).double()  # (n, T, D); float64 sums stay exact over 70k photos
        if sums is None:
            sums = torch.zeros(n_clusters, *chunk.shape[1:], dtype=torch.float64)
        sums.index_add_(0, labels[positions], chunk)
    if sums is None:
        raise ValueError("no photos to build cluster representatives from")
    means = sums / torch.from_numpy(np.maximum(sizes, 1)).double().view(-1, 1, 1)
    return means.float().numpy(), sizes


def build_clusters(
    embeddings, token_chunks, *, n_clusters: int, centroids: np.ndarray | None = None, seed: int = 0
) -> Clusters:
    """K-means (or re-use of given centroids), assignment and representatives in one call."""
    if centroids is None:
        centroids = kmeans(embeddings, n_clusters, seed=seed)
    labels = assign(embeddings, centroids)
    reps, sizes = representatives(token_chunks, labels, len(centroids))
    return Clusters(centroids, labels, reps, sizes)
