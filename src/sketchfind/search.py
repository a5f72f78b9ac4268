"""``Searcher``: an open index + the model + search settings; the one Python API behind CLI and web service.

Strategies (module functions of ``(state, query, k, settings)``; they differ in which photos reach the
relation network and how the rest is ordered):
  exhaustive  cross-attention + relation network against every photo;
  clustered   the reference system (LTBach/ZSE-SBIR_CLIP): score the cluster representatives, then the
              photos of the best clusters, taken in score order until there are at least k photos;
  ann         FAISS on the [Ret] embedding: the sketch's nearest photos expand the query (``qe_*``), a
              second FAISS search ranks the gallery, and its top K' are re-scored with
              :func:`~sketchfind.rerank.fuse` (see :mod:`sketchfind.rerank`). Both searches are the state's
              ``first_stage``: the FAISS file, or a Milvus collection (:mod:`sketchfind.index.vectors`).
Beyond the re-ranked head (``k=None`` ranks the whole gallery), photos follow by first-stage score:
the [Ret] cosine for ann, the cluster's score for clustered. The ann settings default to the validated
values stored with the model's weights.

Opening an index to search never writes to it: derived structures that are stale (a writer crashed
before refreshing them) are rebuilt in memory, so a reader works on a read-only index directory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import torch

from .errors import ConfigError, IndexStoreError
from .index.ann import RESCORED_K, ParallelScan, coarse, first_stage, is_approximate, set_search_params, split_scan
from .index.artefacts import DEFAULT_ANN, Artefacts, default_search_params, load_or_build
from .index.build import BuildReport, build_index, check_model, finish_index, load_index_model, remove_photos
from .index.store import IndexStore, PhotoRecord, Snapshot, index_exists
from .index.vectors import FirstStage, MilvusSpec, backend_spec, shown
from .models.zse import ZSEModel, relation_probability, score_calibration
from .preprocess import SKETCH_SUFFIXES, sketch_array, to_tensor
from .rerank import RankSettings, expand_query, fuse, normalize, rank_head
from .runtime import load_runtime

DEFAULT_STRATEGY = "ann"


@dataclass(frozen=True)
class Hit:
    """One ranked photo."""

    rank: int
    photo_id: int
    path: str
    score: float
    label: str | None = None  # the photo's class (its folder name) when indexed with labels


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
    rank: RankSettings = RankSettings()  # ann's expansion and head; rank.rerank_k is also clustered's k=None head
    ann_params: dict = field(default_factory=dict)  # FAISS search parameters (nprobe, efSearch) over the recorded
    chunk: int | None = None  # photos decoded at a time by exhaustive search (None: IndexStore.iter_tokens)

    def __post_init__(self):
        check_strategy(self.strategy)


@dataclass(frozen=True)
class SearchState:
    """One committed generation of an index with everything a strategy reads; swapped as a whole."""

    store: IndexStore
    model: ZSEModel
    snapshot: Snapshot
    artefacts: Artefacts
    first_stage: FirstStage | None  # ann's [Ret] search: artefacts.ann (FAISS) or Milvus (index/vectors.py)
    paths: list[str]  # snapshot order
    labels: list[str | None]  # snapshot order
    members: list[np.ndarray]  # positions of each cluster's photos
    representatives: torch.Tensor | None  # (C, T, D) cluster representatives
    calibration: tuple[float, float] = (1.0, 0.0)  # the shown relation score (models.zse.score_calibration)

    def tokens(self, positions: np.ndarray) -> np.ndarray:
        """(n, T, D) float tokens of the photos at these snapshot positions."""
        return self.store.tokens(self.snapshot, positions)

    def relation_logits(self, query: torch.Tensor, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n,) relation-network logits of the query against photo tokens: what exhaustive and clustered order by
        (a score in (0, 1) reads 1.0 in float32 above a logit of ~17, where a head that reads the [Ret] cosine puts
        the best matches, so ordering by it would tie them)."""
        tokens = torch.from_numpy(tokens) if isinstance(tokens, np.ndarray) else tokens
        return self.model.relation_scores(query, tokens, logits=True)[0].float().numpy()

    def relation(self, query: torch.Tensor, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n,) relation-network scores in (0, 1) of the query against photo tokens."""
        return probability(self.relation_logits(query, tokens))

    @property
    def approximate(self) -> bool:
        """Whether ann's first stage is an approximate FAISS index (ann re-scores its head exactly)."""
        return isinstance(self.first_stage, faiss.Index) and is_approximate(self.first_stage)

    @property
    def coarse(self) -> bool:
        """Whether ann's first stage holds codes too coarse to order photos by themselves (:func:`ann.coarse`)."""
        return isinstance(self.first_stage, faiss.Index) and coarse(self.first_stage)

    def ret_embeddings(self, positions: np.ndarray) -> np.ndarray:
        """(n, D) unit [Ret] embeddings of the photos at these positions: from the exact FAISS index's codes
        in memory when ann searches one (one byte a dimension), else decoded from the stored tokens."""
        index = self.first_stage
        exact = isinstance(index, ParallelScan) or (isinstance(index, faiss.Index) and not self.approximate)
        if exact and len(positions):
            return normalize(index.reconstruct_batch(np.asarray(positions, np.int64)))
        return normalize(self.store.codec.decode_ret(self.store.read_codes(self.snapshot, positions)))


@dataclass(frozen=True)
class PreparedSketch:
    """A sketch already decoded and preprocessed (:meth:`Searcher.prepare`): the model's (S, S, 3) input.

    Decoding and rasterising cost CPU but no model: the service does it before taking the model lock."""

    squared: np.ndarray
    name: str


# (positions best first, their scores, stage -> seconds)
Ranking = tuple[np.ndarray, np.ndarray, dict[str, float]]


def probability(logits: np.ndarray, calibration: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    """Relation logits -> float32 scores in (0, 1) (:func:`~sketchfind.models.zse.relation_probability`)."""
    return relation_probability(logits, calibration).astype(np.float32)


def exhaustive(state: SearchState, query: torch.Tensor, k: int | None, settings: SearchSettings) -> Ranking:
    """The relation network against every photo (ordered by its logits; scores in (0, 1), calibrated when the
    weights carry a calibration: :func:`~sketchfind.models.zse.score_calibration`)."""
    t0 = time.perf_counter()
    logits = np.empty(len(state.snapshot), np.float32)
    for positions, tokens in state.store.iter_tokens(state.snapshot, settings.chunk):
        logits[positions] = state.relation_logits(query, tokens)
    order = top_positions(logits, k)
    return order, probability(logits[order], state.calibration), {"rerank": time.perf_counter() - t0}


def ann_query(state: SearchState, query: torch.Tensor, rank: RankSettings) -> tuple[np.ndarray, np.ndarray]:
    """(the sketch's unit [Ret], the vector ann searches with), both (1, D): the [Ret] expanded with its
    nearest photos' when ``rank.qe_weight > 0``."""
    ret = normalize(state.model.retrieval_embedding(query).numpy()).astype(np.float32)  # (1, D)
    searched = ret
    if rank.qe_weight > 0:  # expand the query with its nearest photos, then search again
        depth = max(rank.qe_top, RESCORED_K) if state.coarse else rank.qe_top  # coarse codes: re-scored exactly
        _, near = state.first_stage.search(ret, min(len(state.snapshot), depth))
        near = near[0][near[0] >= 0]
        emb = state.ret_embeddings(near)
        if state.coarse:
            emb = emb[np.argsort(-(emb @ ret[0]), kind="stable")[: rank.qe_top]]
        searched = expand_query(ret, emb[None], rank.qe_weight, rank.qe_alpha).astype(np.float32)
    return ret, searched


def ann_ranking(
    state: SearchState, query: torch.Tensor, rank: RankSettings, want: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ann before the relation-network head -> (the first ``want`` positions, their scores, the (D,) query
    the first ``dba_top`` of them were scored with): FAISS (or Milvus) with the expanded query, then its
    first ``dba_top`` photos ranked again with neighbour-augmented embeddings."""
    n = len(state.snapshot)
    dba_n = min(rank.dba_top, n)
    ret, searched = ann_query(state, query, rank)
    # the head ann re-scores: the neighbour-augmented one, or coarse codes' first RESCORED_K without it
    rescored = dba_n or (min(RESCORED_K, n) if state.coarse else 0)
    cos, found = first_stage(state.first_stage, searched, max(want, rescored), n)
    keep = found[0] >= 0
    cos, found, scored = cos[0][keep], found[0][keep], searched[0]
    if dba_n:
        head, scores, scored = rank_head(ret[0], found[:dba_n], state.ret_embeddings(found[:dba_n]), rank)
    elif state.approximate:  # no neighbour augmentation: the head is still re-scored exactly (ann.RESCORED_K)
        head = found[: min(RESCORED_K, len(found))]
        exact = state.ret_embeddings(head) @ scored
        order = np.argsort(-exact, kind="stable")
        head, scores = head[order], exact[order]
    if dba_n or state.approximate:
        # the tail keeps its order; its scores are capped so that they never read higher than the head's
        tail = np.minimum(cos[len(head) :], scores[-1]) if len(scores) else cos[len(head) :]
        found, cos = np.concatenate([head, found[len(head) :]]), np.concatenate([scores, tail])
    return found[:want], cos[:want], scored


def ann(state: SearchState, query: torch.Tensor, k: int | None, settings: SearchSettings) -> Ranking:
    """FAISS on [Ret] (with query expansion), the head ranked again with neighbour-augmented embeddings
    (:func:`~sketchfind.rerank.rank_head`), then re-scored by :func:`~sketchfind.rerank.fuse`."""
    t0 = time.perf_counter()
    rank, n = settings.rank, len(state.snapshot)
    dba_n = min(rank.dba_top, n)
    head_n = min(rank.rerank_k, dba_n if dba_n else n) if rank.uses_relation else 0
    want = n if k is None else min(n, max(k, head_n))
    found, cos, _ = ann_ranking(state, query, rank, want)
    t1 = time.perf_counter()
    if head_n:
        head = found[:head_n]
        fused = fuse(cos[:head_n], state.relation(query, state.tokens(head)), rank.fusion)
        order = np.argsort(-fused, kind="stable")
        found = np.concatenate([head[order], found[head_n:]])
        cos = np.concatenate([fused[order], cos[head_n:]])
    if k is not None:
        found, cos = found[:k], cos[:k]
    return found, cos, {"first_stage": t1 - t0, "rerank": time.perf_counter() - t1}


def clustered(state: SearchState, query: torch.Tensor, k: int | None, settings: SearchSettings) -> Ranking:
    """The reference system: best cluster representatives first, then their photos by relation score."""
    t0 = time.perf_counter()
    sizes = state.artefacts.clusters.sizes
    cluster_scores = state.relation_logits(query, state.representatives)  # (C,)
    cluster_scores[sizes == 0] = -np.inf
    corder = np.argsort(-cluster_scores, kind="stable")
    corder = corder[sizes[corder] > 0]
    need = settings.rank.rerank_k if k is None else k
    taken = int(np.searchsorted(np.cumsum(sizes[corder]), min(need, len(state.snapshot)))) + 1
    head = np.concatenate([state.members[c] for c in corder[:taken]])
    t1 = time.perf_counter()
    rel = state.relation_logits(query, state.tokens(head))
    order = np.argsort(-rel, kind="stable")
    positions, scores = head[order], probability(rel[order], state.calibration)
    if k is None:  # the rest of the gallery by cluster score, ties broken by [Ret] cosine
        ret = state.model.retrieval_embedding(query).numpy()[0]
        tail = [state.members[c] for c in corder[taken:]]
        tail = [m[np.argsort(-(state.ret_embeddings(m) @ ret), kind="stable")] for m in tail]
        tail_scores = [
            np.full(len(m), probability(cluster_scores[c], state.calibration), np.float32)
            for m, c in zip(tail, corder[taken:], strict=True)
        ]
        positions = np.concatenate([positions, *tail])
        scores = np.concatenate([scores, *tail_scores])
    else:
        positions, scores = positions[:k], scores[:k]
    return positions, scores, {"first_stage": t1 - t0, "rerank": time.perf_counter() - t1}


STRATEGIES: dict[str, Callable[[SearchState, torch.Tensor, int | None, SearchSettings], Ranking]] = {
    "exhaustive": exhaustive,
    "clustered": clustered,
    "ann": ann,
}


def check_strategy(strategy: str) -> str:
    """The strategy name, or a ConfigError naming the choices."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


class Searcher:
    """Search an index with sketches; see the module docstring for the strategies."""

    def __init__(
        self,
        root: Path,
        store: IndexStore,
        model: ZSEModel,
        settings: SearchSettings,
        vectors: MilvusSpec | None = None,
    ):
        self.root, self.store, self.model, self.settings = root, store, model, settings
        self.vectors_spec = vectors  # None: FAISS beside the store; else the Milvus collection ann searches
        self._milvus = None
        if vectors is not None:
            from .index.milvus import open_collection

            self._milvus = open_collection(vectors, store)
        self._lock = threading.RLock()
        self._state: SearchState | None = None
        try:
            self.refresh(force=True)
        except BaseException:
            if self._milvus is not None:
                self._milvus.close()
            raise

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
        qe_alpha: float | None = None,
        dba_top: int | None = None,
        dba_k: int | None = None,
        ann_params: dict | None = None,
        runtime: str | None = None,
        backend: str | None = None,
        milvus_uri: str | None = None,
        collection: str | None = None,
    ) -> Searcher:
        """Opens an index for searching (read-only); ``model=None`` loads the model the index was built with.
        ann settings left as None take the values validated with the model's weights
        (:class:`~sketchfind.rerank.RankSettings`; ``dba_top=0`` turns the neighbour augmentation off).
        ``ann_params`` (e.g. ``{"nprobe": 32}``) override the FAISS search parameters recorded in
        index_info.json (those that do not apply to the index's type are ignored with a warning).
        ``runtime``: 'torch', 'onnx', 'onnx-int8', 'torch-bf16' or 'auto' (None: ``$SKETCHFIND_RUNTIME``,
        else auto; :mod:`sketchfind.runtime`). ``backend`` ('faiss' | 'milvus'),
        ``milvus_uri``, ``collection``: where ann's first stage searches (default: what the index records)."""
        root = Path(index_dir)
        store = IndexStore.open(root)
        try:
            if model is None:
                model = load_index_model(store.meta["model"], root)
            check_model(store.meta["model"], model, root)
            rank = (
                RankSettings.from_metadata(model.weights_metadata)
                .updated(rerank_k=rerank_k, fusion=fusion, qe_top=qe_top, qe_weight=qe_weight, qe_alpha=qe_alpha)
                .updated(dba_top=dba_top, dba_k=dba_k)
            )
            params = {**default_search_params(store.meta.get("ann_type", DEFAULT_ANN)), **(ann_params or {})}
            settings = SearchSettings(strategy, rank, params)
            vectors = backend_spec(store.meta, backend, milvus_uri, collection)
            return cls(root, store, load_runtime(model, runtime), settings, vectors)
        except BaseException:
            store.close()
            raise

    @classmethod
    def from_photos(
        cls,
        sources,
        index_dir,
        model: ZSEModel | None = None,
        *,
        weights=None,
        strategy: str | None = None,
        runtime: str | None = None,
        **build,
    ) -> tuple[Searcher, BuildReport]:
        """Indexes ``sources`` into ``index_dir`` (created, or updated with new and changed photos only) and
        opens it: ``(searcher, report)``. An existing index keeps its own model unless ``model`` is given;
        a new one uses ``model`` or the default model. ``build`` goes to :func:`~sketchfind.index.build_index`."""
        from .models.factory import load_model

        if model is None:
            if index_exists(index_dir):
                with IndexStore.open(index_dir) as store:
                    model = load_index_model(store.meta["model"], index_dir)
            else:
                model = load_model()
        model = load_runtime(model, runtime)  # exported once, used to index and to search
        report = build_index(sources, index_dir, model, weights=weights, runtime=runtime, **build)
        return cls.open(index_dir, model, strategy=strategy or DEFAULT_STRATEGY, runtime=runtime), report

    def close(self) -> None:
        """Releases the index files (and the Milvus connection)."""
        if self._milvus is not None:
            self._milvus.close()
        self.store.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------------
    @property
    def state(self) -> SearchState:
        """The generation of the index that searches currently read."""
        return self._state

    def refresh(self, force: bool = False) -> None:
        """Picks up changes committed since the index was opened (by this or another process); never writes."""
        with self._lock:
            if not force and self._state is not None and self.store.generation == self._state.snapshot.generation:
                return
            snap = self.store.snapshot()
            art = load_or_build(self.store, snap, persist=False)
            if art.ann is not None:  # explicit, never inherited from the file: as recorded, then as asked
                set_search_params(art.ann, {**art.info["ann"].get("search_params", {}), **self.settings.ann_params})
            clusters = art.clusters
            if self._milvus is None:  # an exact scan searched by every thread at once (its codes move there)
                art = replace(art, ann=split_scan(art.ann, torch.get_num_threads()))
            first_stage = art.ann
            if self._milvus is not None:
                from .index.milvus import MilvusFirstStage

                first_stage = MilvusFirstStage(self._milvus, self.store, snap)
            self._state = SearchState(
                store=self.store,
                model=self.model,
                snapshot=snap,
                artefacts=art,
                first_stage=first_stage,
                paths=self.store.paths(snap),
                labels=self.store.labels(snap),
                members=[] if clusters is None else cluster_members(clusters.assign, clusters.n_clusters),
                representatives=None if clusters is None else torch.from_numpy(clusters.representatives),
                calibration=score_calibration(getattr(self.model, "weights_metadata", {})),
            )

    def __len__(self) -> int:
        return len(self._state.snapshot)

    def info(self) -> dict:
        """index_info.json content + counts + the search settings in force."""
        state = self._state
        return {
            **state.artefacts.info,
            "counts": {"photos": len(state.snapshot)},
            "vectors": shown(self.vectors_spec),
            "search_settings": asdict(self.settings),
        }

    def photo(self, photo_id: int) -> PhotoRecord:
        """The record of one indexed photo (UnknownPhotoError for an unknown id)."""
        return self.store.photo(photo_id)

    def photo_ids(self) -> list[int]:
        """Ids of the indexed photos (the snapshot in use), in index order."""
        return [int(i) for i in self._state.snapshot.ids]

    def photos(self, photo_ids) -> list[PhotoRecord]:
        """Records of the given ids that exist, in the given order (one query for all of them)."""
        return self.store.photos(photo_ids)

    def photo_tokens(self, photo_ids) -> torch.Tensor:
        """(n, T, D) float tokens of indexed photos (as stored, dequantised)."""
        state = self._state
        return torch.from_numpy(state.tokens(state.snapshot.positions(photo_ids)))

    # -- queries ------------------------------------------------------------------------------------
    def prepare(self, source) -> PreparedSketch:
        """Decode and preprocess a sketch (any accepted source) without the model; searching it is then cheaper."""
        if isinstance(source, PreparedSketch):
            return source
        name = str(source) if isinstance(source, str | Path) else type(source).__name__
        return PreparedSketch(sketch_array(source, self.model.cfg.preprocess), name)

    def encode_query(self, source) -> torch.Tensor:
        """A sketch (any accepted source, or a :class:`PreparedSketch`) -> tokens (1, T, D)."""
        return self._encode_array(self.prepare(source).squared)

    def _encode_array(self, squared: np.ndarray) -> torch.Tensor:
        image = to_tensor(squared, self.model.cfg.preprocess).unsqueeze(0)
        with torch.inference_mode():
            return self.model.encode_sketch(image)

    def warm_up(self) -> None:
        """Searches a drawn circle once, results unused, so that the first real query does not pay for what runs
        only once: OpenVINO compiles each graph for the input shape it first meets (~0.25 s for the sketch
        encoder of zse-lite0), allocators and the index's pages warm up. The service calls it at start-up."""
        side = self.model.cfg.image_size
        yy, xx = np.mgrid[:side, :side]
        ring = np.abs(np.hypot(yy - side / 2, xx - side / 2) - side / 3) < 2
        circle = np.where(ring[:, :, None], np.uint8(0), np.uint8(255)).repeat(3, axis=2)
        query = self._encode_array(circle)
        with torch.inference_mode():
            self.model.relation_scores(query, query)  # the cross-attention + relation head (clustered, exhaustive)
        if len(self):
            self.search_tokens(query, 1, "ann")

    def search(self, source, k: int | None = 20, strategy: str | None = None) -> SearchResult:
        """Ranks the gallery for one sketch: the best ``k`` photos (``k=None``: the whole gallery)."""
        start = time.perf_counter()
        sketch = self.prepare(source)
        query = self.encode_query(sketch)
        encode_s = time.perf_counter() - start
        hits, timings = self.search_tokens(query, k, strategy)
        timings = {"encode": encode_s, **timings}
        return SearchResult(sketch.name, strategy or self.settings.strategy, time.perf_counter() - start, hits, timings)

    def search_many(self, sources, k: int | None = 20, strategy: str | None = None) -> list[SearchResult]:
        """:meth:`search` for several sketches with the model loaded once."""
        return [self.search(source, k, strategy) for source in sources]

    def search_tokens(self, query: torch.Tensor, k: int | None, strategy: str | None = None):
        """Ranks for encoded sketch tokens (1, T, D) -> (hits, stage timings)."""
        run = STRATEGIES[check_strategy(strategy or self.settings.strategy)]
        if k is not None and k < 1:
            raise ConfigError("k must be at least 1")
        for attempt in (0, 1):
            state = self._state
            if len(state.snapshot) == 0:
                return [], {}
            try:
                with torch.inference_mode():
                    positions, scores, timings = run(state, query, k, self.settings)
                break
            except IndexStoreError:
                # another process compacted the shards this snapshot points into: take the new snapshot once
                if attempt or self.store.generation == state.snapshot.generation:
                    raise
                self.refresh()
        # plain Python ints and floats in one go (~3x faster than converting numpy scalars one by one)
        where, ids = np.asarray(positions).tolist(), state.snapshot.ids[positions].tolist()
        scores, paths, labels = np.asarray(scores).tolist(), state.paths, state.labels
        hits = [Hit(i + 1, ids[i], paths[p], scores[i], labels[p]) for i, p in enumerate(where)]
        return hits, timings

    def explain(self, sketch, photo_id: int, strategy: str | None = None, photo=None):
        """Which parts of a sketch match which parts of an indexed photo -> (Explanation, rendered images),
        for the score ``strategy`` ranks by: ann's [Ret] similarity (of the expanded query, as searched;
        when the model's [Ret] can be attributed to cells), otherwise the relation network's (split into its
        [Ret] and map terms when the head reads the [Ret] cosine, :func:`~sketchfind.explain.explain_relation`).

        The sketch is decoded once; the photo's pixels come from its file (:meth:`display_photo`), or are
        ``photo`` when the caller decoded it already (the service does, outside its model lock)."""
        from .explain import explain_relation, explain_ret, explain_tokens, explains_relation, explains_ret, render

        strategy = check_strategy(strategy or self.settings.strategy)
        self.photo(photo_id)  # UnknownPhotoError before any work
        squared = self.prepare(sketch).squared
        photo = self.display_photo(photo_id) if photo is None else photo
        query = self._encode_array(squared)
        with torch.no_grad():  # not inference mode: the [Ret] explanation takes a gradient on the sketch side
            if strategy == "ann" and explains_ret(self.model) and len(self):
                # the query that scored the photo (expanded, and again with the augmented head); the photo's own
                # share of an augmented score (the rest comes from its nearest photos) is what its cells hold
                scored = ann_ranking(self._state, query, self.settings.rank, 1)[2]
                explanation = explain_ret(self.model, squared, photo, scored)
            elif strategy != "ann" and explains_relation(self.model):  # the relation score, [Ret] and map terms
                explanation = explain_relation(self.model, squared, photo)
            else:
                explanation = explain_tokens(self.model, query, self.photo_tokens([photo_id]), squared)
        return explanation, render(explanation, squared, photo)

    def display_photo(self, photo_id: int):
        """The pixels of an indexed photo as explanations show them (RGB, a reduced decode where the format
        allows); PhotoMissingError when its file cannot be read any more."""
        from .errors import PhotoMissingError, SketchfindError
        from .explain import DISPLAY_SIZE
        from .preprocess import read_photo

        record = self.photo(photo_id)
        try:
            return read_photo(record.path, max_side=DISPLAY_SIZE).convert("RGB")  # reduced decode: shown small
        except SketchfindError as err:  # the file changed or vanished since indexing
            raise PhotoMissingError(f"the file of photo {photo_id} cannot be read any more: {err}") from err

    # -- changes ------------------------------------------------------------------------------------
    def add_photos(self, paths, **kwargs) -> BuildReport:
        """Indexes new or changed photos (atomic commits) and refreshes; the report's ``ids`` map each
        file of the run to its photo id. ``finish=False``: commit only, then :meth:`finish_changes`."""
        meta = self.store.meta
        kwargs.setdefault("runtime", self.model.runtime)  # index with the runtime this Searcher encodes with
        kwargs = {**self._backend_args(), **kwargs}
        report = build_index(
            paths,
            self.root,
            self.model,
            weights=meta["model"].get("weights"),
            embedder=meta["embedder"]["kind"],
            **kwargs,
        )
        if kwargs.get("finish", True):
            self.refresh()
        return report

    def _backend_args(self) -> dict:
        """The vector backend this Searcher reads, for the writes it makes."""
        spec = self.vectors_spec
        if spec is None:
            return {"backend": "faiss"}
        return {"backend": "milvus", "milvus_uri": spec.uri, "collection": spec.collection}

    def remove_photos(self, photo_ids, finish: bool = True) -> int:
        """Removes photos by id (atomic) and refreshes; returns how many were removed. ``finish=False``:
        commit only, then :meth:`finish_changes`."""
        removed = remove_photos(self.root, [int(i) for i in photo_ids], finish=finish, **self._backend_args())
        if finish:
            self.refresh()
        return removed

    def finish_changes(self) -> None:
        """Compaction and search structures after commits made with ``finish=False`` (no model needed:
        searches can go on meanwhile), then refreshes."""
        finish_index(self.root, **self._backend_args())
        self.refresh()


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


def cluster_members(assign: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Positions of the photos of each cluster."""
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_clusters + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]


def top_positions(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Positions of the k highest scores, best first (all when k is None)."""
    if k is None or k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
