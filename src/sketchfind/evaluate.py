"""``sketchfind eval``: retrieval quality of a model on sketch/photo folders, with baselines from the same run.

Rankings compared (higher score = better):
  ret      cosine of the encoder [Ret] embeddings (the paper's "Ret" ranking, what ANN search uses first)
  rn       the relation-network score of every sketch-photo pair (the paper's default)
  fused    :func:`~sketchfind.rerank.fuse` of ret and rn with the ann settings' fusion weight
  ann      what ``sketchfind search`` returns by default: query expansion, then the fused head
           (:mod:`sketchfind.rerank`; the same :class:`~sketchfind.rerank.RankSettings` as search: those
           stored beside the weights, or the defaults for weights without any)
Baselines: random ranking (seeded) and the untrained ImageNet backbone's pooled features with cosine.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .datasets import scan
from .errors import InputError
from .metrics import precision_recall_curve, retrieval_metrics
from .models.zse import ZSEModel, relation_probability
from .preprocess import preprocess_photo, preprocess_sketch
from .progress import progress
from .rerank import RankSettings, fuse, pipeline_scores

RANKINGS = ("ret", "rn", "fused", "ann")


@dataclass
class EvalResult:
    """Metrics per ranking (and baseline), with everything needed to draw the plots."""

    metrics: dict[str, dict[str, float]]
    settings: dict
    scores: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # ranking -> (Q, G) similarity
    query_files: list[Path] = field(repr=False, default_factory=list)
    gallery_files: list[Path] = field(repr=False, default_factory=list)
    query_labels: np.ndarray | None = field(repr=False, default=None)
    gallery_labels: np.ndarray | None = field(repr=False, default=None)


def metric_names(gallery_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """mAP@K and P@K cut-offs reported for a gallery (P@10, P@25 added for small galleries)."""
    map_ks = (100, 200)
    precision_ks = (100, 200) if gallery_size > 1000 else (10, 25, 100, 200)
    return map_ks, precision_ks


@torch.inference_mode()
def encode_files(model: ZSEModel, files: list[Path], kind: str, batch: int = 32, desc: str = "") -> tuple:
    """(tokens (N, T, D), global embeddings (N, G)) of image files, with progress."""
    pre = model.cfg.preprocess
    prep = preprocess_sketch if kind == "sketch" else preprocess_photo
    tokens, globals_ = [], []
    with progress(len(files), desc or f"encoding {kind} images") as advance:
        for i in range(0, len(files), batch):
            chunk = files[i : i + batch]
            t, g = model.encode_with_global(torch.stack([prep(f, pre) for f in chunk]), kind)
            tokens.append(t)
            globals_.append(g)
            advance(len(chunk))
    return torch.cat(tokens), torch.cat(globals_)


def imagenet_baseline(model: ZSEModel, sketches: list[Path], photos: list[Path]) -> np.ndarray | None:
    """Cosine of the pretrained (untrained-for-SBIR) backbone's pooled features, or None without the package."""
    from .errors import CheckpointError
    from .models.efficientnet import load_pretrained

    if not model.cfg.backbone.startswith("efficientnet"):
        return None
    try:
        backbone = load_pretrained(model.cfg.backbone.removeprefix("efficientnet_"))
    except CheckpointError:
        return None
    base = ZSEModel(model.cfg, backbone=backbone).eval()
    _, g_sk = encode_files(base, sketches, "sketch", desc="baseline: sketches")
    _, g_ph = encode_files(base, photos, "photo", desc="baseline: photos")
    return (g_sk @ g_ph.T).numpy()


def evaluate(
    model: ZSEModel,
    sketches_dir: str | Path,
    photos_dir: str | Path,
    classes: list[str] | None = None,
    *,
    settings: RankSettings | None = None,
    baselines: bool = True,
    seed: int = 0,
) -> EvalResult:
    """Ranks every photo for every sketch with each ranking and computes the official metrics.

    ``settings``: the ann pipeline's and the fused ranking's (default: what search uses with this model,
    i.e. the settings stored with its weights)."""
    sketches_dir, photos_dir = Path(sketches_dir), Path(photos_dir)
    if settings is None:
        settings = RankSettings.from_metadata(model.weights_metadata)
    split = scan(sketches_dir, photos_dir, classes)
    q_files, q_labels = split.flat("sketches")
    g_files, g_labels = split.flat("photos")
    if not q_files or not g_files:
        raise InputError("no sketches or no photos found for the chosen classes")
    t0 = time.perf_counter()
    sk_tok, _ = encode_files(model, q_files, "sketch")
    ph_tok, _ = encode_files(model, g_files, "photo")
    encode_s = time.perf_counter() - t0
    scores = {"ret": (model.retrieval_embedding(sk_tok) @ model.retrieval_embedding(ph_tok).T).numpy()}
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = torch.cat([model.relation_scores(s, ph_tok, logits=True) for s in sk_tok.split(8)])
    scores["rn"] = relation_probability(logits)  # float64: no ties at 1.0
    rn_s = time.perf_counter() - t0
    scores["fused"] = fuse(scores["ret"], scores["rn"], settings.fusion)
    q_emb, g_emb = model.retrieval_embedding(sk_tok).numpy(), model.retrieval_embedding(ph_tok).numpy()
    scores["ann"] = pipeline_scores(q_emb, g_emb, scores["rn"], settings)
    if baselines:
        scores["random"] = np.random.default_rng(seed).random(scores["ret"].shape)
        base = imagenet_baseline(model, q_files, g_files)
        if base is not None:
            scores["imagenet_backbone"] = base
    map_ks, precision_ks = metric_names(len(g_files))
    metrics = {
        name: retrieval_metrics(-s, q_labels, g_labels, map_ks=map_ks, precision_ks=precision_ks)
        for name, s in scores.items()
    }
    settings = {
        "model": model.cfg.name,
        "sketches": str(sketches_dir),
        "photos": str(photos_dir),
        "classes": len(split.classes),
        "class_names": list(split.classes),
        "queries": len(q_files),
        "gallery": len(g_files),
        "fusion": settings.fusion,
        "ann": asdict(settings),
        "encode_seconds": round(encode_s, 2),
        "rn_seconds_per_query": round(rn_s / len(q_files), 4),
        "torch_threads": torch.get_num_threads(),
    }
    return EvalResult(metrics, settings, scores, q_files, g_files, q_labels, g_labels)


# ---------------------------------------------------------------------------------------------
# reports


def write_report(result: EvalResult, out_dir: str | Path, grid_queries: int = 8, grid_top: int = 8) -> dict[str, Path]:
    """Writes metrics.json, metrics.md, pr_curve.png and retrieval_grid.png into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "metrics.json",
        "markdown": out / "metrics.md",
        "pr": out / "pr_curve.png",
        "grid": out / "retrieval_grid.png",
    }
    paths["json"].write_text(json.dumps({"settings": result.settings, "metrics": result.metrics}, indent=2))
    paths["markdown"].write_text(markdown_table(result))
    plot_pr(result, paths["pr"])
    draw_grid(result, "ann", paths["grid"], grid_queries, grid_top)  # what search shows by default
    return paths


def markdown_table(result: EvalResult) -> str:
    """The metrics as a Markdown table, rankings as rows."""
    cols = list(next(iter(result.metrics.values())).keys())
    lines = ["| ranking | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in result.metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    return "\n".join(lines) + f"\n\nSettings: {settings}\n"


def plot_pr(result: EvalResult, path: Path) -> None:
    """Interpolated precision-recall curves of every ranking in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for name, s in result.scores.items():
        recall, precision = precision_recall_curve(-s, result.query_labels, result.gallery_labels, num_points=21)
        ax.plot(recall, precision, label=f"{name} (mAP {result.metrics[name]['map_all']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"{result.settings['model']}: {result.settings['queries']} sketches vs {result.settings['gallery']} photos"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_grid(result: EvalResult, ranking: str, path: Path, n_queries: int, top: int) -> None:
    """Query sketch + top photos per row; green border = right class, red = wrong."""
    from PIL import Image, ImageDraw, ImageOps

    tile, pad = 112, 6
    labels, scores = result.query_labels, result.scores[ranking]
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:n_queries]
    canvas = Image.new("RGB", ((top + 1) * (tile + pad) + pad, len(picks) * (tile + pad) + pad + 18), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (pad, 2), f"ranking: {ranking} (left: query sketch; border green = same class, red = other)", fill="black"
    )
    for row, q in enumerate(picks):
        y = 18 + pad + row * (tile + pad)
        sketch = ImageOps.pad(Image.open(result.query_files[q]).convert("RGB"), (tile, tile), color="white")
        canvas.paste(sketch, (pad, y))
        draw.rectangle([pad - 1, y - 1, pad + tile, y + tile], outline="gray")
        for col, g in enumerate(np.argsort(-scores[q], kind="stable")[:top], start=1):
            x = pad + col * (tile + pad)
            photo = ImageOps.fit(Image.open(result.gallery_files[g]).convert("RGB"), (tile - 6, tile - 6))
            ok = result.gallery_labels[g] == labels[q]
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(40, 170, 60) if ok else (210, 50, 40))
            canvas.paste(photo, (x + 3, y + 3))
    canvas.save(path)
