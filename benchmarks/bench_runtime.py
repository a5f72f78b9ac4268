"""Runtime benchmark: PyTorch eager vs ONNX Runtime fp32 vs OpenVINO fp32 (with the openvino extra) vs ONNX Runtime
int8 encoders in the same run, plus the torch-bf16 runtime (CPUs with native bf16 only).

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
           cross-attention + relation head per pair, for torch, onnx and torch-bf16; then torch-bf16 vs fp32 with
           the reference's deterministic weights: tokens and relation scores vs the goldens, and the rankings of
           unseen-25 sketches over their photos (those weights are synthetic: agreement only, not accuracy)
  openvino_bf16  openvino-bf16 (the sketch encoder in bf16) vs fp32, zse-lite0 (shipped weights): unseen-25
           sketches ranked by ann over their photos and over every sketchy-mini photo, and by the relation
           network (2 sketches per class) over their photos (top-10 overlap, mAP diff)
  bf16     torch-bf16 vs fp32 PyTorch, zse-lite0 (shipped weights), unseen-25: the ann ranking of every sketch
           over every photo and the exhaustive relation ranking of 2 sketches per class (top-10 overlap, mAP
           diff), with both sides in bf16 and with photos indexed in fp32 (an index built by another runtime)
Runtimes are timed in alternating blocks of consecutive calls (``alternate``) so that load from other processes hits
all alike, and no runtime pays for the threads another left spinning; on a CPU with native
bf16, torch-bf16 and openvino-bf16 join torch, onnx, openvino and onnx-int8 in the query, build and search sections.
Results: benchmarks/results/runtime.{json,md}.
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
REFERENCE = HERE.parents[1] / "shared" / "reference" / "zse-sbir"
# torch-bf16 only on CPUs with native bf16, openvino only when the extra is installed
RUNTIMES = ("torch", "onnx", "openvino", "openvino-bf16", "onnx-int8", "torch-bf16")
STRATEGIES = ("exhaustive", "clustered", "ann")


def cpu_info() -> dict:
    """CPU model and the instruction sets int8 and bf16 speed depend on (VNNI: 8-bit dot products without
    saturation; AVX512-BF16 / AMX-BF16: native bf16)."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    info["cpu"] = fields.get("model name", info["cpu"])
    info["isa"] = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16") if f in flags
    ]
    return info


def _openvino() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def p(values, q: float) -> float:
    """q-th percentile in milliseconds of a list of seconds."""
    return float(np.percentile(np.asarray(values) * 1000, q))


def alternate(fns: dict, reps: int, warmup: int = 2, rounds: int = 5) -> dict[str, list[float]]:
    """Times each callable ``reps`` times in ``rounds`` rounds of blocks (a a a b b b a a a b b b ...), every block
    after ``warmup`` untimed calls -> {name: seconds}.

    Blocks, not single calls in turn: PyTorch's OpenMP threads spin on after a call, and the ONNX Runtime call
    right after one took ~1 ms longer (a sketch query 6.3 -> 7.4 ms), a cost that a process running one runtime
    never pays. The rounds spread the load of other processes over every runtime alike."""
    out = {name: [] for name in fns}
    rounds = max(1, min(rounds, reps))
    for r in range(rounds):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(reps // rounds + (r < reps % rounds)):
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
            model.encode_sketch(image.unsqueeze(0))

    times = alternate({name: (lambda n=name: query(n)) for name in models}, reps)
    return {name: {"p50_ms": p(t, 50), "p90_ms": p(t, 90)} for name, t in times.items()}


def split_files(split: str) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """(sketches, labels, photos, labels) of every image of a split: 'val' (the 15 validation classes that
    sketchfind train draws) or 'unseen' (unseen-25)."""
    from sketchfind.datasets import split_classes

    _, val, test = split_classes(SKETCHY, SKETCHY / "splits" / "unseen25.txt", 15, 2021)
    chosen = val if split == "val" else test
    return (*chosen.flat("sketches"), *chosen.flat("photos"))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def top10_overlap(reference: np.ndarray, scores: np.ndarray) -> float:
    """Mean share of each row's 10 best (by ``reference``) that are also among its 10 best by ``scores``."""
    top = [np.argsort(-x, axis=1, kind="stable")[:, :10] for x in (reference, scores)]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(*top, strict=True)]))


def agreement(reference: np.ndarray, scores: np.ndarray, qlabels, glabels) -> dict:
    """Top-10 overlap and mAP@all of two (Q, P) score matrices (higher = better), the first the reference."""
    from sketchfind.metrics import retrieval_metrics

    ref, got = (retrieval_metrics(-x, qlabels, glabels)["map_all"] for x in (reference, scores))
    return {
        "top10_overlap": top10_overlap(reference, scores),
        "map_all_fp32": ref,
        "map_all": got,
        "map_diff": got - ref,
    }


def ranking_agreement(
    fp32: dict, int8: dict, qlabels, glabels, settings, low: str = "int8", ret_tokens: int = 1
) -> dict:
    """fp32 vs lower-precision (int8, bf16) tokens -> error of [Ret] and tokens, and the ann ranking's top-10
    overlap and mAP@all with both sides, only the photos or only the sketches in lower precision."""
    from sketchfind.rerank import pipeline_scores

    def ret(tokens):
        return tokens[:, :ret_tokens].reshape(len(tokens), -1)

    def ann(sk, ph):
        return pipeline_scores(ret(sk), ret(ph), None, settings)

    out = {}
    for enc in ("sketch", "photo"):
        a, b = fp32[enc], int8[enc]
        cos = np.sum(unit(ret(a)) * unit(ret(b)), axis=-1)
        out[enc] = {
            "max_abs_token_diff": float(np.abs(a - b).max()),
            "mean_abs_token_diff": float(np.abs(a - b).mean()),
            "max_abs_ret_diff": float(np.abs(ret(a) - ret(b)).max()),
            "ret_cosine_min": float(cos.min()),
            "ret_cosine_mean": float(cos.mean()),
        }
    reference = ann(fp32["sketch"], fp32["photo"])
    combos = {f"both {low}": ("sketch", "photo"), f"photos {low}": ("photo",), f"sketches {low}": ("sketch",)}
    for combo, which in combos.items():
        sk = (int8 if "sketch" in which else fp32)["sketch"]
        ph = (int8 if "photo" in which else fp32)["photo"]
        out[combo] = agreement(reference, ann(sk, ph), qlabels, glabels)
    return out


def bench_int8(models: dict, reps: int) -> dict:
    """int8 vs fp32 encoders: speed (alternating blocks), accuracy and ranking agreement per split."""
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
            res[split].update(
                ranking_agreement(
                    tokens["onnx"], tokens["onnx-int8"], qlabels, glabels, settings, ret_tokens=fp32.cfg.ret_tokens
                )
            )
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


def bench_full(reps: int, pairs: int, cache: Path) -> dict:
    """zse-vit-b16, random weights: encode batch 1 and the head per pair, torch vs onnx vs torch-bf16."""
    import sketchfind
    from sketchfind.runtime import available_runtimes, load_runtime, native_bf16

    torch.manual_seed(0)
    model = sketchfind.load_model("zse-vit-b16", random_init=True)
    t0 = time.perf_counter()
    nets = {"torch": model, "onnx": load_runtime(model, "onnx", cache_dir=cache)}
    if "openvino" in available_runtimes():
        nets["openvino"] = load_runtime(model, "openvino", cache_dir=cache)
    export_s = time.perf_counter() - t0
    if native_bf16():
        nets["torch-bf16"] = load_runtime(model, "torch-bf16")
    image = torch.randn(1, 3, 224, 224)  # NCHW, as the Searcher passes it
    sk = torch.randn(1, model.cfg.num_tokens, model.cfg.width)
    ph = torch.randn(pairs, model.cfg.num_tokens, model.cfg.width)
    with torch.inference_mode():
        enc = alternate({n: (lambda m=m: m.encode_sketch(image)) for n, m in nets.items()}, reps)
        pair = alternate(
            {n: (lambda m=m: m.relation_scores(sk, ph)) for n, m in nets.items()}, max(2, reps // 2), warmup=1
        )
    return {
        "export_and_load_s": export_s,
        "encode_ms": {n: p(t, 50) for n, t in enc.items()},
        "pair_ms": {n: p(t, 50) / pairs for n, t in pair.items()},
        "pairs_per_call": pairs,
    }


def full_bf16_agreement(photos_per_class: int) -> dict:
    """torch-bf16 vs fp32, zse-vit-b16 with the reference's deterministic weights: the golden inputs' tokens and
    relation scores vs the goldens, then the [Ret] and relation rankings of one unseen-25 sketch per class over
    ``photos_per_class`` photos per class (synthetic weights: how far bf16 moves a ranking, not its accuracy)."""
    from sketchfind.evaluate import encode_files
    from sketchfind.reference import reference_model
    from sketchfind.runtime import load_runtime

    model = reference_model(REFERENCE)
    half = load_runtime(model, "torch-bf16")
    with np.load(REFERENCE / "outputs.npz") as gold, np.load(REFERENCE / "inputs.npz") as inputs:
        want_tokens, want_scores = gold["sa_fea"], gold["rn_score"]
        sketch, photo = torch.from_numpy(inputs["sketch"]), torch.from_numpy(inputs["photo"])
    with torch.inference_mode():
        tokens = torch.cat([half.encode_sketch(sketch), half.encode_photo(photo)])
        scores = half.relation_scores(tokens[:4], tokens[4:]).numpy()
        golden = torch.from_numpy(want_tokens)
        head_only = half.relation_scores(golden[:4], golden[4:]).numpy()  # bf16 head on the fp32 golden tokens
    tokens = tokens.numpy()
    rel = np.linalg.norm(tokens - want_tokens, axis=-1) / np.linalg.norm(want_tokens, axis=-1)  # per token
    ret_cos = np.sum(unit(tokens[:, 0]) * unit(want_tokens[:, 0]), axis=-1)
    gaps = np.diff(np.sort(want_scores, axis=1), axis=1)  # how close the golden scores of one sketch lie
    out = {
        "goldens": {
            "token_rel_error_max": float(rel.max()),
            "token_rel_error_mean": float(rel.mean()),
            "ret_cosine_min": float(ret_cos.min()),
            "max_abs_score_diff": float(np.abs(scores - want_scores).max()),
            "max_abs_score_diff_head_only": float(np.abs(head_only - want_scores).max()),
            "golden_score_min_gap": float(gaps.min()),
            "same_order": bool((np.argsort(-scores, axis=1) == np.argsort(-want_scores, axis=1)).all()),
        }
    }
    sk_files, ph_files = files("sketches", unseen(), 1), files("photos", unseen(), photos_per_class)
    qlabels, glabels = (np.array([f.parent.name for f in fs]) for fs in (sk_files, ph_files))
    ret, relation = {}, {}
    with torch.inference_mode():
        for name, net in (("torch", model), ("torch-bf16", half)):
            sk = encode_files(net, sk_files, "sketch", desc=f"full-size sketches, {name}")[0]
            ph = encode_files(net, ph_files, "photo", desc=f"full-size photos, {name}")[0]
            ret[name] = (model.retrieval_embedding(sk) @ model.retrieval_embedding(ph).T).numpy()
            relation[name] = net.relation_scores(sk, ph).numpy()
    out["sketchy"] = {"queries": len(sk_files), "photos": len(ph_files)}
    for key, scores in (("ret", ret), ("relation", relation)):
        out["sketchy"][key] = agreement(scores["torch"], scores["torch-bf16"], qlabels, glabels)
        out["sketchy"][key]["max_abs_score_diff"] = float(np.abs(scores["torch"] - scores["torch-bf16"]).max())
    return out


def bench_bf16(lite, sketches_per_class: int) -> dict:
    """torch-bf16 vs fp32 PyTorch, zse-lite0 on unseen-25: the ann ranking of every sketch over every photo,
    and the exhaustive relation ranking of ``sketches_per_class`` sketches per class over every photo."""
    from sketchfind.evaluate import encode_files
    from sketchfind.protocols import first_per_class
    from sketchfind.rerank import RankSettings
    from sketchfind.runtime import load_runtime

    half = load_runtime(lite, "torch-bf16")
    settings = RankSettings.from_metadata(lite.weights_metadata)
    sk_files, qlabels, ph_files, glabels = split_files("unseen")
    with torch.inference_mode():
        tokens = {
            name: {
                "sketch": encode_files(net, sk_files, "sketch", desc=f"unseen sketches, {name}")[0].numpy(),
                "photo": encode_files(net, ph_files, "photo", desc=f"unseen photos, {name}")[0].numpy(),
            }
            for name, net in (("torch", lite), ("torch-bf16", half))
        }
    res = {"sketches": len(sk_files), "photos": len(ph_files)}
    res["settings"] = {k: getattr(settings, k) for k in ("rerank_k", "fusion", "qe_top", "qe_weight")}
    res["ann"] = ranking_agreement(
        tokens["torch"], tokens["torch-bf16"], qlabels, glabels, settings, low="bf16", ret_tokens=lite.cfg.ret_tokens
    )
    log("bf16 ann", res["ann"]["both bf16"])
    pick = first_per_class(qlabels, sketches_per_class)
    q32, q16 = (torch.from_numpy(tokens[n]["sketch"][pick]) for n in ("torch", "torch-bf16"))
    p32, p16 = (torch.from_numpy(tokens[n]["photo"]) for n in ("torch", "torch-bf16"))
    with torch.inference_mode():
        t0 = time.perf_counter()
        fp32 = lite.relation_scores(q32, p32).numpy()
        t1 = time.perf_counter()
        both = half.relation_scores(q16, p16).numpy()
        t2 = time.perf_counter()
        mixed = half.relation_scores(q16, p32).numpy()  # photos indexed by an fp32 runtime, bf16 queries
    exhaustive = {"queries": len(pick), "seconds_fp32": t1 - t0, "seconds_bf16": t2 - t1}
    for combo, scores in (("both bf16", both), ("sketches bf16", mixed)):
        exhaustive[combo] = agreement(fp32, scores, qlabels[pick], glabels)
        exhaustive[combo]["max_abs_score_diff"] = float(np.abs(fp32 - scores).max())
    res["exhaustive"] = exhaustive
    log("bf16 exhaustive", exhaustive["both bf16"])
    return res


def bench_openvino_bf16(lite, sketches_per_class: int) -> dict:
    """openvino-bf16 (the sketch encoder in bf16; photos and the head fp32) vs fp32 PyTorch, zse-lite0: unseen-25
    sketches ranked by ann over the unseen-25 photos and over every sketchy-mini photo (the mixed gallery), and
    by the relation network (exhaustive; ``sketches_per_class`` per class) over the unseen-25 photos."""
    from sketchfind.datasets import scan_root
    from sketchfind.evaluate import encode_files
    from sketchfind.protocols import first_per_class
    from sketchfind.rerank import RankSettings, pipeline_scores
    from sketchfind.runtime import load_runtime

    half = load_runtime(lite, "openvino-bf16")
    settings = RankSettings.from_metadata(lite.weights_metadata)
    sk_files, qlabels, ph_files, glabels = split_files("unseen")
    everything = scan_root(SKETCHY)
    all_photos, _ = everything.flat("photos")  # labelled below by class name
    unseen_ids = {c: i for i, c in enumerate(sorted({f.parent.name for f in sk_files}))}
    # mixed gallery labels: unseen classes keep their ids, every other class gets one of its own
    names = {f.parent.name for f in all_photos}
    ids = unseen_ids | {c: len(unseen_ids) + i for i, c in enumerate(sorted(names - set(unseen_ids)))}
    q_mixed = np.array([ids[f.parent.name] for f in sk_files])
    g_mixed = np.array([ids[f.parent.name] for f in all_photos])
    with torch.inference_mode():
        sketches = {
            name: encode_files(net, sk_files, "sketch", desc=f"unseen sketches, {name}")[0].numpy()
            for name, net in (("torch", lite), ("openvino-bf16", half))
        }
        photos = encode_files(lite, all_photos, "photo", desc="every photo, fp32")[0].numpy()
    position = {f: i for i, f in enumerate(all_photos)}
    unseen_photos = photos[[position[f] for f in ph_files]]

    def ann(sk, ph):
        return pipeline_scores(lite.retrieval_embedding(sk), lite.retrieval_embedding(ph), None, settings)

    a32, a16 = sketches["torch"], sketches["openvino-bf16"]
    cos = np.sum(lite.retrieval_embedding(a32) * lite.retrieval_embedding(a16), axis=-1)
    res = {"sketches": len(sk_files), "photos": len(ph_files), "all_photos": len(all_photos)}
    res["settings"] = {k: getattr(settings, k) for k in ("rerank_k", "fusion", "qe_top", "qe_weight")}
    res["sketch"] = {
        "ret_cosine_min": float(cos.min()),
        "ret_cosine_mean": float(cos.mean()),
        "token_rel_error_max": float((np.linalg.norm(a16 - a32, axis=-1) / np.linalg.norm(a32, axis=-1)).max()),
    }
    res["ann"] = agreement(ann(a32, unseen_photos), ann(a16, unseen_photos), qlabels, glabels)
    log("openvino-bf16 ann", res["ann"])
    res["ann_mixed"] = agreement(ann(a32, photos), ann(a16, photos), q_mixed, g_mixed)
    log("openvino-bf16 ann, mixed gallery", res["ann_mixed"])
    pick = first_per_class(qlabels, sketches_per_class)
    p32 = torch.from_numpy(unseen_photos)
    with torch.inference_mode():
        fp32 = lite.relation_scores(torch.from_numpy(a32[pick]), p32).numpy()
        bf16 = half.relation_scores(torch.from_numpy(a16[pick]), p32).numpy()
    res["exhaustive"] = agreement(fp32, bf16, qlabels[pick], glabels)
    res["exhaustive"]["queries"] = len(pick)
    res["exhaustive"]["max_abs_score_diff"] = float(np.abs(fp32 - bf16).max())
    log("openvino-bf16 exhaustive", res["exhaustive"])
    return res


def openvino_bf16_markdown(b: dict) -> list[str]:
    """The openvino-bf16 vs fp32 section (zse-lite0)."""
    s, e = b["sketch"], b["exhaustive"]
    lines = [
        "## openvino-bf16 vs fp32, zse-lite0 (shipped weights; unseen-25 sketches)",
        "",
        "The sketch encoder in bf16, photos encoded in fp32 (an index built by any fp32 runtime; openvino-bf16 "
        "builds the same), the relation head fp32. Sketch [Ret] cosine to fp32 min "
        f"{s['ret_cosine_min']:.4f} / mean {s['ret_cosine_mean']:.5f}, largest token error "
        f"{100 * s['token_rel_error_max']:.1f}% of the token's norm. ann settings {b['settings']}.",
        "",
        "| ranking | queries x photos | top-10 overlap | mAP@all fp32 | mAP@all openvino-bf16 | diff |",
        "|---|---|---|---|---|---|",
    ]
    rows = (
        ("ann, unseen-25 photos", b["ann"], b["sketches"], b["photos"]),
        ("ann, every photo (mixed gallery)", b["ann_mixed"], b["sketches"], b["all_photos"]),
        ("exhaustive (relation network)", e, e["queries"], b["photos"]),
    )
    for name, a, q, n in rows:
        lines.append(
            f"| {name} | {q} x {n} | {a['top10_overlap']:.3f} | {a['map_all_fp32']:.4f} | {a['map_all']:.4f} "
            f"| {a['map_diff']:+.4f} |"
        )
    return [*lines, ""]


def markdown(res: dict) -> str:
    lines = [
        "# Runtime benchmark: PyTorch eager (fp32, bf16) vs ONNX Runtime (fp32, int8 encoders) vs OpenVINO (fp32)",
        "",
        f"{res['machine']['cpu']} ({res['machine'].get('cores')} cores; {', '.join(res['machine'].get('isa', []))}), "
        f"{res['threads']} threads, load average at start {res['machine']['load_start']:.2f}, "
        f"at end {res['machine']['load_end']:.2f}; torch {res['versions']['torch']}, onnxruntime "
        f"{res['versions']['onnxruntime']}, openvino {res['versions'].get('openvino')}. The machine is shared: "
        "absolute times are noisy, the ratios "
        "come from runs in alternating blocks (5 rounds per runtime, 2 untimed calls before each block).",
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
        names = [r for r in RUNTIMES if r in next(iter(res["search"].values()))]
        lines += ["| strategy | " + " | ".join(f"{r} p50 ms | {r} p90 ms" for r in names) + " |"]
        lines += ["|---" * (1 + 2 * len(names)) + "|"]
        for strategy, v in res["search"].items():
            cells = " | ".join(f"{v[r]['p50_ms']:.1f} | {v[r]['p90_ms']:.1f}" for r in names)
            lines.append(f"| {strategy} | {cells} |")
        lines.append(f"\n(gallery: {res.get('search_gallery')} photos; index built by the torch runtime)\n")
    if "full" in res:
        lines += full_markdown(res["full"], res.get("full_bf16"))
    if "openvino_bf16" in res:
        lines += openvino_bf16_markdown(res["openvino_bf16"])
    if "bf16" in res:
        lines += bf16_markdown(res["bf16"])
    elif not res["bf16_native"]:
        lines += ["## torch-bf16", "", "Not measured: this CPU has no native bf16 (the runtime is refused here).", ""]
    return "\n".join(lines)


def full_markdown(f: dict, agree: dict | None) -> list[str]:
    """The full-size section: speed per runtime, and torch-bf16's agreement with fp32 and the goldens."""
    names = [n for n in ("torch", "onnx", "openvino", "torch-bf16") if n in f["encode_ms"]]
    lines = ["## zse-vit-b16 (full size)", "", "| | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    lines.append("| encode, batch 1 (ms) | " + " | ".join(f"{f['encode_ms'][n]:.1f}" for n in names) + " |")
    lines.append(
        "| cross-attention + relation per pair (ms) | " + " | ".join(f"{f['pair_ms'][n]:.2f}" for n in names) + " |"
    )
    lines.append(f"\nONNX export + session load: {f['export_and_load_s']:.1f} s (once per weights; cached)\n")
    if agree:
        g, sk = agree["goldens"], agree["sketchy"]
        lines += [
            "torch-bf16 with the reference's deterministic weights. Golden inputs (4 sketches x 4 photos): token "
            f"relative error max {g['token_rel_error_max']:.4f} / mean {g['token_rel_error_mean']:.4f}, [Ret] "
            f"cosine to the golden min {g['ret_cosine_min']:.5f}; relation scores max |diff| "
            f"{g['max_abs_score_diff']:.2e} ({g['max_abs_score_diff_head_only']:.2e} with the golden fp32 tokens), "
            f"smallest gap between two golden scores of a sketch {g['golden_score_min_gap']:.2e}, same order: "
            f"{g['same_order']}.",
            "",
            f"Rankings of {sk['queries']} unseen-25 sketches over {sk['photos']} photos (synthetic weights: "
            "agreement only):",
            "",
            "| ranking | top-10 overlap | mAP@all fp32 | mAP@all bf16 | diff | max abs score diff |",
            "|---|---|---|---|---|---|",
        ]
        for key, name in (("ret", "[Ret] cosine"), ("relation", "relation (exhaustive)")):
            a = sk[key]
            lines.append(
                f"| {name} | {a['top10_overlap']:.3f} | {a['map_all_fp32']:.4f} | {a['map_all']:.4f} "
                f"| {a['map_diff']:+.4f} | {a['max_abs_score_diff']:.2e} |"
            )
        lines.append("")
    return lines


def bf16_markdown(b: dict) -> list[str]:
    """The torch-bf16 vs fp32 section on real weights (zse-lite0)."""
    e = b["exhaustive"]
    lines = [
        "## torch-bf16 vs fp32 PyTorch, zse-lite0 (shipped weights, unseen-25)",
        "",
        f"ann: {b['sketches']} sketches x {b['photos']} photos, settings {b['settings']}; exhaustive: "
        f"{e['queries']} sketches x {b['photos']} photos, {e['seconds_fp32']:.1f} s (fp32) vs "
        f'{e["seconds_bf16"]:.1f} s (bf16). "sketches bf16": photos indexed by an fp32 runtime.',
        "",
        "| ranking | bf16 side | top-10 overlap | mAP@all fp32 | mAP@all bf16 | diff | max abs score diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for combo in ("both bf16", "photos bf16", "sketches bf16"):
        a = b["ann"][combo]
        lines.append(
            f"| ann | {combo} | {a['top10_overlap']:.3f} | {a['map_all_fp32']:.4f} | {a['map_all']:.4f} "
            f"| {a['map_diff']:+.4f} | - |"
        )
    for combo in ("both bf16", "sketches bf16"):
        a = e[combo]
        lines.append(
            f"| exhaustive | {combo} | {a['top10_overlap']:.3f} | {a['map_all_fp32']:.4f} | {a['map_all']:.4f} "
            f"| {a['map_diff']:+.4f} | {a['max_abs_score_diff']:.2e} |"
        )
    lines += ["", "| encoder | [Ret] cosine min / mean | max / mean abs token diff |", "|---|---|---|"]
    for enc in ("sketch", "photo"):
        t = b["ann"][enc]
        lines.append(
            f"| {enc} | {t['ret_cosine_min']:.6f} / {t['ret_cosine_mean']:.6f} "
            f"| {t['max_abs_token_diff']:.3f} / {t['mean_abs_token_diff']:.4f} |"
        )
    return [*lines, ""]


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
    ap.add_argument(
        "--skip", default="", help="comma-separated sections to skip: query,int8,build,search,full,openvino_bf16,bf16"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    import onnxruntime

    import sketchfind
    from sketchfind.runtime import available_runtimes, load_runtime, native_bf16, set_threads

    set_threads(args.threads)
    reps = 15 if args.quick else 50
    res = {
        "threads": args.threads,
        "quick": args.quick,
        "machine": {**cpu_info(), "load_start": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": _openvino()},
        "bf16_native": native_bf16(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lite = sketchfind.load_model()
        names = [r for r in RUNTIMES if r in available_runtimes()]
        models = {name: load_runtime(lite, name, cache_dir=tmp / "cache") for name in names}
        if "query" not in skip:
            res["query"] = bench_query(models, reps)
            write(res, args.out)
            log("query", res["query"])
        if "int8" not in skip:
            res["int8"] = bench_int8(models, reps)
            write(res, args.out)
        index_dir = None
        if not {"build", "search"} <= skip:
            classes = unseen()
            res["build"], index_dir = bench_build(models, classes, 4 if args.quick else 12, tmp)
            res["search_gallery"] = res["build"]["torch"]["photos"]
        if "search" not in skip:
            res["search"] = bench_search(models, index_dir, reps)
            write(res, args.out)
        if "openvino_bf16" not in skip and "openvino-bf16" in available_runtimes():
            res["openvino_bf16"] = bench_openvino_bf16(lite, 1 if args.quick else 2)
            write(res, args.out)
        if "bf16" not in skip and res["bf16_native"]:
            res["bf16"] = bench_bf16(lite, 1 if args.quick else 2)
            write(res, args.out)
        if "full" not in skip:
            res["full"] = bench_full(5 if args.quick else 10, 16 if args.quick else 64, tmp / "cache")
            log("full", res["full"])
            if res["bf16_native"]:
                res["full_bf16"] = full_bf16_agreement(2 if args.quick else 4)
                log("full bf16", res["full_bf16"])
    write(res, args.out)
    print(markdown(res))


if __name__ == "__main__":
    main()
