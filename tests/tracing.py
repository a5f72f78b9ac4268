"""Turn a raster sketch (a sketchy-mini PNG) into pen strokes a test can draw on the page's canvas.

Ink pixels are thinned to one-pixel lines (Zhang-Suen) and walked into polylines, so a browser test
draws the sketch as a person would: one pointer-down / move / up per stroke.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_OFFSETS = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]  # 4-neighbours first


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image (vectorised; a few dozen passes for a 256 px sketch)."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = [
                np.roll(np.roll(img, -dy, 0), -dx, 1)
                for dy, dx in [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
            ]  # P2..P9
            neighbours = sum(p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.uint8) for i in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if step == 0:
                keep_rule = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                keep_rule = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (img == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & keep_rule
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _walks(skeleton: np.ndarray) -> list[list[tuple[int, int]]]:
    """Polylines (lists of (x, y)) covering every skeleton pixel, starting at line ends."""
    pixels = set(zip(*np.nonzero(skeleton), strict=True))

    def neighbours(y, x):
        return [(y + dy, x + dx) for dy, dx in _OFFSETS if (y + dy, x + dx) in pixels]

    ends = sorted(p for p in pixels if len(neighbours(*p)) == 1)
    visited: set = set()
    walks = []
    for start in ends + sorted(pixels):
        if start in visited:
            continue
        walk, current = [start], start
        visited.add(start)
        while True:
            nxt = next((n for n in neighbours(*current) if n not in visited), None)
            if nxt is None:
                break
            visited.add(nxt)
            walk.append(nxt)
            current = nxt
        walks.append([(x, y) for y, x in walk])
    return walks


def sketch_strokes(path: str | Path, canvas_size: int = 512, min_length: int = 3) -> list[list[tuple[float, float]]]:
    """Strokes in canvas pixels (the sketch scaled to fill a ``canvas_size`` square canvas)."""
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f"cannot read {path}")
    scale = canvas_size / max(gray.shape)
    strokes = []
    for walk in _walks(thin(gray < 160)):
        if len(walk) < min_length:
            continue
        points = cv2.approxPolyDP(np.array(walk, np.float32)[:, None, :], 0.7, False)[:, 0, :]
        strokes.append([(float(x + 0.5) * scale, float(y + 0.5) * scale) for x, y in points])
    return strokes


def render_strokes_like_canvas(strokes, size: int = 512, width: int = 5) -> np.ndarray:
    """What the page's canvas holds after drawing ``strokes`` with the pen (black on white, round caps)."""
    canvas = np.full((size, size, 3), 255, np.uint8)
    for stroke in strokes:
        pts = np.round(np.array(stroke)).astype(np.int32)
        cv2.polylines(canvas, [pts], False, (0, 0, 0), width, lineType=cv2.LINE_AA)
    return canvas
