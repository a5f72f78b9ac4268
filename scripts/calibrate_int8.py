"""Writes the int8 calibration of a model's weights from training-class images (sketchfind.runtime.calibrate).

    python scripts/calibrate_int8.py            # the shipped zse-lite0 -> sketchfind/weights/zse-lite0.int8.json
    python scripts/calibrate_int8.py --weights runs/x/best.safetensors --out ~/.cache/sketchfind/int8/x.json

Images: ``--per-class`` sketches and photos (seeded sample) of each training class, i.e. the classes of
``--data`` that are neither held out (``--holdout``, the zero-shot test classes) nor validation classes
(``--val-classes`` drawn with ``--seed`` exactly as ``sketchfind train`` draws them). The quantisation recipe is
chosen on the validation classes, and the held-out ones are kept for the reported figures.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model name (default: sketchfind's default model)")
    ap.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    ap.add_argument("--data", type=Path, default=SKETCHY, help="folder with sketches/<class>/ and photos/<class>/")
    ap.add_argument("--holdout", type=Path, default=SKETCHY / "splits" / "unseen25.txt")
    ap.add_argument("--val-classes", type=int, default=15)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="default: beside the shipped weights (or the user cache)")
    args = ap.parse_args()

    from sketchfind.datasets import split_classes
    from sketchfind.models import load_model
    from sketchfind.models.factory import shipped_weights
    from sketchfind.runtime import calibrate

    model = load_model(args.model, weights=args.weights)
    train, _, _ = split_classes(args.data, args.holdout, args.val_classes, args.seed)
    rng = random.Random(0)
    sketches = [f for c in train.classes for f in rng.sample(train.sketches[c], args.per_class)]
    photos = [f for c in train.classes for f in rng.sample(train.photos[c], args.per_class)]
    out = args.out
    if out is None and args.weights is None and shipped_weights(model.cfg.name) is not None:
        out = shipped_weights(model.cfg.name).with_suffix(".int8.json")
    note = (
        f"{args.per_class} sketches + {args.per_class} photos of each of the {len(train.classes)} training classes "
        f"of {args.data.name} (holdout {args.holdout.name}, {args.val_classes} validation classes, seed {args.seed})"
    )
    print(calibrate(model, sketches, photos, out, note=note))


if __name__ == "__main__":
    main()
