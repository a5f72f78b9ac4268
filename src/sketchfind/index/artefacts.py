"""Derived artefacts of an index: the FAISS index over [Ret] embeddings, the clusters, index_info.json.

The FAISS index is exact below a gallery size and approximate above it (:mod:`.ann`; its trained, empty
form is kept too, so a growing gallery is re-added without retraining). All three are rebuilt from the
committed store (:mod:`.store`) whenever they are missing or stale (their generation differs from the
store's), so a crash while writing them loses nothing. They are written atomically
(:mod:`sketchfind.atomic`); ``index_info.json`` goes after them and names the generation-stamped files it
belongs to; the files of the previous generation are deleted last.
Crash points: ``artefacts-written`` (new files complete, index_info.json not yet), ``info-written``,
``artefact-dropped`` (one stale file deleted), besides ``checkpointed`` and the atomic writes' own.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..atomic import atomic_path, crash_point
from ..cluster import DEFAULT_CLUSTERS, Clusters, build_clusters, cluster_count
from .ann import AUTO, FirstStage, build_first_stage, extend
from .store import FORMAT_VERSION, IndexStore, Snapshot

INFO_NAME = "index_info.json"
DEFAULT_ANN = AUTO  # exact SQ8 scan below ann.APPROX_FROM photos, a tuned approximate index above
ANN_SEARCH_DEFAULTS = {"HNSW": {"efSearch": 128}, "IVF": {"nprobe": 16}}


@dataclass
class Artefacts:
    """The derived search structures of one store generation."""

    generation: int
    ann: faiss.Index | None  # over L2-normalised [Ret] embeddings, position i = snapshot.ids[i]; a Searcher may
    # hold it as an ann.ParallelScan
    clusters: Clusters | None
    info: dict


def read_info(root: str | Path) -> dict | None:
    """index_info.json, or None when missing or unreadable."""
    try:
        return json.loads((Path(root) / INFO_NAME).read_text())
    except (OSError, ValueError):
        return None


def ret_embeddings(store: IndexStore, snapshot: Snapshot, chunk: int = 8192, first: int = 0) -> np.ndarray:
    """(N - first, R) L2-normalised [Ret] embeddings decoded from the stored tokens, from position ``first``."""
    parts = [np.zeros((0, store.codec.ret_dim), np.float32)]
    for start in range(first, len(snapshot), chunk):
        codes = store.read_codes(snapshot, np.arange(start, min(len(snapshot), start + chunk)))
        parts.append(store.codec.decode_ret(codes))
    emb = np.concatenate(parts)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def positions_digest(snapshot: Snapshot, n: int) -> str:
    """A digest of the first n positions' photo ids and storage rows: equal digests mean the same photos
    with the same stored tokens at the same positions (a replaced photo keeps its id, not its row)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (snapshot.ids[:n], snapshot.shard[:n], snapshot.row[:n]):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def default_search_params(ann_type: str) -> dict:
    """Search parameters recorded with an index type (set explicitly by the Searcher at load)."""
    return next((dict(v) for k, v in ANN_SEARCH_DEFAULTS.items() if k in ann_type), {})


def build_ann(embeddings: np.ndarray, ann_type: str = DEFAULT_ANN) -> faiss.Index:
    """A FAISS inner-product index over (N, D) embeddings (factory string ``ann_type``, or 'auto')."""
    return build_first_stage(embeddings, ann_type, None, Path(".")).index


def load_or_build(store: IndexStore, snapshot: Snapshot, *, persist: bool, recluster: bool = False) -> Artefacts:
    """Loads the artefacts of this generation, or rebuilds them (and writes them when ``persist``)."""
    info = read_info(store.root)
    if not recluster and info and info.get("generation") == snapshot.generation:
        loaded = _load(store.root, info, len(snapshot))
        if loaded is not None:
            if persist:  # a writer finishes the clean-up a crash after index_info.json interrupted
                _drop_stale(store.root, info)
            return loaded
    return _rebuild(store, snapshot, info, persist=persist, recluster=recluster)


def _load(root: Path, info: dict, n: int) -> Artefacts | None:
    try:
        ann = faiss.read_index(str(root / info["ann"]["file"])) if info["ann"].get("file") else None
        clusters = None
        if info["clusters"].get("file"):
            with np.load(root / info["clusters"]["file"]) as z:
                clusters = Clusters(z["centroids"], z["assign"], z["representatives"].astype(np.float32), z["sizes"])
    except (OSError, KeyError, ValueError, RuntimeError):
        return None  # damaged or half-written: rebuilt from the store
    if (ann is not None and ann.ntotal != n) or (clusters is not None and len(clusters.assign) != n):
        return None
    return Artefacts(info["generation"], ann, clusters, info)


def _previous_centroids(store: IndexStore, info: dict | None, n_clusters: int, n: int) -> np.ndarray | None:
    """Centroids of the last clustering when still fitting: same count, gallery at most doubled."""
    if not info or not info.get("clusters", {}).get("file"):
        return None
    meta = info["clusters"]
    if meta.get("n_clusters") != n_clusters or n > 2 * max(1, meta.get("photos_when_clustered", 0)):
        return None
    try:
        with np.load(store.root / meta["file"]) as z:
            return z["centroids"]
    except (OSError, KeyError, ValueError):
        return None


def _rebuild(store: IndexStore, snapshot: Snapshot, info: dict | None, *, persist: bool, recluster: bool) -> Artefacts:
    n, gen = len(snapshot), snapshot.generation
    ann_type = store.meta.get("ann_type", DEFAULT_ANN)
    ann = clusters = first = None
    n_clusters = cluster_count(n, store.meta.get("n_clusters", DEFAULT_CLUSTERS))
    clustered_at = (info or {}).get("clusters", {}).get("photos_when_clustered", n)
    if n:
        first = _first_stage(store, snapshot, ann_type, (info or {}).get("ann"))
        ann = first.index
        centroids = None if recluster else _previous_centroids(store, info, n_clusters, n)
        clustered_at = clustered_at if centroids is not None else n
        clusters = build_clusters(
            store.global_embeddings(snapshot), store.iter_tokens(snapshot), n_clusters=n_clusters, centroids=centroids
        )
    new_info = _info(store, snapshot, ann_type, first, clusters, clustered_at)
    if persist:
        _write(store, new_info, ann, clusters, first)
    return Artefacts(gen, ann, clusters, new_info)


def _ann_info(gen: int, ann_type: str, first: FirstStage | None) -> dict:
    """The ``ann`` entry: what was built (type, search parameters, tuning, trained index file)."""
    record = {"type": ann_type, "search_params": default_search_params(ann_type)}
    if first is not None:
        record = {**record, **first.record}
        if first.trained is not None and first.trained_is_new:
            record["trained"] = {**record["trained"], "file": f"ann-trained-{gen}.faiss", "generation": gen}
    return {
        **record,
        "file": f"ann-{gen}.faiss" if first is not None else None,
        "metric": "inner_product",
        "embedding": "L2-normalised [Ret] token",
    }


def _first_stage(store: IndexStore, snapshot: Snapshot, ann_type: str, previous: dict | None) -> FirstStage:
    """The previous approximate index extended by the appended photos when the others are unchanged,
    else a new build (:func:`~.ann.build_first_stage`)."""
    n, first = len(snapshot), None
    done = (previous or {}).get("photos_added", 0)
    if ann_type == AUTO and previous and 0 < done <= n and previous.get("digest") == positions_digest(snapshot, done):
        first = extend(previous, store.root, n, lambda: ret_embeddings(store, snapshot, first=done))
    if first is None:
        first = build_first_stage(ret_embeddings(store, snapshot), ann_type, previous, store.root)
    if first.record.get("approximate"):
        first.record["digest"] = positions_digest(snapshot, n)
    return first


def _info(
    store: IndexStore,
    snapshot: Snapshot,
    ann_type: str,
    first: FirstStage | None,
    clusters: Clusters | None,
    clustered_at: int,
) -> dict:
    n, gen, meta, codec = len(snapshot), snapshot.generation, store.meta, store.codec
    return {
        "format_version": FORMAT_VERSION,
        "generation": gen,
        "updated": time.time(),
        "model": meta["model"],
        "tokens": {
            "storage": codec.kind,
            "num_tokens": codec.T,
            "width": codec.D,
            "row_bytes": codec.row_bytes,
            "fp32_row_bytes": codec.T * codec.D * 4,
        },
        "global_embedder": {
            **meta["embedder"],
            "dim": store.gcodec.G,
            "storage": "uint4 per-vector min/max",
            "row_bytes": store.gcodec.row_bytes,
        },
        "counts": {"photos": n},
        "ann": _ann_info(gen, ann_type, first),
        "clusters": {
            "file": f"clusters-{gen}.npz" if clusters is not None else None,
            "n_clusters": clusters.n_clusters if clusters is not None else 0,
            "requested": meta.get("n_clusters", DEFAULT_CLUSTERS),
            "photos_when_clustered": clustered_at,
            "kmeans": {"spherical": True, "niter": 20, "seed": 0},
        },
    }


def _replace(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _write(
    store: IndexStore, info: dict, ann: faiss.Index | None, clusters: Clusters | None, first: FirstStage | None = None
) -> None:
    root = store.root
    trained_file = (info["ann"].get("trained") or {}).get("file")
    if first is not None and first.trained is not None and first.trained_is_new:
        _replace(root / trained_file, lambda p: faiss.write_index(first.trained, str(p)))
    if ann is not None:
        _replace(root / info["ann"]["file"], lambda p: faiss.write_index(ann, str(p)))
    if clusters is not None:

        def save(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez(
                    f,
                    centroids=clusters.centroids,
                    assign=clusters.assign,
                    sizes=clusters.sizes,
                    representatives=clusters.representatives.astype(np.float16),
                )

        _replace(root / info["clusters"]["file"], save)
    crash_point("artefacts-written")  # this generation's files complete, index_info.json still names the old
    store.checkpoint()
    total = store.disk_bytes() - sum(path.stat().st_size for path in _stale(root, info))  # as once they are gone
    info["bytes"] = {"total": total, "per_photo": total / max(1, info["counts"]["photos"])}
    _replace(root / INFO_NAME, lambda p: p.write_text(json.dumps(info, indent=2)))
    crash_point("info-written")
    _drop_stale(root, info)


def _drop_stale(root: Path, info: dict) -> None:
    """Deletes artefact files index_info.json does not name. Only after it names the new ones: until then
    the old ones are what a crash falls back on (their centroids seed the rebuild, as without a crash)."""
    for path in _stale(root, info):
        path.unlink(missing_ok=True)
        crash_point("artefact-dropped")


def _stale(root: Path, info: dict) -> list[Path]:
    keep = {info["ann"]["file"], info["clusters"]["file"], (info["ann"].get("trained") or {}).get("file")}
    return [p for p in root.iterdir() if p.name.startswith(("ann-", "clusters-")) and p.name not in keep]
