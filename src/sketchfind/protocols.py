"""Evaluation protocols that match how sketchfind is used, as pure functions over encodings.

* **standard** (S-25): the unseen classes' sketches vs those classes' photos (the model card's figure);
* **mixed gallery**: the same queries vs every photo of the folder, all classes (a real index holds more
  than the query classes);
* **doodles**: QuickDraw strokes rendered as the web page draws them (:func:`render_doodle`) vs photos;
* **perturbations**: S-25 queries drawn differently (thin, thick, faint, coloured, paper, ...), each
  reported as the relative drop of mAP@all against the clean queries (:data:`PERTURBATIONS`);
* **pointing game**: does the hottest cell of a photo heat-map lie on the cells the sketch's ink covers
  (Sketchy sketches roughly overlay the photo they were drawn from), against the random-cell baseline.

Every protocol reports every ranking of :mod:`sketchfind.evaluate` (ret, rn, fused, ann) with mAP@all,
mAP@100 and P@100 (:func:`ranking_metrics`). A query the pipeline refuses (e.g. "the sketch is empty")
counts with AP = P = 0: the person got nothing. :func:`run_protocols` runs them all on a model and
returns a dict; :func:`report_markdown` turns it into tables (``benchmarks/bench_protocols.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .metrics import per_query_metrics
from .rerank import RankSettings, pipeline_scores

STRATEGIES = ("ret", "rn", "fused", "ann")
METRICS = ("map_all", "map_100", "p_100")
PAGE_CANVAS, PAGE_MARGIN, PAGE_PEN = 512, 32, 5  # service/static/app.js: canvas size, fit margin, pen width


# ----------------------------------------------------------------------------- rankings and metrics


def strategy_scores(
    query_emb: np.ndarray,
    photo_emb: np.ndarray,
    relation: np.ndarray | None,
    settings: RankSettings,
    fusion: float = 0.5,
) -> dict[str, np.ndarray]:
    """(Q, D), (P, D) [Ret] embeddings (+ (Q, P) relation scores) -> {ranking: (Q, P) scores}, as ``evaluate``."""
    cos = pipeline_scores(query_emb, photo_emb, None, RankSettings(qe_weight=0.0, dba_top=0))
    scores = {"ret": cos, "ann": pipeline_scores(query_emb, photo_emb, relation, settings)}
    if relation is not None:
        scores["rn"] = relation
        scores["fused"] = fusion * cos + (1 - fusion) * relation
    return {name: scores[name] for name in STRATEGIES if name in scores}


def ranking_metrics(
    scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, refused: np.ndarray | None = None
) -> dict[str, float]:
    """(Q, G) similarity -> {map_all, map_100, p_100} (official definitions); refused queries score 0."""
    table = per_query_metrics(-scores, query_labels, gallery_labels, ks_map=(100,), ks_prec=(100,))
    if refused is not None:
        table[np.asarray(refused, bool)] = 0.0
    means = np.nanmean(table, axis=0)
    return {name: float(value) for name, value in zip(METRICS, means, strict=True)}


def protocol_table(
    scores: dict[str, np.ndarray],
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    refused: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """{ranking: (Q, G) scores} -> {ranking: metrics}."""
    return {name: ranking_metrics(s, query_labels, gallery_labels, refused) for name, s in scores.items()}


def relative_drop(clean: float, perturbed: float) -> float:
    """(clean - perturbed) / clean: 0.1 = a 10% relative drop; negative = better than clean."""
    return (clean - perturbed) / clean if clean > 0 else float("nan")


# ----------------------------------------------------------------------------- doodles


def render_doodle(
    strokes: list, canvas: int = PAGE_CANVAS, margin: int = PAGE_MARGIN, pen: int = PAGE_PEN
) -> np.ndarray:
    """QuickDraw strokes -> (canvas, canvas, 3) uint8, drawn as the page does (``quickDrawStrokes`` in
    app.js: fitted with a margin, centred, black round-capped antialiased lines of the pen width)."""
    lines = [np.asarray(s[:2], dtype=np.float64).T for s in strokes if len(s[0])]
    points = np.concatenate(lines)
    low = points.min(axis=0)
    extent = points.max(axis=0) - low
    scale = (canvas - 2 * margin) / max(extent.max(), 1.0)
    offset = (canvas - extent * scale) / 2
    image = np.full((canvas, canvas), 255, np.uint8)
    shift = 4  # cv2 fixed-point sub-pixel coordinates
    for line in lines:
        pts = np.round(((line - low) * scale + offset) * (1 << shift)).astype(np.int32)
        if len(pts) == 1:
            pts = np.concatenate([pts, pts])
        cv2.polylines(image, [pts], False, 0, thickness=pen, lineType=cv2.LINE_AA, shift=shift)
    return np.repeat(image[:, :, None], 3, axis=2)


def load_doodles(folder: str | Path, classes: list[str] | None = None) -> tuple[list[list], list[str]]:
    """(stroke lists, their sketchy class names) from ``<folder>/<class>.ndjson`` files, sorted by class."""
    folder = Path(folder)
    names = classes if classes is not None else sorted(p.stem for p in folder.glob("*.ndjson"))
    drawings, labels = [], []
    for name in names:
        for line in (folder / f"{name}.ndjson").read_text().splitlines():
            if line.strip():
                drawings.append(json.loads(line)["drawing"])
                labels.append(name)
    return drawings, labels


# ----------------------------------------------------------------------------- perturbations


def _ink_alpha(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) float ink coverage in [0, 1] of a black-on-white drawing."""
    return (255.0 - rgb.astype(np.float64).mean(axis=2, keepdims=True)) / 255.0


def _on_paper(alpha: np.ndarray, ink: tuple, paper: np.ndarray | tuple = (255, 255, 255)) -> np.ndarray:
    paper = np.broadcast_to(np.asarray(paper, np.float64), alpha.shape[:2] + (3,))
    out = paper * (1 - alpha) + np.asarray(ink, np.float64) * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def thin(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strokes about one pixel thinner (a 2x2 max filter on the drawing)."""
    return cv2.dilate(rgb, np.ones((2, 2), np.uint8))


def thick(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strokes about four pixels thicker (a 5x5 disc min filter), like a marker."""
    return cv2.erode(rgb, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))


def faint(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light pencil: the darkest ink becomes grey 120."""
    return _on_paper(_ink_alpha(rgb), (120, 120, 120))


def coloured(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blue ballpoint ink (30, 60, 190)."""
    return _on_paper(_ink_alpha(rgb), (30, 60, 190))


def scanned(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scan of off-white paper: cream tone, uneven light, sensor noise, JPEG quality 75."""
    h, w = rgb.shape[:2]
    light = 1.0 - 0.06 * np.linspace(0, 1, w)[None, :, None] - 0.04 * np.linspace(0, 1, h)[:, None, None]
    paper = np.array([240.0, 233.0, 215.0]) * light + rng.normal(0, 3.0, (h, w, 3))
    ink = np.array([45.0, 40.0, 38.0])
    image = _on_paper(_ink_alpha(rgb), ink, np.clip(paper, 0, 255))
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def transparent(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A transparent PNG as drawing apps export it: black RGB everywhere, the drawing in the alpha channel."""
    alpha = np.round(_ink_alpha(rgb)[:, :, 0] * 255).astype(np.uint8)
    return np.dstack([np.zeros_like(rgb), alpha])  # (H, W, 4) RGBA


def white_on_black(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chalk on a blackboard / dark-mode canvas: the drawing inverted."""
    return 255 - rgb


def small(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole image at 150 px (area-averaged: thin grey strokes)."""
    return cv2.resize(rgb, (150, 150), interpolation=cv2.INTER_AREA)


def off_centre(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The drawing at 60% size in the top-left corner of the same canvas."""
    h, w = rgb.shape[:2]
    shrunk = cv2.resize(rgb, (round(w * 0.6), round(h * 0.6)), interpolation=cv2.INTER_AREA)
    out = np.full_like(rgb, 255)
    out[8 : 8 + shrunk.shape[0], 8 : 8 + shrunk.shape[1]] = shrunk[: h - 8, : w - 8]
    return out


PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "thin": thin,
    "thick": thick,
    "faint_grey": faint,
    "coloured_ink": coloured,
    "scanned_paper": scanned,
    "transparent_png": transparent,
    "white_on_black": white_on_black,
    "small_150px": small,
    "off_centre": off_centre,
}


def perturb(name: str, rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """One perturbation of a black-on-white uint8 (H, W, 3) drawing (RGBA for ``transparent_png``)."""
    return PERTURBATIONS[name](rgb, np.random.default_rng(seed))


# ----------------------------------------------------------------------------- pointing game


def ink_cells(rgb: np.ndarray, grid: int = 7, threshold: int = 300) -> np.ndarray:
    """(grid, grid) bool: cells of a black-on-white drawing holding ink (R+G+B <= threshold)."""
    ink = rgb[:, :, :3].astype(np.int32).sum(axis=2) <= threshold
    rows = np.linspace(0, ink.shape[0], grid + 1).round().astype(int)
    cols = np.linspace(0, ink.shape[1], grid + 1).round().astype(int)
    return np.array(
        [[ink[rows[r] : rows[r + 1], cols[c] : cols[c + 1]].any() for c in range(grid)] for r in range(grid)]
    )


def pointing_game(heats: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """(N, g, g) photo heat-maps and (N, g, g) bool ink masks -> pointing-game figures:

    * ``hit_rate``: the hottest cell lies on ink (a tie of the maximum spreads the point over its cells);
      ``random``: the same for a random cell (the mean share of inked cells);
    * ``hit_rate_off_centre`` over the ``pairs_off_centre`` pairs whose centre cell holds no ink, where a
      centred-object prior cannot score;
    * ``auc``: mean per-pair ROC AUC of the heat separating inked from clean cells (the whole map, 0.5 random)."""
    heats = np.asarray(heats, np.float64).reshape(len(heats), -1)
    masks = np.asarray(masks, bool).reshape(len(masks), -1)
    hottest = heats == heats.max(axis=1, keepdims=True)
    hits = (hottest & masks).sum(axis=1) / hottest.sum(axis=1)
    off = ~masks[:, masks.shape[1] // 2]
    aucs = [_auc(h[m], h[~m]) for h, m in zip(heats, masks, strict=True) if m.any() and not m.all()]
    return {
        "hit_rate": float(hits.mean()),
        "random": float(masks.mean(axis=1).mean()),
        "pairs": len(heats),
        "hit_rate_off_centre": float(hits[off].mean()) if off.any() else float("nan"),
        "pairs_off_centre": int(off.sum()),
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
    }


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting one half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def sketch_photo_pairs(root: str | Path, classes: list[str]) -> list[tuple[Path, Path, str]]:
    """(first sketch ``X-1.png``, photo ``X.jpg``, class) for every photo of the classes that has sketches."""
    root = Path(root)
    pairs = []
    for name in classes:
        for sketch in sorted((root / "sketches" / name).glob("*-1.png")):
            photo = root / "photos" / name / (sketch.stem.rsplit("-", 1)[0] + ".jpg")
            if photo.exists():
                pairs.append((sketch, photo, name))
    return pairs


# ----------------------------------------------------------------------------- report


def report_markdown(report: dict) -> str:
    """The dict of :func:`run_protocols` (or the benchmark) as Markdown tables."""
    out = []
    for proto, entry in report.get("retrieval", {}).items():
        rn = f"; rn and fused: the first {entry['rn_queries']} queries by class" if "rn_queries" in entry else ""
        out.append(f"### {proto} ({entry['queries']} queries, gallery {entry['gallery']}{rn})\n")
        out.append("| ranking | " + " | ".join(METRICS) + " |")
        out.append("|---" * (len(METRICS) + 1) + "|")
        for name, m in entry["metrics"].items():
            out.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
        out.append("")
    if "perturbations" in report:
        out.append("### perturbations of the query sketches (ann, mAP@all; drop = relative to clean)\n")
        out.append("| perturbation | mAP@all | relative drop | refused |")
        out.append("|---|---|---|---|")
        for name, p in report["perturbations"].items():
            out.append(f"| {name} | {p['map_all']:.3f} | {100 * p['drop']:.1f}% | {p['refused']} |")
        out.append("")
    if "pointing" in report:
        out.append("### pointing game\n")
        out.append(pointing_markdown(report["pointing"]))
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- running them all


def prepare_drawings(
    model, images: list, prepare: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Drawings (arrays, RGBA allowed, or files) -> (squared uint8 model inputs, (N,) bool refused).

    ``prepare=None`` is the official pipeline (decode, crop to ink, resize, pad); otherwise ``prepare``
    (e.g. :func:`sketchfind.preprocess.normalize.normalize_drawing`) runs on the decoded RGB first. A drawing the
    pipeline refuses (EmptySketchError) gets None and ``refused=True``."""
    from .errors import EmptySketchError
    from .preprocess import read_sketch_rgb, sketch_steps

    squared, refused = [], np.zeros(len(images), bool)
    for i, image in enumerate(images):
        try:
            rgb = read_sketch_rgb(image)
            rgb = prepare(rgb) if prepare is not None else rgb
            squared.append(sketch_steps(rgb, model.cfg.preprocess)["squared"])
        except EmptySketchError:
            refused[i] = True
            squared.append(None)
    return squared, refused


def encode_drawings(
    model,
    images: list,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    batch: int = 32,
    cache: Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Drawings -> ((N, T, D) float32 tokens, (N,) bool refused) (see :func:`prepare_drawings`); refused
    drawings get zero tokens. With ``cache`` the encodings are kept by content: the same model inputs are
    never encoded twice (clean drawings look the same with and without normalisation)."""
    import torch

    from .preprocess import to_tensor

    cfg = model.cfg.preprocess
    squared, refused = prepare_drawings(model, images, prepare)
    digest = hashlib.sha1(refused.tobytes())
    for image in squared:
        digest.update(b"" if image is None else image.tobytes())

    def encode() -> tuple[np.ndarray]:
        tokens = np.zeros((len(squared), model.cfg.num_tokens, model.cfg.width), np.float32)  # refused: zeros
        kept = np.flatnonzero(~refused)
        with torch.inference_mode():
            for i in range(0, len(kept), batch):
                rows = kept[i : i + batch]
                images = torch.stack([to_tensor(squared[r], cfg) for r in rows])
                tokens[rows] = model.encode_sketch(images).float().numpy()
        return (tokens,)

    (tokens,) = _cached(cache, f"sketch-{digest.hexdigest()[:16]}", encode)
    return tokens, refused


def encode_photo_files(model, files: list, batch: int = 32) -> np.ndarray:
    """Photo files -> (N, T, D) float32 tokens."""
    import torch

    from .preprocess import preprocess_photo

    out = []
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            images = torch.stack([preprocess_photo(f, model.cfg.preprocess) for f in files[i : i + batch]])
            out.append(model.encode_photo(images).float().numpy())
    return np.concatenate(out)


def relation_matrix(model, query_tokens: np.ndarray, photo_tokens: np.ndarray) -> np.ndarray:
    """(Q, P) float64 relation-network scores (the costly part: ~1 ms per pair on one CPU thread; float64: no ties
    at 1.0, :func:`~sketchfind.models.zse.relation_probability`)."""
    import torch

    from .models.zse import relation_probability

    with torch.inference_mode():
        rows = [
            model.relation_scores(torch.from_numpy(q), torch.from_numpy(photo_tokens), logits=True)
            for q in np.array_split(query_tokens, max(1, len(query_tokens) // 8))
        ]
    return relation_probability(torch.cat(rows))


def first_per_class(labels, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` items of each label (all when None)."""
    if per_class is None:
        return np.arange(len(labels))
    seen: dict = {}
    keep = []
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= per_class:
            keep.append(i)
    return np.asarray(keep, int)


def retrieval_protocol(
    query_tokens: np.ndarray,
    query_labels: np.ndarray,
    photo_tokens: np.ndarray,
    photo_labels: np.ndarray,
    settings: RankSettings,
    relation: np.ndarray | None = None,
    refused: np.ndarray | None = None,
    fusion: float = 0.5,
    relation_rows: np.ndarray | None = None,
    ret_tokens: int = 1,
) -> dict:
    """One query set vs one gallery with every ranking -> {queries, gallery, metrics: {ranking: metrics}}.
    ``relation`` may cover only the queries ``relation_rows`` (the relation network costs ~1 ms per pair):
    rn / fused are then that subset's figures (``rn_queries`` says how many)."""
    from .models.zse import retrieval_embedding

    query_labels, photo_labels = np.asarray(query_labels), np.asarray(photo_labels)
    q_emb, p_emb = retrieval_embedding(query_tokens, ret_tokens), retrieval_embedding(photo_tokens, ret_tokens)
    scores = strategy_scores(q_emb, p_emb, None, settings)
    metrics = protocol_table(scores, query_labels, photo_labels, refused)
    entry = {"queries": len(query_labels), "gallery": len(photo_labels), "metrics": metrics}
    if relation is not None:
        rows = np.arange(len(query_labels)) if relation_rows is None else np.asarray(relation_rows)
        sub = strategy_scores(q_emb[rows], p_emb, relation, settings, fusion)
        sub_refused = None if refused is None else refused[rows]
        for name in ("rn", "fused"):
            metrics[name] = ranking_metrics(sub[name], query_labels[rows], photo_labels, sub_refused)
        entry["rn_queries"] = len(rows)
        entry["metrics"] = {name: metrics[name] for name in STRATEGIES if name in metrics}
        if len(rows) < len(query_labels):  # ret and ann on the same subset, so all four compare directly
            for name in ("ret", "ann"):
                subset = ranking_metrics(sub[name], query_labels[rows], photo_labels, sub_refused)
                entry["metrics"][f"{name} (rn queries)"] = subset
    return entry


def _cached(cache_dir: Path | None, name: str, compute: Callable[[], tuple]) -> tuple:
    """Arrays saved as ``<cache_dir>/<name>.<i>.npy`` so no image is encoded twice across runs."""
    if cache_dir is None:
        return compute()
    paths = sorted(Path(cache_dir).glob(f"{name}.*.npy"))
    if paths:
        return tuple(np.load(p) for p in paths)
    arrays = compute()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
        np.save(Path(cache_dir) / f"{name}.{i}.npy", array)
    return arrays


def run_protocols(
    model,
    sketchy_root: str | Path,
    classes: list[str],
    doodle_dir: str | Path | None = None,
    *,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    settings: RankSettings | None = None,
    perturbations: tuple[str, ...] = tuple(PERTURBATIONS),
    perturb_per_class: int | None = None,
    rn_per_class: int | None = None,
    mixed: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Every retrieval protocol and the perturbation suite for one model and one input ``prepare`` step
    -> a dict (see :func:`report_markdown`). ``classes``: the query classes (report on unseen ones only);
    ``rn_per_class`` / ``perturb_per_class`` limit the queries of the costly parts; ``cache_dir`` keeps
    encodings between runs (by content)."""
    from .datasets import scan_root
    from .models.factory import model_fingerprint

    cache = Path(cache_dir) if cache_dir is not None else None
    # the relation cache's key holds the head's weights: another head scores the same tokens differently
    head = model_fingerprint(getattr(model, "torch_model", model)).encode()
    settings = settings or RankSettings.from_metadata(model.weights_metadata)
    everything = scan_root(sketchy_root)
    photo_files, photo_names = everything.flat("photos")
    photo_labels = np.asarray(everything.classes)[photo_names]
    (photo_tokens,) = _cached(cache, "photos", lambda: (encode_photo_files(model, photo_files),))
    in_query = np.isin(photo_labels, classes)
    split = scan_root(sketchy_root, classes)
    sketch_files, sketch_names = split.flat("sketches")
    sketch_labels = np.asarray(split.classes)[sketch_names]

    report: dict = {"settings": {"ann": settings.__dict__, "classes": len(classes)}, "retrieval": {}}
    tokens, refused = encode_drawings(model, sketch_files, prepare, cache=cache)
    rn_rows = first_per_class(sketch_labels, rn_per_class)
    galleries = {"standard": in_query, **({"mixed": np.ones(len(photo_labels), bool)} if mixed else {})}
    query_sets = [("sketches", tokens, refused, sketch_labels, rn_rows)]
    if doodle_dir is not None:
        strokes, doodle_labels = load_doodles(
            doodle_dir, [c for c in classes if (Path(doodle_dir) / f"{c}.ndjson").exists()]
        )
        d_tokens, d_refused = encode_drawings(model, [render_doodle(s) for s in strokes], prepare, cache=cache)
        doodle_labels = np.asarray(doodle_labels)
        galleries_d = np.isin(photo_labels, np.unique(doodle_labels))
        query_sets.append(("doodles", d_tokens, d_refused, doodle_labels, first_per_class(doodle_labels, rn_per_class)))
    for set_name, q_tokens, q_refused, q_labels, rows in query_sets:
        for gallery_name, mask in galleries.items():
            if set_name == "doodles" and gallery_name == "standard":
                mask = galleries_d
            relation = None
            if rn_per_class != 0:  # cached by content: identical queries (clean input) are scored once
                digest = hashlib.sha1(q_tokens[rows].tobytes() + mask.tobytes() + head).hexdigest()[:16]
                (relation,) = _cached(
                    cache,
                    f"rn2-{digest}",
                    lambda q=q_tokens, r=rows, m=mask: (relation_matrix(model, q[r], photo_tokens[m]),),
                )
            report["retrieval"][f"{set_name} vs {gallery_name}"] = retrieval_protocol(
                q_tokens,
                q_labels,
                photo_tokens[mask],
                photo_labels[mask],
                settings,
                relation,
                q_refused,
                relation_rows=rows,
                ret_tokens=model.cfg.ret_tokens,
            )
    if perturbations:
        report["perturbations"] = perturbation_suite(
            model,
            sketch_files,
            sketch_labels,
            photo_tokens[in_query],
            photo_labels[in_query],
            settings,
            perturbations,
            prepare,
            perturb_per_class,
            cache,
        )
    return report


def perturbation_suite(
    model,
    sketch_files: list,
    sketch_labels: np.ndarray,
    photo_tokens: np.ndarray,
    photo_labels: np.ndarray,
    settings: RankSettings,
    names: tuple[str, ...] = tuple(PERTURBATIONS),
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    per_class: int | None = None,
    cache: Path | None = None,
) -> dict:
    """mAP@all (ann) of the clean and each perturbed query set and the relative drop; refused queries count 0."""
    from .preprocess import read_sketch_rgb

    rows = first_per_class(sketch_labels, per_class)
    labels = sketch_labels[rows]
    originals = [read_sketch_rgb(sketch_files[i]) for i in rows]

    def score(name: str, images: list) -> dict:
        tokens, refused = encode_drawings(model, images, prepare, cache=cache)
        query, gallery = model.retrieval_embedding(tokens), model.retrieval_embedding(photo_tokens)
        scores = strategy_scores(query, gallery, None, settings)["ann"]
        return {**ranking_metrics(scores, labels, photo_labels, refused), "refused": int(refused.sum())}

    clean = score("clean", originals)
    out = {"clean": {**clean, "drop": 0.0}}
    for name in names:
        result = score(name, [perturb(name, image, seed=i) for i, image in enumerate(originals)])
        out[name] = {**result, "drop": relative_drop(clean["map_all"], result["map_all"])}
    return out


def pointing_markdown(results: dict[str, dict]) -> str:
    """{heat-map name: :func:`pointing_game` result} as a Markdown table."""
    lines = [
        "| heat-map | hit rate | random cell | hit rate, centre cell without ink | ink-vs-clean AUC | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in results.items():
        lines.append(
            f"| {name} | {p['hit_rate']:.3f} | {p['random']:.3f} | {p['hit_rate_off_centre']:.3f} "
            f"({p['pairs_off_centre']}) | {p['auc']:.3f} | {p['pairs']} |"
        )
    return "\n".join(lines) + "\n"


def write_protocols(model, root, classes: list[str], doodle_dir, settings: RankSettings, out_dir) -> dict[str, Path]:
    """``sketchfind eval --protocols``: :func:`run_protocols` with the robust input the search uses, written as
    ``protocols.json`` and ``protocols.md`` into ``out_dir``; returns their paths."""
    import json

    from .preprocess.normalize import normalize_drawing

    report = run_protocols(model, root, classes, doodle_dir, prepare=normalize_drawing, settings=settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"protocols_json": out / "protocols.json", "protocols": out / "protocols.md"}
    paths["protocols_json"].write_text(json.dumps(report, indent=2, default=float))
    paths["protocols"].write_text(report_markdown(report))
    return paths
