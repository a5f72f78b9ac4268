"""The three search strategies on the mixed gallery, through the real ``Searcher`` (issue 10's target:
``clustered`` mAP@100 >= 95% of ``exhaustive``; the reference system reports 0.744 vs 0.746).

    python benchmarks/bench_strategies.py --index /tmp/strategies-index [--weights W.safetensors]

Indexes every sketchy-mini photo (3,125, all classes; labels from the folders) once into ``--index``, then
searches the first ``--per-class`` sketches of each unseen-25 class (and as many QuickDraw doodles of the
unseen split, drawn as the page draws them) with ``exhaustive``, ``clustered`` and ``ann``, each ranking the
whole gallery. Writes benchmarks/results/strategies.{json,md} (unseen classes: report only, never tuning).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
SKETCHY = SHARED / "sketchy-mini"
QUICKDRAW_UNSEEN = SHARED / "quickdraw-mini" / "unseen"
STRATEGIES = ("exhaustive", "clustered", "ann")


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def queries(per_class: int) -> dict[str, tuple[list, list[str]]]:
    """{query set: (sources, class names)}: unseen-25 sketch files and unseen doodles (rendered arrays)."""
    from sketchfind.datasets import read_class_file
    from sketchfind.protocols import load_doodles, render_doodle

    classes = read_class_file(SKETCHY / "splits" / "unseen25.txt")
    files, names = [], []
    for c in classes:
        for f in sorted((SKETCHY / "sketches" / c).iterdir())[:per_class]:
            files.append(f)
            names.append(c)
    drawings, labels = load_doodles(QUICKDRAW_UNSEEN)
    keep = np.concatenate([np.flatnonzero(np.array(labels) == c)[:per_class] for c in sorted(set(labels))])
    doodles = [render_doodle(drawings[i]) for i in keep]
    return {"sketches": (files, names), "doodles": (doodles, [labels[i] for i in keep])}


def metrics(rankings: list[list[str]], query_labels: list[str], gallery_labels: list[str]) -> dict[str, float]:
    """mAP@all, mAP@100, P@100 of full rankings (gallery labels in rank order per query)."""
    from sketchfind.metrics import retrieval_metrics

    n = len(gallery_labels)
    vocab = {c: i for i, c in enumerate(sorted(set(gallery_labels) | set(query_labels)))}
    dist = np.tile(np.arange(n, dtype=np.float64), (len(rankings), 1))  # rank = distance
    labels = np.array([[vocab[c] for c in r] for r in rankings])  # (Q, N) labels in rank order
    out = []
    for q, row in enumerate(labels):  # per query: gallery "in rank order" with its own labels
        out.append(
            retrieval_metrics(
                dist[q : q + 1], np.array([vocab[query_labels[q]]]), row, map_ks=(100,), precision_ks=(100,)
            )
        )
    return {k: float(np.nanmean([o[k] for o in out])) for k in out[0]}


def main() -> None:
    from sketchfind import Searcher
    from sketchfind.models.factory import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index folder (built from sketchy-mini/photos if missing)")
    parser.add_argument("--weights", default=None, help="model weights (default: the shipped model)")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--name", default="strategies")
    args = parser.parse_args()

    model = load_model(weights=args.weights)
    t0 = time.perf_counter()
    searcher, report = Searcher.from_photos(
        [SKETCHY / "photos"], args.index, model, weights=args.weights, label_from_folder=True, progress=True
    )
    log(f"index: {report.summary()} in {time.perf_counter() - t0:.0f} s")
    gallery = [h for h in searcher.photos(searcher.state.snapshot.ids.tolist())]
    gallery_labels = [p.label for p in gallery]
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]},
        "weights": args.weights or "shipped zse-lite0",
        "runtime": searcher.model.runtime,
        "gallery": len(gallery_labels),
        "settings": {s: None for s in STRATEGIES},
        "sets": {},
    }
    for set_name, (sources, labels) in queries(args.per_class).items():
        results["sets"][set_name] = {"queries": len(sources)}
        for strategy in STRATEGIES:
            t = time.perf_counter()
            rankings = []
            for src in sources:
                hits = searcher.search(src, k=None, strategy=strategy).hits
                rankings.append([h.label for h in hits])
            m = metrics(rankings, labels, gallery_labels)
            m["seconds_per_query"] = (time.perf_counter() - t) / len(sources)
            results["sets"][set_name][strategy] = m
            log(set_name, strategy, {k: round(v, 4) for k, v in m.items()})
        s = results["sets"][set_name]
        s["clustered_over_exhaustive_map_100"] = s["clustered"]["map_100"] / max(s["exhaustive"]["map_100"], 1e-9)
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    results["rank_settings"] = str(searcher.settings.rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Strategies on the mixed gallery (all 3,125 sketchy-mini photos)",
        "",
        f"{results['weights']}, runtime {results['runtime']}, {results['machine']['cpus']} CPUs, load average "
        f"{results['machine']['load_avg_start']:.1f} -> {results['machine']['load_avg_end']:.1f}; "
        f"{args.per_class} queries per unseen class; every strategy ranks the whole gallery; "
        f"{results['rank_settings']}.",
        "",
        "| queries | strategy | mAP@all | mAP@100 | P@100 | s/query |",
        "|---|---|---|---|---|---|",
    ]
    for set_name, s in results["sets"].items():
        for strategy in STRATEGIES:
            m = s[strategy]
            lines.append(
                f"| {set_name} ({s['queries']}) | {strategy} | {m['map_all']:.3f} | {m['map_100']:.3f} | "
                f"{m['p_100']:.3f} | {m['seconds_per_query']:.2f} |"
            )
    lines.append("")
    for set_name, s in results["sets"].items():
        lines.append(f"- {set_name}: clustered / exhaustive mAP@100 = {s['clustered_over_exhaustive_map_100']:.2f}")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    log("wrote", out / f"{args.name}.md")


if __name__ == "__main__":
    main()
