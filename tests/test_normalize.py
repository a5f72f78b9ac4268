"""Robust input: visible strokes of any colour, contrast, paper or polarity are accepted and become dark
strokes on white; clean drawings pass unchanged (official goldens); only drawings with no stroke are empty."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sketchfind.errors import EmptySketchError
from sketchfind.preprocess import read_sketch_rgb
from sketchfind.preprocess.normalize import (
    THICK_STROKES,
    is_clean,
    normalize_drawing,
    stroke_width,
    thin_thick_strokes,
)
from sketchfind.protocols import PERTURBATIONS, perturb

from .conftest import REFERENCE, SKETCHY

SEEN_SKETCH = sorted((SKETCHY / "sketches" / "alarm_clock").glob("*.png"))[0]  # a training class


def _ink(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(int).sum(axis=2) <= 300


def test_clean_drawings_are_returned_unchanged():
    with np.load(REFERENCE / "preprocess.npz") as data:
        for name in ("sketch_a", "sketch_b"):
            decoded = data[f"{name}_decoded_rgb"]
            assert is_clean(decoded) and normalize_drawing(decoded) is decoded
    clean = read_sketch_rgb(SEEN_SKETCH)
    assert normalize_drawing(clean) is clean


@pytest.mark.parametrize("name", ["faint_grey", "coloured_ink", "scanned_paper", "white_on_black"])
def test_perturbed_drawings_come_back_as_the_clean_drawing(name):
    clean = read_sketch_rgb(SEEN_SKETCH)
    restored = normalize_drawing(read_sketch_rgb(perturb(name, clean)))
    assert restored.dtype == np.uint8 and restored.shape == clean.shape
    a, b = _ink(clean), _ink(restored)
    assert (a & b).sum() / (a | b).sum() > 0.8  # the same strokes, dark again
    assert np.median(restored[~a]) == 255  # paper is white


def test_faint_pencil_is_accepted_by_the_pipeline():
    from sketchfind.config import PreprocessConfig
    from sketchfind.preprocess import preprocess_sketch

    faint = perturb("faint_grey", read_sketch_rgb(SEEN_SKETCH))
    assert faint.min() == 120  # the official ink rule (R+G+B <= 300) sees nothing here
    assert preprocess_sketch(faint, PreprocessConfig()).shape == (3, 224, 224)


def test_light_strokes_on_tinted_paper_are_found():
    rgb = np.full((100, 120, 3), (225, 240, 250), np.uint8)  # pale blue paper
    rgb[40:43, 10:110] = (170, 185, 195)  # a light grey-blue line
    out = normalize_drawing(rgb)
    # found along its whole length (scaled to the model's input the 3 px line is 6.7 px wide: it is thinned)
    assert _ink(out)[40:43, 12:108].any(axis=0).all() and not _ink(out)[:35].any()


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 64, 3), 255, np.uint8),  # blank
        np.full((64, 64, 3), 200, np.uint8),  # uniform grey
        np.full((64, 80, 3), (20, 120, 60), np.uint8),  # uniform colour
        np.full((64, 64, 3), 0, np.uint8),  # uniform black
        np.clip(np.random.default_rng(0).normal(236, 3, (96, 96, 3)), 0, 255).astype(np.uint8),  # noisy paper
    ],
)
def test_nothing_drawn_is_empty(image):
    with pytest.raises(EmptySketchError, match="the sketch is empty"):
        normalize_drawing(image)


def test_every_perturbation_keeps_a_drawing():
    clean = read_sketch_rgb(SEEN_SKETCH)
    for name in PERTURBATIONS:
        out = normalize_drawing(read_sketch_rgb(perturb(name, clean)))
        assert _ink(out).any(), name


def test_textured_drawings_with_official_ink_pass_unchanged():
    rng = np.random.default_rng(0)
    soft = np.clip(rng.normal(180, 40, (64, 64)), 0, 255).astype(np.uint8)  # texture everywhere, no stroke
    soft[0, 0] = 50  # but one pixel the official rule calls ink
    rgb = np.repeat(soft[:, :, None], 3, axis=2)
    assert normalize_drawing(rgb) is rgb


def _model_width(rgb: np.ndarray) -> float:
    ink = _ink(rgb)
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    return stroke_width(ink)[2] * 224 / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)


def test_marker_strokes_are_thinned_to_a_usual_width():
    clean = read_sketch_rgb(SEEN_SKETCH)
    assert _model_width(clean) <= THICK_STROKES  # a usual sketch: untouched (the test above)
    marker = perturb("thick", clean)
    assert _model_width(marker) > THICK_STROKES
    thinned = normalize_drawing(marker)
    assert _model_width(thinned) <= THICK_STROKES and _model_width(thinned) < 0.75 * _model_width(marker)
    # the same drawing: the thinned strokes lie on the marker's, and run along the clean strokes
    assert not (_ink(thinned) & ~_ink(marker)).any()
    near_clean = cv2.dilate(_ink(clean).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert (_ink(thinned) & near_clean).sum() / _ink(thinned).sum() > 0.95


def test_thinning_keeps_thin_strokes_beside_thick_ones():
    rgb = np.full((300, 300, 3), 255, np.uint8)
    for x in range(20, 200, 30):
        cv2.line(rgb, (x, 20), (x, 280), (0, 0, 0), 14)  # thick marker strokes
    cv2.line(rgb, (230, 20), (230, 280), (0, 0, 0), 2)  # one fine line beside them
    out = thin_thick_strokes(rgb)
    assert out is not rgb and _model_width(out) < _model_width(rgb)
    assert _ink(out)[22:279, 229:232].any(axis=1).all()  # the fine line is whole
    assert _ink(out)[22:279, 20].all()  # each thick stroke keeps its centre line
