"""Exact attribution of the [Ret] cosine (what the default ``ann`` search ranks by) to photo cells.

For the anchored [Ret] (``ret_source="pooled"``, e.g. ``zse-lite0``) a photo's embedding is

    e = z / |z|,   z = (p / |p| - mu) @ B,   p = (1/N) sum_c f_c      (f_c: the backbone's 7x7 cells)

so for a unit query q (the sketch's [Ret], or the expanded query of query expansion) the cosine splits
exactly over the N cells:

    q . e = sum_c a_c,   a_c = (f_c @ B q) / (N |p| |z|)  -  (mu @ B q) / (N |z|)

The cells with the largest a_c are where the photo holds what the search matched; the maps sum to the
score the ranking used, unlike the relation network's 49x49 cosine map (which the default search does
not use). Only photos need the backbone's feature map; the sketch enters through its query vector.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError


def ret_cell_contributions(model, photo_features: torch.Tensor, query: torch.Tensor) -> np.ndarray:
    """(B, C, g, g) photo backbone features and a (D,) or (B, D) query -> (B, g, g) float64 contributions
    that sum to each photo's [Ret] cosine with the (unit-normalised) query."""
    if getattr(model, "ret", None) is None:
        raise ConfigError(f"{model.cfg.name}: [Ret] attribution needs the anchored [Ret] (ret_source='pooled')")
    feats = photo_features.double()
    batch, _, g, _ = feats.shape
    cells = feats.flatten(2).transpose(1, 2)  # (B, N, C)
    n = cells.shape[1]
    pooled = cells.mean(1)  # (B, C)
    basis, mean = model.ret.basis.double(), model.ret.mean.double()
    z = (F.normalize(pooled, dim=-1) - mean) @ basis  # (B, D)
    q = F.normalize(torch.as_tensor(query).double().reshape(-1, basis.shape[1]), dim=-1).expand(batch, -1)
    bq = q @ basis.T  # (B, C): the query seen in backbone-feature space
    znorm = z.norm(dim=-1, keepdim=True)  # (B, 1)
    per_cell = (cells * bq[:, None]).sum(-1) / (n * pooled.norm(dim=-1, keepdim=True) * znorm)  # (B, N)
    constant = (mean * bq).sum(-1, keepdim=True) / (n * znorm)  # (B, 1)
    return (per_cell - constant).reshape(batch, g, g).numpy()


def ret_photo_heat(model, photo_features: torch.Tensor, query: torch.Tensor) -> np.ndarray:
    """(B, C, g, g) features and the query -> (B, g, g) heat in [0, 1]: the [Ret] contributions min-max
    scaled per photo (hot = the cells that raise the match score most)."""
    contributions = ret_cell_contributions(model, photo_features, query)
    flat = contributions.reshape(len(contributions), -1)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    heat = (flat - low) / np.maximum(high - low, 1e-12)
    return heat.reshape(contributions.shape)


def sketch_cell_contributions(model, sketch_features: torch.Tensor, photo_ret: torch.Tensor) -> np.ndarray:
    """(1, C, g, g) sketch backbone features and a photo's (D,) [Ret] -> (g, g) gradient x input of the
    [Ret] cosine over the sketch cells. The sketch side passes a non-linear residual MLP, so unlike the
    photo side this is a first-order (linearised) attribution, not an exact split of the score."""
    with torch.enable_grad():
        cells = sketch_features.detach().float().clone().requires_grad_(True)
        ret = F.normalize(model.ret(cells.mean((2, 3)), "sketch"), dim=-1)[0]
        score = ret @ F.normalize(torch.as_tensor(photo_ret).float(), dim=-1)
        (grad,) = torch.autograd.grad(score, cells)
    return (grad * cells).sum(1)[0].detach().double().numpy()
