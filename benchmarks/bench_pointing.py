"""Pointing game for photo heat-maps: does the hottest photo cell lie on the cells the sketch's ink covers?

    python benchmarks/bench_pointing.py --cache /tmp/q10/cache --seen    # design: 20 seen classes
    python benchmarks/bench_pointing.py --cache /tmp/q10/cache           # report: unseen-25

Pairs: sketch ``X-1.png`` and the photo ``X.jpg`` it was drawn from (Sketchy drawings roughly overlay their
photo), one per photo. Heat-maps compared (all 7x7 on the photo as the model sees it):
  rn_cosine          relation head's 49x49 cosine map, max over inked sketch cells (explanations before 2026-12-03)
  relation           the explanation of exhaustive / clustered on heads that read the [Ret] cosine: the relation
                     logit's [Ret] term (exact split) + map term (gradient x input), sketchfind.explain.explain_relation
  cross_attention    the cross-attention layers' token correspondence, max over inked sketch cells
  ret_sketch         exact [Ret] attribution (sketchfind.attribution) of the sketch's own [Ret] cosine
  ret_expanded       the same for the expanded query the default ann search scores (query expansion on
                     the gallery of the protocol's classes)
  ret_augmented      the same for the query the neighbour-augmented head is scored with (what explanations
                     of the default ann search split: the photo's own share of its score)
  photo_norm         reference, no sketch at all: backbone feature norm per cell (saliency)
  centre             reference, no image at all: distance to the centre (a centred-object prior)
Results: benchmarks/results/pointing[-seen].{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SKETCHY = HERE.parents[1] / "shared" / "data" / "sketchy-mini"


def main() -> None:
    from sketchfind.attribution import ret_photo_heat
    from sketchfind.datasets import read_class_file
    from sketchfind.datasets import scan_root as scan
    from sketchfind.explain import _attention_matrix, _inked_cells, explain_relation, explain_tokens, explains_relation
    from sketchfind.models.factory import load_model
    from sketchfind.preprocess import preprocess_photo, read_photo, read_sketch_rgb
    from sketchfind.protocols import (
        encode_drawings,
        encode_photo_files,
        ink_cells,
        pointing_game,
        pointing_markdown,
        prepare_drawings,
        sketch_photo_pairs,
    )
    from sketchfind.rerank import RankSettings, expand_query, rank_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--seen", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--weights", default=None, help="weights to measure (default: the shipped model)")
    parser.add_argument("--name", default=None, help="results file stem (default: pointing[-seen])")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("zse-lite0", weights=args.weights) if args.weights else load_model("zse-lite0")
    settings = RankSettings.from_metadata(model.weights_metadata)
    unseen = read_class_file(SKETCHY / "splits" / "unseen25.txt")
    classes = [c for c in scan(SKETCHY).classes if c not in unseen][:20] if args.seen else unseen
    cache = Path(args.cache) if args.cache else None
    # the gallery the ann query expansion searches: every photo of the protocol's classes
    gallery = [f for c in classes for f in scan(SKETCHY, [c]).photos[c]]
    everything = scan(SKETCHY).flat("photos")[0]
    position = {str(f): i for i, f in enumerate(everything)}
    photo_tokens = np.load(cache / "photos.0.npy") if cache else encode_photo_files(model, everything)
    gallery_emb = model.retrieval_embedding(photo_tokens[[position[str(f)] for f in gallery]])
    yy, xx = np.mgrid[0:7, 0:7]
    centre = -np.hypot(yy - 3, xx - 3)

    def heat_maps(pairs: list) -> tuple[dict[str, np.ndarray], list]:
        sketch_tokens, _ = encode_drawings(model, [s for s, _, _ in pairs], cache=cache)
        squared, _ = prepare_drawings(model, [s for s, _, _ in pairs])
        names = ("rn_cosine", "cross_attention", "ret_sketch", "ret_expanded", "ret_augmented")
        names += ("relation",) if explains_relation(model) else ()
        heats: dict[str, list] = {k: [] for k in names}
        heats |= {"photo_norm": [], "centre": []}
        with torch.inference_mode():
            for i, (_, photo, _) in enumerate(pairs):
                sk = torch.from_numpy(sketch_tokens[i : i + 1])
                image = preprocess_photo(photo, model.cfg.preprocess)[None]
                feats = model.tokens.features(image, "photo")
                ph, _ = model.encode_tokens(*model.tokens.to_tokens(feats), "photo")
                heats["rn_cosine"].append(explain_tokens(model, sk, ph, squared[i]).photo_heat)
                inked = _inked_cells(squared[i], 7, model.cfg.preprocess)
                attention = _attention_matrix(model, sk, ph).numpy()
                heats["cross_attention"].append(attention[inked].max(0).reshape(7, 7))
                query = model.retrieval_embedding(sketch_tokens[i : i + 1])[0]
                heats["ret_sketch"].append(ret_photo_heat(model, feats, torch.from_numpy(query))[0])
                top = np.argsort(-(gallery_emb @ query), kind="stable")[: settings.qe_top]
                expanded = (
                    expand_query(query, gallery_emb[top], settings.qe_weight, settings.qe_alpha)
                    if settings.qe_weight
                    else query
                )
                heats["ret_expanded"].append(ret_photo_heat(model, feats, torch.from_numpy(expanded))[0])
                head = np.argsort(-(gallery_emb @ expanded), kind="stable")[: settings.dba_top]
                _, _, scored = rank_head(query, head, gallery_emb[head], settings)
                heats["ret_augmented"].append(ret_photo_heat(model, feats, torch.from_numpy(scored))[0])
                if "relation" in heats:
                    with torch.inference_mode(False):  # the split takes gradients
                        photo_image = read_photo(photo).convert("RGB")
                        heats["relation"].append(explain_relation(model, squared[i], photo_image).photo_heat)
                heats["photo_norm"].append(feats[0].norm(dim=0).numpy())
                heats["centre"].append(centre)
        return {k: np.stack(v) for k, v in heats.items()}, squared

    # main protocol: one pair per photo (X-1.png, X.jpg), ink cells of the sketch as drawn over the photo
    pairs = sketch_photo_pairs(SKETCHY, classes)
    heats, _ = heat_maps(pairs)
    masks = np.stack([ink_cells(read_sketch_rgb(s), grid=7) for s, _, _ in pairs])
    report = {"overlay": {name: pointing_game(h, masks) for name, h in heats.items()}}
    # the variant (as far as it can be reconstructed): the first 5 sketches of each class with their
    # photos, ink cells of the sketch as the model saw it (cropped to ink and squared, not aligned to the photo)
    first = [
        (s, s.parent.parent.parent / "photos" / c / (s.stem.rsplit("-", 1)[0] + ".jpg"), c)
        for c in classes
        for s in scan(SKETCHY, [c]).sketches[c][:5]
    ]
    heats, squared = heat_maps(first)
    masks = np.stack([ink_cells(s, grid=7) for s in squared])
    report["squared, first 5 per class"] = {name: pointing_game(h, masks) for name, h in heats.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("pointing-seen" if args.seen else "pointing")
    (out / f"{stem}.json").write_text(json.dumps({"classes": classes, "pointing": report}, indent=1))
    text = "".join(f"### {name}\n\n{pointing_markdown(r)}\n" for name, r in report.items())
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
