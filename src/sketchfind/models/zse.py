"""ZSE-SBIR (Lin et al., CVPR 2023): token source, self-attention encoder with a [Ret] token,
cross-attention between sketch and photo tokens, and a relation network on the token-correspondence map.

Read top to bottom:
  token sources   ViTTokens (patch embedding averaged with a conv tokenizer) or CNNTokens (a CNN's last map);
                  both map (images, modality) -> (patch tokens (B, N, D), pooled features (B, C) or None)
  AnchoredRet     CNN family option: [Ret] = pooled backbone features in a fixed space of ImageNet photo features
  Encoder         [Ret] token + position embedding + pre-LN transformer blocks + final LayerNorm
  CrossAttention  one layer per stream: sketch queries attend to photo keys, photo queries to sketch keys
  RelationHead    down-sample tokens, cosine map between sketch and photo positions, MLP -> sigmoid score
                  (lite models: the last layer also reads the pair's [Ret] cosine, ``relation_ret``)
  ZSEModel        the whole model and the API every other part of sketchfind uses

Shapes: B batch, N patch tokens, T = N + 1 tokens with [Ret] first, D width, C backbone channels,
g token grid side, h heads of hs = D / h channels, P sketch-photo pairs, A = relation_grid**2 anchors
(49 for the official model).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .efficientnet import EfficientNetLite, freeze_stages, keep_frozen_in_eval

# ---------------------------------------------------------------------------------------------
# token sources


class ViTTokens(nn.Module):
    """ViT-B/16 patch embedding averaged with the learnable convolutional sketch tokenizer."""

    # sketches and photos share every weight here, so training runs them as one batch like the
    # official code (one sequence of dropout draws for the whole batch)
    joint_batch = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.global_dim = cfg.width  # no pooled output: the global embedding is the mean encoder patch token
        d, p = cfg.width, cfg.patch_size
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        # four stride-2 convs (k7 then k3) reach the same 1/16 grid; no bias, no final activation
        chans = (3, *cfg.tokenizer_channels)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans, chans[1:], strict=False)):
            k = 7 if i == 0 else 3
            layers += [nn.Conv2d(cin, cout, k, stride=2, padding=k // 2, bias=False), nn.ReLU()]
        layers.append(nn.Conv2d(chans[-1], d, 3, stride=2, padding=1, bias=False))
        self.conv_tokenizer = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, modality: str = "photo") -> tuple[torch.Tensor, None]:
        """(B, 3, S, S) -> (patch tokens (B, N, D), None: no pooled features); the same for both modalities."""
        grid = (self.patch_embed(images) + self.conv_tokenizer(images)) / 2  # (B, D, g, g)
        return grid.flatten(2).transpose(1, 2), None  # token index y*g + x


class CNNTokens(nn.Module):
    """A CNN backbone's last feature map, projected to the token width: one token per cell.

    With ``cfg.sketch_stages = N > 0`` sketches run their own copy of the backbone's last N stages
    (the ones training adapts to drawings) while photos keep the ImageNet stages: the photo side keeps
    ImageNet's semantics for classes that sketch training never saw (zero-shot)."""

    joint_batch = False  # with a sketch branch the two modalities run different stages

    def __init__(self, cfg: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        if backbone is None:
            backbone = EfficientNetLite(cfg.backbone.removeprefix("efficientnet_"), num_classes=0)
        backbone.classifier = nn.Identity()  # the ImageNet classifier plays no part in retrieval
        self.backbone = backbone
        n = cfg.sketch_stages
        self.sketch_tail = nn.ModuleList(copy.deepcopy(s) for s in backbone.stages[-n:]) if n else None
        self.frozen_sketch_stages = 0  # leading stages of sketch_tail that training leaves alone (freeze())
        self.proj = nn.Linear(cfg.backbone_channels, cfg.width)
        self.global_dim = cfg.backbone_channels  # the global embedding is the average-pooled feature map

    def stages(self, modality: str) -> list[nn.Module]:
        """The backbone stages an image of this modality ("sketch" or "photo") runs through, in order."""
        stages = self.backbone.stages
        if self.sketch_tail is None or modality == "photo":
            return stages
        return [*stages[: len(stages) - len(self.sketch_tail)], *self.sketch_tail]

    def freeze(self, n_trainable: int) -> None:
        """For training: only the last n backbone stages learn. With a sketch branch these are the last n
        stages of the sketch copy (n <= sketch_stages) and the photo stages all stay ImageNet's."""
        if self.sketch_tail is None:
            self.backbone.freeze(n_trainable)
            return
        if not 0 <= n_trainable <= len(self.sketch_tail):
            raise ValueError(f"the sketch branch has {len(self.sketch_tail)} stages; cannot train {n_trainable}")
        self.backbone.freeze(0)
        self.frozen_sketch_stages = len(self.sketch_tail) - n_trainable
        freeze_stages(self.sketch_tail, self.frozen_sketch_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> CNNTokens:
        """Set train/eval mode; frozen sketch stages stay in eval mode (the backbone sees to its own)."""
        super().train(mode)
        keep_frozen_in_eval(self.sketch_tail or [], self.frozen_sketch_stages)
        return self

    def features(
        self, images: torch.Tensor, modality: str = "photo", start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Runs the modality's backbone stages [start, stop) on ``images``: (B, 3, S, S) -> (B, C, g, g) for the
        whole backbone; training passes cached outputs of the first ``start`` stages."""
        for stage in self.stages(modality)[start:stop]:
            images = stage(images)
        return images

    def to_tokens(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature map (B, C, g, g) -> (patch tokens (B, N, D), average-pooled features (B, C))."""
        patch_tokens = self.proj(feature_map.flatten(2).transpose(1, 2))  # (B, N, D), token index y*g + x
        return patch_tokens, feature_map.mean((2, 3))

    def forward(self, images: torch.Tensor, modality: str = "photo") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (patch tokens (B, N, D), pooled features (B, C))."""
        return self.to_tokens(self.features(images, modality))


class AnchoredRet(nn.Module):
    """The anchored [Ret] (``ret_source="pooled"``): pooled backbone features, L2-normalised, centred and
    projected on a fixed PCA basis of ImageNet photo features (``fit``, from unlabelled training photos).

    Photos get the projection of their ImageNet features: nothing learned on the training classes
    touches them, so classes never seen in training stay as well separated as ImageNet keeps them.
    Sketches first pass a residual MLP (trained, zero-initialised) that moves drawings towards the
    photos they show. The result is scaled to norm sqrt(D), like the LayerNorm outputs it sits beside.

    D = ``ret_tokens`` x width: a [Ret] wider than a token (zse-lite0: 3 x 128 = 384 axes) keeps more of what
    tells photos apart in a gallery of every kind of photo, and ``ret_whiten`` flattens the spectrum so the few
    dominant axes do not decide alone. It is stored as the first ``ret_tokens`` tokens; cross-attention reads
    the first of them (:meth:`CrossAttention.seen`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, d = cfg.backbone_channels, cfg.ret_dim
        self.whiten = cfg.ret_whiten
        self.register_buffer("mean", torch.zeros(c))  # (C,) of the normalised pooled features
        self.register_buffer("basis", torch.eye(c, d))  # (C, D) principal directions, set by fit()
        self.sketch_head = nn.Sequential(
            nn.Linear(c, cfg.ret_head_hidden), nn.ReLU(), nn.Linear(cfg.ret_head_hidden, c)
        )
        nn.init.zeros_(self.sketch_head[2].weight)  # starts as the identity: sketches as ImageNet sees them
        nn.init.zeros_(self.sketch_head[2].bias)

    @torch.no_grad()
    def fit(self, photo_pooled: torch.Tensor) -> None:
        """Sets the centre and PCA basis from (N, C) pooled photo features. With fewer than D photos the
        principal directions are completed to D orthonormal ones. With ``ret_whiten`` = a > 0 each axis is
        divided by its singular value ** a (partial whitening: the few dominant axes, along which photos of
        many classes spread alike, count less against the many that tell classes apart)."""
        x = F.normalize(photo_pooled.float(), dim=-1)
        mean = x.mean(0)
        _, sv, vt = torch.linalg.svd(x - mean, full_matrices=False)  # (min(N, C),), (min(N, C), C)
        d = self.basis.shape[1]
        basis = vt[:d].T  # (C, r)
        if self.whiten:
            basis = basis * (sv[:d] / sv[0]).clamp_min(1e-6) ** -self.whiten
        if basis.shape[1] < d:  # QR keeps the span of the leading columns
            q, _ = torch.linalg.qr(torch.cat([vt[:d].T, torch.eye(x.shape[1], d)], dim=1))
            basis = torch.cat([basis, q[:, basis.shape[1] : d]], dim=1)
        self.mean.copy_(mean)
        self.basis.copy_(basis)

    def forward(self, pooled: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, C) pooled features -> (B, D) [Ret] tokens."""
        if modality == "sketch":
            pooled = pooled + self.sketch_head(pooled)
        z = (F.normalize(pooled, dim=-1) - self.mean) @ self.basis  # (B, D)
        return F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])


# ---------------------------------------------------------------------------------------------
# self-attention encoder


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (q, k, v chunks in that order)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B,h,T,hs)
        scale = (D // self.heads) ** -0.5
        attn = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)  # (B, h, T, T)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    """Linear -> exact GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = SelfAttention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Prepends the [Ret] token, adds position embeddings, runs the blocks, normalises."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ret_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.width))
        nn.init.normal_(self.ret_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    def embed(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch tokens -> (B, T, D) encoder input ([Ret] first, positions added)."""
        ret = self.ret_token.expand(patch_tokens.shape[0], -1, -1)
        return self.drop(torch.cat([ret, patch_tokens], dim=1) + self.pos_embed)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(patch_tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ---------------------------------------------------------------------------------------------
# cross-attention


class UnbiasedLayerNorm(nn.Module):
    """The official CA LayerNorm: a * (x - mean) / (std + eps) + b with the unbiased (N-1) std."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased, eps outside the sqrt (as official)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class CrossAttentionLayer(nn.Module):
    """One stream: queries from its own image, keys from the other image, values and residual its own."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.width
        self.heads = cfg.ca_heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.norm1 = UnbiasedLayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.ca_ff)
        self.fc2 = nn.Linear(cfg.ca_ff, d)
        self.norm2 = UnbiasedLayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, h, T, hs)."""
        B, T, D = x.shape
        return x.reshape(B, T, self.heads, D // self.heads).transpose(1, 2)

    def project(self, own: torch.Tensor, other: torch.Tensor):
        """Per-image projections (q, v from own tokens, k from the other image's): cacheable."""
        return self.split(self.q(own)), self.split(self.k(other)), self.split(self.v(own))

    def attend(self, own: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention with projected heads, then the residual on the own tokens and the FFN."""
        B, T, D = own.shape
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, h, T, T)
        mixed = (self.drop(attn) @ v).transpose(1, 2).reshape(B, T, D)
        h = self.norm1(own + self.drop(self.out(mixed)))
        return self.norm2(h + self.drop(self.fc2(self.drop(F.relu(self.fc1(h))))))

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.attend(own, *self.project(own, other))


class Stream(NamedTuple):
    """One stream's inputs to cross-attention, projected once per image (not once per pair it joins)."""

    tokens: torch.Tensor  # (B, T, D) encoder tokens: the residual input of its own layer
    q: torch.Tensor  # (B, h, T, hs) queries of its own layer
    v: torch.Tensor  # (B, h, T, hs) values of its own layer
    k_for_other: torch.Tensor  # (B, h, T, hs) the keys the other stream's layer takes from this image

    def rows(self, start: int, stop: int) -> Stream:
        """Images [start, stop) of the batch."""
        return Stream._make(t[start:stop] for t in self)

    def repeat_each(self, n: int) -> Stream:
        """Every image n times in a row (B -> B*n rows: a a b b)."""
        return Stream._make(t.repeat_interleave(n, dim=0) for t in self)

    def tile(self, m: int) -> Stream:
        """The whole batch m times over (B -> m*B rows: a b a b)."""
        return Stream._make(t.repeat(m, *([1] * (t.dim() - 1))) for t in self)


class CrossAttention(nn.Module):
    """Both streams updated simultaneously from the original inputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ret_tokens = cfg.ret_tokens
        self.sketch_layer = CrossAttentionLayer(cfg)
        self.photo_layer = CrossAttentionLayer(cfg)
        # the official state dict holds a third copy that forward never uses; kept so checkpoints load
        self.unused_layer = CrossAttentionLayer(cfg)

    def forward(self, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor):
        """(P, T, D) x2 -> (P, 1 + N, D) x2, pair p = (sketch_tokens[p], photo_tokens[p])."""
        sketch_tokens, photo_tokens = self.seen(sketch_tokens), self.seen(photo_tokens)
        return self.sketch_layer(sketch_tokens, photo_tokens), self.photo_layer(photo_tokens, sketch_tokens)

    def seen(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) stored tokens -> (B, 1 + N, D) what cross-attention reads: the first [Ret] token and the
        patches (a [Ret] wider than a token, ``ret_tokens`` > 1, is for ranking by [Ret] only)."""
        if self.ret_tokens == 1:
            return tokens
        return torch.cat([tokens[:, :1], tokens[:, self.ret_tokens :]], dim=1)

    def stream(self, tokens: torch.Tensor, modality: str) -> Stream:
        """(B, T, D) tokens of sketches or photos -> their projections for pairing with any other image."""
        tokens = self.seen(tokens)
        layers = (self.sketch_layer, self.photo_layer)
        own, other = layers if modality == "sketch" else layers[::-1]
        return Stream(tokens, own.split(own.q(tokens)), own.split(own.v(tokens)), other.split(other.k(tokens)))

    def attend_streams(self, sketch: Stream, photo: Stream) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned rows of projected sketches and photos -> (P, T, D) x2, as forward() on their tokens."""
        sketch_ca = self.sketch_layer.attend(sketch.tokens, sketch.q, photo.k_for_other, sketch.v)
        photo_ca = self.photo_layer.attend(photo.tokens, photo.q, sketch.k_for_other, photo.v)
        return sketch_ca, photo_ca


# ---------------------------------------------------------------------------------------------
# relation head


# the [Ret] cosine's weight in a fresh ``relation_ret`` head's logit (training moves it): the logit scale at which
# the cosine, added to the stage-5 relation network's logits, ranked the validation classes best (sketches
# 0.558 -> 0.588 mAP@all, doodles 0.358 -> 0.372; weights 10 / 20 / 40 / 80: 0.560 / 0.583 / 0.588 / 0.583)
RET_SKIP_INIT = 40.0


class RelationHead(nn.Module):
    """Down-sampled tokens -> A x A cosine map (sketch rows, photo columns) -> MLP -> sigmoid score.

    With ``cfg.relation_ret`` (the lite models) the last layer reads one more input: the cosine of the two
    images' stored [Ret] embeddings, the [Ret]-to-[Ret] correspondence that the patch map leaves out. The
    anchored [Ret] keeps ImageNet's separation of classes that training never saw, which the patch map learned
    on the training classes does not: the map's evidence is then weighed against it, not ranked alone."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mode, self.grid = cfg.downsample, cfg.grid
        if cfg.downsample == "conv2x2":
            self.down = nn.Conv2d(cfg.width, cfg.down_dim, kernel_size=2, stride=2)
        elif cfg.downsample == "linear":
            self.down = nn.Linear(cfg.width, cfg.down_dim)
        else:
            raise ValueError(f"unknown downsample {cfg.downsample!r}")
        anchors = cfg.relation_grid**2
        if cfg.relation_head not in ("map", "sorted"):
            raise ValueError(f"unknown relation_head {cfg.relation_head!r}")
        self.reads = cfg.relation_head
        sizes = (anchors * anchors if self.reads == "map" else 2 * anchors, *cfg.rn_hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.reads_ret = cfg.relation_ret
        self.out = nn.Linear(sizes[-1] + int(self.reads_ret), 1)  # its last input: the [Ret] cosine
        if self.reads_ret:
            with torch.no_grad():
                self.out.weight[0, -1] = RET_SKIP_INIT
        self.drop = nn.Dropout(cfg.dropout)

    def conv_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D, g, g) by the official plain C-order reinterpretation of the (N, D) buffer."""
        B, T, D = tokens.shape
        return tokens[:, 1:].contiguous().reshape(B, D, self.grid, self.grid)

    def downsample(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) CA outputs -> (B, A, down_dim) anchor features ([Ret] dropped)."""
        if self.mode == "linear":
            return self.down(tokens[:, 1:])
        return self.down(self.conv_input(tokens)).flatten(2).transpose(1, 2)

    @staticmethod
    def cosine_map(sketch_feats: torch.Tensor, photo_feats: torch.Tensor) -> torch.Tensor:
        """(P, A, C) x2 -> (P, A, A) cosines; NaN (zero vectors) -> 0."""
        dots = sketch_feats @ photo_feats.transpose(1, 2)
        cos = dots / sketch_feats.norm(dim=-1, keepdim=True) / photo_feats.norm(dim=-1).unsqueeze(1)
        return torch.nan_to_num(cos, nan=0.0)

    def mlp_input(self, cos_map: torch.Tensor) -> torch.Tensor:
        """(P, A, A) -> (P, F): the flattened map (official), or with ``relation_head="sorted"`` each sketch
        anchor's best cosine and each photo anchor's best cosine, each sorted (where on the grid a match lies
        does not matter: drawings rarely overlay their photo)."""
        if self.reads == "map":
            return cos_map.flatten(1)
        rows = cos_map.amax(dim=2).sort(dim=1, descending=True).values  # (P, A)
        cols = cos_map.amax(dim=1).sort(dim=1, descending=True).values  # (P, A)
        return torch.cat([rows, cols], dim=1)

    def mlp(self, cos_map: torch.Tensor, return_hidden: bool = False, ret_cos: torch.Tensor | None = None):
        """(P, A, A) -> (P,) logits (and the pre-ReLU hidden activations when asked); a ``relation_ret`` head
        also takes the (P,) [Ret] cosines of the pairs."""
        x, hidden = self.mlp_input(cos_map), []
        for layer in self.hidden:
            x = layer(x)
            hidden.append(x)
            x = self.drop(F.relu(x))
        # the bf16 runtime keeps this last layer in fp32: bf16 scores would tie (128 values in [0.5, 1))
        x = x.to(self.out.weight.dtype)
        if self.reads_ret:
            if ret_cos is None:
                raise ValueError("this relation head reads each pair's [Ret] cosine: pass ret_cos")
            x = torch.cat([x, ret_cos.to(x.dtype)[:, None]], dim=1)
        logits = self.out(x).squeeze(-1)
        return (logits, hidden) if return_hidden else logits

    def forward(
        self, sketch_ca: torch.Tensor, photo_ca: torch.Tensor, logits: bool = False, ret_cos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """CA outputs of P pairs (and, for a ``relation_ret`` head, their (P,) [Ret] cosines) -> (P,) relation
        scores in (0, 1) (their logits with ``logits=True``)."""
        out = self.mlp(self.cosine_map(self.downsample(sketch_ca), self.downsample(photo_ca)), ret_cos=ret_cos)
        return out if logits else torch.sigmoid(out)


# ---------------------------------------------------------------------------------------------
# the model


class Encodes:
    """``encode`` / ``encode_sketch`` / ``encode_photo`` in terms of ``encode_with_global``, for every runtime
    that offers the model's API (ZSEModel itself, sketchfind.runtime.OnnxModel)."""

    def encode(self, images: torch.Tensor, modality: str = "photo") -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, T, D) encoder tokens, [Ret] first."""
        return self.encode_with_global(images, modality)[0]

    def encode_sketch(self, images: torch.Tensor) -> torch.Tensor:
        """Sketch images -> tokens."""
        return self.encode(images, "sketch")

    def encode_photo(self, images: torch.Tensor) -> torch.Tensor:
        """Photo images -> tokens."""
        return self.encode(images, "photo")

    def retrieval_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, ret_tokens * D) L2-normalised [Ret] embeddings (the paper's "Ret" ranking)."""
        return retrieval_embedding(tokens, self.cfg.ret_tokens)


def score_calibration(meta: dict) -> tuple[float, float]:
    """The (scale, shift) of the relation score people are shown, ``sigmoid(scale * logit + shift)``, from a
    weights file's metadata (``score_scale``, ``score_shift``: fitted on the validation classes by
    :func:`fit_score_calibration`); (1, 0), the relation network's own sigmoid, for weights without them."""
    return float(meta.get("score_scale", 1.0)), float(meta.get("score_shift", 0.0))


def fit_score_calibration(logits: np.ndarray, same_class: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """Platt scaling: the (scale, shift) that make ``sigmoid(scale * logit + shift)`` the probability that a
    photo shows the drawn kind, by maximum likelihood (Newton's method) over labelled validation pairs. The
    order of photos does not change (scale > 0 for any head that ranks better than chance)."""
    x = np.asarray(logits, np.float64).ravel()
    y = np.asarray(same_class, np.float64).ravel()
    if len(x) == 0 or y.min() == y.max():
        raise ValueError("score calibration needs pairs of both kinds (same class and not)")
    design = np.stack([x, np.ones_like(x)], axis=1)  # (n, 2)
    params = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ params)))
        grad = design.T @ (p - y)
        hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        params -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(params[0]), float(params[1])


def relation_probability(logits, calibration: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    """Relation logits (numpy or torch) -> float64 scores in (0, 1), ``sigmoid(scale * logit + shift)`` with a
    ``calibration`` (:func:`score_calibration`), the network's own sigmoid by default. In float64, since a
    float32 sigmoid reads exactly 1.0 above a logit of ~17, where the best matches of a ``relation_ret`` head lie."""
    logits = logits.double().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float64)
    scale, shift = calibration
    return 1.0 / (1.0 + np.exp(-(scale * logits + shift)))


def retrieval_embedding(tokens, ret_tokens: int = 1):
    """(B, T, D) tokens (torch or numpy) -> (B, ret_tokens * D) L2-normalised float32 [Ret] embeddings."""
    if isinstance(tokens, torch.Tensor):
        return F.normalize(tokens[:, :ret_tokens].flatten(1).float(), dim=-1)
    from ..rerank import normalize  # numpy rows to unit length (rerank needs FAISS: imported only here)

    return normalize(np.asarray(tokens[:, :ret_tokens], np.float32).reshape(len(tokens), -1))


class ZSEModel(Encodes, nn.Module):
    """ZSE-SBIR: the API used by indexing, search, training and the web service."""

    runtime = "torch"  # what runs it (sketchfind.runtime.OnnxModel offers the same API with "onnx")

    def __init__(self, cfg: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        # (images, modality) -> (patch tokens, pooled or None); joint_batch says how training batches them
        self.tokens: ViTTokens | CNNTokens = ViTTokens(cfg) if cfg.backbone == "vit" else CNNTokens(cfg, backbone)
        if cfg.ret_source not in ("encoder", "pooled") or (cfg.ret_source == "pooled" and cfg.backbone == "vit"):
            raise ValueError(f"ret_source {cfg.ret_source!r} does not fit backbone {cfg.backbone!r}")
        self.ret = AnchoredRet(cfg) if cfg.ret_source == "pooled" else None
        self.encoder = Encoder(cfg)
        self.cross = CrossAttention(cfg)
        self.relation = RelationHead(cfg)
        # metadata stored beside the weights this model was loaded from (e.g. "fusion"); load_model fills it
        self.weights_metadata: dict[str, str] = {}

    # -- encoding (encode, encode_sketch, encode_photo: see Encodes) -------------------------------
    def encode_with_global(self, images: torch.Tensor, modality: str = "photo") -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (tokens (B, T, D), global embedding (B, G)) in one backbone pass.

        The global embedding (L2-normalised) is what the clustered strategy groups photos by:
        the CNN backbone's average-pooled features, or the mean encoder patch token for ViT."""
        # channels-last: ~1.8x faster CNN batches on CPU, same values (to float rounding). Done here, not by the
        # callers: the ONNX graphs take plain NCHW, and turning a channels-last tensor back costs ~1 ms per image
        images = images.contiguous(memory_format=torch.channels_last)
        patch_tokens, pooled = self.tokens(images, modality)  # (B, N, D), (B, C) or None
        return self.encode_tokens(patch_tokens, pooled, modality)

    def encode_tokens(
        self, patch_tokens: torch.Tensor, pooled: torch.Tensor | None, modality: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A token source's output (patch tokens (B, N, D), pooled (B, C) or None) -> (tokens (B, T, D),
        global embedding (B, G)); training calls it on tokens made from cached backbone features."""
        tokens = self.encoder(patch_tokens)  # (B, T, D)
        if self.ret is not None:  # the anchored [Ret] takes the encoder's [Ret] slot
            # a constant target shape: ONNX shape inference (int8 quantisation) needs literal Reshape shapes
            ret = self.ret(pooled, modality).reshape(-1, self.cfg.ret_tokens, self.cfg.width)  # (B, k, D)
            tokens = torch.cat([ret.to(tokens.dtype), tokens[:, 1:]], dim=1)
        if pooled is None:  # no pooled backbone features (ViT): the mean encoder patch token stands in
            pooled = tokens[:, 1:].mean(1)  # (B, D)
        return tokens, F.normalize(pooled.float(), dim=-1)

    # -- pairs --------------------------------------------------------------------------------
    def pair_forward(self, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor, logits: bool = False):
        """P aligned pairs -> (sketch CA tokens, photo CA tokens, (P,) scores (their logits with ``logits=True``))."""
        sketch_ca, photo_ca = self.cross(sketch_tokens, photo_tokens)
        ret_cos = self.ret_cosine(sketch_tokens, photo_tokens)
        return sketch_ca, photo_ca, self.relation(sketch_ca, photo_ca, logits, ret_cos)

    def ret_cosine(self, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor | None:
        """P aligned pairs of stored tokens -> their (P,) float32 [Ret] cosines when the relation head reads them
        (``relation_ret``), else None."""
        if not self.cfg.relation_ret:
            return None
        k = self.cfg.ret_tokens
        return (retrieval_embedding(sketch_tokens, k) * retrieval_embedding(photo_tokens, k)).sum(-1)

    def relation_scores(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        max_pairs: int | None = None,
        logits: bool = False,
    ) -> torch.Tensor:
        """(S, T, D) x (P, T, D) -> (S, P) relation scores for every pair, in chunks of at most max_pairs;
        the same scores as pair_forward on every (sketch, photo) pair (their logits with ``logits=True``)."""
        S, P = sketch_tokens.shape[0], photo_tokens.shape[0]
        dtype = self.cross.sketch_layer.q.weight.dtype  # pairs are computed in the cross-attention's dtype
        if max_pairs is None:  # ~64 MB of activations per chunk
            max_pairs = max(1, (1 << 24) // (self.cfg.num_tokens * max(self.cfg.width, self.cfg.ca_ff)))
        photos_per_chunk = max(1, max_pairs // S) if S <= max_pairs else 1
        sketches_per_chunk = min(S, max_pairs)
        sketches = self.cross.stream(sketch_tokens.to(dtype), "sketch")  # projected once, (S, ...) each
        reads_ret = self.cfg.relation_ret
        sketch_ret = retrieval_embedding(sketch_tokens, self.cfg.ret_tokens) if reads_ret else None  # (S, R)
        out = torch.empty(S, P, dtype=self.relation.out.weight.dtype, device=sketch_tokens.device)
        for p0 in range(0, P, photos_per_chunk):
            chunk_tokens = photo_tokens[p0 : p0 + photos_per_chunk]
            photos = self.cross.stream(chunk_tokens.to(dtype), "photo")  # (n, ...)
            n = photos.tokens.shape[0]
            photo_ret = retrieval_embedding(chunk_tokens, self.cfg.ret_tokens) if reads_ret else None  # (n, R)
            for s0 in range(0, S, sketches_per_chunk):
                chunk = sketches.rows(s0, s0 + sketches_per_chunk)  # (m, ...)
                m = chunk.tokens.shape[0]
                # pair i*n + j = (sketch s0+i, photo p0+j)
                sketch_ca, photo_ca = self.cross.attend_streams(chunk.repeat_each(n), photos.tile(m))  # (m*n, T, D)
                ret_cos = (sketch_ret[s0 : s0 + m] @ photo_ret.T).reshape(-1) if reads_ret else None  # (m*n,)
                out[s0 : s0 + m, p0 : p0 + n] = self.relation(sketch_ca, photo_ca, logits, ret_cos).reshape(m, n)
        return out

    def forward(self, sketches: torch.Tensor, photos: torch.Tensor):
        """Training forward on images: aligned (B, 3, S, S) sketches and photos ->
        (CA [Ret] tokens of [sketch rows; photo rows] (2B, D), relation scores (B,)), as official train mode."""
        if self.tokens.joint_batch:  # one batch, as the official code (same dropout draws)
            sketch_tokens, photo_tokens = self.encode(torch.cat([sketches, photos])).chunk(2)
        else:
            sketch_tokens, photo_tokens = self.encode_sketch(sketches), self.encode_photo(photos)
        sketch_ca, photo_ca, scores = self.pair_forward(sketch_tokens, photo_tokens)
        return torch.cat([sketch_ca[:, 0], photo_ca[:, 0]]), scores
