"""``Searcher``: an open index + the model + search settings; the one Python API behind CLI and web service.

Strategies (all rank by the relation network in the end; they differ in which photos reach it):
  exhaustive  cross-attention + relation network against every photo;
  clustered   the reference system (LTBach/ZSE-SBIR_CLIP): score the cluster representatives, then the
              photos of the best clusters, taken in score order until there are at least k photos;
  ann         FAISS on the [Ret] embedding: the sketch's nearest photos expand the query (``qe_*``), a
              second FAISS search ranks the gallery, and its top K' are re-scored with
              ``fusion`` * cosine + (1 - fusion) * relation score (see :mod:`sketchfind.rerank`).
Beyond the re-ranked head (``k=None`` ranks the whole gallery), photos follow by first-stage score:
the [Ret] cosine for ann, the cluster's score for clustered. The ann settings default to the validated
values stored with the model's weights.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import torch

from .errors import IndexStoreError, SketchfindError
from .index.artefacts import Artefacts, default_search_params, load_or_build
from .index.build import build_index, check_model, load_index_model, remove_photos
from .index.store import IndexStore, PhotoRecord, Snapshot
from .models.zse import ZSEModel
from .preprocess import preprocess_sketch
from .rerank import RankSettings, expand_query, normalize
from .runtime import load_runtime

STRATEGIES = ("exhaustive", "clustered", "ann")
DEFAULT_STRATEGY = "ann"


@dataclass(frozen=True)
class Hit:
    """One ranked photo."""

    rank: int
    photo_id: int
    path: str
    score: float


@dataclass
class SearchResult:
    """The ranking of one query."""

    query: str
    strategy: str
    seconds: float
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def to_dict(self) -> dict:
        """The JSON Lines object of ``sketchfind search --format json``."""
        return {
            "query": self.query,
            "strategy": self.strategy,
            "seconds": self.seconds,
            "results": [{"rank": h.rank, "path": h.path, "score": h.score} for h in self.hits],
        }


@dataclass(frozen=True)
class SearchSettings:
    """Everything that changes a ranking besides the index and the model, set explicitly at open."""

    strategy: str = DEFAULT_STRATEGY
    rerank_k: int = RankSettings.rerank_k  # also the head size of clustered with k=None
    fusion: float = RankSettings.fusion
    qe_top: int = RankSettings.qe_top
    qe_weight: float = RankSettings.qe_weight
    ann_params: dict = field(default_factory=dict)  # FAISS search parameters (efSearch, nprobe), if any
    chunk: int = 2048  # photos decoded at a time by exhaustive search


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise SketchfindError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


class Searcher:
    """Search an index with sketches; see the module docstring for the strategies."""

    def __init__(self, root: Path, store: IndexStore, model: ZSEModel, settings: SearchSettings):
        self.root, self.store, self.model, self.settings = root, store, model, settings
        self._lock = threading.RLock()
        # (snapshot, artefacts, paths, cluster members, representatives): swapped as one by refresh()
        self._state: tuple[Snapshot, Artefacts, list[str], list[np.ndarray], torch.Tensor | None] | None = None
        self.refresh(force=True)

    @classmethod
    def open(
        cls,
        index_dir,
        model: ZSEModel | None = None,
        *,
        strategy: str = DEFAULT_STRATEGY,
        rerank_k: int | None = None,
        fusion: float | None = None,
        qe_top: int | None = None,
        qe_weight: float | None = None,
        ann_params: dict | None = None,
        runtime: str | None = None,
    ) -> Searcher:
        """Opens an index for searching; ``model=None`` loads the model the index was built with. ann settings
        left as None take the values validated with the model's weights (:class:`~sketchfind.rerank.RankSettings`).
        ``runtime``: 'torch', 'onnx' or 'auto' (None: ``$SKETCHFIND_RUNTIME``, else auto; :mod:`sketchfind.runtime`)."""
        from .models.factory import model_metadata

        root = Path(index_dir)
        store = IndexStore.open(root)
        try:
            if model is None:
                model = load_index_model(store.meta["model"], root)
            check_model(store.meta["model"], model, root)
            given = {"rerank_k": rerank_k, "fusion": fusion, "qe_top": qe_top, "qe_weight": qe_weight}
            rank = replace(
                RankSettings.from_metadata(model_metadata(model)), **{k: v for k, v in given.items() if v is not None}
            )
            rerank_k, qe_top = int(rank.rerank_k), int(rank.qe_top)
            fusion, qe_weight = float(rank.fusion), float(rank.qe_weight)
            if rerank_k < 1 or qe_top < 1:
                raise SketchfindError("rerank_k and qe_top must be at least 1")
            if not 0 <= fusion <= 1 or qe_weight < 0:
                raise SketchfindError("fusion must lie in [0, 1] and qe_weight must not be negative")
            ann_type = store.meta.get("ann_type", "SQ8")
            params = {**default_search_params(ann_type), **(ann_params or {})}
            settings = SearchSettings(_check_strategy(strategy), rerank_k, fusion, qe_top, qe_weight, params)
            return cls(root, store, load_runtime(model, runtime), settings)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Releases the index files."""
        self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Picks up changes committed since the index was opened (by this or another process)."""
        with self._lock:
            if not force and self._state is not None and self.store.generation == self._state[0].generation:
                return
            snap = self.store.snapshot()
            art = load_or_build(self.store, snap, persist=False) if _fresh(self.root, snap) else None
            if art is None:  # stale or missing artefacts: rebuild, and write them if no one else is writing
                try:
                    with IndexStore.open(self.root, writable=True) as writer:
                        snap = writer.snapshot()
                        art = load_or_build(writer, snap, persist=True)
                except IndexStoreError:
                    snap = self.store.snapshot()
                    art = load_or_build(self.store, snap, persist=False)
            if art.ann is not None:
                for name, value in self.settings.ann_params.items():  # explicit, never inherited from the file
                    faiss.ParameterSpace().set_index_parameter(art.ann, name, value)
            clusters = art.clusters
            members = [] if clusters is None else _members(clusters.assign, clusters.n_clusters)
            reps = None if clusters is None else torch.from_numpy(clusters.representatives)
            self._state = (snap, art, self.store.paths(snap), members, reps)

    def __len__(self) -> int:
        return len(self._state[0])

    def info(self) -> dict:
        """index_info.json content + counts + the search settings in force."""
        snap, art = self._state[:2]
        return {**art.info, "counts": {"photos": len(snap)}, "search_settings": asdict(self.settings)}

    def photo(self, photo_id: int) -> PhotoRecord:
        """The record of one indexed photo (IndexStoreError for an unknown id)."""
        return self.store.photo(photo_id)

    def _positions(self, photo_ids) -> np.ndarray:
        snap = self._state[0]
        ids = np.asarray(photo_ids, np.int64).reshape(-1)
        pos = np.searchsorted(snap.ids, ids)
        bad = (pos >= len(snap.ids)) | (snap.ids[np.minimum(pos, len(snap.ids) - 1)] != ids)
        if len(snap.ids) == 0 or bad.any():
            raise IndexStoreError(f"unknown photo id {int(ids[bad][0]) if bad.any() else int(ids[0])}")
        return pos

    def photo_tokens(self, photo_ids) -> torch.Tensor:
        """(n, T, D) float tokens of indexed photos (as stored, dequantised)."""
        return torch.from_numpy(self.store.tokens(self._state[0], self._positions(photo_ids)))

    # -- queries ------------------------------------------------------------------------------------
    def encode_query(self, source) -> torch.Tensor:
        """A sketch (any accepted source) -> tokens (1, T, D)."""
        image = preprocess_sketch(source, self.model.cfg.preprocess)
        with torch.inference_mode():
            return self.model.encode_sketch(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))

    def search(self, source, k: int | None = 20, strategy: str | None = None) -> SearchResult:
        """Ranks the gallery for one sketch: the best ``k`` photos (``k=None``: the whole gallery)."""
        start = time.perf_counter()
        query = self.encode_query(source)
        encode_s = time.perf_counter() - start
        hits, timings = self.search_tokens(query, k, strategy)
        timings = {"encode": encode_s, **timings}
        name = str(source) if isinstance(source, str | Path) else type(source).__name__
        return SearchResult(name, strategy or self.settings.strategy, time.perf_counter() - start, hits, timings)

    def search_many(self, sources, k: int | None = 20, strategy: str | None = None) -> list[SearchResult]:
        """:meth:`search` for several sketches with the model loaded once."""
        return [self.search(source, k, strategy) for source in sources]

    def search_tokens(self, query: torch.Tensor, k: int | None, strategy: str | None = None):
        """Ranks for encoded sketch tokens (1, T, D) -> (hits, stage timings)."""
        strategy = _check_strategy(strategy or self.settings.strategy)
        if k is not None and k < 1:
            raise SketchfindError("k must be at least 1")
        run = {"exhaustive": self._exhaustive, "clustered": self._clustered, "ann": self._ann}[strategy]
        for attempt in (0, 1):
            with self._lock:
                snap, art, paths, members, reps = self._state
            if len(snap) == 0:
                return [], {}
            try:
                with torch.inference_mode():
                    positions, scores, timings = run(query, k, snap, art, members, reps)
                break
            except IndexStoreError:
                # another process compacted the shards this snapshot points into: take the new snapshot once
                if attempt or self.store.generation == snap.generation:
                    raise
                self.refresh()
        hits = [
            Hit(i + 1, int(snap.ids[p]), paths[p], float(s))
            for i, (p, s) in enumerate(zip(positions, scores, strict=True))
        ]
        return hits, timings

    def _relation(self, query: torch.Tensor, tokens: np.ndarray) -> np.ndarray:
        return self.model.relation_scores(query, torch.from_numpy(tokens))[0].float().numpy()

    def _exhaustive(self, query, k, snap, art, members, reps):
        t0 = time.perf_counter()
        scores = np.empty(len(snap), np.float32)
        for positions, tokens in self.store.iter_tokens(snap, self.settings.chunk):
            scores[positions] = self._relation(query, tokens)
        order = _top(scores, k)
        return order, scores[order], {"rerank": time.perf_counter() - t0}

    def _ann(self, query, k, snap, art, members, reps):
        t0 = time.perf_counter()
        s, n = self.settings, len(snap)
        head_n = min(s.rerank_k, n) if s.fusion < 1 else 0
        want = n if k is None else min(n, max(k, head_n))
        ret = self.model.retrieval_embedding(query).numpy()  # (1, D)
        if s.qe_weight > 0:  # expand the query with its nearest photos, then search again
            _, near = art.ann.search(ret, min(n, s.qe_top))
            near = near[0][near[0] >= 0]
            ret = expand_query(ret, self._ret_embeddings(snap, near)[None], s.qe_weight).astype(np.float32)
        cos, found = art.ann.search(ret, want)
        keep = found[0] >= 0
        cos, found = cos[0][keep], found[0][keep]
        t1 = time.perf_counter()
        if head_n:
            head = found[:head_n]
            fused = (1 - s.fusion) * self._relation(query, self.store.tokens(snap, head)) + s.fusion * cos[:head_n]
            order = np.argsort(-fused, kind="stable")
            found = np.concatenate([head[order], found[head_n:]])
            cos = np.concatenate([fused[order], cos[head_n:]])
        if k is not None:
            found, cos = found[:k], cos[:k]
        return found, cos, {"first_stage": t1 - t0, "rerank": time.perf_counter() - t1}

    def _ret_embeddings(self, snap, positions: np.ndarray) -> np.ndarray:
        """(n, D) unit [Ret] embeddings of indexed photos, as stored."""
        return normalize(self.store.codec.decode_first(self.store.read_codes(snap, positions)))

    def _clustered(self, query, k, snap, art, members, reps):
        t0 = time.perf_counter()
        clusters = art.clusters
        cluster_scores = self.model.relation_scores(query, reps)[0].float().numpy()  # (C,)
        cluster_scores[clusters.sizes == 0] = -np.inf
        corder = np.argsort(-cluster_scores, kind="stable")
        corder = corder[clusters.sizes[corder] > 0]
        need = self.settings.rerank_k if k is None else k
        taken = int(np.searchsorted(np.cumsum(clusters.sizes[corder]), min(need, len(snap)))) + 1
        head = np.concatenate([members[c] for c in corder[:taken]])
        t1 = time.perf_counter()
        rel = self._relation(query, self.store.tokens(snap, head))
        order = np.argsort(-rel, kind="stable")
        positions, scores = head[order], rel[order]
        if k is None:  # the rest of the gallery by cluster score, ties broken by [Ret] cosine
            tail = [self._by_cosine(query, snap, members[c]) for c in corder[taken:]]
            tail_scores = [
                np.full(len(m), cluster_scores[c], np.float32) for m, c in zip(tail, corder[taken:], strict=True)
            ]
            positions = np.concatenate([positions, *tail])
            scores = np.concatenate([scores, *tail_scores])
        else:
            positions, scores = positions[:k], scores[:k]
        return positions, scores, {"first_stage": t1 - t0, "rerank": time.perf_counter() - t1}

    def _by_cosine(self, query, snap, positions: np.ndarray) -> np.ndarray:
        ret = self.model.retrieval_embedding(query).numpy()[0]
        return positions[np.argsort(-(self._ret_embeddings(snap, positions) @ ret), kind="stable")]

    # -- changes ------------------------------------------------------------------------------------
    def add_photos(self, paths, **kwargs):
        """Indexes new or changed photos (atomic commits) and refreshes; returns the BuildReport."""
        meta = self.store.meta
        kwargs.setdefault("runtime", getattr(self.model, "runtime", "torch"))  # index as this Searcher encodes
        report = build_index(
            paths,
            self.root,
            self.model,
            weights=meta["model"].get("weights"),
            embedder=meta["embedder"]["kind"],
            **kwargs,
        )
        self.refresh()
        return report

    def remove_photos(self, photo_ids) -> int:
        """Removes photos by id (atomic) and refreshes; returns how many were removed."""
        removed = remove_photos(self.root, [int(i) for i in photo_ids])
        self.refresh()
        return removed


SKETCH_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".svg", ".json", ".ndjson")


def sketch_files(sources) -> list[Path]:
    """Sketch files from files and folders (folders recursively, sorted); other paths are kept as given."""
    out: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in SKETCH_SUFFIXES and p.is_file())
        else:
            out.append(path)
    return out


def _fresh(root: Path, snap: Snapshot) -> bool:
    from .index.artefacts import read_info

    info = read_info(root)
    return bool(info) and info.get("generation") == snap.generation


def _members(assign: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Positions of the photos of each cluster."""
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_clusters + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]


def _top(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Positions of the k highest scores, best first (all when k is None)."""
    if k is None or k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
