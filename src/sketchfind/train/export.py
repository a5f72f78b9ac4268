"""Turn a training run into the weights file that ships (or that a user passes with ``--weights``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SketchfindError
from ..models.factory import load_model, save_weights
from ..rerank import RankSettings, settings_key, validation_grid

SETTINGS_TIE = 1e-3  # validation mAP differences below this are ties (far below the sampling error of ~0.01)


def choose_settings(val_metrics: dict[str, float]) -> RankSettings:
    """The ann pipeline setting (fusion, query expansion) with the best validation mAP; among settings within
    :data:`SETTINGS_TIE` of it the cheapest: no relation-network head (fusion 1) first, then the fewest photos
    expanded. Runs validated before the pipeline grid existed get their fusion weight and no expansion."""
    grid = {settings_key(s): s for s in validation_grid()}
    scored = [k for k in grid if k in val_metrics]
    if not scored:
        return RankSettings(fusion=choose_fusion(val_metrics))
    best = max(val_metrics[k] for k in scored)
    tied = [k for k in scored if val_metrics[k] >= best - SETTINGS_TIE]
    return grid[min(tied, key=lambda k: (grid[k].uses_relation, grid[k].qe_top, -val_metrics[k]))]


def choose_fusion(val_metrics: dict[str, float]) -> float:
    """The fused-ranking weight f (f * [Ret] cosine + (1 - f) * relation score) that validated best;
    1.0 when [Ret] alone was best, 0.0 when the relation network alone was."""
    candidates = {"val_map_ret": 1.0, "val_map_rn": 0.0}
    candidates.update({k: float(k.rsplit("_", 1)[1]) for k in val_metrics if k.startswith("val_map_fused_")})
    best = max((k for k in candidates if k in val_metrics), key=val_metrics.get)
    return candidates[best]


def export_run(run_dir: str | Path, out: str | Path, half: bool = True) -> dict[str, str]:
    """Writes ``out`` (.safetensors, fp16 by default) from ``run_dir/best.safetensors`` with the ann settings
    chosen on validation (fusion, query expansion), the relation score's calibration and the run's training
    settings in the metadata; returns the metadata."""
    run_dir = Path(run_dir)
    best = run_dir / "best.safetensors"
    if not best.is_file():
        raise SketchfindError(f"{best} does not exist: train first (sketchfind train --out {run_dir})")
    model = load_model(weights=best)
    meta = dict(model.weights_metadata)
    val = json.loads(meta.get("val_metrics", "{}"))
    chosen = choose_settings(val) if val else RankSettings()
    meta.update(chosen.to_metadata())
    if val:
        meta["selected_ranking"] = settings_key(chosen)
    # the shown relation score, calibrated on the validation pairs (models.zse.score_calibration)
    meta.update({k: str(val[k]) for k in ("score_scale", "score_shift") if k in val})
    config = run_dir / "train_config.json"
    if config.is_file():
        meta["train_config"] = config.read_text()
    meta.pop("config", None)  # save_weights writes the model config itself
    save_weights(model, out, extra=meta, half=half)
    return meta
