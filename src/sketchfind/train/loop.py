"""``sketchfind train``: the ZSE-SBIR objective on a CNN backbone, CPU-friendly.

The frozen part of the backbone runs once per image and augmented view; its outputs are cached
(``cache-*.pt`` in the run folder), so each step only runs the trainable stages, the encoder,
cross-attention and relation network. Losses: the paper's triplet and relation losses, plus an InfoNCE
loss on the [Ret] embedding that ANN search ranks by first: between sketch and photo [Ret]s, or, for a
model with the anchored [Ret] (``zse-lite0``), between sketch [Ret]s and the fixed [Ret]s of every
training photo (photos keep their ImageNet features; only the sketch side moves). Every epoch writes
``last.pth`` (model, optimizer, RNG state: ``--resume`` continues from it) and, when validation mAP
improves, ``best.safetensors``. ``--train-only relation --init WEIGHTS`` trains only cross-attention and the
relation head on the loaded encoder, which stays exactly as loaded (selection then by the relation network's mAP).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..config import ModelConfig, get_model_config
from ..datasets import split_classes
from ..errors import ConfigError, SketchfindError
from ..metrics import retrieval_metrics
from ..models.factory import save_weights
from ..models.zse import ZSEModel, fit_score_calibration, relation_probability
from ..preprocess import photo_array, sketch_array, to_tensor
from ..progress import progress
from ..protocols import load_doodles, render_doodle
from ..rerank import FUSION_GRID, RankSettings, fuse, pipeline_scores, settings_key, validation_grid
from .data import augment_photo, augment_sketch, augment_strokes, sample_quadruplets
from .export import choose_settings
from .losses import zse_losses


@dataclass
class TrainConfig:
    """Settings of one training run (written to ``train_config.json`` in the run folder)."""

    data: str  # folder with sketches/<class>/ and photos/<class>/
    holdout: str | None = None  # classes never trained on (the zero-shot test classes)
    out: str = "runs/zse-lite0"
    model: str = "zse-lite0"
    epochs: int = 5
    steps_per_epoch: int = 100
    batch_size: int = 32  # b: 4b images per step, as the official sampler
    lr: float = 3e-4
    weight_decay: float = 1e-2
    margin: float = 1.0
    ret_weight: float = 1.0  # contrastive loss on the encoder [Ret] embedding (used by ANN search); 0 = official
    temperature: float = 0.07
    trainable_stages: int = 4  # last backbone stages trained (of the sketch branch if the model has one)
    views: int = 4  # cached views per image: 1 plain + (views-1) augmented
    val_classes: int = 15  # seen classes held out for model selection
    seed: int = 2021
    threads: int = 2
    cache_dir: str | None = None  # where backbone caches are kept (default: the run folder); shareable across runs
    val_queries_per_class: int = 5  # sketches per validation class ranked by the (slower) relation network
    edges: float = 0.3  # chance that a training sketch is replaced by the HED edge map of a photo of its class
    doodles: str | None = (
        None  # folder of QuickDraw doodles, <class>.ndjson, of training classes (quickdraw-mini/train)
    )
    doodle_share: float = 0.3  # chance that a training sketch of a class with doodles is replaced by one of them
    rn_rank_weight: float = 1.0  # listwise relation loss: each sketch against every photo of the step
    # the relation network's ranking of the step's photos pulled towards the [Ret] ranking (softmax of the [Ret]
    # cosines at --temperature; KL divergence): the [Ret] embedding generalises to unseen classes best
    rn_distill_weight: float = 0.0
    relation_head: str | None = None  # override the model config's relation head ("map" official, "sorted")
    init: str | None = None  # weights file to start from (e.g. the shipped zse-lite0.safetensors)
    train_only: str = "all"  # "relation": only cross-attention + relation head learn; the encoder stays as loaded


TRAIN_ONLY = ("all", "relation")
DOODLE_PENS = (2, 3, 5, 5, 8, 12)  # pen widths of augmented doodle views on the page's 512 px canvas (page: 5)
MIXED_LABEL_OFFSET = 1_000_000  # training photos join the validation gallery as distractors with these labels


def set_seed(seed: int) -> None:
    """Seeds Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig) -> ZSEModel:
    """The model with its ImageNet-pretrained backbone, partly frozen (a sketch branch starts as a copy)."""
    from ..models.efficientnet import load_pretrained

    model_cfg = get_model_config(cfg.model)
    if cfg.relation_head is not None:
        if cfg.relation_head not in ("map", "sorted"):
            raise ConfigError(f"--relation-head {cfg.relation_head}: choose map or sorted")
        if model_cfg.backbone == "vit":
            raise ConfigError("the full-size model keeps the official relation head")
        model_cfg = dataclasses.replace(model_cfg, relation_head=cfg.relation_head)
    if cfg.train_only not in TRAIN_ONLY:
        raise ConfigError(f"--train-only {cfg.train_only}: choose one of {', '.join(TRAIN_ONLY)}")
    if cfg.train_only == "relation" and cfg.init is None:
        raise ConfigError("--train-only relation trains a head on a trained encoder: pass --init WEIGHTS")
    if not model_cfg.backbone.startswith("efficientnet"):
        raise ConfigError(
            f"training supports the CNN family (e.g. zse-lite0); {model_cfg.name} is {model_cfg.backbone}"
        )
    model = ZSEModel(model_cfg, backbone=load_pretrained(model_cfg.backbone.removeprefix("efficientnet_")))
    try:
        model.tokens.freeze(cfg.trainable_stages)
    except ValueError as exc:
        raise ConfigError(f"--trainable-stages {cfg.trainable_stages}: {exc}") from exc
    if cfg.init is not None:
        load_init(model, cfg.init)
    if cfg.train_only == "relation":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(RELATION_MODULES))
    return model


RELATION_MODULES = ("cross.", "relation.")  # what ``--train-only relation`` trains
FRESH_WITH_NEW_HEAD = ("relation.hidden.", "relation.out.")  # the MLP whose input a different head changes


def load_init(model: ZSEModel, path: str) -> None:
    """Loads every parameter and buffer of ``model`` from the weights file ``path``, which must hold the
    same architecture. Three parts may differ: the relation head ("map" vs "sorted"), whose MLP then starts
    fresh; whether its last layer reads the [Ret] cosine (``relation_ret``: the weight of that input starts at
    :data:`~sketchfind.models.zse.RET_SKIP_INIT`, the rest loads); and the anchored [Ret]'s space (``ret_tokens``,
    ``ret_whiten``), whose basis training then fits again (:meth:`Trainer.anchor_bank`; the trained sketch-side MLP
    loads)."""
    from ..models.factory import read_checkpoint

    state, stored_cfg, _ = read_checkpoint(path)
    if stored_cfg is None:
        raise ConfigError(f"--init {path}: the file carries no model config")
    ours, theirs = _without(model.cfg, RET_SPACE), _without(stored_cfg, RET_SPACE)
    same_head = ours.pop("relation_head", "map") == theirs.pop("relation_head", "map")
    reads_ret, read_ret = ours.pop("relation_ret", False), theirs.pop("relation_ret", False)
    if ours != theirs:
        raise ConfigError(f"--init {path} holds a different architecture ({stored_cfg.name}) than {model.cfg.name}")
    fresh = (() if same_head else FRESH_WITH_NEW_HEAD) + (() if same_ret_space(model.cfg, stored_cfg) else RET_BASIS)
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(fresh)})
    if same_head and reads_ret != read_ret:  # the last layer gains (or loses) its [Ret]-cosine input
        own = model.state_dict()["relation.out.weight"]
        loaded = state["relation.out.weight"].float()
        state["relation.out.weight"] = torch.cat([loaded, own[:, -1:]], 1) if reads_ret else loaded[:, :-1]
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)


RET_SPACE = ("ret_tokens", "ret_whiten")  # ModelConfig fields that shape the anchored [Ret]'s space
RET_BASIS = ("ret.mean", "ret.basis")  # its buffers, fitted on the training photos


def _without(cfg: ModelConfig, fields: tuple[str, ...]) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in fields}


def _init_config(path: str) -> ModelConfig:
    from ..models.factory import read_checkpoint

    return read_checkpoint(path)[1]


def same_ret_space(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two configs' anchored [Ret] bases are fitted alike."""
    return all(getattr(a, f) == getattr(b, f) for f in RET_SPACE)


def frozen_count(model: ZSEModel, cfg: TrainConfig) -> int:
    """Leading backbone stages that no modality trains: their outputs are cached."""
    return len(model.tokens.backbone.stages) - cfg.trainable_stages


def tokens_from_cache(model: ZSEModel, cached: torch.Tensor, modality: str, start: int) -> torch.Tensor:
    """Cached outputs of the first ``start`` stages -> encoder tokens (B, T, D)."""
    feature_map = model.tokens.features(cached.float(), modality, start=start)  # (B, C, g, g)
    return model.encode_tokens(*model.tokens.to_tokens(feature_map), modality)[0]


def image_views(source, kind: str, model: ZSEModel, views: int, rng: np.random.Generator) -> torch.Tensor:
    """(views, 3, S, S): the plain preprocessed image (a file, or an array for drawings), then augmented
    copies."""
    pre = model.cfg.preprocess
    if kind == "sketches":
        base = sketch_array(source, pre)
        aug = augment_sketch
    else:
        base = photo_array(source, pre)
        aug = augment_photo
    arrays = [base] + [aug(base, rng) for _ in range(views - 1)]
    return torch.stack([to_tensor(np.ascontiguousarray(a), pre) for a in arrays])


def doodle_views(strokes: list, model: ZSEModel, views: int, rng: np.random.Generator) -> torch.Tensor:
    """(views, 3, S, S): the doodle drawn as the page draws it, then redrawn with stroke-level augmentation
    (:func:`~sketchfind.train.data.augment_strokes`), another pen width and the image augmentation."""
    pre = model.cfg.preprocess
    arrays = [sketch_array(render_doodle(strokes), pre)]
    for _ in range(views - 1):
        drawn = render_doodle(augment_strokes(strokes, rng), pen=int(rng.choice(DOODLE_PENS)))
        arrays.append(augment_sketch(sketch_array(drawn, pre), rng))
    return torch.stack([to_tensor(np.ascontiguousarray(a), pre) for a in arrays])


def doodles_of(folder: str | Path, classes: list[str]) -> tuple[list[list], np.ndarray]:
    """The doodles of ``classes`` found in ``folder`` (``<class>.ndjson``) and their labels (index in
    ``classes``); classes without a file have none."""
    present = [c for c in classes if (Path(folder) / f"{c}.ndjson").is_file()]
    drawings, names = load_doodles(folder, present)
    return drawings, np.asarray([classes.index(n) for n in names], dtype=np.int64)


@torch.inference_mode()
def build_cache(model: ZSEModel, files: list, kind: str, views: int, seed: int, start: int, desc: str):
    """(N, views, C, h, w) fp16 outputs of the first ``start`` backbone stages (the same for both modalities:
    stages that training leaves alone are ImageNet's in both branches). ``kind="edges"``: the files are
    photos, drawn as HED edge maps and treated as sketches; ``kind="doodles"``: they are stroke lists."""
    rng = np.random.default_rng(seed)
    hed = None
    if kind == "edges":
        from ..models.hed import load_hed

        hed = load_hed()
    out = []
    batch: list[torch.Tensor] = []
    with progress(len(files), desc) as advance:
        for i, path in enumerate(files):
            batch.append(_views_of(path, kind, hed, model, views, rng))
            if len(batch) == 16 or i == len(files) - 1:
                # (len(batch) * views, C, h, w)
                out.append(model.tokens.features(torch.cat(batch), "photo", stop=start).half())
                advance(len(batch))
                batch = []
    flat = torch.cat(out)
    return flat.reshape(len(files), views, *flat.shape[1:])


def _views_of(path, kind: str, hed, model: ZSEModel, views: int, rng: np.random.Generator) -> torch.Tensor:
    """The views of one training file; with ``hed``, of the edge map of the photo at ``path``."""
    if kind == "doodles":
        return doodle_views(path, model, views, rng)
    if hed is not None:
        from ..preprocess import read_photo

        return image_views(hed.edge_image(np.asarray(read_photo(path).convert("RGB"))), "sketches", model, views, rng)
    return image_views(path, kind, model, views, rng)


def contrastive_loss(
    sketch_emb: torch.Tensor, photo_emb: torch.Tensor, sk_lab: torch.Tensor, ph_lab: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Multi-positive InfoNCE between L2-normalised sketch and photo [Ret] embeddings (both directions)."""
    logits = sketch_emb @ photo_emb.T / temperature  # (Ns, Np)
    positive = (sk_lab[:, None] == ph_lab[None]).float()

    def one_way(lg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        log_prob = lg - lg.logsumexp(dim=1, keepdim=True)
        return -((log_prob * pos).sum(1) / pos.sum(1).clamp(min=1))[pos.sum(1) > 0].mean()

    return (one_way(logits, positive) + one_way(logits.T, positive.T)) / 2


def distillation_loss(
    log_prob: torch.Tensor, sketch_ret: torch.Tensor, photo_ret: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) per sketch, averaged: the student's (S, P) log-probabilities over P photos (the
    relation network's log-softmax) against the teacher's softmax of the [Ret] cosines / temperature (L2-normalised
    (S, D) and (P, D) embeddings; no gradient reaches them)."""
    with torch.no_grad():
        teacher = (sketch_ret @ photo_ret.T / temperature).softmax(dim=1)
    return F.kl_div(log_prob, teacher, reduction="batchmean")


def bank_contrastive_loss(
    sketch_emb: torch.Tensor, sk_lab: torch.Tensor, bank: torch.Tensor, bank_lab: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Multi-positive InfoNCE of L2-normalised sketch embeddings against a fixed bank of photo embeddings."""
    log_prob = (sketch_emb @ bank.T / temperature).log_softmax(dim=1)  # (Ns, Nbank)
    positive = (sk_lab[:, None] == bank_lab[None]).float()
    return -((log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)).mean()


class Trainer:
    """Holds the model, optimizer, caches and the loop; ``fit()`` runs (or resumes) the whole training."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        torch.set_num_threads(cfg.threads)
        set_seed(cfg.seed)
        self.train_split, self.val_split, _ = split_classes(cfg.data, cfg.holdout, cfg.val_classes, cfg.seed)
        self.model = build_model(cfg)
        # whether --init brings the model's [Ret] space (else anchor_bank fits it on the training photos)
        self.init_ret_space = cfg.init is not None and same_ret_space(self.model.cfg, _init_config(cfg.init))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.start = frozen_count(self.model, cfg)
        self.epoch, self.best = 0, -1.0
        self.history: list[dict] = []
        self.bank: tuple[torch.Tensor, torch.Tensor] | None = None  # anchored [Ret] of the training photos

    # -- caches -------------------------------------------------------------------------------
    def caches(self) -> None:
        """Frozen-prefix features of every train/val image, computed once and kept in the run folder."""
        folder = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.out
        folder.mkdir(parents=True, exist_ok=True)
        c = self.cfg
        tag = f"{c.model}-s{c.trainable_stages}-v{c.views}-c{c.val_classes}-seed{c.seed}.pt"

        def cached(path: Path, compute):
            """torch.load(path), or compute() saved there atomically first."""
            if path.is_file():
                return torch.load(path, weights_only=True)
            value = compute()
            with atomic_path(path) as tmp:
                torch.save(value, tmp)
            return value

        def features():
            data = {}
            for name, split, views in (("train", self.train_split, c.views), ("val", self.val_split, 1)):
                for kind in ("sketches", "photos"):
                    files, labels = split.flat(kind)
                    feats = build_cache(self.model, files, kind, views, c.seed, self.start, f"caching {name} {kind}")
                    data[f"{name}_{kind}"], data[f"{name}_{kind}_labels"] = feats, torch.from_numpy(labels)
            return data

        def edge_maps():
            files, _ = self.train_split.flat("photos")
            desc = "drawing edge maps of train photos"
            return build_cache(self.model, files, "edges", c.views, c.seed, self.start, desc)

        def doodle_features():
            out = {}
            for name, split, views in (("train", self.train_split, c.views), ("val", self.val_split, 1)):
                drawings, labels = doodles_of(c.doodles, split.classes)
                if drawings:
                    desc = f"drawing {name} doodles"
                    out[f"{name}_doodles"] = build_cache(
                        self.model, drawings, "doodles", views, c.seed, self.start, desc
                    )
                    out[f"{name}_doodles_labels"] = torch.from_numpy(labels)
            if "train_doodles" not in out:
                raise ConfigError(f"--doodles {c.doodles}: no <class>.ndjson file of a training class there")
            return out

        data = cached(folder / f"cache-{tag}", features)
        if c.edges > 0:  # HED drawings of the training photos: their own cache, shared by runs with any --edges
            data["train_edges"] = cached(folder / f"edges-{tag}", edge_maps)
        if c.doodles:  # the doodles' own cache (its name says which folder they came from)
            data.update(cached(folder / f"doodles-{Path(c.doodles).name}-{tag}", doodle_features))
        self.data = data

    @torch.no_grad()
    def anchor_bank(self) -> None:
        """Fits the anchored [Ret] space on the training photos' ImageNet features (a fresh run, or ``--init``
        weights of another [Ret] space) and keeps their [Ret] embeddings, with labels, as the bank that sketch
        [Ret]s are contrasted with (not with ``train_only="relation"``: no [Ret] loss)."""
        if self.model.ret is None:
            return
        refit = self.epoch == 0 and (self.cfg.init is None or not self.init_ret_space)  # else the loaded space
        if self.cfg.train_only == "relation" and not refit:  # no [Ret] loss: no bank
            return
        photos = self.data["train_photos"][:, 0]  # plain views
        tokens = self.model.tokens
        pooled = torch.cat(
            [tokens.to_tokens(tokens.features(x.float(), "photo", start=self.start))[1] for x in photos.split(128)]
        )
        if refit:
            self.model.ret.fit(pooled)
        if self.cfg.train_only == "relation":
            return
        emb = F.normalize(self.model.ret(pooled, "photo"), dim=-1)
        self.bank = (emb, self.data["train_photos_labels"])

    # -- one step -----------------------------------------------------------------------------
    def step(self, rng: np.random.Generator) -> dict[str, float]:
        cfg, d = self.cfg, self.data
        b = cfg.batch_size
        sk_lab, ph_lab = d["train_sketches_labels"].numpy(), d["train_photos_labels"].numpy()
        quad = sample_quadruplets(sk_lab, ph_lab, b, rng)
        view = rng.integers(0, cfg.views, size=(b, 4))
        sk = torch.cat([d["train_sketches"][quad[:, 0], view[:, 0]], d["train_sketches"][quad[:, 1], view[:, 1]]])
        if cfg.edges > 0:  # some sketches become HED drawings of a (random) photo of the same class
            swap = np.flatnonzero(rng.random(2 * b) < cfg.edges)
            classes = sk_lab[np.concatenate([quad[:, 0], quad[:, 1]])[swap]]
            photos = np.array([rng.choice(np.flatnonzero(ph_lab == c)) for c in classes], dtype=np.int64)
            if len(swap):
                sk[swap] = d["train_edges"][photos, rng.integers(0, cfg.views, len(swap))]
        if cfg.doodles and cfg.doodle_share > 0:  # some sketches become doodles of the same class
            doodle_lab = d["train_doodles_labels"].numpy()
            classes = sk_lab[np.concatenate([quad[:, 0], quad[:, 1]])]
            swap = np.flatnonzero(np.isin(classes, doodle_lab) & (rng.random(2 * b) < cfg.doodle_share))
            picks = np.array([rng.choice(np.flatnonzero(doodle_lab == c)) for c in classes[swap]], dtype=np.int64)
            if len(swap):
                sk[swap] = d["train_doodles"][picks, rng.integers(0, cfg.views, len(swap))]
        ph = torch.cat([d["train_photos"][quad[:, 2], view[:, 2]], d["train_photos"][quad[:, 3], view[:, 3]]])
        head_only = cfg.train_only == "relation"
        with torch.set_grad_enabled(not head_only):  # a frozen encoder needs no graph: only the head's backward
            sketch_tokens = tokens_from_cache(self.model, sk, "sketch", self.start)  # [sketch; sketch_neg]
            photo_tokens = tokens_from_cache(self.model, ph, "photo", self.start)  # [photo; photo_neg]
        sketch_ca, photo_ca, scores = self.model.pair_forward(sketch_tokens, photo_tokens)
        losses = zse_losses(torch.cat([sketch_ca[:, 0], photo_ca[:, 0]]), scores, cfg.margin)
        if cfg.rn_rank_weight > 0 or cfg.rn_distill_weight > 0:  # each sketch against all 2b photos of the step
            logits = self.model.relation_scores(sketch_tokens[:b], photo_tokens, logits=True)  # (b, 2b)
            log_prob = logits.log_softmax(dim=1)
        if cfg.rn_rank_weight > 0:  # the relation network ranks each sketch's own class first
            photo_lab = np.concatenate([ph_lab[quad[:, 2]], ph_lab[quad[:, 3]]])
            positive = torch.from_numpy(sk_lab[quad[:, 0]][:, None] == photo_lab[None]).float()
            losses["rn_rank"] = cfg.rn_rank_weight * -((log_prob * positive).sum(1) / positive.sum(1)).mean()
            losses["total"] = losses["total"] + losses["rn_rank"]
        if cfg.rn_distill_weight > 0:  # ... and as the [Ret] embedding ranks them
            ret = self.model.retrieval_embedding
            kl = distillation_loss(log_prob, ret(sketch_tokens[:b]), ret(photo_tokens), cfg.temperature)
            losses["rn_distill"] = cfg.rn_distill_weight * kl
            losses["total"] = losses["total"] + losses["rn_distill"]
        if cfg.ret_weight > 0 and not head_only:
            lab = torch.from_numpy(
                np.concatenate([sk_lab[quad[:, 0]], sk_lab[quad[:, 1]], ph_lab[quad[:, 2]], ph_lab[quad[:, 3]]])
            )
            sketch_emb = self.model.retrieval_embedding(sketch_tokens)
            if self.bank is not None:  # anchored [Ret]: sketches against every training photo, photos fixed
                ret = bank_contrastive_loss(sketch_emb, lab[: 2 * b], *self.bank, cfg.temperature)
            else:
                photo_emb = self.model.retrieval_embedding(photo_tokens)
                ret = contrastive_loss(sketch_emb, photo_emb, lab[: 2 * b], lab[2 * b :], cfg.temperature)
            losses["ret"] = cfg.ret_weight * ret
            losses["total"] = losses["total"] + losses["ret"]
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    # -- validation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """mAP@all on the validation classes, as people search: validation sketches (and doodles, with
        ``--doodles``) against the validation photos, and the same queries against a mixed gallery (the
        validation photos among every training photo). Per query set: the [Ret], relation-network and fused
        rankings and the ann pipeline under each setting of :func:`~sketchfind.rerank.validation_grid`;
        each setting's key holds its mean over the query sets (export picks the best), ``val_score`` the best."""
        self.model.eval()
        d, per_class = self.data, self.cfg.val_queries_per_class

        def encode(cached: torch.Tensor, modality: str) -> torch.Tensor:
            return torch.cat([tokens_from_cache(self.model, x, modality, self.start) for x in cached.split(64)])

        def first(labels: np.ndarray, n: int) -> np.ndarray:
            return np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)])

        ph, gl = encode(d["val_photos"][:, 0], "photo"), d["val_photos_labels"].numpy()
        queries = {"sketches": (d["val_sketches"], d["val_sketches_labels"].numpy(), per_class)}
        if "val_doodles" in d:  # doodles are quick to rank: twice as many per class
            queries["doodles"] = (d["val_doodles"], d["val_doodles_labels"].numpy(), 2 * per_class)
        # the relation network ranks every photo for a few queries per class (all pairs would dominate the epoch)
        out: dict[str, float] = {}
        tokens, labels, grid, pairs = [], [], validation_grid(), []
        for name, (cached, ql, n) in queries.items():
            keep = first(ql, n)
            sk = encode(cached[keep, 0], "sketch")
            tokens.append(sk)
            labels.append(ql[keep])
            prefix = "val_map" if name == "sketches" else f"val_{name}_map"
            out.update(self._rank_metrics(sk, ql[keep], ph, gl, prefix, f"val_{name}_", grid, full_relation=pairs))
        # the mixed gallery: every training photo joins as a distractor
        distractors = encode(d["train_photos"][:, 0], "photo")
        mixed = torch.cat([ph, distractors])
        mixed_labels = np.concatenate([gl, d["train_photos_labels"].numpy() + MIXED_LABEL_OFFSET])
        sk_all, ql_all = torch.cat(tokens), np.concatenate(labels)
        out.update(self._rank_metrics(sk_all, ql_all, mixed, mixed_labels, "val_mixed_map", "val_mixed_", grid))
        sets = ["sketches", *(["doodles"] if "doodles" in queries else []), "mixed"]
        for settings in grid:
            key = settings_key(settings)
            out[key] = float(np.mean([out[f"val_{q}_" + key.removeprefix("val_")] for q in sets]))
        out["val_score"] = max(out[settings_key(s)] for s in grid)
        # the relation network's own ranking, mean over the query sets that rank every pair
        out["val_rn_score"] = float(np.mean([out[k] for k in out if k.endswith("map_rn")]))
        # the score people are shown: the relation logits calibrated on these pairs (Platt scaling; with a single
        # validation class every pair is a match and there is nothing to calibrate)
        logits, same = (np.concatenate([p[i].ravel() for p in pairs]) for i in (0, 1))
        if same.any() and not same.all():
            out["score_scale"], out["score_shift"] = fit_score_calibration(logits, same)
        self.train_mode()
        return out

    @property
    def selection_key(self) -> str:
        """The validation figure that picks ``best.safetensors``: with ``train_only="relation"`` the
        [Ret] ranking is fixed by construction, so the relation network's own mAP decides."""
        return "val_rn_score" if self.cfg.train_only == "relation" else "val_score"

    def train_mode(self) -> None:
        """Training mode, except that with ``train_only="relation"`` everything before cross-attention stays in
        eval mode: no dropout, no BatchNorm statistics updated, so the [Ret] and tokens stay the loaded ones."""
        self.model.train()
        if self.cfg.train_only == "relation":
            for module in (self.model.tokens, self.model.encoder, self.model.ret):
                if module is not None:
                    module.eval()

    def _rank_metrics(
        self, sk, ql, ph, gl, prefix: str, setting_prefix: str, grid: list[RankSettings], full_relation=None
    ) -> dict[str, float]:
        """The rankings of queries ``sk`` vs photos ``ph`` (tokens) by mAP@all: [Ret], the relation network
        and fused (with ``full_relation``, a list: every pair is scored, and its (logits, same class) are
        appended to it) and the ann pipeline per setting (the relation network scores only the pairs some
        setting re-ranks)."""
        ret_q, ret_p = self.model.retrieval_embedding(sk).numpy(), self.model.retrieval_embedding(ph).numpy()
        cos = ret_q @ ret_p.T
        out = {f"{prefix}_ret": retrieval_metrics(-cos, ql, gl)["map_all"]}
        if full_relation is not None:
            logits = self.model.relation_scores(sk, ph, logits=True)
            full_relation.append((logits.numpy(), np.asarray(ql)[:, None] == np.asarray(gl)[None]))
            rn = relation_probability(logits)
            out[f"{prefix}_rn"] = retrieval_metrics(-rn, ql, gl)["map_all"]
            for f in FUSION_GRID[:-1]:  # fusion 1 is the [Ret] ranking itself
                out[f"{prefix}_fused_{f:g}"] = retrieval_metrics(-fuse(cos, rn, f), ql, gl)["map_all"]
        else:
            rn = self._head_relation(sk, ph, ret_q, ret_p, grid)
        for settings in grid:
            scores = pipeline_scores(ret_q, ret_p, rn, settings)
            out[setting_prefix + settings_key(settings).removeprefix("val_")] = retrieval_metrics(-scores, ql, gl)[
                "map_all"
            ]
        return out

    def _head_relation(self, sk, ph, ret_q, ret_p, grid: list[RankSettings]) -> np.ndarray:
        """(Q, P) relation scores filled only where a setting of ``grid`` re-ranks (its head), 0 elsewhere."""
        heads = [set() for _ in range(len(sk))]
        for settings in {s.updated(fusion=1.0) for s in grid if s.uses_relation}:
            order = np.argsort(-pipeline_scores(ret_q, ret_p, None, settings), axis=1, kind="stable")
            for q, row in enumerate(order[:, : settings.rerank_k]):
                heads[q].update(row.tolist())
        rn = np.zeros((len(sk), len(ph)), np.float32)
        for q, head in enumerate(heads):
            if head:
                idx = np.array(sorted(head))
                rn[q, idx] = self.model.relation_scores(sk[q : q + 1], ph[idx]).numpy()[0]
        return rn

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, metrics: dict[str, float]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "config": self.model.cfg.to_dict(),
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "train_config": asdict(self.cfg),
            "rng": {"torch": torch.get_rng_state(), "numpy": self.np_rng.bit_generator.state},
        }
        with atomic_path(self.out / "last.pth") as tmp:
            torch.save(state, tmp)
        score = metrics[self.selection_key]
        if score > self.best:
            self.best = score
            best_key = settings_key(choose_settings(metrics))  # what export ships (ties go to the cheaper setting)
            extra = {"val_metrics": json.dumps(metrics), "epoch": str(self.epoch), "selected_ranking": best_key}
            save_weights(self.model, self.out / "best.safetensors", extra=extra)

    def resume(self) -> None:
        path = self.out / "last.pth"
        if not path.is_file():
            raise SketchfindError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        self.np_rng.bit_generator.state = state["rng"]["numpy"]

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        """Trains for cfg.epochs epochs (continuing from last.pth with resume=True). ``epochs=0`` takes no step:
        the ``--init`` weights (with a [Ret] basis fitted again when the config's [Ret] space differs) are
        validated and saved as epoch 0, so they can be exported like any run."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        self.np_rng = np.random.default_rng(self.cfg.seed)
        if resume:
            self.resume()
        self.caches()
        self.anchor_bank()
        self.train_mode()
        steps = self.cfg.steps_per_epoch
        with progress(self.cfg.epochs * steps, "training", done=self.epoch * steps) as advance:
            while self.epoch < self.cfg.epochs:
                sums: dict[str, float] = {}
                for n in range(1, steps + 1):
                    for k, v in self.step(self.np_rng).items():
                        sums[k] = sums.get(k, 0.0) + v
                    advance(1, **{k: v / n for k, v in sorted(sums.items())})
                self.epoch += 1
                metrics = self.validate()
                row = {"epoch": self.epoch, **{k: v / steps for k, v in sums.items()}, **metrics}
                self.history.append(row)
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                self.save(metrics)
        if self.cfg.epochs == 0 and not self.history:
            metrics = self.validate()
            self.history.append({"epoch": 0, **metrics})
            print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            self.save(metrics)
        return self.history
