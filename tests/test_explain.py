"""Explanations: the heat-maps come from the pair's own score computation and render as readable PNGs."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import sketchfind
from sketchfind import search as search_module
from sketchfind.explain import DISPLAY_SIZE, colorize, explain, explain_tokens, png_bytes
from sketchfind.models import create_model
from sketchfind.preprocess import preprocess_photo, sketch_array, to_tensor

from .conftest import SKETCHY

SKETCH = sorted((SKETCHY / "sketches" / "airplane").glob("*.png"))[0]
PHOTO = sorted((SKETCHY / "photos" / "airplane").glob("*.jpg"))[0]


@pytest.fixture()
def linear_model():
    """zse-tiny with the per-token ("linear") relation head, as zse-lite0 has: spatial anchors."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(sketchfind.get_model_config("zse-tiny"), downsample="linear", rn_hidden=(32, 8))
    return create_model(cfg).eval()


def _tokens(model, sketch, photo):
    cfg = model.cfg.preprocess
    squared = sketch_array(sketch, cfg)
    with torch.inference_mode():
        sketch_tokens = model.encode_sketch(to_tensor(squared, cfg)[None])
        photo_tokens = model.encode_photo(preprocess_photo(photo, cfg)[None])
    return squared, sketch_tokens, photo_tokens


@pytest.mark.parametrize("which", ["tiny_model", "linear_model"])
def test_explanation_is_the_pairs_own_score_and_map(which, request):
    model = request.getfixturevalue(which)
    squared, sketch_tokens, photo_tokens = _tokens(model, SKETCH, PHOTO)
    explanation = explain_tokens(model, sketch_tokens, photo_tokens, squared)

    # the score shown is the relation score the re-ranker computes for the same pair
    with torch.inference_mode():
        expected = float(model.relation_scores(sketch_tokens, photo_tokens)[0, 0])
    assert explanation.score == pytest.approx(expected, abs=1e-5)

    if which == "linear_model":  # anchors are tokens: the map is the relation head's cosine map itself
        assert explanation.source == "cosine"
        with torch.inference_mode():
            sketch_ca, photo_ca = model.cross(sketch_tokens, photo_tokens)
            cos = model.relation.cosine_map(model.relation.downsample(sketch_ca), model.relation.downsample(photo_ca))
        np.testing.assert_allclose(explanation.matrix, cos[0].numpy(), atol=1e-6)
    else:  # the official conv2x2 head's anchors mix all regions: cross-attention between patch tokens instead
        assert explanation.source == "cross-attention"
        rows = explanation.matrix.sum(axis=1)
        assert np.all(rows > 0) and explanation.matrix.min() >= 0
    cells = model.cfg.grid**2
    assert explanation.matrix.shape == (cells, cells)
    for heat in (explanation.sketch_heat, explanation.photo_heat):
        assert heat.shape == (model.cfg.grid, model.cfg.grid)
        assert heat.min() == pytest.approx(0) and heat.max() == pytest.approx(1)
    # each link is a sketch cell's best photo cell
    for sketch_cell, photo_cell, strength in explanation.links:
        assert photo_cell == int(explanation.matrix[sketch_cell].argmax())
        assert 0 <= strength <= 1


def test_links_start_only_where_the_sketch_has_ink(linear_model):
    canvas = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(canvas).ellipse([20, 20, 110, 110], outline="black", width=4)  # ink in the top-left only
    canvas_arr = np.asarray(canvas)
    squared, sketch_tokens, photo_tokens = _tokens(linear_model, canvas_arr, PHOTO)
    # crop-to-ink makes the circle fill the square: check against the model's own view of the sketch
    explanation = explain_tokens(linear_model, sketch_tokens, photo_tokens, squared)
    grid, size = explanation.grid, squared.shape[0]
    ink = squared.sum(axis=2) <= 300

    def cell_ink(cell):
        row, col = divmod(cell, grid)
        rows = slice(row * size // grid, (row + 1) * size // grid + 1)
        return ink[rows, col * size // grid : (col + 1) * size // grid + 1].any()

    blank = [cell for cell in range(grid * grid) if not cell_ink(cell)]
    assert blank and all(explanation.sketch_heat.flat[cell] == 0 for cell in blank)  # blank paper stays cold
    for sketch_cell, _, _ in explanation.links:
        row, col = divmod(sketch_cell, grid)
        rows = slice(row * size // grid, (row + 1) * size // grid + 1)
        block = ink[rows, col * size // grid : (col + 1) * size // grid + 1]
        assert block.any(), f"link from cell {sketch_cell} which holds no ink"


def test_rendered_overlays(tiny_model):
    wide = Image.open(PHOTO).convert("RGB").resize((300, 150))  # not square: the overlay keeps its aspect
    explanation, images = explain(tiny_model, SKETCH, wide)
    assert images["sketch"].size == (DISPLAY_SIZE, DISPLAY_SIZE)
    assert images["photo"].size == (DISPLAY_SIZE, DISPLAY_SIZE // 2)
    combined = Image.open(io.BytesIO(png_bytes(images["combined"])))
    assert combined.format == "PNG" and combined.width > 2 * DISPLAY_SIZE
    # the heat wash is visible: the overlay is coloured, not the grey photo / black-on-white sketch
    sketch_rgb = np.asarray(images["sketch"]).astype(int)
    assert (sketch_rgb.max(axis=2) - sketch_rgb.min(axis=2)).mean() > 10
    # hottest sketch cell is rendered in the hot colour
    assert tuple(colorize(np.array([1.0]))[0]) == (230, 30, 20)
    assert 0 < explanation.score < 1


def test_explain_command_writes_a_png(tmp_path, tiny_model):
    from sketchfind.cli import app
    from sketchfind.models.factory import save_weights

    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny_model, weights)
    out = tmp_path / "why.png"
    result = CliRunner().invoke(app, ["explain", str(SKETCH), str(PHOTO), "--out", str(out), "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    assert "match score" in result.output
    assert Image.open(out).format == "PNG"

    bad = CliRunner().invoke(app, ["explain", str(tmp_path / "missing.png"), str(PHOTO), "--weights", str(weights)])
    assert bad.exit_code == 1 and "not found" in bad.output


@pytest.fixture(scope="module")
def lite_index(tmp_path_factory):
    """The shipped zse-lite0 on a small real index: airplanes, cups and swans."""
    from sketchfind.index import build_index

    from .index_helpers import copy_photos

    root = tmp_path_factory.mktemp("explain-lite")
    copy_photos(root / "photos", classes=("airplane", "cup", "swan"), per_class=5)
    model = sketchfind.load_model()
    build_index([root / "photos"], root / "idx", model, runtime="torch", label_from_folder=True)
    return root / "idx", model


def test_ann_explains_the_similarity_it_ranked_by(lite_index):
    """ann's score is the [Ret] cosine of the expanded query: the explanation splits that very number over
    the photo's cells (they add up to it), so the heat shows where the photo holds what was matched. With the
    neighbour augmentation the score also counts the photo's nearest photos: the cells hold the photo's own
    part, its cosine with the query the augmented head was scored with."""
    index, model = lite_index
    with sketchfind.Searcher.open(index, model, runtime="torch", dba_top=0) as searcher:
        hits = searcher.search(SKETCH, k=3, strategy="ann").hits
        explanation, images = searcher.explain(SKETCH, hits[0].photo_id)
        assert explanation.source == "ret" and explanation.grid == 7
        assert explanation.score == pytest.approx(hits[0].score, abs=0.01)  # the index keeps [Ret] quantised
        assert explanation.matrix.sum() == pytest.approx(explanation.score, abs=1e-5)
        assert explanation.photo_heat.max() == 1 and explanation.sketch_heat.max() == 1
        assert set(images) == {"sketch", "photo", "combined"}
        relation, _ = searcher.explain(SKETCH, hits[0].photo_id, strategy="exhaustive")
        assert relation.source == "relation" and 0 < relation.score < 1  # the relation network's score, split
        best = searcher.search(SKETCH, k=1, strategy="exhaustive").hits[0]
        shown, _ = searcher.explain(SKETCH, best.photo_id, strategy="exhaustive")
        assert shown.score == pytest.approx(best.score, abs=0.01)  # the number the page shows beside the photo
    with sketchfind.Searcher.open(index, model, runtime="torch") as augmented:
        hit = augmented.search(SKETCH, k=3, strategy="ann").hits[0]
        own, _ = augmented.explain(SKETCH, hit.photo_id)
        _, _, scored = search_module.ann_ranking(
            augmented.state, augmented.encode_query(SKETCH), augmented.settings.rank, 1
        )
        photo_ret = augmented.state.ret_embeddings(np.flatnonzero(augmented.state.snapshot.ids == hit.photo_id))[0]
        assert own.score == pytest.approx(float(photo_ret @ scored), abs=0.01)
        assert own.matrix.sum() == pytest.approx(own.score, abs=1e-5)


def test_the_ret_heat_points_at_the_drawn_object(lite_index):
    """Sketchy drawings overlay the photo they were drawn from: the hottest photo cell should lie under ink."""
    from sketchfind.explain import explain_ret
    from sketchfind.preprocess import read_photo, read_sketch_rgb
    from sketchfind.protocols import ink_cells

    _, model = lite_index
    hits = 0
    pairs = [(c, p) for c in ("airplane", "cup", "swan", "horse", "teapot") for p in _first_sketched_photos(c, 2)]
    for cls, photo in pairs:
        sketch = SKETCHY / "sketches" / cls / f"{photo.stem}-1.png"
        explanation = explain_ret(model, sketch_array(sketch, model.cfg.preprocess), read_photo(photo).convert("RGB"))
        inked = ink_cells(read_sketch_rgb(sketch), explanation.grid, model.cfg.preprocess.ink_threshold)
        hits += bool(inked.ravel()[int(explanation.photo_heat.argmax())])
    assert hits >= 0.7 * len(pairs)  # the relation head's cosine map scored 0.11 on the same kind of pairs


def _first_sketched_photos(cls: str, n: int):
    return [
        p
        for p in sorted((SKETCHY / "photos" / cls).glob("*.jpg"))
        if (SKETCHY / "sketches" / cls / f"{p.stem}-1.png").is_file()
    ][:n]


def test_the_relation_explanation_splits_the_score_it_ranked_by(lite_index):
    """exhaustive / clustered rank by the relation logit = w x [Ret] cosine + MLP(cosine map): the explanation's
    two parts add up to that logit (computed independently by relation_scores), the [Ret] part is w times the
    pair's [Ret] cosine, and the photo heat lies on the drawn object (Sketchy drawings overlay their photo)."""
    from sketchfind.explain import explain_relation
    from sketchfind.models.zse import relation_probability, score_calibration
    from sketchfind.preprocess import read_photo, read_sketch_rgb
    from sketchfind.protocols import ink_cells

    _, model = lite_index
    hits = 0
    pairs = [(c, p) for c in ("airplane", "cup", "swan", "horse", "teapot") for p in _first_sketched_photos(c, 2)]
    for cls, photo in pairs:
        sketch = SKETCHY / "sketches" / cls / f"{photo.stem}-1.png"
        squared = sketch_array(sketch, model.cfg.preprocess)
        explanation = explain_relation(model, squared, read_photo(photo).convert("RGB"))
        with torch.inference_mode():
            sketch_tokens = model.encode_sketch(to_tensor(squared, model.cfg.preprocess)[None])
            photo_tokens = model.encode_photo(preprocess_photo(photo, model.cfg.preprocess)[None])
            logit = float(model.relation_scores(sketch_tokens, photo_tokens, logits=True)[0, 0])
            ret_cos = float(model.ret_cosine(sketch_tokens, photo_tokens)[0])
        parts = explanation.parts
        assert parts["ret"] + parts["map"] == pytest.approx(logit, abs=1e-3)
        assert parts["ret"] == pytest.approx(float(model.relation.out.weight[0, -1].detach()) * ret_cos, abs=1e-3)
        shown = relation_probability(logit, score_calibration(model.weights_metadata))
        assert explanation.score == pytest.approx(float(shown), abs=1e-4)
        assert explanation.source == "relation" and explanation.photo_heat.max() == pytest.approx(1)
        inked = ink_cells(read_sketch_rgb(sketch), explanation.grid, model.cfg.preprocess.ink_threshold)
        hits += bool(inked.ravel()[int(explanation.photo_heat.argmax())])
    assert hits >= 0.7 * len(pairs)  # the relation head's cosine map alone: 0.32 on unseen-25 (bench_pointing)


def test_platt_scaling_recovers_a_logistic_model():
    from sketchfind.models.zse import fit_score_calibration

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 8, 20000)
    same = rng.random(20000) < 1 / (1 + np.exp(-(0.3 * logits - 2.0)))
    scale, shift = fit_score_calibration(logits, same)
    assert scale == pytest.approx(0.3, abs=0.02) and shift == pytest.approx(-2.0, abs=0.1)
    with pytest.raises(ValueError, match="both kinds"):
        fit_score_calibration(logits, np.zeros_like(same))


def test_relation_strategies_show_calibrated_scores(lite_index):
    """The shipped head puts good matches at logits of 10-25, where its own sigmoid reads 1.000 for every one of
    them: exhaustive and clustered show sigmoid(scale x logit + shift), fitted on the validation classes, in the
    same order."""
    from sketchfind.models.zse import relation_probability, score_calibration

    index, model = lite_index
    calibration = score_calibration(model.weights_metadata)
    assert calibration != (1.0, 0.0) and calibration[0] > 0
    with sketchfind.Searcher.open(index, model, runtime="torch") as searcher:
        query = searcher.encode_query(SKETCH)
        state = searcher.state
        with torch.inference_mode():
            logits = state.relation_logits(query, state.tokens(np.arange(len(state.snapshot))))
        for strategy in ("exhaustive", "clustered"):
            hits = searcher.search(SKETCH, k=5, strategy=strategy).hits
            scores = np.array([h.score for h in hits])
            assert np.all(np.diff(scores) <= 0) and scores[0] < 0.999  # ordered, not all pinned at 1.000
        hits = searcher.search(SKETCH, k=None, strategy="exhaustive").hits
        where = [int(np.flatnonzero(state.snapshot.ids == h.photo_id)[0]) for h in hits]
        expected = relation_probability(logits[where], calibration)
        np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5, atol=1e-6)
        assert relation_probability(logits, (1.0, 0.0)).max() > 0.9999  # the uncalibrated sigmoid: saturated
