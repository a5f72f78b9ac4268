"""Quality as people use search: every protocol of :mod:`sketchfind.protocols`, before and after the robust
input normalisation, in one run (same code, same encodings cache).

    python benchmarks/bench_protocols.py --cache /tmp/q10/cache                 # unseen-25 (report only)
    python benchmarks/bench_protocols.py --cache /tmp/q10/cache --seen          # seen classes (design)

Protocols: S-25 (unseen sketches vs their photos), the mixed gallery (all 3,125 photos), QuickDraw doodles
drawn as the page draws them (quickdraw-mini/unseen vs their photos and vs all photos), the perturbation
suite (ann mAP@all relative drop) and the pointing game. The relation network costs ~1 ms per pair on one
thread, so rn / fused use the first ``--rn-per-class`` queries of each class (the table says how many).
Results: benchmarks/results/protocols[-seen].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
SKETCHY = SHARED / "sketchy-mini"
QUICKDRAW = SHARED / "quickdraw-mini"


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def main() -> None:
    from sketchfind.datasets import read_class_file
    from sketchfind.datasets import scan_root as scan
    from sketchfind.models.factory import load_model
    from sketchfind.preprocess.normalize import normalize_drawing
    from sketchfind.protocols import PERTURBATIONS, report_markdown, run_protocols

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="folder for cached encodings (.npy)")
    parser.add_argument("--seen", action="store_true", help="design run on 25 seen classes (quickdraw train)")
    parser.add_argument("--rn-per-class", type=int, default=3)
    parser.add_argument("--perturb-per-class", type=int, default=10, help="0: no perturbation suite")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--weights", default=None, help="weights to measure (default: the shipped model)")
    parser.add_argument("--name", default=None, help="results file stem (default: protocols[-seen])")
    parser.add_argument(
        "--inputs", choices=("both", "product"), default="both", help="product: only the normalised input"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("zse-lite0", weights=args.weights) if args.weights else load_model("zse-lite0")
    unseen = read_class_file(SKETCHY / "splits" / "unseen25.txt")
    if args.seen:  # design classes: seen sketchy classes that also have QuickDraw training doodles
        doodles = QUICKDRAW / "train"
        have = sorted(p.stem for p in doodles.glob("*.ndjson"))
        classes = [c for c in scan(SKETCHY).classes if c not in unseen and c in have][:25]
    else:
        doodles, classes = QUICKDRAW / "unseen", unseen
    cache = Path(args.cache) if args.cache else None  # one folder: photos are encoded once for both runs
    report = {}
    inputs = (("official input", None), ("normalize_drawing", normalize_drawing))
    for name, prepare in inputs if args.inputs == "both" else inputs[1:]:
        log(name)
        report[name] = run_protocols(
            model,
            SKETCHY,
            classes,
            doodles,
            prepare=prepare,
            rn_per_class=args.rn_per_class,
            perturb_per_class=args.perturb_per_class,
            perturbations=() if args.perturb_per_class == 0 else tuple(PERTURBATIONS),
            cache_dir=cache,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("protocols-seen" if args.seen else "protocols")
    meta = {"classes": classes, "threads": args.threads, "rn_per_class": args.rn_per_class}
    meta["weights"] = args.weights or "shipped zse-lite0"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, **report}, indent=1, default=float))
    text = "".join(f"## {name}\n\n{report_markdown(r)}\n" for name, r in report.items())
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
