"""Milvus vs FAISS as ann's first stage: the same mAP on sketchy-mini, first-stage latency, index types.

    python benchmarks/bench_milvus.py --threads 2                      # everything (~5 min on 2 cores)
    python benchmarks/bench_milvus.py --skip synthetic --per-class 3   # quick: quality on 75 sketches

- **quality**: sketchy-mini's unseen-25 classes (625 photos) indexed once with the shipped zse-lite0 and the
  Milvus backend (a Milvus Lite file); every sketch (or ``--per-class`` per class) ranked over the whole
  gallery by the real ``Searcher`` (ann as the weights ship it) through FAISS (the index's default SQ8 file)
  and through Milvus, from the same encoded queries: mAP@all, mAP@200, P@100 of both, and how often the top
  10 differ.
- **latency**: the first stage alone (the search call ann makes: k = qe_top and k = 100), p50/p95 ms per
  query, FAISS (SQ8 as shipped, Flat) vs Milvus Lite (FLAT, HNSW, IVF_FLAT), with recall@k against exact
  search and build time; on the real [Ret] embeddings of all 3,125 sketchy-mini photos (sketch [Ret] as
  queries) and on ``--synthetic`` (70,000) random unit vectors of the same width. Milvus Lite keeps fresh rows
  in a memtable it scans exactly; its index covers flushed segments, so every Milvus row is measured after
  ``flush`` (the state a server reaches once its segments are sealed).
Results: benchmarks/results/milvus.{json,md}. Milvus Lite runs inside this process (a gRPC server thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"
WEIGHTS = HERE.parent / "src" / "sketchfind" / "weights" / "zse-lite0.safetensors"
MILVUS_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
FAISS_TYPES = ("SQ8", "Flat")


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- quality


def quality(args, model, tmp: Path) -> dict:
    """mAP through FAISS (the SQ8 file, and exact Flat) and through Milvus: same index, same encoded queries."""
    from sketchfind.datasets import read_class_file, scan_root
    from sketchfind.index import build_index
    from sketchfind.metrics import retrieval_metrics
    from sketchfind.search import Searcher

    split = scan_root(SKETCHY, read_class_file(args.classes))
    photos, _ = split.flat("photos")
    sketch_files = [f for c in split.classes for f in split.sketches[c][: args.per_class or None]]
    q_labels = np.array([split.classes.index(f.parent.name) for f in sketch_files])
    t0 = time.perf_counter()
    build_index(photos, tmp / "quality", model, label_from_folder=True, milvus_uri=str(tmp / "quality.db"))
    log(f"quality: indexed {len(photos)} photos in {time.perf_counter() - t0:.0f} s")
    seal(tmp / "quality")
    out = {"photos": len(photos), "queries": len(sketch_files), "classes": len(split.classes)}
    rankings = {}
    with Searcher.open(tmp / "quality", model, backend="faiss") as searcher:
        queries = [searcher.encode_query(f) for f in sketch_files]
        settings = searcher.settings.rank
    for name, backend in (("faiss", "faiss"), ("faiss_flat", "faiss"), ("milvus", "milvus")):
        with Searcher.open(tmp / "quality", model, backend=backend) as searcher:
            if name == "faiss_flat":
                exact_first_stage(searcher)
            ids = searcher.state.snapshot.ids
            g_labels = np.array([split.classes.index(lab) for lab in searcher.state.labels])
            scores = np.zeros((len(queries), len(ids)), np.float32)
            tops, first_ms = [], []
            for row, query in enumerate(queries):
                hits, timings = searcher.search_tokens(query, None, "ann")
                positions = np.searchsorted(ids, [h.photo_id for h in hits])
                scores[row, positions] = len(ids) - np.arange(len(hits))  # the ranking as a score
                tops.append([h.photo_id for h in hits[:10]])
                first_ms.append(timings["first_stage"] * 1e3)
            rankings[name] = tops
            metrics = retrieval_metrics(-scores, q_labels, g_labels, map_ks=(200,), precision_ks=(100,))
            out[name] = {**metrics, "first_stage_p50_ms_whole_gallery": float(np.percentile(first_ms, 50))}
            log(f"quality {name}: mAP@all {metrics['map_all']:.4f}")
    out["map_all_difference"] = out["milvus"]["map_all"] - out["faiss"]["map_all"]
    for other in ("faiss", "faiss_flat"):
        pairs = zip(rankings[other], rankings["milvus"], strict=True)
        out[f"top10_differs_from_{other}"] = float(np.mean([a != b for a, b in pairs]))
    out["ann_settings"] = {"qe_top": settings.qe_top, "qe_weight": settings.qe_weight, "rerank_k": settings.rerank_k}
    return out


def seal(index_dir: Path) -> None:
    """Flushes the index's collection and waits for its index: searched through HNSW, not Lite's memtable scan."""
    from sketchfind.index import IndexStore
    from sketchfind.index.milvus import open_collection
    from sketchfind.index.vectors import backend_spec

    with IndexStore.open(index_dir) as store, open_collection(backend_spec(store.meta), store) as vectors:
        vectors.client.flush(vectors.spec.collection)
        wait_for_index(vectors)


def exact_first_stage(searcher) -> None:
    """Swaps the Searcher's FAISS SQ8 first stage for an exact float one (FAISS Flat) over the same vectors."""
    from dataclasses import replace

    from sketchfind.index.artefacts import build_ann, ret_embeddings

    state = searcher.state
    flat = build_ann(ret_embeddings(searcher.store, state.snapshot), "Flat")
    searcher._state = replace(state, first_stage=flat)


# ----------------------------------------------------------------------------- first-stage latency


def real_vectors(args, model, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """[Ret] embeddings of every sketchy-mini photo (through a real index) and of sketch queries."""
    from sketchfind.index import IndexStore, build_index
    from sketchfind.index.artefacts import ret_embeddings
    from sketchfind.rerank import normalize
    from sketchfind.search import Searcher

    folders = sorted(p for p in (SKETCHY / "photos").iterdir() if p.is_dir())[: args.gallery_classes or None]
    t0 = time.perf_counter()
    build_index(folders, tmp / "all", model, label_from_folder=True)
    log(f"latency: indexed all sketchy-mini photos in {time.perf_counter() - t0:.0f} s")
    with IndexStore.open(tmp / "all") as store:
        gallery = ret_embeddings(store, store.snapshot())
    sketches = sorted((SKETCHY / "sketches").rglob("*.png"))[:: max(1, 3125 // args.queries)][: args.queries]
    with Searcher.open(tmp / "all", model, backend="faiss") as searcher:
        queries = [searcher.model.retrieval_embedding(searcher.encode_query(f)).numpy()[0] for f in sketches]
    return gallery, normalize(np.array(queries, np.float32))


def synthetic_vectors(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 125 class centres (like a gallery of classes), and queries near random centres."""
    from sketchfind.rerank import normalize

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(125, dim)).astype(np.float32)
    gallery = centres[rng.integers(0, 125, n)] + 1.5 * rng.normal(size=(n, dim)).astype(np.float32)
    query = centres[rng.integers(0, 125, queries)] + 1.5 * rng.normal(size=(queries, dim)).astype(np.float32)
    return normalize(gallery).astype(np.float32), normalize(query).astype(np.float32)


def percentiles(times_s: list[float]) -> dict:
    ms = np.array(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def timed_searches(search, queries: np.ndarray, k: int, warmup: int = 5) -> tuple[dict, np.ndarray]:
    """p50/p95 of one-query searches and the (Q, k) ids found."""
    for q in queries[:warmup]:
        search(q[None], k)
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = search(q[None], k)
        times.append(time.perf_counter() - t0)
        found.append(ids[0])
    return percentiles(times), np.array(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top k that was found."""
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def first_stage(name: str, gallery: np.ndarray, queries: np.ndarray, ks: tuple[int, ...], tmp: Path) -> dict:
    """Every FAISS and Milvus Lite first stage over one gallery: build seconds, p50/p95, recall@k."""
    from sketchfind.index.artefacts import build_ann
    from sketchfind.index.milvus import MilvusVectors
    from sketchfind.index.vectors import MilvusSpec

    exact = {k: np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k] for k in ks}
    rows = []

    def measure(label: str, search, build_s: float, **extra) -> None:
        row = {"gallery": name, "n": len(gallery), "backend": label, "build_s": build_s, **extra}
        for k in ks:
            times, found = timed_searches(search, queries, k)
            row[f"k{k}"] = {**times, "recall": recall(found, exact[k])}
        rows.append(row)
        log(f"{name} {label}: " + ", ".join(f"k={k} p50 {row[f'k{k}']['p50_ms']:.2f} ms" for k in ks))

    for ann_type in FAISS_TYPES:
        t0 = time.perf_counter()
        index = build_ann(gallery, ann_type)
        measure(f"FAISS {ann_type}", index.search, time.perf_counter() - t0)
    ids = np.arange(len(gallery), dtype=np.int64)
    for index_type in MILVUS_TYPES:
        spec = MilvusSpec(str(tmp / f"{name}-{index_type}.db"), "bench", index_type)
        vectors = MilvusVectors.connect(spec, dim=gallery.shape[1], owner="bench", create=True)
        try:
            t0 = time.perf_counter()
            vectors.upsert(ids, np.zeros(len(ids), np.int64), gallery)
            vectors.client.flush(spec.collection)  # seal: searched through the index, as a server's sealed segments
            wait_for_index(vectors)
            measure(f"Milvus Lite {index_type}", vectors.search, time.perf_counter() - t0, params=vectors.search_params)
        finally:
            vectors.close()
            _release_lite(spec.uri)
    return {"rows": rows}


def wait_for_index(vectors, timeout_s: float = 600) -> None:
    """Until Milvus reports every row indexed (Lite builds indexes in a background worker after a flush)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = vectors.client.describe_index(vectors.spec.collection, "ret")
        if not state.get("pending_index_rows") and state.get("indexed_rows") == state.get("total_rows"):
            return
        time.sleep(0.5)
    log("the Milvus index was still building: measured anyway")


def _release_lite(uri: str) -> None:
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


# ----------------------------------------------------------------------------- report


def machine(args) -> dict:
    import faiss
    import milvus_lite
    import pymilvus

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": args.threads,
        "faiss": faiss.__version__,
        "pymilvus": pymilvus.__version__,
        "milvus_lite": milvus_lite.__version__,
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Milvus vs FAISS as ann's first stage",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; load average at start "
        f"{', '.join(f'{v:.1f}' for v in m['load_avg_start'])}, at end "
        f"{', '.join(f'{v:.1f}' for v in m['load_avg_end'])}; pymilvus {m['pymilvus']}, milvus-lite "
        f"{m['milvus_lite']}, faiss {m['faiss']}; {m['date']}. Settings: {json.dumps(res['settings'])}.",
    ]
    q = res.get("quality")
    if q:
        lines += [
            "",
            f"## Quality: unseen-25 of sketchy-mini ({q['photos']} photos, {q['queries']} sketches, whole-gallery "
            f"rankings, ann as shipped: {q['ann_settings']})",
            "",
            "| first stage | mAP@all | mAP@200 | P@100 |",
            "|---|---|---|---|",
        ]
        for backend, label in (
            ("faiss", "FAISS SQ8 (the default file)"),
            ("faiss_flat", "FAISS Flat (exact, float)"),
            ("milvus", "Milvus Lite HNSW (the Milvus default)"),
        ):
            r = q[backend]
            lines.append(f"| {label} | {r['map_all']:.4f} | {r['map_200']:.4f} | {r['p_100']:.4f} |")
        lines += [
            "",
            f"mAP@all difference (Milvus - FAISS): {q['map_all_difference']:+.4f} (target: within 0.005); "
            f"queries whose top 10 through Milvus differ from FAISS SQ8's: {100 * q['top10_differs_from_faiss']:.1f}%, "
            f"from exact FAISS Flat's: {100 * q['top10_differs_from_faiss_flat']:.1f}% (SQ8's 8-bit codes reorder "
            "near-ties; Milvus stores float vectors).",
        ]
    for part in res.get("latency", []):
        ks = [key for key in part["rows"][0] if key.startswith("k")]
        lines += [
            "",
            f"## First stage alone: {part['rows'][0]['gallery']} ({part['rows'][0]['n']:,} vectors, "
            f"{part['queries']} one-vector queries)",
            "",
            "| backend | build s | " + " | ".join(f"{k} p50 ms | {k} p95 ms | {k} recall" for k in ks) + " |",
            "|---|---|" + "---|---|---|" * len(ks),
        ]
        for r in part["rows"]:
            cells = " | ".join(f"{r[k]['p50_ms']:.2f} | {r[k]['p95_ms']:.2f} | {r[k]['recall']:.3f}" for k in ks)
            lines.append(f"| {r['backend']} | {r['build_s']:.2f} | {cells} |")
    lines += ["", res["notes"], ""]
    for part in res.get("latency", []):
        for r in part["rows"]:
            if r["backend"] == "Milvus Lite HNSW":
                recalls = ", ".join(f"{k} {r[k]['recall']:.3f}" for k in r if k.startswith("k"))
                lines.append(f"- HNSW recall on {r['gallery']}: {recalls}.")
    lines.append("")
    return "\n".join(lines)


NOTES = (
    "Milvus Lite serves from a gRPC server thread inside the searching process: its times include a gRPC "
    "round trip and its Python engine, so they bound what a Milvus server on the same host would add per query "
    "(a server adds a network hop but searches in C++). FAISS runs in-process with no round trip. Index "
    "types: HNSW (M 16, efConstruction 200, ef 128), IVF_FLAT (nlist 128, nprobe 16; trained on the gallery, so "
    "a gallery much smaller than 39 x nlist clusters poorly), FLAT (exact, linear in the gallery)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--classes", default=str(SKETCHY / "splits" / "unseen25.txt"))
    parser.add_argument("--per-class", type=int, default=0, help="sketches per class for quality (0: all)")
    parser.add_argument("--gallery-classes", type=int, default=0, help="latency gallery: first N classes (0: all)")
    parser.add_argument("--queries", type=int, default=200, help="one-vector queries per latency measurement")
    parser.add_argument("--synthetic", type=int, default=70000, help="synthetic gallery size (0: skip)")
    parser.add_argument("--ks", default="10,100", help="first-stage k values (10 = the shipped qe_top)")
    parser.add_argument("--skip", default="", help="comma list of: quality, latency, synthetic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    ks = tuple(int(k) for k in args.ks.split(","))

    import sketchfind

    model = sketchfind.load_model("zse-lite0", weights=args.weights)
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    res = {"machine": machine(args), "settings": settings, "notes": NOTES, "latency": []}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
        tmp = Path(tmp)
        if "quality" not in skip:
            res["quality"] = quality(args, model, tmp)
            save(res, out)  # after every part: a long run that is stopped keeps what it measured
        if "latency" not in skip:
            gallery, queries = real_vectors(args, model, tmp)
            part = first_stage("sketchy-mini [Ret]", gallery, queries, ks, tmp)
            res["latency"].append({**part, "queries": len(queries)})
            save(res, out)
        if "synthetic" not in skip and args.synthetic:
            gallery, queries = synthetic_vectors(args.synthetic, model.cfg.width, args.queries)
            part = first_stage(f"synthetic {args.synthetic // 1000}k", gallery, queries, ks, tmp)
            res["latency"].append({**part, "queries": len(queries)})
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_all()
    print(save(res, out))


def save(res: dict, out: Path) -> str:
    """Writes milvus.json and milvus.md (load average at the end: now); returns the Markdown."""
    res["machine"]["load_avg_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "milvus.json").write_text(json.dumps(res, indent=2))
    text = markdown(res)
    (out / "milvus.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
