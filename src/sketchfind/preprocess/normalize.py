"""Robust sketch input: any drawing with visible strokes becomes dark strokes on white paper.

The official pipeline finds ink with a fixed rule (R+G+B <= 300), so a pencil drawing whose darkest grey is
above 100, a scan on cream paper or chalk on a blackboard is refused or seen wrongly. :func:`normalize_drawing`
runs first and brings such drawings to the form the model was trained on:

1. **polarity**: light strokes on a dark background (border mostly dark) are inverted;
2. **background**: the paper is estimated locally (a closing wider than any stroke), so off-white, tinted and
   unevenly lit paper all become white; ink is how much darker than the paper a pixel is, in its darkest
   channel (coloured ink counts as much as black);
3. **strokes**: pixels clearly above the paper's noise (robust sigma) and a minimum contrast are ink; specks
   smaller than a few pixels are dropped; no stroke left -> :class:`~sketchfind.errors.EmptySketchError`;
4. **contrast**: the strongest ink is stretched to black, the paper to white (grey antialiasing kept).

5. **thickness** (:func:`thin_thick_strokes`): strokes much thicker than the training sketches' (a marker, a
   thick pen) are thinned towards a typical width, keeping each stroke's centre line so thin parts survive.

Position and scale are then handled by the official crop-to-ink. Clean drawings (grey, paper exactly white,
darkest ink already near black, strokes of a usual width) are returned unchanged, so the official goldens still
hold; so is a drawing in which no stroke stands out from its own texture but the official rule finds ink (e.g. a
soft HED edge map). Thresholds were chosen on seen classes only (sketchy-mini validation classes,
quickdraw-mini/train); plain erosion of thick drawings was tried there too and lost (it erases thin strokes).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import EmptySketchError, InputError

MIN_CONTRAST = 24.0  # ink must be at least this much darker than the paper (0..255)
NOISE_SIGMAS = 6.0  # ... and this many noise sigmas of the paper
DARK_ENOUGH = 60  # a clean drawing's darkest pixel is at most this grey (no stretch needed)
STRONG_INK_PERCENTILE = 90  # the ink level mapped to black
OFFICIAL_INK = 300  # R+G+B at or below this is ink for the official pipeline (PreprocessConfig.ink_threshold)
MIN_SPECK_FRACTION = 1 / 20000  # connected ink smaller than this share of the image (>= 3 px) is noise
# Stroke width, in pixels of the model's input (the drawing's ink scaled to MODEL_SIDE): measured as twice the
# distance to the paper along the strokes' centre lines, 25th percentile (thin strokes decide, so filled areas
# and hatching of a normal drawing do not). Sketchy's training sketches: median 3.7, 90% below 6.3; the page's
# pen: 3.8; a 5x5 marker over a Sketchy sketch: median 9.2, 95% above 6.7. Chosen on the validation classes.
THICK_STROKES = 6.5  # thicker than this -> thinned
THIN_TO = 4.0  # ... to about this width
MODEL_SIDE = 224  # the models' input side (PreprocessConfig.image_size of every shipped config)


def normalize_drawing(rgb: np.ndarray, name: str = "the sketch") -> np.ndarray:
    """uint8 (H, W, 3) drawing -> uint8 (H, W, 3) dark strokes on white; the input itself when already clean.

    Raises EmptySketchError only when nothing is drawn (a blank, uniform or noise-only image)."""
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise InputError(f"{name}: expected a uint8 HxWx3 RGB array")
    if is_clean(rgb):
        return thin_thick_strokes(rgb)
    darkness = ink_darkness(rgb)
    ink = stroke_mask(darkness)
    if not ink.any():
        level = rgb.astype(np.int32).sum(axis=2)
        if (level <= OFFICIAL_INK).any() and np.ptp(level) > 3 * MIN_CONTRAST:
            return rgb  # busy, textured drawings (e.g. soft edge maps): the official ink rule decides, as before
        raise EmptySketchError(f"the sketch is empty: no visible stroke in {name}")
    strong = float(np.percentile(darkness[ink], STRONG_INK_PERCENTILE))
    floor = _floor(darkness)
    scaled = np.clip((darkness - floor) / max(strong - floor, 1.0), 0.0, 1.0)
    gray = np.round(255.0 * (1.0 - scaled)).astype(np.uint8)
    return thin_thick_strokes(np.repeat(gray[:, :, None], 3, axis=2))


def stroke_width(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(H, W) bool ink -> (distance to the paper of every pixel, centre-line mask, stroke width in pixels).

    The centre lines are the ridges of the distance transform (pixels at least as far from the paper as their
    8 neighbours); the width is twice their distance, 25th percentile."""
    distance = cv2.distanceTransform(ink.astype(np.uint8), cv2.DIST_L2, 5)
    ridge = ink & (distance >= cv2.dilate(distance, np.ones((3, 3), np.uint8)))
    width = 2.0 * float(np.percentile(distance[ridge], 25)) if ridge.any() else 0.0
    return distance, ridge, width


def thin_thick_strokes(rgb: np.ndarray) -> np.ndarray:
    """Dark strokes on white -> the same drawing, with strokes thinned to about THIN_TO pixels of the model's
    input when they are thicker than THICK_STROKES there; otherwise ``rgb`` itself.

    Thinning keeps the ink farther from the paper than half the excess width, plus every centre-line pixel,
    so a thin stroke beside a thick one is not erased (as plain erosion would)."""
    # (np.minimum over the channels: ~30x faster than rgb.min(axis=2), which reduces a stride-3 axis)
    ink = np.minimum(np.minimum(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2]) < 128
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    if not len(rows):
        return rgb
    scale = MODEL_SIDE / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)  # what the crop-to-ink resize does
    distance, ridge, width = stroke_width(ink)
    if width * scale <= THICK_STROKES:
        return rgb
    keep = (distance > (width - THIN_TO / scale) / 2) | ridge
    return np.where(keep[:, :, None], rgb, np.uint8(255))


def is_clean(rgb: np.ndarray) -> bool:
    """Grey, white paper (border median 255) and near-black ink: what the official pipeline expects."""
    r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    if not (np.array_equal(r, g) and np.array_equal(g, b)):
        return False
    return int(np.median(_border(r))) == 255 and int(r.min()) <= DARK_ENOUGH


def ink_darkness(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float: how much darker than the local paper each pixel is, in its darkest channel (0..255)."""
    image = rgb.astype(np.float32)
    if np.median(_border(image.mean(axis=2))) < 128:  # light strokes on a dark background
        image = 255.0 - image
    side = max(7, (max(image.shape[:2]) // 8) | 1)  # wider than any stroke: strokes vanish, paper stays
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    paper = cv2.morphologyEx(image, cv2.MORPH_CLOSE, kernel)
    paper = cv2.blur(paper, (side, side))  # smooth the estimate; max() below keeps it above the image
    paper = np.maximum(paper, cv2.dilate(image, np.ones((3, 3), np.uint8)))
    return np.clip(paper - image, 0, None).max(axis=2)


def stroke_mask(darkness: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels clearly darker than the paper, without isolated specks."""
    ink = (darkness > _floor(darkness)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    min_area = max(3, round(darkness.size * MIN_SPECK_FRACTION))
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def _floor(darkness: np.ndarray) -> float:
    """The darkness a pixel must exceed to be ink: the paper's median + NOISE_SIGMAS robust sigmas, at least
    MIN_CONTRAST."""
    median = float(np.median(darkness))
    sigma = 1.4826 * float(np.median(np.abs(darkness - median)))
    return max(MIN_CONTRAST, median + NOISE_SIGMAS * sigma)


def _border(channel: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels (about 2% of the side) of an (H, W) array, flattened."""
    h, w = channel.shape[:2]
    m = max(1, min(h, w) // 50)
    return np.concatenate([channel[:m].ravel(), channel[-m:].ravel(), channel[:, :m].ravel(), channel[:, -m:].ravel()])
