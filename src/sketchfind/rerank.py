"""The ann ranking pipeline as pure numpy: query expansion on the photo side, then the re-ranked head.

    1. expansion (``qe_weight > 0``): the [Ret] embeddings of the ``qe_top`` photos nearest to the sketch
       are averaged and added to the sketch's embedding (average query expansion, Chum et al. 2007); photos
       resemble each other far more reliably than a drawing resembles a photo, so a few good first hits
       pull in the rest of their kind. With ``qe_alpha > 0`` each photo counts by its cosine to the sketch to
       the power alpha (alpha-weighted query expansion, Radenovic et al. 2018): more photos can be averaged
       without a drawing of a kind that has only a few photos in the gallery being pulled to the others;
    2. neighbour augmentation (``dba_top > 0``): the ``dba_top`` photos nearest to the expanded query are
       ranked again with each photo's embedding averaged with those of its ``dba_k`` nearest photos among
       them (database-side augmentation, Arandjelovic & Zisserman 2012, here over the head only), and the
       query is expanded again with these augmented embeddings: a photo's own kind votes for it, so a
       drawing that lands near one photo of a kind finds the rest of it. Validation classes (mAP@all, the
       mean of sketches and doodles vs their photos and vs a mixed gallery): 0.388 -> 0.429 (see
       :data:`RankSettings` and the model card);
    3. the ``rerank_k`` photos first so far are re-scored with :func:`fuse`:
       ``fusion * cosine + (1 - fusion) * relation score`` (no relation network at all when fusion = 1);
    4. every other photo follows by its cosine.

``Searcher`` runs it on FAISS results; training validation and ``sketchfind eval`` run it on full score
matrices (:func:`pipeline_scores`). All three call :func:`fuse` with one :class:`RankSettings`, so the
settings validated in training are the ones search uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import faiss
import numpy as np

from .errors import ConfigError

FUSION_GRID = (0.25, 0.5, 0.75, 1.0)  # fusion weights training validation tries (and export chooses among)
# (qe_top, qe_weight, qe_alpha) it tries; (30, 3, 3) was chosen among alpha-weighted expansions on the validation
# classes, with their photos and with uneven galleries (3-25 photos of the drawn kind), see the model card
EXPANSION_GRID = ((10, 0.0, 0.0), (5, 1.0, 0.0), (10, 1.0, 0.0), (10, 2.0, 0.0), (30, 3.0, 3.0))


@dataclass(frozen=True)
class RankSettings:
    """What the ann strategy does after FAISS; the shipped weights carry validated values.

    The defaults are the one place a ranking default is written: weights without stored settings (e.g.
    the official checkpoint) get them in ``search``, ``eval`` and ``serve`` alike."""

    rerank_k: int = 25  # photos re-scored with the relation network (when fusion < 1)
    fusion: float = 1.0  # weight of the [Ret] cosine in the head's score (1 = no relation network)
    qe_top: int = 10  # photos averaged into the expanded query
    qe_weight: float = 0.0  # weight of their mean embedding (0 = no expansion)
    qe_alpha: float = 0.0  # each of them weighted by its cosine to the sketch ** qe_alpha (0 = a plain mean)
    # neighbour augmentation of the head (0 = off); chosen on the validation classes: 300 photos, 5 neighbours
    # (100 / 200 / 400 photos: 0.421 / 0.427 / 0.430; 3 / 8 neighbours: 0.424 / 0.427; off: 0.388)
    dba_top: int = 300
    dba_k: int = 5

    def __post_init__(self):
        kinds = {"rerank_k": int, "qe_top": int, "fusion": float, "qe_weight": float, "qe_alpha": float}
        kinds |= {"dba_top": int, "dba_k": int}
        for name, kind in kinds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if kind is int and value != int(value):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
            object.__setattr__(self, name, kind(value))
        if self.rerank_k < 1 or self.qe_top < 1:
            raise ConfigError("rerank_k and qe_top must be at least 1")
        if self.dba_top < 0 or self.dba_k < 1:
            raise ConfigError("dba_top must not be negative (0 = off) and dba_k must be at least 1")
        if not 0 <= self.fusion <= 1 or self.qe_weight < 0 or self.qe_alpha < 0:
            raise ConfigError("fusion must lie in [0, 1] and qe_weight and qe_alpha must not be negative")

    @classmethod
    def from_metadata(cls, meta: dict) -> RankSettings:
        """Settings stored beside weights (``fusion``, ``qe_top``, ``qe_weight``, ...); defaults otherwise."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in meta.items() if k in names})

    def to_metadata(self) -> dict[str, str]:
        """The weights-file metadata form (strings)."""
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}

    def updated(self, **given) -> RankSettings:
        """A copy with the given values that are not None (e.g. command-line overrides)."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    @property
    def uses_relation(self) -> bool:
        """Whether the head is re-scored by the relation network at all."""
        return self.fusion < 1


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def expand_query(query: np.ndarray, neighbours: np.ndarray, weight: float, alpha: float = 0.0) -> np.ndarray:
    """(..., D) unit queries and (..., m, D) embeddings of their nearest photos -> (..., D) expanded queries: the
    query plus ``weight`` x the unit mean of the photos, each weighted by max(0, its cosine to the query) **
    ``alpha`` (``alpha=0``: a plain mean)."""
    neighbours = normalize(neighbours)
    if alpha > 0:
        cosines = np.einsum("...md,...d->...m", neighbours, query)
        mean = (neighbours * (np.maximum(cosines, 0.0) ** alpha)[..., None]).sum(axis=-2)
    else:
        mean = neighbours.mean(axis=-2)
    return normalize(query + weight * normalize(mean))


def augment(embeddings: np.ndarray, k: int) -> np.ndarray:
    """(M, D) unit embeddings -> (M, D): each one plus its ``k`` nearest others among them, unit length."""
    m = len(embeddings)
    k = min(k, m - 1)
    if k < 1:
        return embeddings
    # FAISS's exhaustive k-NN, not a numpy product: a BLAS call leaves its worker threads spinning, and the
    # next FAISS search (OpenMP) then waits for the CPU (5-8 ms lost per query on 2 cores)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    _, near = faiss.knn(x, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)  # (M, k + 1), most similar first
    own = near == np.arange(m)[:, None]  # each row's own index: usually first, anywhere among exact ties
    near = np.take_along_axis(near, np.argsort(own, axis=1, kind="stable"), axis=1)[:, :k]
    return normalize(embeddings + embeddings[near].sum(axis=1))


def rank_head(
    query: np.ndarray, head: np.ndarray, head_emb: np.ndarray, settings: RankSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D,) unit sketch embedding, (M,) photo positions of its head (best first) and their (M, D) unit
    embeddings -> (the positions ranked again, their scores, the (D,) query that scored them): the cosine of the
    augmented head (:func:`augment`) with the query expanded by the first ``qe_top`` of the head.

    Computed in position order and ties broken by position, so the result depends on the head's photos and its
    first ``qe_top``, not on the order a first stage (FAISS, Milvus) returned them in."""
    by_position = np.argsort(head, kind="stable")
    head, head_emb = head[by_position], head_emb[by_position]
    augmented = augment(head_emb, settings.dba_k)
    if settings.qe_weight > 0:
        first = np.sort(np.argsort(by_position, kind="stable")[: settings.qe_top])  # their rows, in position order
        query = expand_query(query, augmented[first], settings.qe_weight, settings.qe_alpha)
    scores = augmented @ query
    order = np.lexsort((head, -scores))
    return head[order], scores[order], query


def fuse(cosine, relation, fusion: float):
    """The head score of ann (and eval's "fused" ranking): ``fusion * cosine + (1 - fusion) * relation``."""
    return fusion * cosine + (1 - fusion) * relation


def pipeline_scores(
    query_emb: np.ndarray, photo_emb: np.ndarray, relation: np.ndarray | None, settings: RankSettings
) -> np.ndarray:
    """(Q, D) sketch and (P, D) photo [Ret] embeddings (+ the (Q, P) relation scores when fusion < 1) ->
    (Q, P) scores whose order is the ann ranking (head scores are offset above every tail score)."""
    query_emb, photo_emb = normalize(query_emb), normalize(photo_emb)
    cos = query_emb @ photo_emb.T  # (Q, P)
    if settings.qe_weight > 0:
        top = np.argsort(-cos, axis=1, kind="stable")[:, : settings.qe_top]  # (Q, m)
        cos = expand_query(query_emb, photo_emb[top], settings.qe_weight, settings.qe_alpha) @ photo_emb.T
    if settings.dba_top > 0:
        heads = np.argsort(-cos, axis=1, kind="stable")[:, : settings.dba_top]  # (Q, M)
        cos = cos - 4.0  # the tail below every head score (cosines lie in [-1, 1])
        for q, head in enumerate(heads):
            ranked, scores, _ = rank_head(query_emb[q], head, photo_emb[head], settings)
            cos[q, ranked] = scores
    if not settings.uses_relation or relation is None:
        return cos
    k_rel = min(settings.rerank_k, settings.dba_top) if settings.dba_top > 0 else settings.rerank_k
    head = np.argsort(-cos, axis=1, kind="stable")[:, :k_rel]  # (Q, K'), within the augmented head
    rows = np.arange(len(cos))[:, None]
    out = cos - 8.0  # scores lie in [-5, 1], fused head scores in [-1, 2]: the head stays on top
    out[rows, head] = fuse(cos[rows, head], relation[rows, head], settings.fusion)
    return out


def validation_grid(rerank_k: int = RankSettings.rerank_k) -> list[RankSettings]:
    """The settings that training validation (and ``export``) chooses among."""
    return [
        RankSettings(rerank_k, fusion, qe_top, qe_weight, qe_alpha)
        for fusion in FUSION_GRID
        for qe_top, qe_weight, qe_alpha in EXPANSION_GRID
    ]


def settings_key(settings: RankSettings) -> str:
    """The validation-metrics key of a pipeline setting, e.g. ``val_map_ann_f0.75_qe10x1`` (``..._qe30x3a3`` with
    alpha-weighted expansion)."""
    alpha = f"a{settings.qe_alpha:g}" if settings.qe_alpha > 0 else ""
    return f"val_map_ann_f{settings.fusion:g}_qe{settings.qe_top}x{settings.qe_weight:g}{alpha}"
