"""The first stage's FAISS index over [Ret] embeddings, chosen by gallery size (``ann_type="auto"``).

Below :data:`APPROX_FROM` photos it is the exact inner-product scan over 8-bit codes (``SQ8``): a few ms
per query and nothing to tune (a Searcher splits it over its threads from :data:`PARALLEL_FROM` photos:
:class:`ParallelScan`). From there on it is an approximate index, chosen autofaiss-style:
:data:`CANDIDATES` are listed fastest first (as measured by ``benchmarks/bench_first_stage.py`` at the
recall target); those whose estimated size exceeds :data:`MEMORY_BUDGET` are skipped, and each of the
others in turn is trained on a sample of the gallery, its search parameter (``nprobe`` / ``efSearch``)
raised until recall@100 against the exact float ranking reaches :data:`TUNE_TARGET` on gallery vectors
used as held-out queries (their own match left out), so that the queries ann ranks with reach
:data:`RECALL_TARGET`. The first candidate that gets there is kept.

The trained, empty index is kept beside the full one, so a gallery that has grown (or shrunk) by less
than :data:`RETRAIN_GROWTH` since training is not retrained: photos appended since the last generation
are added to its index (:func:`extend`), any other change (removals, replaced photos, compaction)
re-adds every vector to the trained index, with the parameters tuned then; beyond that it is retrained
and retuned. Search parameters are recorded in ``index_info.json`` and set
explicitly when an index is opened (:func:`set_search_params`), where they can be overridden.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger("sketchfind")

AUTO = "auto"  # the default ann_type: exact below APPROX_FROM photos, approximate above
EXACT_TYPE = "SQ8"  # exact scan over 8-bit codes: 128 B/photo, ~1 ms per 70k photos
APPROX_FROM = 200_000  # photos; below, the exact scan costs a few ms (benchmarks/results/first_stage.md)
PARALLEL_FROM = 20_000  # photos; from here on the exact scan is split over the threads (ParallelScan): below,
# handing a part to another thread costs about what it saves
RECALL_K = 100
RECALL_TARGET = 0.95  # recall@100 against the exact ranking, for the queries ann ranks with
# tuning queries are gallery vectors, which find their neighbours more easily than a sketch's expanded
# [Ret] does: tuning aims higher so that those reach RECALL_TARGET (benchmarks/results/first_stage.md)
TUNE_TARGET = 0.98
CEILING_MARGIN = 0.005  # or within this of the index's own ceiling (all its codes scanned): SQ8 codes
# reach only ~0.978 against the float ranking at 10M photos, so 0.98 would scan a quarter of the lists
MEMORY_BUDGET = 2 * 2**30  # bytes the first-stage index may take in memory (the 10M-photo target)
# photos ann re-scores exactly after the first stage: its head (RankSettings.dba_top), with [Ret]s decoded from
# the stored tokens (Searcher.ret_embeddings). An index whose codes are too coarse to order photos well is judged
# by how many of the exact top-100 it puts among its first RESCORED_K (Candidate.judged_at)
RESCORED_K = 300
COARSE_SQ = (faiss.ScalarQuantizer.QT_4bit, faiss.ScalarQuantizer.QT_4bit_uniform, faiss.ScalarQuantizer.QT_6bit)
RETRAIN_GROWTH = 2.0  # retrain once the gallery is this many times larger (or smaller) than when trained
TUNE_QUERIES = 500  # gallery vectors used as queries when tuning
LATENCY_QUERIES = 100  # single queries timed at the chosen setting
TRAIN_PER_LIST = 40  # training vectors per inverted list (FAISS warns below 39)
KMEANS_ITERATIONS = 10
SEED = 0
NPROBE_GRID = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Candidate:
    """One kind of approximate index: a factory string and the search parameter tuned for recall."""

    name: str
    factory: str  # '{nlist}' and '{m}' (PQ sub-quantizers) are filled in for the gallery
    param: str  # raised along ``grid`` until the recall target is met
    grid: tuple[int, ...]
    fixed: dict = field(default_factory=dict)  # other search parameters, set as given
    code_bytes_per_dim: float = 1.0  # code bytes per vector dimension, without ids or graph links (SQ8: 1)
    # recall@100 is the share of the exact top-100 among the index's first judged_at results: RECALL_K when its
    # own order is what ann uses; RESCORED_K when its codes are too coarse for that and ann's exact re-scoring of
    # its head puts them in order
    judged_at: int = RECALL_K

    def factory_for(self, n: int, dim: int) -> str:
        """The factory string for a gallery of n vectors of width dim."""
        return self.factory.format(nlist=nlist_for(n), m=dim // 4)

    def bytes_per_vector(self, dim: int) -> float:
        """Estimated memory per vector: codes + ids (IVF) or graph links (HNSW32: 2 x 32 int32 at level 0)."""
        code = self.code_bytes_per_dim * dim
        return code + (8 if self.factory.startswith("IVF") else 2 * 32 * 4 * 1.07)


# fastest first at the tuning target (benchmarks/results/first_stage.md: on [Ret]-like vectors IVF-SQ8 is
# the fastest at every size measured; HNSW needs a large efSearch there; with a 384-d [Ret] the memory budget
# drops HNSW beyond ~3M photos and IVF-SQ8 beyond ~5.5M). Last, the smallest: 4-bit codes (half of SQ8's
# bytes) order photos too coarsely on their own (only ~0.83 of the exact top-100 in their top 100), but their
# first 300 hold >99% of it and ann re-scores those exactly, so 10M photos of a 384-d [Ret] (~200 bytes each)
# fit the memory budget, where IVF-SQ8 (~392) does not
CANDIDATES = (
    Candidate("ivf-sq8", "IVF{nlist},SQ8", "nprobe", NPROBE_GRID),
    # PQ codes of dim / 4 bytes + the SQ8 refine codes
    Candidate("ivf-pq-refine", "IVF{nlist},PQ{m}x8np,Refine(SQ8)", "nprobe", NPROBE_GRID, {"k_factor_rf": 4}, 1.25),
    Candidate("hnsw-sq8", "HNSW32,SQ8", "efSearch", EF_GRID),
    Candidate("ivf-sq4", "IVF{nlist},SQ4", "nprobe", NPROBE_GRID, code_bytes_per_dim=0.5, judged_at=RESCORED_K),
)


@dataclass
class FirstStage:
    """A built first-stage index, the trained empty index it came from (approximate only), its record."""

    index: faiss.Index
    trained: faiss.Index | None  # None: exact, or a fixed factory type
    trained_is_new: bool  # written with this generation (else the recorded file is reused)
    record: dict  # the ``ann`` entry of index_info.json, without the file names of this generation


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: ~4 sqrt(n), at most one per 39 vectors (FAISS's training minimum)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K, depth: int | None = None) -> float:
    """Mean fraction of each row's true top-k (``truth``) among its first ``depth`` (default k) returned
    ids (``found``)."""
    if len(truth) == 0:
        return 1.0
    depth = depth or k
    hits = [len(np.intersect1d(f[:depth][f[:depth] >= 0], t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def without_self(found: np.ndarray, self_ids: np.ndarray, k: int = RECALL_K) -> np.ndarray:
    """Each row's first k ids other than the query's own (a gallery vector used as a held-out query)."""
    out = np.full((len(found), k), -1, np.int64)
    for row, (ids, own) in enumerate(zip(found, self_ids, strict=True)):
        rest = ids[ids != own][:k]
        out[row, : len(rest)] = rest
    return out


def set_search_params(index: faiss.Index, params: dict) -> dict:
    """Sets search parameters on an index explicitly; returns those that apply to its type (others are
    logged and skipped: an auto index changes type as the gallery grows)."""
    applied, space = {}, faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, value)
            applied[name] = value
        except RuntimeError:
            log.warning("search parameter %s=%s does not apply to this %s index; ignored", name, value, type(index))
    return applied


def is_approximate(index: faiss.Index) -> bool:
    """Whether an index may miss some of the true nearest neighbours (IVF, HNSW, refined PQ)."""
    inner = faiss.downcast_index(index)
    return isinstance(inner, faiss.IndexRefine | faiss.IndexHNSW) or faiss.try_extract_index_ivf(index) is not None


def coarse(index: faiss.Index) -> bool:
    """Whether an index's codes are too coarse to order photos by themselves (scalar codes of fewer than 8 bits
    a dimension, PQ codes without a refine): ann then re-scores their first RESCORED_K exactly."""
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        return False
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexPQ | faiss.IndexIVFPQ):
        return True
    sq = getattr(inner, "sq", None)
    return sq is not None and sq.qtype in COARSE_SQ


def search_whole(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over every stored code of any first-stage index (whole-gallery rankings)."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        return faiss.downcast_index(inner.refine_index).search(queries, k)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.downcast_index(inner.storage).search(queries, k)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=ivf.nlist))
    return index.search(queries, k)


class ParallelScan:
    """The exact scan split into contiguous parts that several threads search at once.

    FAISS scans the codes for one query on one thread, so on a 2-core machine half the CPU idles through
    the two scans of an ann query (its query expansion, then the expanded query). Each part is an index of
    the same kind with the same trained quantiser over its slice of the codes (moved there: the memory stays
    that of one index); the other parts are searched in worker threads while the calling thread searches the
    first (FAISS releases the GIL), and the results are merged. Scores are computed exactly as by the whole
    index, so the same photos come back with the same scores (equal scores are ordered by position).
    At 70k photos a scan takes ~1.2 ms on one thread; split over two, an ann query is 0.6-1 ms faster
    (in-process A/B, ``benchmarks/README.md``).
    """

    def __init__(self, index: faiss.Index, parts: int):
        n = index.ntotal
        self.ntotal, self.d = n, index.d
        codes = faiss.vector_to_array(index.codes).reshape(n, index.code_size)
        index.reset()  # the codes live in the parts from here on
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
        self.parts = []
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            part = faiss.clone_index(index)  # the trained quantiser, no codes
            part.add_sa_codes(codes[start:stop])
            self.parts.append((int(start), part))
        del codes
        self.starts = bounds[:-1]
        self.pool = _scan_pool(parts - 1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best, as ``faiss.Index.search`` (rows padded with -inf scores and id -1)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        (_, first), *rest = self.parts
        pending = [self.pool.submit(part.search, queries, min(k, part.ntotal)) for _, part in rest if part.ntotal]
        results = [first.search(queries, min(k, first.ntotal))] if first.ntotal else []
        results += [f.result() for f in pending]
        starts = [start for start, part in self.parts if part.ntotal]
        scores = np.concatenate([d for d, _ in results], axis=1)
        ids = [np.where(i >= 0, i + start, -1) for (_, i), start in zip(results, starts, strict=True)]
        ids = np.concatenate(ids, axis=1)
        ids = np.where(ids >= 0, ids, np.iinfo(np.int64).max)  # padding last among equal (-inf) scores
        order = np.lexsort((ids, -scores), axis=1)[:, :k] if len(queries) else np.zeros((0, 0), np.int64)
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        ids[ids == np.iinfo(np.int64).max] = -1
        if scores.shape[1] < k:  # fewer photos than asked for, as FAISS pads
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.finfo(np.float32).max)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """(n, D) decoded vectors of these positions."""
        ids = np.asarray(ids, np.int64)
        which = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.d), np.float32)
        for p, (start, part) in enumerate(self.parts):
            rows = np.flatnonzero(which == p)
            if len(rows):
                out[rows] = part.reconstruct_batch(ids[rows] - start)
        return out


_pool, _pool_workers = None, 0


def _scan_pool(workers: int):
    """The process's scan threads (grown to ``workers`` when a larger split asks for more)."""
    global _pool, _pool_workers
    from concurrent.futures import ThreadPoolExecutor

    if _pool is None or _pool_workers < workers:
        _pool_workers = max(1, workers)
        _pool = ThreadPoolExecutor(_pool_workers, thread_name_prefix="sketchfind-scan")
    return _pool


def split_scan(index: faiss.Index | None, threads: int) -> faiss.Index | ParallelScan | None:
    """``index`` as a :class:`ParallelScan` over ``threads`` parts when it is an exact scan of at least
    :data:`PARALLEL_FROM` photos and there is more than one thread; else the index itself."""
    if index is None or threads < 2 or index.ntotal < PARALLEL_FROM or is_approximate(index):
        return index
    if not isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes):
        return index
    return ParallelScan(index, threads)


def first_stage(index: faiss.Index, queries: np.ndarray, want: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the ``want`` best photos: approximate when the index is, exact over all codes when
    the whole gallery is asked for or the approximate search came back short. Another backend's first stage
    (a Milvus collection, :mod:`.vectors`) completes whole-gallery rankings itself."""
    if not isinstance(index, faiss.Index):
        return index.search(queries, want)
    if want >= n and is_approximate(index):
        return search_whole(index, queries, want)
    scores, ids = index.search(queries, want)
    if (ids < 0).any() and is_approximate(index):
        return search_whole(index, queries, want)
    return scores, ids


# ----------------------------------------------------------------------------- building


def build_first_stage(embeddings: np.ndarray, ann_type: str, previous: dict | None, root: Path) -> FirstStage:
    """The first-stage index for (N, D) L2-normalised embeddings; ``previous`` is the last recorded
    ``ann`` entry of index_info.json (its trained index in ``root`` is reused while the gallery fits it)."""
    n = len(embeddings)
    if ann_type != AUTO:
        index = _fixed(embeddings, ann_type)
        return FirstStage(index, None, False, {"type": ann_type, "requested": ann_type, "approximate": False})
    if n < APPROX_FROM:
        record = {"type": EXACT_TYPE, "requested": AUTO, "approximate": False, "search_params": {}}
        record["choice"] = f"exact scan below {APPROX_FROM} photos"
        return FirstStage(_fixed(embeddings, EXACT_TYPE), None, False, record)
    reused = _reusable(previous, n, root)
    if reused is not None:
        trained, record = reused
        index = copy_index(trained)
        add_in_chunks(index, embeddings)
        set_search_params(index, record["search_params"])
        return FirstStage(index, trained, False, {**record, "photos_added": n, "update": "re-added"})
    return choose(embeddings)


def _fixed(embeddings: np.ndarray, ann_type: str) -> faiss.Index:
    index = faiss.index_factory(embeddings.shape[1], ann_type, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(embeddings)
    add_in_chunks(index, embeddings)
    return index


def _reusable(previous: dict | None, n: int, root: Path) -> tuple[faiss.Index, dict] | None:
    """The previous trained index and its record while the gallery is within RETRAIN_GROWTH of its size."""
    previous = previous or {}
    trained_meta = previous.get("trained") or {}
    at = trained_meta.get("photos", 0)
    if previous.get("requested") != AUTO or not at or not (at / RETRAIN_GROWTH <= n <= at * RETRAIN_GROWTH):
        return None
    try:
        trained = faiss.read_index(str(root / trained_meta["file"]))
    except (OSError, KeyError, RuntimeError):
        return None  # missing or damaged: retrain
    if trained.ntotal != 0 or trained.d != previous.get("dim", trained.d):
        return None
    return trained, previous


def copy_index(index: faiss.Index) -> faiss.Index:
    """A deep copy of any index type (through its serialised form, which every type supports)."""
    return faiss.deserialize_index(faiss.serialize_index(index))


def add_in_chunks(index: faiss.Index, embeddings: np.ndarray, chunk: int = 65536) -> None:
    """Adds vectors chunk by chunk (bounded temporary memory for encoders that copy)."""
    for start in range(0, len(embeddings), chunk):
        index.add(np.ascontiguousarray(embeddings[start : start + chunk], dtype=np.float32))


def train_sample(n: int, nlist: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of the training sample: TRAIN_PER_LIST vectors per list, at least 50k (or all)."""
    size = min(n, max(TRAIN_PER_LIST * nlist, 50_000))
    return np.sort(rng.choice(n, size=size, replace=False))


def make_trained(candidate: Candidate, sample: np.ndarray, n: int) -> faiss.Index:
    """An empty index of this candidate for n vectors, trained on ``sample`` (N_s, D)."""
    index = faiss.index_factory(sample.shape[1], candidate.factory_for(n, sample.shape[1]), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = SEED
    if not index.is_trained:
        index.train(sample)
    return index


def tune(index: faiss.Index, candidate: Candidate, queries: np.ndarray, self_ids: np.ndarray, truth: np.ndarray):
    """Raises the search parameter until recall@100 (the exact top-100 among the first ``candidate.judged_at``
    results) reaches TUNE_TARGET (or the ceiling of the index's codes less CEILING_MARGIN, if lower, but at
    least RECALL_TARGET) -> (params, recall, path)."""
    path, ivf, depth = [], faiss.try_extract_index_ivf(index), candidate.judged_at
    _, whole = search_whole(index, queries, depth + 1)
    ceiling = recall_at(without_self(whole, self_ids, depth), truth, depth=depth)
    target = max(min(TUNE_TARGET, ceiling - CEILING_MARGIN), RECALL_TARGET)
    for value in candidate.grid:
        if ivf is not None and candidate.param == "nprobe" and value > ivf.nlist:
            break
        params = set_search_params(index, {**candidate.fixed, candidate.param: value})
        _, found = index.search(queries, depth + 1)
        recall = recall_at(without_self(found, self_ids, depth), truth, depth=depth)
        path.append({candidate.param: value, "recall": round(recall, 4)})
        if recall >= target:
            return params, recall, path
    return params, recall, path


def latency_ms(index: faiss.Index, queries: np.ndarray, k: int = RECALL_K) -> dict:
    """p50/p95 milliseconds of single-query searches."""
    times = []
    for row in queries:
        start = time.perf_counter()
        index.search(row[None], k)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3)}


def held_out(embeddings: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query positions, queries, exact top-100 without the query itself) for tuning."""
    positions = np.sort(rng.choice(len(embeddings), size=min(TUNE_QUERIES, len(embeddings)), replace=False))
    queries = np.ascontiguousarray(embeddings[positions])
    _, found = faiss.knn(queries, embeddings, RECALL_K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return positions, queries, without_self(found, positions)


def choose(embeddings: np.ndarray) -> FirstStage:
    """Tries the candidates that fit the memory budget, fastest first, and keeps the first that reaches
    the recall target (or, when none does, the one with the best recall)."""
    n, dim = embeddings.shape
    rng = np.random.default_rng(SEED)
    positions, queries, truth = held_out(embeddings, rng)
    tried, best = [], None
    for candidate in CANDIDATES:
        size = candidate.bytes_per_vector(dim) * n
        if size > MEMORY_BUDGET:
            tried.append({"name": candidate.name, "skipped": f"estimated {size / 2**30:.2f} GiB > budget"})
            continue
        sample = embeddings[train_sample(n, nlist_for(n), rng)]
        trained = make_trained(candidate, sample, n)
        index = copy_index(trained)
        add_in_chunks(index, embeddings)
        params, recall, path = tune(index, candidate, queries, positions, truth)
        entry = {"name": candidate.name, "type": candidate.factory_for(n, dim), "search_params": params}
        entry |= {
            "recall_at_100": round(recall, 4),
            "judged_at": candidate.judged_at,
            "tuning": path,
            "latency_ms": latency_ms(index, queries[:LATENCY_QUERIES], candidate.judged_at),
        }
        tried.append(entry)
        if best is None or recall > best[2]["recall_at_100"]:
            best = (index, trained, entry, len(sample))
        if recall >= min(TUNE_TARGET, RECALL_TARGET):
            break
    if best is None:  # nothing fits the budget: the exact scan is the smallest index there is
        record = {"type": EXACT_TYPE, "requested": AUTO, "approximate": False, "search_params": {}}
        record |= {"choice": "exact scan: no approximate candidate fits the memory budget", "tuning": tried}
        return FirstStage(_fixed(embeddings, EXACT_TYPE), None, False, record)
    index, trained, entry, sampled = best
    record = {
        "type": entry["type"],
        "requested": AUTO,
        "approximate": True,
        "choice": f"{entry['name']}: the first candidate (fastest first) tuned to recall@100 >= {TUNE_TARGET}",
        "dim": dim,
        "nlist": faiss.extract_index_ivf(index).nlist if faiss.try_extract_index_ivf(index) is not None else None,
        "search_params": entry["search_params"],
        "recall_at_100": entry["recall_at_100"],
        "judged_at": entry["judged_at"],
        "latency_ms": entry["latency_ms"],
        "trained": {"photos": n, "sample": sampled},
        "tuning": {
            "queries": len(queries),
            "target": TUNE_TARGET,
            "memory_budget": MEMORY_BUDGET,
            "candidates": tried,
        },
        "photos_added": n,
        "update": "trained",
    }
    return FirstStage(index, trained, True, record)


def extend(previous: dict | None, root: Path, n: int, new_embeddings) -> FirstStage | None:
    """The previous generation's approximate index with ``new_embeddings()`` (those of the photos appended
    since, in order) added, or None when it must be rebuilt: another type, a gallery grown beyond
    RETRAIN_GROWTH since training, or its file unreadable. The caller checks that the first
    ``previous['photos_added']`` photos are unchanged."""
    previous = previous or {}
    trained_at = (previous.get("trained") or {}).get("photos", 0)
    done = previous.get("photos_added", 0)
    if previous.get("requested") != AUTO or not previous.get("approximate") or not done or n < done:
        return None
    if n > trained_at * RETRAIN_GROWTH:
        return None
    try:
        index = faiss.read_index(str(root / previous["file"]))
    except (OSError, KeyError, RuntimeError):
        return None
    if index.ntotal != done:
        return None
    add_in_chunks(index, new_embeddings())
    set_search_params(index, previous["search_params"])
    return FirstStage(index, None, False, {**previous, "photos_added": n, "update": f"added {n - done}"})
