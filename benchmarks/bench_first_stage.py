"""First-stage search at 70k / 1M / 10M [Ret] vectors: the exact SQ8 scan vs the approximate FAISS
candidates of ``sketchfind.index.ann`` vs Milvus Lite (issue 13, part 4).

    python benchmarks/bench_first_stage.py --real-index /tmp/mini-index --sizes 70k,1M --threads 2
    python benchmarks/bench_first_stage.py --real-index /tmp/mini-index --sizes 10M --hnsw-max 1M
    python benchmarks/bench_first_stage.py --real-index /tmp/mini-index --sizes '' --milvus 70k,1M

The vectors are synthetic but shaped like real [Ret] embeddings: a smoothed bootstrap of the photo
[Ret]s of a real index (``--real-index``, e.g. ``sketchfind index --label-from-folder`` of sketchy-mini):
a real photo's [Ret], shrunk towards its class mean, plus noise with the within-class covariance of the
real [Ret]s, the bandwidth chosen by leave-one-out likelihood (see :class:`Synthetic`), L2-normalised.
Queries are held-out vectors of the same distribution ('synthetic') and the [Ret]s of real sketchy-mini
sketches ('sketch'). Recall@100 is against the exact float32 ranking; each index is measured in a fresh
process (p50/p95 ms per single query, FAISS threads as given; RSS after loading). Vectors are made in
chunks from fixed seeds, so no size needs more memory than its indexes. Results are merged into
``results/first_stage.json`` (per size, so sizes can be run separately) and ``results/first_stage.md``;
the sizing table for 10^7-10^9 photos goes to ``results/sizing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 250_000
K = 100
# held-out synthetic vectors; real sketch [Ret]s (what ann's expansion step searches with, for its top qe_top);
# those expanded with their nearest photos as the shipped weights' RankSettings say (what ann ranks with)
QUERY_SETS = ("synthetic", "sketch", "expanded")


def expansion():
    """The shipped model's ann settings (query expansion: qe_top photos, qe_weight, qe_alpha)."""
    from sketchfind.models.factory import load_model
    from sketchfind.rerank import RankSettings

    return RankSettings.from_metadata(load_model().weights_metadata)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """'70k' -> 70000, '10M' -> 10000000."""
    text = text.strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in os.popen("lscpu") if line.startswith("Model name")), "?")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ----------------------------------------------------------------------------- real and synthetic vectors


def real_vectors(index_dir: Path, work: Path, n_sketches: int) -> dict:
    """Photo [Ret]s (+ labels) of a real index and the [Ret]s of real sketches (cached in ``work``)."""
    cache = work / "real.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return dict(z)
    import torch

    from sketchfind.index.artefacts import ret_embeddings
    from sketchfind.index.store import IndexStore
    from sketchfind.search import Searcher, sketch_files

    with IndexStore.open(index_dir) as store:
        snap = store.snapshot()
        photos, labels = ret_embeddings(store, snap), np.array(store.labels(snap), dtype=object)
    sketch_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "sketchy-mini" / "sketches"
    files = sketch_files([sketch_dir])
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:n_sketches]]
    with Searcher.open(index_dir) as searcher, torch.inference_mode():
        rets = [searcher.model.retrieval_embedding(searcher.encode_query(f)).numpy()[0] for f in files]
    sketches = np.stack(rets).astype(np.float32)
    sketches /= np.linalg.norm(sketches, axis=1, keepdims=True)
    out = {"photos": photos.astype(np.float32), "labels": labels.astype(str), "sketches": sketches}
    np.savez(cache, **out)
    return out


class Synthetic:
    """A smoothed bootstrap of real [Ret]s: a real photo r of class c, shrunk towards the class mean m,
    plus Gaussian noise with the within-class covariance S: m + sqrt(1 - h^2) (r - m) + h N(0, S),
    L2-normalised (the same second moments for every bandwidth h; h = 1 is a Gaussian mixture with one
    component per class)."""

    def __init__(self, photos: np.ndarray, labels: np.ndarray, bandwidth: float | None = None):
        self.photos = photos.astype(np.float32)
        classes = {c: photos[labels == c].mean(0) for c in np.unique(labels)}
        self.means = np.stack([classes[c] for c in labels]).astype(np.float32)  # each photo's class mean
        residuals = photos - self.means
        cov = residuals.T @ residuals / (len(photos) - len(classes))
        vals, vecs = np.linalg.eigh(cov)
        self.vals, self.vecs = np.maximum(vals, 1e-12), vecs
        self.mix = (vecs * np.sqrt(self.vals)).astype(np.float32)  # z @ mix.T ~ N(0, cov)
        self.curve = self.loo_curve() if bandwidth is None else {}
        self.bandwidth = bandwidth or max(self.curve, key=self.curve.get)  # leave-one-out choice, at most 1

    def loo_curve(self, grid=(0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)) -> dict:
        """Leave-one-out log-likelihood per photo of the KDE for each bandwidth (whitened by the covariance)."""
        white = self.photos @ (self.vecs / np.sqrt(self.vals)).astype(np.float32)
        sq = (white**2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None] - 2 * white @ white.T, 0).astype(np.float64)
        np.fill_diagonal(d2, np.inf)
        n, dim = white.shape
        out = {}
        for h in grid:
            e = -d2 / (2 * h * h)
            m = e.max(1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(e - m).sum(1))) - np.log(n - 1)
            out[h] = float(lse.mean() - dim * np.log(h) - dim / 2 * np.log(2 * np.pi))
        return out

    def sample(self, seed: int, m: int) -> np.ndarray:
        """m vectors from a fixed seed (the same vectors every time)."""
        rng = np.random.default_rng(seed)
        pick, h = rng.integers(0, len(self.photos), m), self.bandwidth
        x = self.means[pick] + np.sqrt(1 - h * h) * (self.photos[pick] - self.means[pick])
        x += h * (rng.standard_normal((m, self.mix.shape[0]), np.float32) @ self.mix.T)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self, n: int):
        """(start, vectors) of the gallery of size n, CHUNK vectors at a time."""
        for i, start in enumerate(range(0, n, CHUNK)):
            yield start, self.sample(10_000 + i, min(CHUNK, n - start))

    def describe(self) -> dict:
        return {
            "kind": "smoothed bootstrap of real photo [Ret]s: m + sqrt(1-h^2)(r-m) + h N(0, S_within), normalised",
            "real_photos": len(self.photos),
            "bandwidth": self.bandwidth,
            "loo_log_likelihood": {str(k): round(v, 2) for k, v in self.curve.items()},
            "within_class_std_per_dim": round(float(np.sqrt(self.vals.mean())), 4),
        }


def neighbour_stats(x: np.ndarray) -> dict:
    """Mean cosine to the 1st / 10th / 100th nearest neighbour within a set (self excluded)."""
    import faiss

    sims, _ = faiss.knn(x[:500], x, 101, metric=faiss.METRIC_INNER_PRODUCT)
    return {f"nn{k}": round(float(sims[:, k].mean()), 4) for k in (1, 10, 100)}


def float_truth(gen: Synthetic, n: int, queries: np.ndarray) -> np.ndarray:
    """Exact float32 top-K ids of each query over the gallery of size n (one more pass over its chunks)."""
    import faiss

    best = (np.full((len(queries), K), -np.inf, np.float32), np.full((len(queries), K), -1, np.int64))
    for start, x in gen.chunks(n):
        scores, ids = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        best = merge_top(best, (scores, ids + start))
    return best[1]


def merge_top(best: tuple, new: tuple, k: int = K) -> tuple:
    """Keeps each row's k best of two (scores, ids) lists."""
    scores, ids = np.concatenate([best[0], new[0]], 1), np.concatenate([best[1], new[1]], 1)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    rows = np.arange(len(scores))[:, None]
    scores, ids = scores[rows, top], ids[rows, top]
    order = np.argsort(-scores, axis=1, kind="stable")
    return scores[rows, order], ids[rows, order]


# ----------------------------------------------------------------------------- FAISS


def build_faiss(n: int, gen: Synthetic, queries: np.ndarray, args, work: Path) -> tuple[dict, np.ndarray, dict]:
    """Trains every candidate (one shared coarse quantizer), adds the gallery chunk by chunk and the exact
    top-100 of every query on the way -> (indexes, truth ids, timings)."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    from sketchfind.index import ann

    dim, nlist = gen.photos.shape[1], args.nlist or ann.nlist_for(n)
    t0 = time.perf_counter()
    sample = gen.sample(9, min(n, max(ann.TRAIN_PER_LIST * nlist, 50_000)))
    exact = faiss.index_factory(dim, ann.EXACT_TYPE, faiss.METRIC_INNER_PRODUCT)
    exact.train(sample)
    indexes, timings = {"exact-sq8": exact}, {}
    by_name = {c.name: c for c in ann.CANDIDATES}
    ivf_names = [c.name for c in ann.CANDIDATES if c.factory.startswith("IVF") and c.name in args.candidates]
    centroids = None
    for name in ivf_names:
        cand = by_name[name]
        index = faiss.index_factory(dim, cand.factory.format(nlist=nlist, m=dim // 4), faiss.METRIC_INNER_PRODUCT)
        if centroids is None:  # as ann.make_trained, with this nlist
            faiss.extract_index_ivf(index).cp.niter = ann.KMEANS_ITERATIONS
            faiss.extract_index_ivf(index).cp.seed = ann.SEED
            index.train(sample)
            centroids = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, nlist)
            timings["train_quantizer_s"] = round(time.perf_counter() - t0, 1)
        else:  # the same coarse quantizer: only the codes (SQ / PQ / refine) are trained
            faiss.extract_index_ivf(index).quantizer.add(centroids)
            index.train(sample)
        indexes[name] = index
    if "hnsw-sq8" in args.candidates and n <= args.hnsw_max:
        indexes["hnsw-sq8"] = ann.make_trained(by_name["hnsw-sq8"], sample, n)
    del sample
    log(f"{n}: trained {', '.join(indexes)}")
    timings["train_s"] = round(time.perf_counter() - t0, 1)
    quantizer = faiss.IndexFlatIP(dim)
    if centroids is not None:
        quantizer.add(centroids)
    best = (np.full((len(queries), K), -np.inf, np.float32), np.full((len(queries), K), -1, np.int64))
    add_s = {name: 0.0 for name in indexes} | {"assign": 0.0, "truth": 0.0}
    for start, x in gen.chunks(n):
        t = time.perf_counter()
        assign = quantizer.search(x, 1)[1][:, 0] if centroids is not None else None
        add_s["assign"] += time.perf_counter() - t
        for name, index in indexes.items():
            t = time.perf_counter()
            if name in ivf_names:
                add_preassigned(faiss.extract_index_ivf(index), x, assign)
                inner = faiss.downcast_index(index)
                if isinstance(inner, faiss.IndexRefine):  # the refine codes, in the same order
                    inner.refine_index.add(x)
                    inner.ntotal = inner.refine_index.ntotal
            else:
                index.add(x)
            add_s[name] += time.perf_counter() - t
        t = time.perf_counter()
        scores, ids = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        best = merge_top(best, (scores, ids + start))
        add_s["truth"] += time.perf_counter() - t
        if start // CHUNK % 8 == 0:
            log(f"{n}: {start + len(x)} vectors added")
    timings["add_s"] = {k: round(v, 1) for k, v in add_s.items()}
    return indexes, best[1], timings


def tune_and_save(indexes: dict, n: int, tune_q: np.ndarray, tune_truth: np.ndarray, work: Path) -> dict:
    """Tunes each approximate index with the library's own procedure; writes every index to ``work``."""
    import faiss

    from sketchfind.index import ann

    by_name, out = {c.name: c for c in ann.CANDIDATES}, {}
    for name, index in indexes.items():
        nlist = faiss.extract_index_ivf(index).nlist if name.startswith("ivf") else None
        factory = ann.EXACT_TYPE if name == "exact-sq8" else by_name[name].factory.format(nlist=nlist, m=index.d // 4)
        entry = {"type": factory}
        entry["judged_at"] = by_name[name].judged_at if name in by_name else K
        if name != "exact-sq8":
            log(f"{n}: tuning {name}")
            t = time.perf_counter()
            params, recall, path = ann.tune(index, by_name[name], tune_q, np.full(len(tune_q), -1), tune_truth)
            entry |= {"search_params": params, "tuning_recall": round(recall, 4), "tuning": path}
            entry["tune_s"] = round(time.perf_counter() - t, 1)
        file = work / f"{name}.faiss"
        faiss.write_index(index, str(file))
        entry |= {"file": str(file), "index_bytes": file.stat().st_size, "bytes_per_photo": file.stat().st_size / n}
        out[name] = entry
    return out


def measure(args) -> None:
    """(In a fresh process) load one index, set its parameters, time single queries; prints JSON."""
    import faiss

    from sketchfind.index import ann

    faiss.omp_set_num_threads(args.threads)
    base = rss_mb()
    t = time.perf_counter()
    index = faiss.read_index(args.measure)
    load_s = time.perf_counter() - t
    ann.set_search_params(index, json.loads(args.params))
    depth = args.depth  # ids asked for: the exact top-100 is looked for among them (Candidate.judged_at)
    with np.load(args.query_file) as z:
        sets = {name: (z[name], z[name + "_truth"]) for name in QUERY_SETS}
    out = {"load_s": round(load_s, 2), "rss_base_mb": round(base, 1)}
    index.search(sets["synthetic"][0][:10], K)  # warm-up (first-touch of the loaded pages)
    for name, (queries, truth) in sets.items():
        queries, truth = queries[: args.max_queries], truth[: args.max_queries]
        times, found = [], []
        for q in queries:
            start = time.perf_counter()
            found.append(index.search(q[None], depth)[1][0])
            times.append((time.perf_counter() - start) * 1000)
        out[name] = {
            "queries": len(queries),
            "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p95_ms": round(float(np.percentile(times, 95)), 3),
            "recall_at_100": round(ann.recall_at(np.stack(found), truth, depth=depth), 4),
            "recall_at_10": round(ann.recall_at(np.stack(found), truth, 10, depth=depth), 4),
        }
    out["rss_mb"], out["peak_rss_mb"] = round(rss_mb(), 1), round(rss_mb("VmHWM"), 1)
    out["index_rss_mb"] = round(out["rss_mb"] - base, 1)
    print(json.dumps(out))


def run_measure(entry: dict, qfile: Path, args, max_queries: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", entry["file"], "--params", json.dumps(entry.get("search_params", {}))]
    cmd += ["--query-file", str(qfile), "--threads", str(args.threads), "--max-queries", str(max_queries)]
    cmd += ["--depth", str(entry.get("judged_at", K))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def library_choice(n: int, dim: int, entries: dict) -> str:
    """What ``ann_type='auto'`` builds at this size (``ann.choose`` applied to the measured tuning): the first
    candidate that fits the memory budget and reaches the recall target, else the best of those that fit, else
    the exact scan."""
    from sketchfind.index import ann

    if n < ann.APPROX_FROM:
        return "exact-sq8"
    best = None
    for cand in ann.CANDIDATES:
        entry = entries.get(cand.name)
        if entry is None or cand.bytes_per_vector(dim) * n > ann.MEMORY_BUDGET:
            continue
        if entry["tuning_recall"] >= min(ann.TUNE_TARGET, ann.RECALL_TARGET):
            return cand.name
        if best is None or entry["tuning_recall"] > entries[best]["tuning_recall"]:
            best = cand.name
    return best or "exact-sq8"


def run_faiss_size(n: int, gen: Synthetic, real: dict, args) -> dict:
    from sketchfind.index import ann
    from sketchfind.rerank import expand_query

    work = args.work / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    tune_q, eval_q = gen.sample(7, 500), gen.sample(8, args.queries)
    sketch_q = real["sketches"][: args.queries]
    queries = np.concatenate([tune_q, eval_q, sketch_q])
    t = time.perf_counter()
    indexes, truth, timings = build_faiss(n, gen, queries, args, work)
    timings["build_total_s"] = round(time.perf_counter() - t, 1)
    tune_truth, eval_truth, sketch_truth = np.split(truth, [len(tune_q), len(tune_q) + len(eval_q)])
    exact = indexes["exact-sq8"]
    rank = expansion()
    top = sketch_truth[:, : rank.qe_top].ravel()
    near = np.stack([exact.reconstruct(int(i)) for i in top]).reshape(len(sketch_q), rank.qe_top, exact.d)
    expanded = expand_query(sketch_q, near, rank.qe_weight, rank.qe_alpha).astype(np.float32)
    qfile = work / "queries.npz"
    np.savez(
        qfile,
        synthetic=eval_q,
        synthetic_truth=eval_truth,
        sketch=sketch_q,
        sketch_truth=sketch_truth,
        expanded=expanded,
        expanded_truth=float_truth(gen, n, expanded),
    )
    entries = tune_and_save(indexes, n, tune_q, tune_truth, work)
    del indexes
    for name, entry in entries.items():
        log(f"{n}: measuring {name}")
        max_q = args.exact_queries if name == "exact-sq8" else args.queries
        entry |= run_measure(entry, qfile, args, max_q)
        Path(entry.pop("file")).unlink()
    chosen = library_choice(n, gen.photos.shape[1], entries)
    return {
        "photos": n,
        "nlist": args.nlist or ann.nlist_for(n),
        "nlist_rule": "library (4 sqrt(n))"
        if not args.nlist
        else f"--nlist {args.nlist} (library: {ann.nlist_for(n)})",
        "timings": timings,
        "indexes": entries,
        "auto_choice": chosen,
        "neighbours_of_synthetic_queries": neighbour_stats(gen.sample(8, min(n, 50_000))) if n <= 100_000 else None,
    }


# ----------------------------------------------------------------------------- Milvus Lite


def run_milvus(n: int, gen: Synthetic, real: dict, args) -> dict:
    """Milvus Lite (pymilvus MilvusClient on a local .db) with HNSW: insert rate, flush, p50/p95, recall."""
    import shutil

    import faiss
    from pymilvus import DataType, MilvusClient

    from sketchfind.index import ann

    work = args.work / f"milvus-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    eval_q, sketch_q = gen.sample(8, args.queries), real["sketches"][: args.queries]
    queries = np.concatenate([eval_q, sketch_q])
    client = MilvusClient(str(work / "ret.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=gen.photos.shape[1])
    params = client.prepare_index_params()
    params.add_index(field_name="vec", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
    client.create_collection("ret", schema=schema, index_params=params)
    base = rss_mb()
    best = (np.full((len(queries), K), -np.inf, np.float32), np.full((len(queries), K), -1, np.int64))
    insert_s, t0 = 0.0, time.perf_counter()
    for start, x in gen.chunks(n):
        scores, ids = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        best = merge_top(best, (scores, ids + start))
        t = time.perf_counter()
        for s in range(0, len(x), 5000):
            rows = [{"id": start + s + i, "vec": v} for i, v in enumerate(x[s : s + 5000])]
            client.insert("ret", rows)
        insert_s += time.perf_counter() - t
        log(f"milvus {n}: {start + len(x)} inserted ({(start + len(x)) / insert_s:.0f}/s)")
        if time.perf_counter() - t0 > args.milvus_budget_s:
            return {"photos": n, "not_run": f"stopped after {start + len(x)} inserts in {insert_s:.0f} s"}
    t = time.perf_counter()
    client.flush("ret")
    client.load_collection("ret")
    flush_s = time.perf_counter() - t
    out = {"photos": n, "index": "HNSW M=16 efConstruction=200, IP", "insert_per_s": round(n / insert_s, 1)}
    out |= {"insert_s": round(insert_s, 1), "flush_index_load_s": round(flush_s, 1)}
    truth = {"synthetic": best[1][: len(eval_q)], "sketch": best[1][len(eval_q) :]}
    for q in eval_q[:10]:  # warm-up
        client.search("ret", data=[q.tolist()], anns_field="vec", limit=K, output_fields=["id"])
    for ef in (64, 128, 256):
        row = {}
        for name, qs in (("synthetic", eval_q), ("sketch", sketch_q)):
            times, found = [], []
            for q in qs:
                t = time.perf_counter()
                res = client.search(
                    "ret", data=[q.tolist()], anns_field="vec", limit=K, output_fields=["id"],
                    search_params={"metric_type": "IP", "params": {"ef": ef}},
                )  # fmt: skip
                times.append((time.perf_counter() - t) * 1000)
                found.append([hit["id"] for hit in res[0]] + [-1] * (K - len(res[0])))
            row[name] = {
                "p50_ms": round(float(np.percentile(times, 50)), 2),
                "p95_ms": round(float(np.percentile(times, 95)), 2),
                "recall_at_100": round(ann.recall_at(np.array(found), truth[name]), 4),
            }
        out[f"ef{ef}"] = row
    out["rss_mb"], out["rss_over_base_mb"] = round(rss_mb(), 1), round(rss_mb() - base, 1)
    out["disk_bytes"] = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
    out["disk_bytes_per_photo"] = round(out["disk_bytes"] / n, 1)
    client.close()
    shutil.rmtree(work, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = ["# First-stage search: exact SQ8 scan vs approximate FAISS vs Milvus Lite", ""]
    gen, settings = results.get("generator", {}), results.get("settings", {})
    lines += [f"Runs: {', '.join(f'{k}: {v}' for k, v in results.get('machines', {}).items())}", ""]
    lines += [f"Settings: {json.dumps(settings)}", ""]
    lines += [f"Vectors: {gen.get('kind')}; bandwidth {gen.get('bandwidth')} (leave-one-out choice over "]
    lines += [f"{gen.get('real_photos')} real photo [Ret]s of sketchy-mini, zse-lite0); neighbour cosines "]
    lines += [f"real {results.get('real_neighbours')}, synthetic at 3,125: {results.get('synthetic_neighbours')}.", ""]
    exp = settings.get("expansion") or {"qe_top": 10, "qe_weight": 2.0, "qe_alpha": 0.0}
    lines += [f"Vector width: {results.get('dim', 128)}.", ""]
    lines += ["p50/p95: ms per single query (synthetic queries; k = the 'judged at' depth). Recall@100: the share of"]
    lines += ["the exact float32 top-100 among the index's first 'judged at' results (100; 300 for 4-bit codes, whose"]
    lines += ["first 300 ann re-scores exactly), for held-out synthetic vectors ('synth') and real sketch [Ret]s"]
    lines += ["('sketch', with recall@10: ann's expansion step uses their top photos); 'expanded': sketch [Ret]s"]
    lines += [f"expanded with their {exp['qe_top']} nearest photos at weight {exp['qe_weight']:g}, alpha "]
    lines[-1] += f"{exp['qe_alpha']:g} (the shipped weights' settings), the query ann ranks with. Memory: index file;"
    lines += ["RSS of a fresh process that loaded it (and what loading added).", ""]
    head = "| photos | index | search params | judged at | p50 ms | p95 ms | recall@100 synth | recall@100 expanded "
    head += "| recall@100 / @10 sketch | index MB | bytes/photo | RSS MB (+index) | auto |"
    lines += [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sorted(results.get("sizes", {}), key=int):
        entry = results["sizes"][size]
        for name, e in entry["indexes"].items():
            syn, sk, ex = e["synthetic"], e["sketch"], e["expanded"]
            mark = "**chosen**" if name == entry["auto_choice"] else ""
            lines.append(
                f"| {int(size):,} | {name} `{e['type']}` | {e.get('search_params', {})} | {e.get('judged_at', K)} | "
                f"{syn['p50_ms']} | "
                f"{syn['p95_ms']} | {syn['recall_at_100']} | {ex['recall_at_100']} | "
                f"{sk['recall_at_100']} / {sk['recall_at_10']} | "
                f"{e['index_bytes'] / 2**20:.0f} | {e['bytes_per_photo']:.0f} | "
                f"{e['rss_mb']:.0f} (+{e['index_rss_mb']:.0f}) | {mark} |"
            )
    lines += ["", "Build times (s): " + "; ".join(f"{int(s):,}: {json.dumps(e['timings'])}" for s, e in
              sorted(results.get("sizes", {}).items(), key=lambda kv: int(kv[0])))]  # fmt: skip
    if results.get("milvus"):
        lines += ["", "## Milvus Lite (pymilvus MilvusClient on a local .db, in-process)", ""]
        lines += ["| photos | index | insert/s | flush+index+load s | ef | p50 ms | p95 ms | recall synth "]
        lines[-1] += "| recall sketch | RSS over base MB | disk B/photo |"
        lines += ["|---|---|---|---|---|---|---|---|---|---|---|"]
        for size in sorted(results["milvus"], key=int):
            m = results["milvus"][size]
            if "not_run" in m:
                lines.append(f"| {int(size):,} | not run: {m['not_run']} |||||||||")
                continue
            for ef in (64, 128, 256):
                r = m[f"ef{ef}"]
                lines.append(
                    f"| {int(size):,} | {m['index']} | {m['insert_per_s']:.0f} | {m['flush_index_load_s']} | {ef} | "
                    f"{r['synthetic']['p50_ms']} | {r['synthetic']['p95_ms']} | {r['synthetic']['recall_at_100']} | "
                    f"{r['sketch']['recall_at_100']} | {m['rss_over_base_mb']:.0f} | {m['disk_bytes_per_photo']:.0f} |"
                )
    for note in results.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- sizing on paper

# measured elsewhere: benchmarks/results/runtime.md (2026-12-02, ONNX Runtime, 2 cores): build_index 67 photos/s
CPU2_PHOTOS_PER_S = 67.0
CORES_PER_NODE = 32  # a common CPU node; throughput assumed to scale linearly from 2 cores (16x)
# not measured (no GPU here): ~0.4 GFLOP per photo (EfficientNet-Lite0 at 224 px + a 2-layer 128-wide
# encoder) lets one T4-class GPU encode ~2,000-3,000 photos/s; JPEG decoding + resizing at ~200 photos/s
# per core then bounds an 8-core GPU node at ~1,500 photos/s
GPU_NODE_PHOTOS_PER_S = 1500.0


def real_index_sizes(index_dir: Path) -> dict:
    """Bytes per photo of the real index (its index_info.json and its directory): tokens, global embedding,
    everything on disk."""
    from sketchfind.index.artefacts import read_info

    info = read_info(index_dir)
    photos = info["counts"]["photos"]
    disk = sum(f.stat().st_size for f in Path(index_dir).rglob("*") if f.is_file())
    tokens = info["tokens"]
    return {
        "photos": photos,
        "token_row_bytes": tokens["row_bytes"],
        "tokens_shape": f"{tokens['num_tokens']} x {tokens['width']}",
        "token_storage": tokens.get("storage", ""),
        "global_row_bytes": info["global_embedder"]["row_bytes"],
        "disk_bytes_per_photo": round(disk / photos),
    }


def sizing_md(results: dict) -> str:
    """The sizing table for 10^7, 10^8, 10^9 photos from the measured bytes per photo and throughputs."""
    from sketchfind.index import ann

    largest = max(results.get("sizes", {"0": None}), key=int)
    measured = results.get("sizes", {}).get(largest) or {"indexes": {}}
    per_photo = {name: e["bytes_per_photo"] for name, e in measured["indexes"].items()}
    milvus = [m for m in results.get("milvus", {}).values() if "rss_over_base_mb" in m]
    milvus_pp = max((m["rss_over_base_mb"] * 2**20 / m["photos"] for m in milvus), default=None)
    lines = ["# Sizing on paper: 10^7, 10^8, 10^9 photos", ""]
    lines += [f"Bytes per photo measured at {int(largest):,} photos (`first_stage.md`) unless marked; "]
    lines[-1] += "GB = 10^9 bytes, hours of one node."
    lines += ["", "| | per photo | 10^7 | 10^8 | 10^9 |", "|---|---|---|---|---|"]

    def row(label: str, nbytes: float | None, note: str = "") -> None:
        if nbytes is None:
            return
        cells = " | ".join(f"{nbytes * n / 1e9:,.1f} GB" for n in (1e7, 1e8, 1e9))
        lines.append(f"| {label}{note} | {nbytes:,.0f} B | {cells} |")

    dim, real = results.get("dim", 128), results.get("real_index", {})
    row(f"[Ret] float32 ({dim} x 4 B)", dim * 4)
    for name, label in (
        ("exact-sq8", "[Ret] exact SQ8 scan (memory)"),
        ("ivf-sq8", "[Ret] IVF-SQ8 (memory)"),
        ("ivf-pq-refine", "[Ret] IVF-PQ32 + SQ8 refine (memory)"),
        ("hnsw-sq8", "[Ret] HNSW32-SQ8 (memory)"),
    ):
        row(label, per_photo.get(name))
    if real:
        at = f" ({real['photos']:,} photos of sketchy-mini, index_info.json)"
        row(f"tokens {real['token_storage']}, {real['tokens_shape']} (disk)", real["token_row_bytes"], at)
        row("global embedding (disk, clustering)", real["global_row_bytes"], at)
        row("whole index directory (disk)", real["disk_bytes_per_photo"], at)
    row("Milvus HNSW M=16, float32 (memory)", dim * 4 + 2 * 16 * 4 + 8, " (estimate: vector + level-0 links + id)")
    row("Milvus Lite HNSW, measured RSS", milvus_pp, " (measured here)")
    row("Milvus IVF_SQ8 (memory)", dim + 8, " (estimate: codes + id)")
    lines += ["", "| encoding | photos/s | 10^7 | 10^8 | 10^9 | nodes for a 24 h build (10^7 / 10^8 / 10^9) |"]
    lines += ["|---|---|---|---|---|---|"]
    for label, rate in (
        ("CPU node, 2 cores (this machine, measured)", CPU2_PHOTOS_PER_S),
        (f"CPU node, {CORES_PER_NODE} cores (linear from 2 cores)", CPU2_PHOTOS_PER_S * CORES_PER_NODE / 2),
        ("GPU node, 1 T4-class GPU + 8 cores (estimate)", GPU_NODE_PHOTOS_PER_S),
    ):
        hours = [n / rate / 3600 for n in (1e7, 1e8, 1e9)]
        nodes = " / ".join(str(int(np.ceil(h / 24))) for h in hours)
        lines.append(f"| {label} | {rate:,.0f} | " + " | ".join(f"{h:,.0f} h" for h in hours) + f" | {nodes} |")
    lines += ["", "Derivations: CPU throughput is `build_index` end to end (read, hash, decode, encode, quantise, "]
    lines[-1] += f"commit) with ONNX Runtime on 2 cores, {CPU2_PHOTOS_PER_S:.0f} photos/s (`runtime.md`); "
    lines[-1] += "a larger node is assumed to scale linearly (decoding and encoding are per-photo work). The GPU "
    lines[-1] += "figure is an estimate, not a measurement: ~0.4 GFLOP per photo gives ~2,000-3,000 photos/s on a "
    lines[-1] += "T4-class GPU, and JPEG decoding + resizing (~200 photos/s per core) bounds an 8-core node at ~1,500."
    lines += ["The first stage must fit in memory; tokens are read only for the re-ranked head and can stay on disk "]
    lines[-1] += "(memory-mapped shards). "
    fits = {name: ann.MEMORY_BUDGET / b for name, b in per_photo.items() if name != "exact-sq8"}
    if "ivf-sq8" in fits:
        lines[-1] += f"The IVF-SQ8 index (~{per_photo['ivf-sq8']:.0f} B/photo) fits the "
        lines[-1] += f"{ann.MEMORY_BUDGET / 2**30:g} GiB budget up to "
        lines[-1] += f"~{fits['ivf-sq8'] / 1e6:.1f}M photos; "
    if "ivf-sq4" in fits:
        lines[-1] += f"4-bit codes (IVF-SQ4, ~{per_photo['ivf-sq4']:.0f} B/photo; ann re-scores their first 300 "
        lines[-1] += f"exactly) up to ~{fits['ivf-sq4'] / 1e6:.1f}M. "
    lines[-1] += "PQ codes would fit more, but IVF-PQ missed the recall target on these vectors even re-ranked on "
    lines[-1] += "SQ8 codes (`first_stage.md`), so 10^8-10^9 photos mean sharding (one shard of <= 10^7 photos per "
    lines[-1] += "2 GiB, or Milvus across nodes). Milvus HNSW keeps float32 vectors plus graph links in memory: "
    lines[-1] += f"~{(dim * 4 + 136) / (dim + 8):.1f}x the IVF-SQ8 bytes."
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-index", type=Path, help="a real index (labelled by folder) to fit the vectors on")
    parser.add_argument("--sizes", default="70k,1M", help="gallery sizes for FAISS ('' for none)")
    parser.add_argument("--milvus", default="", help="gallery sizes for Milvus Lite, e.g. 70k,1M")
    parser.add_argument("--candidates", default="ivf-sq8,ivf-pq-refine,hnsw-sq8,ivf-sq4")
    parser.add_argument("--hnsw-max", default="1M", help="largest size HNSW is built at (its build is slow)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the library's rule, ~4 sqrt(n))")
    parser.add_argument("--exact-queries", type=int, default=200, help="queries for the exact scan (slow at 10M)")
    parser.add_argument("--milvus-budget-s", type=float, default=1800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-first-stage"))
    parser.add_argument("--out", type=Path, default=RESULTS / "first_stage")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--query-file", help=argparse.SUPPRESS)
    parser.add_argument("--max-queries", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=K, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    import faiss

    faiss.omp_set_num_threads(args.threads)
    args.candidates = args.candidates.split(",")
    args.hnsw_max = parse_size(args.hnsw_max)
    args.work.mkdir(parents=True, exist_ok=True)
    real = real_vectors(args.real_index, args.work, args.queries)
    gen = Synthetic(real["photos"], real["labels"])
    log(f"bandwidth {gen.bandwidth}: {gen.curve}")
    out_json = args.out.with_suffix(".json")
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    stamp = machine()
    results["machines"] = {**results.get("machines", {}), stamp["date"]: stamp}
    results["generator"] = gen.describe()
    results["real_neighbours"] = neighbour_stats(real["photos"])
    results["synthetic_neighbours"] = neighbour_stats(gen.sample(8, len(real["photos"])))
    results["settings"] = {"threads": args.threads, "k": K, "queries": args.queries, "chunk": CHUNK}
    rank = expansion()
    results["settings"]["expansion"] = {"qe_top": rank.qe_top, "qe_weight": rank.qe_weight, "qe_alpha": rank.qe_alpha}
    results["dim"] = int(real["photos"].shape[1])
    results["real_index"] = real_index_sizes(args.real_index)

    def write() -> None:  # after every size, so a long run keeps what it measured
        out_json.write_text(json.dumps(results, indent=2))
        args.out.with_suffix(".md").write_text(markdown(results))

    for key, sizes, run, label in (
        ("sizes", args.sizes, run_faiss_size, "FAISS"),
        ("milvus", args.milvus, run_milvus, "Milvus Lite"),
    ):
        for size in filter(None, sizes.split(",")):
            n = parse_size(size)
            log(f"{label} at {n}")
            results.setdefault(key, {})[str(n)] = run(n, gen, real, args) | {"machine": machine()}
            write()
    write()
    (args.out.parent / "sizing.md").write_text(sizing_md(results))
    log(f"-> {out_json}")


if __name__ == "__main__":
    main()
