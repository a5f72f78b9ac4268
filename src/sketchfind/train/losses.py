"""The ZSE-SBIR training objective: triplet loss on the CA [Ret] token + relation-network MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

POSITIVE_TARGET = 0.99  # relation targets are clamped to [0.01, 0.99] in the official code
NEGATIVE_TARGET = 0.01
TRIPLET_WEIGHT = 2.0
RELATION_WEIGHT = 4.0


def triplet_loss(ret_tokens: torch.Tensor, batch: int, margin: float = 1.0) -> torch.Tensor:
    """Rows [sketch, sketch_neg, photo, photo_neg] (4b, D): anchor sketch, positive photo, negative photo_neg."""
    anchor, positive, negative = ret_tokens[:batch], ret_tokens[2 * batch : 3 * batch], ret_tokens[3 * batch :]
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2, eps=1e-6)


def relation_targets(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """(2b,) targets: matching pairs first, then non-matching pairs."""
    return torch.tensor([POSITIVE_TARGET] * batch + [NEGATIVE_TARGET] * batch, device=device)


def zse_losses(ret_tokens: torch.Tensor, scores: torch.Tensor, margin: float = 1.0) -> dict[str, torch.Tensor]:
    """Weighted loss terms of one step; ``scores`` are the (2b,) relation scores of (sketch, photo) then
    (sketch_neg, photo_neg) pairs. Returns ``triplet`` (x2), ``relation`` (x4) and their sum ``total``."""
    batch = scores.shape[0] // 2
    triplet = TRIPLET_WEIGHT * triplet_loss(ret_tokens, batch, margin)
    relation = RELATION_WEIGHT * F.mse_loss(scores.reshape(-1), relation_targets(batch, scores.device))
    return {"triplet": triplet, "relation": relation, "total": triplet + relation}
