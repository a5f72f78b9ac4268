"""Runtime benchmark: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 encoders in the same run, plus the
bf16 relation head.

    python benchmarks/bench_runtime.py --threads 2            # everything (a few minutes on 2 cores)
    python benchmarks/bench_runtime.py --quick --skip full    # lite0 only, fewer repetitions

Sections:
  query    sketch query end to end (read + preprocess + encode) p50/p90 per runtime, zse-lite0
  int8     int8 vs fp32 encoders: ms/photo (batch 32), ms/sketch (batch 1), token and [Ret] error, and the
           agreement of the ann ranking (top-10 overlap, mAP@all) on the validation classes (where the
           recipe was chosen) and on unseen-25 (625 sketches vs their 625 photos; for this report only)
  search   per-query latency per strategy (encode included) on a real sketchy-mini index, per runtime
  build    build_index photos/s on real photos (read, hash, decode, encode, quantise, commit, cluster)
  full     zse-vit-b16 (random weights: timing does not depend on them): encode batch 1, and the
           cross-attention + relation head per pair, fp32 per runtime and bf16 (PyTorch)
  bf16     ranking agreement of the bf16 relation head vs fp32 on sketchy-mini (top-10 overlap, mAP diff)
Runtimes alternate inside each timing loop so that load from other processes hits both alike.
Results: benchmarks/results/runtime.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
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
RUNTIMES = ("torch", "onnx", "onnx-int8")
STRATEGIES = ("exhaustive", "clustered", "ann")


def cpu_info() -> dict:
    """CPU model and the instruction sets int8 speed depends on (VNNI: 8-bit dot products without saturation)."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    info["cpu"] = fields.get("model name", info["cpu"])
    info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return info


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def p(values, q: float) -> float:
    """q-th percentile in milliseconds of a list of seconds."""
    return float(np.percentile(np.asarray(values) * 1000, q))


def alternate(fns: dict, reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Times each callable ``reps`` times, interleaved (a, b, a, b, ...) -> {name: seconds}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def files(kind: str, classes, per_class: int) -> list[Path]:
    return [f for c in classes for f in sorted((SKETCHY / kind / c).iterdir())[:per_class]]


def unseen() -> list[str]:
    return (SKETCHY / "splits" / "unseen25.txt").read_text().split()


def bench_query(models: dict, reps: int) -> dict:
    from sketchfind.preprocess import preprocess_sketch

    sketches = files("sketches", unseen(), 1)
    it = {name: iter(sketches * (reps + 10)) for name in models}

    def query(name):
        model = models[name]
        image = preprocess_sketch(next(it[name]), model.cfg.preprocess)
        with torch.inference_mode():
            model.encode_sketch(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))

    times = alternate({name: (lambda n=name: query(n)) for name in models}, reps)
    return {name: {"p50_ms": p(t, 50), "p90_ms": p(t, 90)} for name, t in times.items()}


def split_files(split: str) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """(sketches, labels, photos, labels) of every image of a split: 'val' (the 15 validation classes that
    sketchfind train draws) or 'unseen' (unseen-25)."""
    from sketchfind.datasets import split_classes

    _, val, test = split_classes(SKETCHY, SKETCHY / "splits" / "unseen25.txt", 15, 2021)
    chosen = val if split == "val" else test
    return (*chosen.flat("sketches"), *chosen.flat("photos"))


def ranking_agreement(fp32: dict, int8: dict, qlabels, glabels, settings) -> dict:
    """fp32 vs int8 tokens -> error of [Ret] and tokens, and the ann ranking's top-10 overlap and mAP@all."""
    from sketchfind.metrics import retrieval_metrics
    from sketchfind.rerank import pipeline_scores

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def ann(sk, ph):
        return pipeline_scores(sk[:, 0], ph[:, 0], None, settings)

    def top(x):
        return np.argsort(-x, axis=1, kind="stable")[:, :10]

    out = {}
    for enc in ("sketch", "photo"):
        a, b = fp32[enc], int8[enc]
        cos = np.sum(unit(a[:, 0]) * unit(b[:, 0]), axis=-1)
        out[enc] = {
            "max_abs_token_diff": float(np.abs(a - b).max()),
            "mean_abs_token_diff": float(np.abs(a - b).mean()),
            "max_abs_ret_diff": float(np.abs(a[:, 0] - b[:, 0]).max()),
            "ret_cosine_min": float(cos.min()),
            "ret_cosine_mean": float(cos.mean()),
        }
    reference = ann(fp32["sketch"], fp32["photo"])
    map32 = retrieval_metrics(-reference, qlabels, glabels)["map_all"]
    combos = {"both int8": ("sketch", "photo"), "photos int8": ("photo",), "sketches int8": ("sketch",)}
    for combo, which in combos.items():
        sk = (int8 if "sketch" in which else fp32)["sketch"]
        ph = (int8 if "photo" in which else fp32)["photo"]
        scores = ann(sk, ph)
        overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top(reference), top(scores), strict=True)])
        map8 = retrieval_metrics(-scores, qlabels, glabels)["map_all"]
        out[combo] = {"top10_overlap": float(overlap), "map_all_fp32": map32, "map_all": map8, "map_diff": map8 - map32}
    return out


def bench_int8(models: dict, reps: int) -> dict:
    """int8 vs fp32 encoders: speed (interleaved), accuracy and ranking agreement per split."""
    from sketchfind.evaluate import encode_files
    from sketchfind.preprocess import preprocess_photo, preprocess_sketch
    from sketchfind.rerank import RankSettings

    fp32, int8 = models["onnx"], models["onnx-int8"]
    pre = fp32.cfg.preprocess
    settings = RankSettings.from_metadata(fp32.weights_metadata)
    if settings.uses_relation:
        raise SystemExit(
            "bench_int8 ranks by [Ret] + expansion only: these weights' ann ranking uses the relation head"
        )
    photos = torch.stack([preprocess_photo(f, pre) for f in files("photos", unseen(), 2)[:32]])
    photos = photos.contiguous(memory_format=torch.channels_last)
    sketch = preprocess_sketch(files("sketches", unseen(), 1)[0], pre).unsqueeze(0)
    res = {"settings": {k: getattr(settings, k) for k in ("rerank_k", "fusion", "qe_top", "qe_weight")}}
    with torch.inference_mode():
        t = alternate({n: (lambda m=m: m.encode_photo(photos)) for n, m in (("onnx", fp32), ("onnx-int8", int8))}, reps)
        res["photo_ms_per_image_batch32"] = {n: p(v, 50) / len(photos) for n, v in t.items()}
        t = alternate(
            {n: (lambda m=m: m.encode_sketch(sketch)) for n, m in (("onnx", fp32), ("onnx-int8", int8))}, reps
        )
        res["sketch_ms_batch1"] = {n: p(v, 50) for n, v in t.items()}
        log("int8 speed", res["photo_ms_per_image_batch32"], res["sketch_ms_batch1"])
        for split in ("val", "unseen"):
            sk_files, qlabels, ph_files, glabels = split_files(split)
            tokens = {
                name: {
                    "sketch": encode_files(net, sk_files, "sketch", desc=f"{split} sketches, {name}")[0].numpy(),
                    "photo": encode_files(net, ph_files, "photo", desc=f"{split} photos, {name}")[0].numpy(),
                }
                for name, net in (("onnx", fp32), ("onnx-int8", int8))
            }
            res[split] = {"sketches": len(sk_files), "photos": len(ph_files)}
            res[split].update(ranking_agreement(tokens["onnx"], tokens["onnx-int8"], qlabels, glabels, settings))
            log("int8", split, res[split]["both int8"])
    return res


def bench_build(models: dict, classes, per_class: int, tmp: Path) -> tuple[dict, Path]:
    from sketchfind.index import build_index

    photos = files("photos", classes, per_class)
    out, last = {}, None
    for round_ in range(2):  # two rounds, runtimes alternating, best of two kept
        for name, model in models.items():
            idx = tmp / f"idx-{name}-{round_}"
            report = build_index(photos, idx, model, runtime=name, label_from_folder=True)
            best = out.get(name, {}).get("photos_per_s", 0)
            rate = len(report.new) / report.seconds
            encode = len(report.new) / report.encode_seconds
            if rate > best:
                out[name] = {"photos": len(report.new), "photos_per_s": rate, "encode_only_photos_per_s": encode}
            last = idx
            log(f"build {name}: {rate:.1f} photos/s ({encode:.1f} in the model)")
    return out, last


def bench_search(models: dict, index_dir: Path, reps: int) -> dict:
    from sketchfind.search import Searcher

    queries = files("sketches", unseen(), 1)
    searchers = {name: Searcher.open(index_dir, model, runtime=name) for name, model in models.items()}
    out = {}
    try:
        for strategy in STRATEGIES:
            it = {name: iter(queries * (reps + 10)) for name in models}
            fns = {
                n: (lambda n=n, it=it, strategy=strategy: searchers[n].search(next(it[n]), k=10, strategy=strategy))
                for n in searchers
            }
            times = alternate(fns, reps)
            out[strategy] = {name: {"p50_ms": p(t, 50), "p90_ms": p(t, 90)} for name, t in times.items()}
            log(f"search {strategy}: " + ", ".join(f"{n} {v['p50_ms']:.1f} ms" for n, v in out[strategy].items()))
    finally:
        for s in searchers.values():
            s.close()
    return out


def bf16_head(model):
    """A copy whose cross-attention and relation head run in bf16 (relation_scores casts to their dtype)."""
    half = copy.deepcopy(model)
    half.cross.to(torch.bfloat16)
    half.relation.to(torch.bfloat16)
    return half


def bench_full(reps: int, pairs: int, cache: Path) -> dict:
    import sketchfind
    from sketchfind.runtime import load_runtime

    torch.manual_seed(0)
    model = sketchfind.load_model("zse-vit-b16", random_init=True)
    t0 = time.perf_counter()
    onnx = load_runtime(model, "onnx", cache_dir=cache)
    export_s = time.perf_counter() - t0
    half = bf16_head(model)
    image = torch.randn(1, 3, 224, 224)
    sk = torch.randn(1, model.cfg.num_tokens, model.cfg.width)
    ph = torch.randn(pairs, model.cfg.num_tokens, model.cfg.width)
    with torch.inference_mode():
        enc = alternate({"torch": lambda: model.encode_sketch(image), "onnx": lambda: onnx.encode_sketch(image)}, reps)
        pair = alternate(
            {
                "torch": lambda: model.relation_scores(sk, ph),
                "onnx": lambda: onnx.relation_scores(sk, ph),
                "torch_bf16": lambda: half.relation_scores(sk, ph),
            },
            max(2, reps // 2),
            warmup=1,
        )
    return {
        "export_and_load_s": export_s,
        "encode_ms": {n: p(t, 50) for n, t in enc.items()},
        "pair_ms": {n: p(t, 50) / pairs for n, t in pair.items()},
        "pairs_per_call": pairs,
    }


def bench_bf16(model, index_dir: Path) -> dict:
    """bf16 vs fp32 relation head: exhaustive rankings of the unseen-25 sketches over the index."""
    from sketchfind.metrics import retrieval_metrics
    from sketchfind.search import Searcher

    half = bf16_head(model)
    queries = files("sketches", unseen(), 1)
    with Searcher.open(index_dir, model, runtime="torch") as s:
        ids = s.state.snapshot.ids
        gallery = s.photo_tokens(ids)
        labels = np.array([s.photo(int(i)).label for i in ids])
        qlabels = np.array([q.parent.name for q in queries])
        with torch.inference_mode():
            tokens = torch.cat([s.encode_query(q) for q in queries])
            t0 = time.perf_counter()
            fp32 = model.relation_scores(tokens, gallery).float().numpy()
            t1 = time.perf_counter()
            bf16 = half.relation_scores(tokens, gallery).float().numpy()
            t2 = time.perf_counter()
    top = lambda x: np.argsort(-x, axis=1, kind="stable")[:, :10]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(fp32), top(bf16), strict=True)])
    m32, m16 = (retrieval_metrics(-x, qlabels, labels) for x in (fp32, bf16))
    return {
        "queries": len(queries),
        "gallery": len(ids),
        "top10_overlap": float(overlap),
        "map_all_fp32": m32["map_all"],
        "map_all_bf16": m16["map_all"],
        "map_diff": m16["map_all"] - m32["map_all"],
        "max_abs_score_diff": float(np.abs(fp32 - bf16).max()),
        "seconds_fp32": t1 - t0,
        "seconds_bf16": t2 - t1,
    }


def markdown(res: dict) -> str:
    lines = [
        "# Runtime benchmark: PyTorch eager vs ONNX Runtime (fp32, int8 encoders)",
        "",
        f"{res['machine']['cpu']} ({res['machine'].get('cores')} cores; {', '.join(res['machine'].get('isa', []))}), "
        f"{res['threads']} threads, load average at start {res['machine']['load_start']:.2f}, "
        f"at end {res['machine']['load_end']:.2f}; torch {res['versions']['torch']}, onnxruntime "
        f"{res['versions']['onnxruntime']}. The machine is shared: absolute times are noisy, the ratios "
        "come from interleaved runs.",
        "",
    ]
    if "query" in res:
        lines += [
            "## Sketch query end to end (read + preprocess + encode), zse-lite0",
            "",
            "| runtime | p50 ms | p90 ms |",
        ]
        lines += ["|---|---|---|"] + [
            f"| {n} | {v['p50_ms']:.1f} | {v['p90_ms']:.1f} |" for n, v in res["query"].items()
        ]
        lines.append("")
    if "int8" in res:
        lines += int8_markdown(res["int8"])
    if "build" in res:
        lines += ["## Index build, zse-lite0", "", "| runtime | photos | photos/s | in the model, photos/s |"]
        lines += ["|---|---|---|---|"] + [
            f"| {n} | {v['photos']} | {v['photos_per_s']:.1f} | {v['encode_only_photos_per_s']:.1f} |"
            for n, v in res["build"].items()
        ]
        lines.append("")
    if "search" in res:
        lines += ["## Per-query latency (encode included, k=10), zse-lite0", ""]
        lines += ["| strategy | " + " | ".join(f"{r} p50 ms | {r} p90 ms" for r in RUNTIMES) + " |"]
        lines += ["|---" * (1 + 2 * len(RUNTIMES)) + "|"]
        for strategy, v in res["search"].items():
            cells = " | ".join(f"{v[r]['p50_ms']:.1f} | {v[r]['p90_ms']:.1f}" for r in RUNTIMES if r in v)
            lines.append(f"| {strategy} | {cells} |")
        lines.append(f"\n(gallery: {res.get('search_gallery')} photos; index built by the torch runtime)\n")
    if "full" in res:
        f = res["full"]
        lines += [
            "## zse-vit-b16 (full size)",
            "",
            "| | torch fp32 | onnx fp32 | torch bf16 head |",
            "|---|---|---|---|",
        ]
        lines.append(f"| encode, batch 1 (ms) | {f['encode_ms']['torch']:.1f} | {f['encode_ms']['onnx']:.1f} | - |")
        pm = f["pair_ms"]
        lines.append(
            f"| cross-attention + relation per pair (ms) | {pm['torch']:.2f} | {pm['onnx']:.2f} "
            f"| {pm['torch_bf16']:.2f} |"
        )
        lines.append(f"\nONNX export + session load: {f['export_and_load_s']:.1f} s (once per weights; cached)\n")
    if "bf16" in res:
        b = res["bf16"]
        lines += [
            "## bf16 relation head vs fp32, zse-lite0 (unseen-25 sketches, exhaustive)",
            "",
            f"CPU bf16 support (oneDNN): {res['bf16_supported']}. {b['queries']} queries x {b['gallery']} photos: "
            f"top-10 overlap {b['top10_overlap']:.3f}, mAP@all {b['map_all_fp32']:.4f} (fp32) vs "
            f"{b['map_all_bf16']:.4f} (bf16), diff {b['map_diff']:+.4f}; "
            f"max |score diff| {b['max_abs_score_diff']:.2e}; "
            f"time {b['seconds_fp32']:.2f} s (fp32) vs {b['seconds_bf16']:.2f} s (bf16).",
            "",
        ]
    return "\n".join(lines)


def int8_markdown(r: dict) -> list[str]:
    """The int8 section: speed, error and ranking agreement per split."""
    photo, sketch = r["photo_ms_per_image_batch32"], r["sketch_ms_batch1"]
    lines = [
        "## int8 encoders vs fp32 (ONNX Runtime), zse-lite0",
        "",
        "| encoder | fp32 ms | int8 ms | speed-up |",
        "|---|---|---|---|",
        f"| photo, per image at batch 32 | {photo['onnx']:.2f} | {photo['onnx-int8']:.2f} "
        f"| {photo['onnx'] / photo['onnx-int8']:.2f}x |",
        f"| sketch, batch 1 | {sketch['onnx']:.2f} | {sketch['onnx-int8']:.2f} "
        f"| {sketch['onnx'] / sketch['onnx-int8']:.2f}x |",
        "",
        f"Ranking agreement of the `ann` ranking ([Ret] + query expansion, settings {r['settings']}) with fp32; "
        "the recipe was chosen on the validation classes, unseen-25 is reported only:",
        "",
        "| classes | queries x photos | int8 side | top-10 overlap | mAP@all fp32 | mAP@all int8 | diff |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"val": "validation (15 seen)", "unseen": "unseen-25"}
    for split in ("val", "unseen"):
        if split not in r:
            continue
        v = r[split]
        for combo in ("both int8", "photos int8", "sketches int8"):
            c = v[combo]
            lines.append(
                f"| {names[split]} | {v['sketches']} x {v['photos']} | {combo} | {c['top10_overlap']:.3f} "
                f"| {c['map_all_fp32']:.4f} | {c['map_all']:.4f} | {c['map_diff']:+.4f} |"
            )
    lines += ["", "| classes | encoder | [Ret] cosine min / mean | max abs [Ret] diff | max / mean abs token diff |"]
    lines.append("|---|---|---|---|---|")
    for split in ("val", "unseen"):
        for enc in ("sketch", "photo") if split in r else ():
            e = r[split][enc]
            lines.append(
                f"| {names[split]} | {enc} | {e['ret_cosine_min']:.4f} / {e['ret_cosine_mean']:.4f} "
                f"| {e['max_abs_ret_diff']:.3f} | {e['max_abs_token_diff']:.3f} / {e['mean_abs_token_diff']:.4f} |"
            )
    return [*lines, ""]


def write(res: dict, out: Path) -> None:
    """Writes what has been measured so far (every section adds to the same files)."""
    res["machine"]["load_end"] = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime.json").write_text(json.dumps(res, indent=2))
    (out / "runtime.md").write_text(markdown(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and photos")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: query,int8,build,search,full,bf16")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    import onnxruntime

    import sketchfind
    from sketchfind.runtime import load_runtime, set_threads

    set_threads(args.threads)
    reps = 15 if args.quick else 50
    res = {
        "threads": args.threads,
        "quick": args.quick,
        "machine": {**cpu_info(), "load_start": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lite = sketchfind.load_model()
        models = {name: load_runtime(lite, name, cache_dir=tmp / "cache") for name in RUNTIMES}
        if "query" not in skip:
            res["query"] = bench_query(models, reps)
            write(res, args.out)
            log("query", res["query"])
        if "int8" not in skip:
            res["int8"] = bench_int8(models, reps)
            write(res, args.out)
        index_dir = None
        if not {"build", "search", "bf16"} <= skip:
            classes = unseen()
            res["build"], index_dir = bench_build(models, classes, 4 if args.quick else 12, tmp)
            res["search_gallery"] = res["build"]["torch"]["photos"]
        if "search" not in skip:
            res["search"] = bench_search(models, index_dir, reps)
            write(res, args.out)
        if "bf16" not in skip:
            res["bf16"] = bench_bf16(lite, index_dir)
            write(res, args.out)
            log("bf16", res["bf16"])
        if "full" not in skip:
            res["full"] = bench_full(5 if args.quick else 10, 16 if args.quick else 64, tmp / "cache")
            log("full", res["full"])
    write(res, args.out)
    print(markdown(res))


if __name__ == "__main__":
    main()
