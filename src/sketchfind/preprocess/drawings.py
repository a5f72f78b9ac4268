"""Drawings as sketches: QuickDraw stroke lists and SVG files, rendered black on white RGB images."""

from __future__ import annotations

import io
import json
import math
import re
import time
import traceback
from typing import Any

import numpy as np
import svgelements as se
from PIL import Image, ImageChops, ImageDraw

from ..errors import EmptySketchError, InputError, TooComplexError

SVG_MIN_SIDE, SVG_MAX_SIDE = 256, 1024  # an SVG is rendered with its longer side in this range
_BLACK, _WHITE = (0, 0, 0), (255, 255, 255)

# The budget of one drawing. Checked on the raw text before parsing (bytes, elements, numbers: what the
# SVG parser's time grows with), then while flattening and drawing (points, path length, seconds), so a
# hostile drawing costs at most about a second and fails with a TooComplexError that names the limit.
MAX_SVG_BYTES = 2 * 2**20
MAX_SVG_ELEMENTS = 10_000  # tags
MAX_SVG_NUMBERS = 50_000  # numbers in the text: coordinates, lengths, path parameters
MAX_DRAWING_POINTS = 200_000  # polyline points after curves are sampled, or stroke points
MAX_PATH_LENGTH = 20_000_000  # total length of the drawn lines, in canvas pixels
MAX_COORDINATE = 1e7  # |x|, |y| of a stroke point
DRAWING_SECONDS = 3.0  # wall-clock budget for parsing + rasterising one drawing
DRAWING_LIMITS = {
    "svg_bytes": MAX_SVG_BYTES,
    "svg_elements": MAX_SVG_ELEMENTS,
    "svg_numbers": MAX_SVG_NUMBERS,
    "points": MAX_DRAWING_POINTS,
    "path_length_px": MAX_PATH_LENGTH,
    "stroke_coordinate": MAX_COORDINATE,
    "seconds": DRAWING_SECONDS,
}
_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class _Budget:
    """Counts points and path length and watches the clock while one drawing is rasterised."""

    def __init__(self, name: str):
        self.name, self.points, self.length = name, 0, 0.0
        self.deadline = time.monotonic() + DRAWING_SECONDS

    def add(self, points: list[tuple[float, float]]) -> None:
        self.points += len(points)
        if self.points > MAX_DRAWING_POINTS:
            raise TooComplexError(f"{self.name} is too complex: more than {MAX_DRAWING_POINTS:,} points")
        if len(points) > 1:
            xy = np.asarray(points, dtype=np.float64)
            self.length += float(np.hypot(*np.diff(xy, axis=0).T).sum())
        if not self.length <= MAX_PATH_LENGTH:
            raise TooComplexError(
                f"{self.name} is too complex: its lines are longer than {MAX_PATH_LENGTH:,} pixels in total"
            )
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TooComplexError(f"{self.name} is too complex: drawing it takes more than {DRAWING_SECONDS:g} s")


def render_strokes(strokes: list, size: int = 256, line_width: int = 3) -> Image.Image:
    """Draw QuickDraw strokes ``[[xs], [ys](, [ts])]`` black on a white RGB canvas, fitted with a margin."""
    if size < 8 or line_width < 1:
        raise ValueError(f"need size >= 8 and line_width >= 1, got size={size}, line_width={line_width}")
    lines = _validate_strokes(strokes, "the stroke list")
    points = np.concatenate(lines)
    budget = _Budget("the stroke list")
    low, span = points.min(axis=0), np.ptp(points, axis=0)
    margin = max(line_width, size // 16)
    scale = (size - 2 * margin) / span.max() if span.max() > 0 else 1.0
    offset = (size - span * scale) / 2 - low * scale  # centre the drawing
    canvas = Image.new("RGB", (size, size), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for line in lines:
        polyline = [tuple(p) for p in line * scale + offset]
        budget.add(polyline)
        _draw_polyline(draw, polyline, line_width, _BLACK)
    return canvas


def render_svg(data: bytes | str, name: str = "the SVG") -> Image.Image:
    """Rasterise an SVG drawing (shapes, transforms, stroke widths) to an RGB image, ink black on white,
    within the drawing budget (``DRAWING_LIMITS``)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    _check_svg_text(raw, name)
    budget = _Budget(name)
    svg = _parse_svg(raw)
    budget.check_time()
    width, height = float(svg.width or 0), float(svg.height or 0)
    if not (width > 0 and height > 0 and math.isfinite(width * height)):
        raise InputError(f"malformed SVG: the drawing has no usable size ({svg.width} x {svg.height})")
    # Render at the document's own size (like a PNG export of the same canvas), within sane bounds.
    scale = min(max(max(width, height), SVG_MIN_SIDE), SVG_MAX_SIDE) / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", size, _WHITE)
    for element in svg.elements():
        if isinstance(element, se.Shape):
            _draw_shape(canvas, element, scale, budget)
    return canvas


def _check_svg_text(raw: bytes, name: str) -> None:
    """Refuse SVG text whose parsing alone would be too slow: too long, too many tags or numbers."""
    counts = (
        ("bytes", MAX_SVG_BYTES, lambda: len(raw)),
        ("elements", MAX_SVG_ELEMENTS, lambda: raw.count(b"<")),
        ("numbers", MAX_SVG_NUMBERS, lambda: sum(1 for _ in _NUMBER.finditer(raw))),
    )
    for what, limit, count_of in counts:  # cheapest first: a 4 MB file is refused without a regex pass
        count = count_of()
        if count > limit:
            raise TooComplexError(f"{name} is too complex: more than {limit:,} {what} (it has {count:,})")


# ----------------------------------------------------------------------------- strokes


def parse_strokes_json(data: bytes, name: str) -> list:
    """Stroke list from JSON / NDJSON text: a raw list, or an object with a "drawing" key (first line)."""
    try:
        text = data.decode("utf-8-sig")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            # NDJSON (one QuickDraw drawing per line): take the first drawing.
            first = next((line for line in text.splitlines() if line.strip()), "")
            obj = json.loads(first)
    except (UnicodeDecodeError, ValueError) as err:  # ValueError: JSONDecodeError, or an int of 4,300+ digits
        raise InputError(f"malformed strokes JSON in {name}: {err}") from err
    except RecursionError:
        raise InputError(f"malformed strokes JSON in {name}: nested too deeply") from None
    return strokes_from_object(obj, name)


def strokes_from_object(obj: Any, name: str) -> list:
    """A validated stroke list from a raw list or a QuickDraw record (an object with a "drawing" key)."""
    if isinstance(obj, dict):
        if "drawing" not in obj:
            raise InputError(f"malformed strokes JSON in {name}: an object needs a 'drawing' key")
        obj = obj["drawing"]
    if not isinstance(obj, list):
        raise InputError(f"malformed strokes in {name}: expected a list of strokes")
    _validate_strokes(obj, name)
    return obj


def _validate_strokes(strokes: Any, name: str) -> list[np.ndarray]:
    """Each stroke as an (N, 2) float array of finite points; strokes without points are dropped."""
    if not isinstance(strokes, list | tuple):
        raise InputError(f"malformed strokes in {name}: expected a list of strokes")
    total = sum(
        len(s[0]) if isinstance(s, list | tuple) and s and isinstance(s[0], list | tuple) else 0 for s in strokes
    )
    if total > MAX_DRAWING_POINTS or len(strokes) > MAX_DRAWING_POINTS:
        raise TooComplexError(f"{name} is too complex: more than {MAX_DRAWING_POINTS:,} points")
    lines = [_stroke_points(stroke, index, name) for index, stroke in enumerate(strokes)]
    lines = [line for line in lines if len(line)]
    if not lines:
        raise EmptySketchError(f"the sketch is empty: {name} has no points")
    return lines


def _stroke_points(stroke: Any, index: int, name: str) -> np.ndarray:
    bad = f"malformed strokes in {name}: stroke {index} must be [[x0, x1, ...], [y0, y1, ...]]"
    if not isinstance(stroke, list | tuple) or len(stroke) not in (2, 3):
        raise InputError(bad)
    xs, ys = stroke[0], stroke[1]
    if not (isinstance(xs, list | tuple) and isinstance(ys, list | tuple) and len(xs) == len(ys)):
        raise InputError(bad + " with equally long lists of numbers")
    for value in (*xs, *ys):  # numbers only: no strings, booleans, nulls; finite and bounded
        if type(value) not in (int, float) or not -MAX_COORDINATE <= value <= MAX_COORDINATE:
            raise InputError(
                bad + f" with numbers between {-MAX_COORDINATE:g} and {MAX_COORDINATE:g}, got {value!r:.40}"
            )
    return np.array([xs, ys], dtype=np.float64).T.reshape(-1, 2)


def _draw_polyline(draw: ImageDraw.ImageDraw, points: list, width: float, color: tuple) -> None:
    """Polyline with round joins and caps; a single point becomes a dot."""
    width = max(1, round(width))
    if len(points) > 1:
        draw.line(points, fill=color, width=width, joint="curve")
    radius = width / 2
    for x, y in {points[0], points[-1]}:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
        draw.point((x, y), fill=color)  # Pillow draws nothing for sub-pixel ellipses


# ----------------------------------------------------------------------------- SVG


def _parse_svg(raw: bytes) -> se.SVG:
    try:
        svg = se.SVG.parse(io.BytesIO(raw))
    except Exception as err:  # ParseError, ValueError...: the text is not a usable SVG
        # the parser's frames hold what it expanded (an entity bomb: tens of MB) in a reference cycle that
        # only the garbage collector would free: cleared here, and the error raised without them
        message = f"malformed SVG: {err}"
        traceback.clear_frames(err.__traceback__)
    else:
        if not isinstance(svg, se.SVG):
            raise InputError("malformed SVG: no <svg> root element")
        return svg
    raise InputError(message)


def _draw_shape(canvas: Image.Image, shape: se.Shape, scale: float, budget: _Budget) -> None:
    """Fill then stroke one shape (transforms already applied by svgelements), in binary ink."""
    subpaths = []
    try:
        for sub in se.Path(shape).as_subpaths():
            points = _flatten_subpath(sub, scale)
            budget.add(points)
            if points:
                subpaths.append(points)
    except TooComplexError:
        raise
    except Exception as err:  # degenerate geometry deep inside svgelements
        raise InputError(f"malformed SVG: cannot draw a {type(shape).__name__}: {err}") from err
    if not subpaths:
        return
    fill = _ink(shape.fill)
    if fill is not None:
        _fill_evenodd(canvas, subpaths, fill, budget)
    stroke = _ink(shape.stroke)
    if stroke is not None:
        # wider than the canvas draws the same pixels: the clamp keeps a hostile width from costing more
        width = min((shape.implicit_stroke_width or 1.0) * scale, 2.0 * max(canvas.size))
        draw = ImageDraw.Draw(canvas)
        for points in subpaths:
            _draw_polyline(draw, points, width, stroke)
            budget.check_time()


def _flatten_subpath(subpath: Any, scale: float) -> list[tuple[float, float]]:
    """Segments of one subpath as a polyline in canvas pixels (curves sampled at 32 points)."""
    points: list[tuple[float, float]] = []
    for segment in subpath:
        if isinstance(segment, se.Move | se.Line | se.Close):
            ends = [segment.end]
        else:
            ends = [se.Point(*xy) for xy in segment.npoint(np.linspace(0, 1, 33)[1:])]
        points.extend((float(p.x) * scale, float(p.y) * scale) for p in ends if p is not None)
    return points


def _fill_evenodd(canvas: Image.Image, subpaths: list, color: tuple, budget: _Budget) -> None:
    """Fill closed subpaths with the even-odd rule (so holes stay open)."""
    mask = Image.new("1", canvas.size, 0)
    for points in subpaths:
        if len(points) < 3:
            continue
        layer = Image.new("1", canvas.size, 0)
        ImageDraw.Draw(layer).polygon(points, fill=1)
        mask = ImageChops.logical_xor(mask, layer)
        budget.check_time()
    canvas.paste(color, mask=mask)


def _ink(color: se.Color | None) -> tuple | None:
    """Binary ink for a paint: None for no paint, white for near-white paint, black otherwise."""
    if color is None or color.value is None or color.alpha == 0:
        return None
    luminance = 0.299 * color.red + 0.587 * color.green + 0.114 * color.blue
    return _WHITE if luminance >= 230 else _BLACK  # white paint (backgrounds, erasers) stays white
