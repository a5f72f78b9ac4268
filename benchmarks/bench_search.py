"""Search benchmark: the three strategies side by side (speed at 1k/10k/70k photos, quality on
sketchy-mini), token storage (bytes per photo vs mAP), and index build vs raw encoder throughput.

    python benchmarks/bench_search.py                       # everything, the shipped zse-lite0
    python benchmarks/bench_search.py --weights best.safetensors --skip scaling   # quality with trained weights

Speed uses synthetic token sets of the real shapes (timing does not depend on what the tokens mean);
quality uses real photos and sketches (the unseen-25 classes of sketchy-mini). Each (size, strategy)
timing runs in its own process so its peak memory is its own. Results: benchmarks/results/search.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"
STRATEGIES = ("exhaustive", "clustered", "ann")
KINDS = ("fp32", "fp16", "int8", "int6", "int4")


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def load(name: str, weights: str | None):
    import sketchfind

    torch.manual_seed(0)
    return sketchfind.load_model(name, weights=weights) if weights else sketchfind.load_model(name, random_init=True)


def unseen_classes() -> list[str]:
    return (SKETCHY / "splits" / "unseen25.txt").read_text().split()


# ----------------------------------------------------------------------------- synthetic indexes


def synthetic_index(root: Path, n: int, model, n_classes: int = 125, seed: int = 0) -> Path:
    """An index of n photos with class-structured random tokens of the model's shapes (cached on disk)."""
    from sketchfind.index import PhotoRow, write_encoded
    from sketchfind.index.embedders import BackboneEmbedder

    out = root / f"synth-{model.cfg.name}-{n}"
    if (out / "index_info.json").is_file():
        return out
    rng = np.random.default_rng(seed)
    T, D, G = model.cfg.num_tokens, model.cfg.width, BackboneEmbedder(model).dim
    centers, gcenters = rng.normal(size=(n_classes, T, D)), rng.random((n_classes, G))
    norm = model.encoder.norm
    w, b = norm.weight.detach().numpy(), norm.bias.detach().numpy()

    def batches():
        for start in range(0, n, 2048):
            m = min(n, start + 2048) - start
            labels = rng.integers(0, n_classes, m)
            x = centers[labels] + rng.normal(size=(m, T, D))
            x = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True) * w + b  # LayerNorm outputs
            g = np.maximum(gcenters[labels] + 0.3 * rng.random((m, G)), 0)
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            rows = [
                PhotoRow(f"/synthetic/{labels[i]}/{start + i}.jpg", os.urandom(32), 30000, 0, str(labels[i]))
                for i in range(m)
            ]
            yield rows, x, g
        log(f"synthetic index {n}: clustering + FAISS")

    write_encoded(out, model, batches())
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """One (index, strategy) timing run in this process: prints a JSON line."""
    from sketchfind.search import Searcher

    torch.set_num_threads(args.threads)
    model = load(args.model, None)
    sketches = sorted((SKETCHY / "sketches").glob("*/*.png"))[::97][: args.queries]
    ann = {"rerank_k": args.rerank_k, "fusion": args.fusion, "qe_weight": args.qe_weight}
    with Searcher.open(args.index, model, **ann) as searcher:
        searcher.search(sketches[0], k=args.k, strategy="ann")  # warm-up (page cache, allocator)
        base_rss = peak_rss_mb()
        rows = []
        for path in sketches:
            t0 = time.perf_counter()
            query = searcher.encode_query(path)
            t1 = time.perf_counter()
            searcher.search_tokens(query, args.k, args.strategy)
            t2 = time.perf_counter()
            rows.append((t2 - t0, t1 - t0, t2 - t1))
        info = searcher.info()
    total, encode, search = (np.array(c) for c in zip(*rows, strict=True))
    print(
        json.dumps(
            {
                "n": info["counts"]["photos"],
                "strategy": args.strategy,
                "queries": len(rows),
                "p50_s": float(np.percentile(total, 50)),
                "p95_s": float(np.percentile(total, 95)),
                "search_p50_s": float(np.percentile(search, 50)),
                "search_p95_s": float(np.percentile(search, 95)),
                "encode_p50_s": float(np.percentile(encode, 50)),
                "peak_rss_mb": peak_rss_mb(),
                "rss_before_queries_mb": base_rss,
                "bytes_per_photo": info["bytes"]["per_photo"],
                "index_bytes": info["bytes"]["total"],
                "search_settings": info["search_settings"],
            }
        )
    )


def scaling(args, model) -> list[dict]:
    rows = []
    for n in args.sizes:
        index = synthetic_index(Path(args.work), n, model)
        # ann as the weights ship it, then with a relation-network head of K' photos (fusion 0.5)
        runs = [(s, None) for s in STRATEGIES] + [("ann", k) for k in args.ann_ks]
        for strategy, rerank_k in runs:
            queries = args.exhaustive_queries if strategy == "exhaustive" else args.queries
            variant = ["--rerank-k", str(rerank_k), "--fusion", "0.5"] if rerank_k else []
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--index",
                str(index),
                "--strategy",
                strategy,
                "--queries",
                str(queries),
                "--threads",
                str(args.threads),
                "--model",
                args.model,
                "--k",
                "100",
                *variant,
            ]
            log(f"scaling n={n} {strategy} {variant} ({queries} queries)")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            rows[-1]["rerank_k"] = rows[-1]["search_settings"]["rank"]["rerank_k"]
            if rerank_k:
                rows[-1]["strategy"] = f"ann + RN head K'={rerank_k}"
            log(json.dumps(rows[-1]))
    return rows


# ----------------------------------------------------------------------------- quality


def encode_photos(model, paths: list[Path], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    from sketchfind.preprocess import preprocess_photo

    tokens, globs = [], []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([preprocess_photo(p, model.cfg.preprocess) for p in paths[i : i + batch]])
            t, g = model.encode_with_global(x)
            tokens.append(t.numpy())
            globs.append(g.numpy())
    return np.concatenate(tokens), np.concatenate(globs)


def make_index(out: Path, model, kind: str, paths, labels, tokens, globs) -> Path:
    """The index build_index would write for these photos (tokens encoded once, stored as ``kind``)."""
    import hashlib

    from sketchfind.index import PhotoRow, write_encoded

    rows = [
        PhotoRow(str(p), hashlib.sha256(p.read_bytes()).digest(), p.stat().st_size, 0, lab)
        for p, lab in zip(paths, labels, strict=True)
    ]
    write_encoded(out, model, [(rows, tokens, globs)], token_storage=kind)
    return out


def ranking_metrics(rank_lists, gallery_ids, q_labels, g_labels) -> dict:
    """mAP@all, mAP@100, P@100 from full rankings (lists of photo ids, best first)."""
    from sketchfind.metrics import retrieval_metrics

    col = {int(i): j for j, i in enumerate(gallery_ids)}
    dist = np.full((len(rank_lists), len(gallery_ids)), np.inf)
    for q, ids in enumerate(rank_lists):
        dist[q, [col[i] for i in ids]] = np.arange(len(ids))
    return retrieval_metrics(dist, np.array(q_labels), np.array(g_labels), map_ks=(100,), precision_ks=(100,))


def sweep_settings() -> list[dict]:
    """ann settings compared in the quality part: expansion on/off x relation-network heads."""
    out = []
    for qe_top, qe_weight in ((10, 0.0), (5, 1.0), (10, 1.0), (10, 2.0)):
        out.append({"rerank_k": 25, "fusion": 1.0, "qe_top": qe_top, "qe_weight": qe_weight})
        for rerank_k in (10, 25, 50):
            for fusion in (0.5, 0.75):
                out.append({"rerank_k": rerank_k, "fusion": fusion, "qe_top": qe_top, "qe_weight": qe_weight})
    return out


def setting_name(s: dict) -> str:
    head = "no RN" if s["fusion"] >= 1 else f"RN head K'={s['rerank_k']} f={s['fusion']:g}"
    qe = "no expansion" if s["qe_weight"] == 0 else f"expansion {s['qe_top']}x{s['qe_weight']:g}"
    return f"{qe}, {head}"


def evaluate(args, model, classes: list[str], kinds, sweep_kinds, name: str) -> dict:
    """Every strategy (+ the ann sweep) per token storage on the photos and sketches of ``classes``."""
    from sketchfind.models import model_fingerprint
    from sketchfind.search import Searcher

    photos = [p for c in classes for p in sorted((SKETCHY / "photos" / c).glob("*.jpg"))]
    labels = [p.parent.name for p in photos]
    per_class = None if args.all_queries else 3
    sketches = [p for c in classes for p in sorted((SKETCHY / "sketches" / c).glob("*.png"))[:per_class]]
    q_labels = [p.parent.name for p in sketches]
    log(f"quality {name}: {len(photos)} photos, {len(sketches)} sketches")
    cache = Path(args.work) / f"photos-{model_fingerprint(model)}-{name}-{len(photos)}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            tokens, globs = z["tokens"], z["globs"]
    else:
        tokens, globs = encode_photos(model, photos)
        np.savez(cache, tokens=tokens, globs=globs)
    result = {
        "classes": name,
        "gallery": len(photos),
        "queries": len(sketches),
        "protocol": "3 sketches per class (reference)" if per_class else "all sketches",
        "kinds": {},
    }
    root = Path(args.work) / f"quality-{name}-{int(time.time())}"
    for kind in kinds:
        index = make_index(root / kind, model, kind, photos, labels, tokens, globs)
        with Searcher.open(index, model) as searcher:
            gids = searcher.state.snapshot.ids
            queries = [searcher.encode_query(p) for p in sketches]
            metrics = functools.partial(ranking_metrics, gallery_ids=gids, q_labels=q_labels, g_labels=labels)
            entry = {"bytes_per_photo_tokens": searcher.store.codec.row_bytes}
            log(f"quality {name} {kind}: exhaustive")
            exh = []
            t0 = time.perf_counter()
            for q in queries:
                hits, _ = searcher.search_tokens(q, None, "exhaustive")
                exh.append([h.photo_id for h in hits])
            entry["exhaustive"] = {**metrics(exh), "seconds_per_query": (time.perf_counter() - t0) / len(queries)}
            log(f"quality {name} {kind}: clustered, ann")
            entry["clustered"] = metrics(
                [[h.photo_id for h in searcher.search_tokens(q, None, "clustered")[0]] for q in queries]
            )
            entry["ann"] = metrics([[h.photo_id for h in searcher.search_tokens(q, None, "ann")[0]] for q in queries])
            entry["ann_settings"] = {k: v for k, v in asdict(searcher.settings).items() if k != "ann_params"}
            plain = {"fusion": 1.0, "qe_weight": 0.0}
            entry["ret_only"] = metrics(ann_rankings(searcher.root, model, queries, plain))
            if kind in sweep_kinds:
                entry["ann_sweep"] = {
                    setting_name(s): metrics(ann_rankings(searcher.root, model, queries, s)) for s in sweep_settings()
                }
        result["kinds"][kind] = entry
        log(json.dumps({kind: {s: entry[s] for s in ("exhaustive", "clustered", "ann")}}))
    return result


def choose_operating_point(sweep: dict, tolerance: float = 0.002) -> str:
    """The first setting of the sweep (cheapest first: no relation network, smaller K') whose mAP@100 is
    within ``tolerance`` of the best."""
    best = max(m["map_100"] for m in sweep.values())
    return next(name for name in sweep if sweep[name]["map_100"] >= best - tolerance)


def quality(args, model) -> dict:
    """Reported figures on the unseen-25 (zero-shot) classes; ann's K' and fusion weight are chosen on the
    trainer's validation classes (seen classes held out from training), never on the test classes."""
    from sketchfind.datasets import split_classes

    test = evaluate(args, model, unseen_classes(), args.kinds or KINDS, ("int6", "fp32"), "unseen25")
    _, val, _ = split_classes(SKETCHY, SKETCHY / "splits" / "unseen25.txt", args.val_classes, args.val_seed)
    selection = evaluate(args, model, val.classes, ("int6",), ("int6",), "val")
    chosen = choose_operating_point(selection["kinds"]["int6"]["ann_sweep"])
    test["selection"] = {
        "classes": val.classes,
        "chosen": chosen,
        "rule": choose_operating_point.__doc__,
        "val": selection,
        "chosen_on_test": test["kinds"]["int6"]["ann_sweep"][chosen],
    }
    return test


def ann_rankings(index: Path, model, queries, settings: dict) -> list[list[int]]:
    """Full ann rankings (photo ids) of the encoded queries under other settings, by the real Searcher."""
    from sketchfind.search import Searcher

    with Searcher.open(index, model, **settings) as searcher:
        return [[h.photo_id for h in searcher.search_tokens(q, None, "ann")[0]] for q in queries]


# ----------------------------------------------------------------------------- build throughput


def build_throughput(args, model) -> dict:
    from sketchfind.index import build_index
    from sketchfind.preprocess import preprocess_photo

    photos = sorted((SKETCHY / "photos").glob("*/*.jpg"))[::7][: args.build_photos]
    x = torch.stack([preprocess_photo(p, model.cfg.preprocess) for p in photos])

    def raw_throughput(images: torch.Tensor) -> float:
        with torch.inference_mode():
            model.encode_with_global(images[:4])
            t0 = time.perf_counter()
            for i in range(0, len(images), 32):
                model.encode_with_global(images[i : i + 32])
            return len(images) / (time.perf_counter() - t0)

    raw = raw_throughput(x)  # NCHW, what build_index feeds the model (a PyTorch model goes channels-last itself)
    out = Path(args.work) / f"build-{int(time.time())}"
    report = build_index(photos, out, model, batch_size=32)
    encode_only = len(photos) / report.encode_seconds
    return {
        "photos": len(photos),
        "batch_size": 32,
        "encoder_photos_per_s": raw,
        "build_photos_per_s": report.photos_per_second,
        "build_seconds": report.seconds,
        "encode_seconds_inside_build": report.encode_seconds,
        "encoder_inside_build_photos_per_s": encode_only,
        "ratio": report.photos_per_second / raw,
    }


# ----------------------------------------------------------------------------- report


def machine(args) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import faiss

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def ratios(rows: list[dict]) -> list[dict]:
    """clustered / ann and exhaustive / ann per size and ann operating point, from the same run."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        by = {r["strategy"]: r for r in rows if r["n"] == n}
        if "clustered" not in by or "exhaustive" not in by:
            continue
        cl, ex = by["clustered"], by["exhaustive"]
        for ann in (r for name, r in by.items() if name.startswith("ann")):
            out.append(
                {
                    "n": n,
                    "ann": ann["strategy"],
                    "clustered_over_ann": cl["p50_s"] / ann["p50_s"],
                    "exhaustive_over_ann": ex["p50_s"] / ann["p50_s"],
                    "clustered_over_ann_search_only": cl["search_p50_s"] / ann["search_p50_s"],
                    "exhaustive_over_ann_search_only": ex["search_p50_s"] / ann["search_p50_s"],
                }
            )
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Search benchmark",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, "
        f"torch threads {res['machine']['torch_threads']}, load average at start "
        f"{', '.join(f'{v:.1f}' for v in res['machine']['load_avg_start'])}; {res['machine']['date']}.",
        f"Model: {res['settings']['model']} ({res['settings']['weights'] or 'random init'}); "
        f"ann as the weights ship it: {res['settings'].get('ann_settings')}; k = 100; "
        f"runtime {res['settings'].get('runtime', 'not recorded')}.",
        "",
    ]
    if res.get("scaling"):
        lines += [
            "## Speed (synthetic tokens of the real shapes)",
            "",
            "| photos | strategy | queries | p50 s | p95 s | search-only p50 s | peak RSS MB | bytes/photo |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['n']} | {r['strategy']} | {r['queries']} | {r['p50_s']:.4f} | {r['p95_s']:.4f} | "
            f"{r['search_p50_s']:.4f} | {r['peak_rss_mb']:.0f} | {r['bytes_per_photo']:.0f} |"
            for r in res["scaling"]
        ]
        lines += [
            "",
            "| photos | ann | clustered / ann | exhaustive / ann | clustered / ann, exhaustive / ann: search only |",
            "|---:|---|---:|---:|---|",
        ]
        lines += [
            f"| {r['n']} | {r['ann']} | {r['clustered_over_ann']:.1f}x | {r['exhaustive_over_ann']:.0f}x | "
            f"{r['clustered_over_ann_search_only']:.1f}x / {r['exhaustive_over_ann_search_only']:.0f}x |"
            for r in res["ratios"]
        ]
        if res.get("marginal_bytes_per_photo"):
            lo, hi = res["marginal_between"]
            lines += [
                "",
                f"Marginal index bytes per photo ({hi} - {lo}): {res['marginal_bytes_per_photo']:.0f} "
                f"(fp32 tokens: {res['fp32_token_bytes']}).",
            ]
    if res.get("quality"):
        q = res["quality"]
        lines += [
            "",
            f"## Quality on sketchy-mini ({q['classes']}, {q['gallery']} photos, {q['queries']} queries: "
            f"{q['protocol']})",
            "",
            "| storage | token bytes/photo | strategy | mAP@all | mAP@100 | P@100 |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for kind, e in q["kinds"].items():
            for s in ("exhaustive", "clustered", "ann", "ret_only"):
                if s not in e:
                    continue
                m = e[s]
                lines.append(
                    f"| {kind} | {e['bytes_per_photo_tokens']} | {s} | {m['map_all']:.4f} | "
                    f"{m['map_100']:.4f} | {m['p_100']:.4f} |"
                )
        for kind in ("int6", "fp32"):
            if kind in q["kinds"] and "ann_sweep" in q["kinds"][kind]:
                lines += [
                    "",
                    f"ann settings ({kind}): query expansion x relation-network head",
                    "",
                    "| setting | mAP@all | mAP@100 | P@100 |",
                    "|---|---:|---:|---:|",
                ]
                lines += [
                    f"| {name} | {m['map_all']:.4f} | {m['map_100']:.4f} | {m['p_100']:.4f} |"
                    for name, m in q["kinds"][kind]["ann_sweep"].items()
                ]
    if res.get("quality", {}).get("selection"):
        sel = res["quality"]["selection"]
        val = sel["val"]["kinds"]["int6"]
        lines += [
            "",
            f"ann as shipped: {q['kinds'].get('int6', {}).get('ann_settings')} (chosen in training on the "
            f"validation classes). The best setting of this sweep on {len(sel['classes'])} validation classes "
            f"(seen, held out from training; cheapest within 0.002 mAP@100): "
            f"**{sel['chosen']}** (val mAP@100 {val['ann_sweep'][sel['chosen']]['map_100']:.4f}; "
            f"val exhaustive {val['exhaustive']['map_100']:.4f}, clustered {val['clustered']['map_100']:.4f}, "
            f"ret only {val['ret_only']['map_100']:.4f}); on the unseen-25 classes it gives mAP@all "
            f"{sel['chosen_on_test']['map_all']:.4f}, mAP@100 {sel['chosen_on_test']['map_100']:.4f}, "
            f"P@100 {sel['chosen_on_test']['p_100']:.4f}.",
        ]
    if res.get("build"):
        b = res["build"]
        lines += [
            "",
            "## Index build vs raw encoder",
            "",
            f"{b['photos']} real photos, batch {b['batch_size']}: encoder {b['encoder_photos_per_s']:.1f} "
            f"photos/s, index build {b['build_photos_per_s']:.1f} photos/s "
            f"(**{100 * b['ratio']:.0f}%**; encoder inside the build {b['encoder_inside_build_photos_per_s']:.1f}"
            " photos/s). Both feed the same NCHW batches.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zse-lite0")
    p.add_argument("--weights", default=None, help="trained weights for the quality part (default: random init)")
    p.add_argument("--sizes", default="1000,10000,70000")
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--exhaustive-queries", type=int, default=2)
    p.add_argument("--rerank-k", type=int, default=None, help="ann K' (default: the weights' setting)")
    p.add_argument("--fusion", type=float, default=None, help="ann fusion (default: the weights' setting)")
    p.add_argument("--qe-weight", type=float, default=None, help="ann expansion (default: the weights' setting)")
    p.add_argument("--ann-ks", default="10,25", help="ann + relation-network head of K' photos, timed too")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--build-photos", type=int, default=192)
    p.add_argument("--all-queries", action="store_true", help="quality over every sketch, not 3 per class")
    p.add_argument("--kinds", default=None, help="token storages for the quality part (default: all)")
    p.add_argument("--val-classes", type=int, default=15, help="the trainer's validation classes (selection)")
    p.add_argument("--val-seed", type=int, default=2021, help="the trainer's class-split seed")
    p.add_argument("--skip", default="", help="comma list of parts to skip: scaling,quality,build")
    p.add_argument("--work", default="/tmp/sketchfind-bench")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="search")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=100, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.ann_ks = [int(s) for s in args.ann_ks.split(",") if s]
    args.kinds = args.kinds.split(",") if args.kinds else None
    skip = set(args.skip.split(","))
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = {
        "machine": machine(args),
        "settings": {
            "model": args.model,
            "weights": args.weights,
            "queries": args.queries,
            "exhaustive_queries": args.exhaustive_queries,
        },
    }
    timing_model = load(args.model, None)
    from sketchfind.rerank import RankSettings

    res["settings"]["ann_settings"] = RankSettings.from_metadata(timing_model.weights_metadata).__dict__
    from sketchfind.runtime import resolve_runtime

    res["settings"]["runtime"] = resolve_runtime(None, args.model)  # SKETCHFIND_RUNTIME, else auto's choice
    if "scaling" not in skip:
        res["scaling"] = scaling(args, timing_model)
        res["ratios"] = ratios(res["scaling"])
        by_n = {r["n"]: r for r in res["scaling"] if r["strategy"] == "ann"}
        if len(by_n) > 1:
            lo, hi = min(by_n), max(by_n)
            res["marginal_bytes_per_photo"] = (by_n[hi]["index_bytes"] - by_n[lo]["index_bytes"]) / (hi - lo)
            res["marginal_between"] = [lo, hi]
        res["fp32_token_bytes"] = timing_model.cfg.num_tokens * timing_model.cfg.width * 4
    if "quality" not in skip:
        res["quality"] = quality(args, load(args.model, args.weights))
    if "build" not in skip:
        res["build"] = build_throughput(args, load(args.model, args.weights))
    res["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=2))
    (out / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
