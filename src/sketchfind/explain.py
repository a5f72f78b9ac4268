"""Which parts of a sketch matched which parts of a photo: heat-maps of the score the search used.

* **[Ret] similarity** (``source="ret"``, the ``ann`` search's score on the lite models): the cosine of
  the sketch's (or the expanded query's) [Ret] with the photo's is split exactly over the photo's 7x7
  cells (:mod:`sketchfind.attribution`); the photo heat is that split, the sketch heat its first-order
  split over the sketch's inked cells. The heat sits where the photo holds what was matched: on the
  unseen-25 pointing game 0.82 of the hottest cells lie on the drawn object (random 0.31).

* **relation score split** (``source="relation"``, ``exhaustive`` and ``clustered`` on the lite models, whose
  relation head also reads the [Ret] cosine): the logit's [Ret] term split exactly as above, plus its map
  term split by gradient x input over the cosine map's rows (sketch cells) and columns (photo cells); see
  :func:`explain_relation`. The heat is what raised the score the ranking used.

The relation network (``exhaustive``, ``clustered``) scores a sketch-photo pair from a map that relates
every sketch position to every photo position. Where its score cannot be split as above (the official head,
heads without the [Ret] input) we show that map as pictures a person can read at a glance:

* **cosine map** (models whose relation head down-samples per token, ``downsample == "linear"``,
  e.g. ``zse-lite0``): the (A, A) cosine map the relation network scores is itself spatial — row i is
  sketch cell i, column j photo cell j of the ``relation_grid`` x ``relation_grid`` grid. We show
  exactly what the score was computed from.
* **cross-attention** (the official ``conv2x2`` head): its anchors come from a C-order reinterpretation
  of the token buffer (the official reshape quirk), so each anchor mixes every image region and the
  cosine map has no spatial reading. The cross-attention weights between patch tokens do: we average
  sketch->photo attention and the transposed photo->sketch attention over heads.

From the (N_sketch, N_photo) matrix, counting only sketch cells that hold ink (the drawn parts; blank
paper matching blank sky says nothing a person wants to know): a sketch cell's heat is how well its
best photo cell matches it, a photo cell's heat how well its best-matching inked sketch cell does. Each
is scaled to [0, 1] within the pair, so the pictures show *where*, the score shows *how much*. The
strongest links from sketch cells to photo cells are drawn as lines between the two images.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .config import PreprocessConfig
from .models.zse import relation_probability, score_calibration
from .preprocess import ink_mask, preprocess_photo, read_photo, sketch_array, to_tensor

DISPLAY_SIZE = 320  # side of each picture in the rendered explanation
# perceptually ordered colour stops (dark blue -> cyan -> yellow -> red): cold = weak match, hot = strong
_STOPS = np.array([[0.0, 40, 40, 160], [0.35, 30, 170, 230], [0.65, 250, 220, 40], [1.0, 230, 30, 20]])


@dataclass
class Explanation:
    """One sketch-photo pair explained: the score, the correspondence matrix and its heat-maps."""

    score: float  # the score the ranking showed: [Ret] similarity, or relation score in (0, 1) (as calibrated)
    source: str  # "ret", "relation", "cosine" or "cross-attention" (see the module docstring)
    grid: int  # the matrix relates grid x grid sketch cells to grid x grid photo cells (row-major)
    matrix: np.ndarray  # (grid**2, grid**2) rows sketch cells, columns photo cells
    sketch_heat: np.ndarray  # (grid, grid) in [0, 1]
    photo_heat: np.ndarray  # (grid, grid) in [0, 1]
    links: list[tuple[int, int, float]] = field(default_factory=list)  # (sketch cell, photo cell, strength 0..1)
    parts: dict[str, float] = field(default_factory=dict)  # "relation": the logit's [Ret] and map terms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the full matrix is included: grid**4 floats, 2,401 for a 7x7 grid)."""
        return {
            "score": self.score,
            "source": self.source,
            "grid": self.grid,
            "sketch_heat": np.round(self.sketch_heat, 4).tolist(),
            "photo_heat": np.round(self.photo_heat, 4).tolist(),
            "links": [{"sketch_cell": s, "photo_cell": p, "strength": round(w, 4)} for s, p, w in self.links],
            "matrix": np.round(self.matrix, 4).tolist(),
            **({"parts": {k: round(v, 4) for k, v in self.parts.items()}} if self.parts else {}),
        }


# ----------------------------------------------------------------------------- computation


@torch.inference_mode()
def explain_tokens(
    model, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor, sketch_image: np.ndarray | None = None
) -> Explanation:
    """(1, T, D) sketch and photo tokens -> Explanation.

    ``sketch_image``, the squared (S, S, 3) uint8 sketch, limits the links to cells that hold ink."""
    dtype = model.relation.out.weight.dtype
    sketch_tokens = sketch_tokens[:1].to(dtype)
    photo_tokens = photo_tokens[:1].to(dtype)
    sketch_ca, photo_ca = model.cross(sketch_tokens, photo_tokens)
    logit = float(
        model.relation(sketch_ca, photo_ca, logits=True, ret_cos=model.ret_cosine(sketch_tokens, photo_tokens))[0]
    )
    score = float(relation_probability(logit, score_calibration(getattr(model, "weights_metadata", {}))))
    if model.cfg.downsample == "linear":
        relation = model.relation
        matrix = relation.cosine_map(relation.downsample(sketch_ca), relation.downsample(photo_ca))[0]
        source, grid = "cosine", model.cfg.relation_grid
    else:
        matrix = _attention_matrix(model, sketch_tokens, photo_tokens)
        source, grid = "cross-attention", model.cfg.grid
    matrix = matrix.float().cpu().numpy()
    inked = np.ones(grid * grid, bool)
    if sketch_image is not None:
        inked = _inked_cells(sketch_image, grid, model.cfg.preprocess)
    sketch_heat = np.zeros(grid * grid)
    sketch_heat[inked] = _unit(matrix[inked].max(axis=1))
    photo_heat = _unit(matrix[inked].max(axis=0))
    links = _links(matrix, sketch_heat, inked)
    return Explanation(
        score, source, grid, matrix, sketch_heat.reshape(grid, grid), photo_heat.reshape(grid, grid), links
    )


@torch.no_grad()  # not inference mode: the sketch side takes a gradient
def explain_ret(model, squared: np.ndarray, photo_image: Image.Image, query: np.ndarray | None = None) -> Explanation:
    """The [Ret] cosine that ``ann`` ranks by, attributed to cells (:mod:`sketchfind.attribution`): the photo
    heat is the exact split of the score over the photo's cells, the sketch heat the (linearised) split over
    the sketch's inked cells. ``query``: the (D,) query vector that was scored (the expanded query of
    query expansion); default the sketch's own [Ret]."""
    from .attribution import ret_cell_contributions, sketch_cell_contributions

    cfg = model.cfg.preprocess
    (sketch_feats, sketch_tokens), (photo_feats, photo_tokens) = _encode_pair(model, squared, photo_image)
    sketch_ret, photo_ret = model.retrieval_embedding(sketch_tokens), model.retrieval_embedding(photo_tokens)
    query = sketch_ret[0] if query is None else torch.as_tensor(np.asarray(query, np.float32))
    contributions = ret_cell_contributions(model, photo_feats, query)[0]  # (g, g), sums to the cosine
    grid = contributions.shape[0]
    inked = _inked_cells(squared, grid, cfg)
    sketch_heat = np.zeros(grid * grid)
    sketch_heat[inked] = _unit(sketch_cell_contributions(model, sketch_feats, photo_ret[0]).ravel()[inked])
    return Explanation(
        score=float(contributions.sum()),
        source="ret",
        grid=grid,
        matrix=contributions.reshape(1, -1),
        sketch_heat=sketch_heat.reshape(grid, grid),
        photo_heat=_unit(contributions.ravel()).reshape(grid, grid),
    )


@torch.no_grad()  # not inference mode: both sides take a gradient
def explain_relation(model, squared: np.ndarray, photo_image: Image.Image) -> Explanation:
    """The relation network's score (``exhaustive``, ``clustered``) of a head that also reads the [Ret] cosine
    (``relation_ret``, the lite models), split over cells. Its logit is ``w * [Ret] cosine + MLP(cosine map)``:

    * the [Ret] term, ``w`` times the cosine, split exactly over the photo's cells (:mod:`sketchfind.attribution`)
      and to first order over the sketch's;
    * the map term, by gradient x input of the logit on the 49x49 cosine map: entry (i, j) is sketch cell i
      matched with photo cell j, so its column sums belong to photo cells and its row sums to sketch cells.

    A cell's heat is the sum of both parts, so the picture weighs each part by its share of the score (on the
    shipped model most of a good match's logit is the [Ret] term). ``parts`` holds the two terms of the logit."""
    from .attribution import ret_cell_contributions, sketch_cell_contributions

    cfg, relation = model.cfg.preprocess, model.relation
    if not explains_relation(model):
        raise ValueError(f"{model.cfg.name}: the relation split needs a linear head that reads the [Ret] cosine")
    (sketch_feats, sketch_tokens), (photo_feats, photo_tokens) = _encode_pair(model, squared, photo_image)
    sketch_ret, photo_ret = model.retrieval_embedding(sketch_tokens)[0], model.retrieval_embedding(photo_tokens)[0]
    dtype = relation.out.weight.dtype
    sketch_ca, photo_ca = model.cross(sketch_tokens.to(dtype), photo_tokens.to(dtype))
    cos_map = relation.cosine_map(relation.downsample(sketch_ca), relation.downsample(photo_ca)).float()
    ret_cos = model.ret_cosine(sketch_tokens, photo_tokens)
    with torch.enable_grad():
        leaf = cos_map.detach().clone().requires_grad_(True)
        logit = relation.mlp(leaf.to(dtype), ret_cos=ret_cos)[0].float()
        (grad,) = torch.autograd.grad(logit, leaf)
    map_share = (grad * leaf.detach())[0].double().numpy()  # (A, A) sketch rows, photo columns
    weight = float(relation.out.weight[0, -1])
    photo_ret_share = weight * ret_cell_contributions(model, photo_feats, sketch_ret).ravel()
    sketch_ret_share = weight * sketch_cell_contributions(model, sketch_feats, photo_ret).ravel()
    grid = model.cfg.relation_grid
    inked = _inked_cells(squared, grid, cfg)
    sketch_heat = np.zeros(grid * grid)
    sketch_heat[inked] = _unit((map_share.sum(axis=1) + sketch_ret_share)[inked])
    photo_heat = _unit(map_share.sum(axis=0) + photo_ret_share)
    matrix = cos_map[0].double().numpy()
    ret_term = weight * float(ret_cos[0])
    return Explanation(
        score=float(relation_probability(float(logit), score_calibration(getattr(model, "weights_metadata", {})))),
        source="relation",
        grid=grid,
        matrix=matrix,
        sketch_heat=sketch_heat.reshape(grid, grid),
        photo_heat=photo_heat.reshape(grid, grid),
        links=_links(matrix, sketch_heat, inked),
        parts={"ret": ret_term, "map": float(logit) - ret_term},
    )


def explains_relation(model) -> bool:
    """Whether the relation score can be split into its [Ret] and map terms (:func:`explain_relation`)."""
    return bool(model.cfg.relation_ret) and explains_ret(model) and model.cfg.downsample == "linear"


def _encode_pair(model, squared: np.ndarray, photo_image: Image.Image) -> tuple[tuple, tuple]:
    """The squared sketch and the photo -> ((backbone features (1, C, g, g), tokens (1, T, D))) for each, the
    feature maps kept for attribution to cells."""
    cfg = model.cfg.preprocess
    out = []
    for image, modality in ((to_tensor(squared, cfg), "sketch"), (preprocess_photo(photo_image, cfg), "photo")):
        feats = model.tokens.features(image[None], modality)
        out.append((feats, model.encode_tokens(*model.tokens.to_tokens(feats), modality)[0]))
    return out[0], out[1]


def explains_ret(model) -> bool:
    """Whether the model's [Ret] score can be attributed to cells (the anchored [Ret] of the lite models)."""
    return getattr(model, "ret", None) is not None


def explain(model, sketch: Any, photo: Any, source: str = "ret") -> tuple[Explanation, dict[str, Image.Image]]:
    """Any sketch and photo source -> (Explanation, rendered images); encodes both with ``model``.

    ``source="ret"``: the [Ret] similarity the default search ranks by (when the model's [Ret] can be
    attributed; otherwise the relation head's map); ``"relation"``: the relation head's score and map."""
    cfg = model.cfg.preprocess
    squared = sketch_array(sketch, cfg)
    photo_image = read_photo(photo).convert("RGB")
    if source == "ret" and explains_ret(model):
        explanation = explain_ret(model, squared, photo_image)
    elif explains_relation(model):
        explanation = explain_relation(model, squared, photo_image)
    else:
        with torch.inference_mode():
            sketch_tokens = model.encode_sketch(to_tensor(squared, cfg)[None])
            photo_tokens = model.encode_photo(preprocess_photo(photo_image, cfg)[None])
        explanation = explain_tokens(model, sketch_tokens, photo_tokens, squared)
    return explanation, render(explanation, squared, photo_image)


def _attention_matrix(model, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor:
    """(N, N) patch-token correspondence from both cross-attention streams, averaged over heads."""
    sketch_layer, photo_layer = model.cross.sketch_layer, model.cross.photo_layer
    sketch_tokens, photo_tokens = model.cross.seen(sketch_tokens), model.cross.seen(photo_tokens)
    sk_q, ph_k = sketch_layer.split(sketch_layer.q(sketch_tokens)), sketch_layer.split(sketch_layer.k(photo_tokens))
    ph_q, sk_k = photo_layer.split(photo_layer.q(photo_tokens)), photo_layer.split(photo_layer.k(sketch_tokens))
    scale = 1 / math.sqrt(sk_q.shape[-1])
    sketch_to_photo = torch.softmax(sk_q @ ph_k.transpose(-2, -1) * scale, dim=-1).mean(1)[0]  # (T, T)
    photo_to_sketch = torch.softmax(ph_q @ sk_k.transpose(-2, -1) * scale, dim=-1).mean(1)[0]  # (T, T)
    return ((sketch_to_photo + photo_to_sketch.T) / 2)[1:, 1:]  # drop [Ret]


def _unit(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant vector becomes all zeros."""
    values = np.nan_to_num(values.astype(np.float64))
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 1e-12 else np.zeros_like(values)


def _inked_cells(squared: np.ndarray, grid: int, cfg: PreprocessConfig) -> np.ndarray:
    """(grid**2,) bool: which cells of the squared sketch hold ink (the preprocessing rule)."""
    ink = ink_mask(squared, cfg)
    edges = np.linspace(0, ink.shape[0], grid + 1).round().astype(int)
    cells = [ink[edges[r] : edges[r + 1], edges[c] : edges[c + 1]].any() for r in range(grid) for c in range(grid)]
    inked = np.array(cells, dtype=bool)
    return inked if inked.any() else np.ones_like(inked)


def _links(matrix: np.ndarray, strength: np.ndarray, inked: np.ndarray, count: int = 8) -> list[tuple[int, int, float]]:
    """The strongest (inked sketch cell -> its best photo cell) links, strongest first."""
    order = [int(i) for i in np.argsort(-strength, kind="stable") if inked[i]][:count]
    return [(i, int(matrix[i].argmax()), float(strength[i])) for i in order]


# ----------------------------------------------------------------------------- rendering


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours (cold blue -> hot red)."""
    heat = np.clip(heat, 0, 1)
    return np.stack([np.interp(heat, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)], axis=-1).astype(np.uint8)


def _upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(g, g) heat -> (H, W) smooth heat for a picture of ``size`` = (W, H)."""
    image = Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64)


def sketch_overlay(squared: np.ndarray, heat: np.ndarray, size: int = DISPLAY_SIZE) -> Image.Image:
    """The sketch as the model saw it, its strokes kept dark over a heat-map wash."""
    lines = np.asarray(Image.fromarray(squared).convert("L").resize((size, size), Image.Resampling.BILINEAR))
    wash = colorize(_upsample(heat, (size, size))).astype(np.float64)
    wash = 255 - 0.55 * (255 - wash)  # pale enough that strokes stay readable
    darkness = lines[..., None].astype(np.float64) / 255
    return Image.fromarray((wash * darkness).round().astype(np.uint8))


def photo_overlay(photo: Image.Image, heat: np.ndarray, size: int = DISPLAY_SIZE) -> Image.Image:
    """The photo (own aspect ratio, longer side ``size``) blended with its heat-map.

    The model sees the photo squashed to a square, so each heat cell maps to the same fraction of the
    original width and height: stretching the heat-map over the photo is exact."""
    photo = photo.convert("RGB")
    scale = size / max(photo.size)
    shown = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))))
    smooth = _upsample(heat, shown.size)
    alpha = (0.2 + 0.45 * smooth)[..., None]
    blended = np.asarray(shown, dtype=np.float64) * (1 - alpha) + colorize(smooth) * alpha
    return Image.fromarray(blended.round().astype(np.uint8))


def render(explanation: Explanation, squared: np.ndarray, photo: Image.Image) -> dict[str, Image.Image]:
    """The three pictures of an explanation: ``sketch``, ``photo`` overlays and ``combined`` (side by side)."""
    sketch_img = sketch_overlay(squared, explanation.sketch_heat)
    photo_img = photo_overlay(photo, explanation.photo_heat)
    return {"sketch": sketch_img, "photo": photo_img, "combined": _combine(explanation, sketch_img, photo_img)}


def _combine(explanation: Explanation, sketch_img: Image.Image, photo_img: Image.Image) -> Image.Image:
    """Sketch and photo side by side, lines linking matched cells, a caption with score and method."""
    size, gap, caption = DISPLAY_SIZE, 40, 28
    canvas = Image.new("RGB", (2 * size + gap, size + caption), (255, 255, 255))
    photo_origin = (size + gap + (size - photo_img.width) // 2, (size - photo_img.height) // 2)
    canvas.paste(sketch_img, (0, 0))
    canvas.paste(photo_img, photo_origin)
    draw = ImageDraw.Draw(canvas)
    grid = explanation.grid

    def centre(cell: int, origin: tuple[int, int], width: int, height: int) -> tuple[float, float]:
        row, col = divmod(cell, grid)
        return origin[0] + (col + 0.5) * width / grid, origin[1] + (row + 0.5) * height / grid

    for sketch_cell, photo_cell, strength in reversed(explanation.links):  # strongest drawn last, on top
        start = centre(sketch_cell, (0, 0), size, size)
        end = centre(photo_cell, photo_origin, photo_img.width, photo_img.height)
        colour = tuple(int(v) for v in colorize(np.array([0.4 + 0.6 * strength]))[0])
        draw.line([start, end], fill=colour, width=2)
        for x, y in (start, end):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(0, 0, 0), fill=colour)
    if explanation.source == "ret":
        text = f"similarity {explanation.score:.3f}   |   [Ret] split over {grid}x{grid} cells   |   warm = adds most"
    elif explanation.source == "relation":
        ret, rest = explanation.parts["ret"], explanation.parts["map"]
        text = (
            f"match score {explanation.score:.3f} (logit {ret + rest:.1f} = [Ret] {ret:.1f} + map {rest:+.1f})   |   "
            "warm = adds most"
        )
    else:
        text = (
            f"match score {explanation.score:.3f}   |   {explanation.source} map {grid}x{grid}   |   "
            "warm = strong match, lines = best links"
        )
    draw.text((6, size + 7), text, fill=(30, 30, 30), font=ImageFont.load_default())
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    """Encode a picture as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
