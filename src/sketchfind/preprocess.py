"""Turn sketches and photos into model tensors: the one source of truth for preprocessing.

Parity with the official ZSE-SBIR code (``data_utils/utils.py`` ``preprocess``), checked against the
goldens in ``shared/reference/zse-sbir/preprocess.npz``:

* **sketch**: decode to 8-bit RGB like ``cv2.imread`` -> ink = pixels with R+G+B <= ``ink_threshold``
  -> crop the ink bounding box with ``sketch_margin`` -> aspect resize with ``cv2.resize`` (INTER_LINEAR)
  -> pad to a square with the image's maximum -> ToTensor / Normalize.
* **photo**: Pillow ``resize((S, S))`` with Pillow's default filter, then ``convert('RGB')``.

Deliberate improvements that leave the goldens unchanged: images with transparency are composited
onto white (a transparent PNG with black strokes stays black on white instead of turning all black),
photos follow their EXIF orientation, and every failure is a :mod:`sketchfind.errors` exception that
names the input. Sketches may also be QuickDraw stroke lists or SVG drawings, rendered black on white.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import svgelements as se
import torch
from PIL import Image, ImageChops, ImageDraw, ImageOps, UnidentifiedImageError

from .config import PreprocessConfig
from .errors import ConfigError, EmptySketchError, InputError
from .normalize import normalize_drawing

MAX_PIXELS = 40_000_000  # larger images are refused before their pixels are decoded
MAX_FILE_BYTES = 256 * 2**20  # larger files are refused before they are read
SVG_MIN_SIDE, SVG_MAX_SIDE = 256, 1024  # an SVG is rendered with its longer side in this range
RASTER_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_BLACK, _WHITE = (0, 0, 0), (255, 255, 255)


# ----------------------------------------------------------------------------- public API


def preprocess_sketch(source: Any, cfg: PreprocessConfig) -> torch.Tensor:
    """Any accepted sketch source -> normalised float32 tensor (3, S, S), official sketch pipeline."""
    return to_tensor(sketch_array(source, cfg), cfg)


def preprocess_photo(source: Any, cfg: PreprocessConfig) -> torch.Tensor:
    """Any accepted photo source -> normalised float32 tensor (3, S, S), official photo pipeline."""
    if cfg.photo_mode != "squash":
        raise ConfigError(f"unknown photo_mode {cfg.photo_mode!r}; supported: 'squash'")
    size = cfg.image_size
    # Official order: resize in the image's own mode (NEAREST for P/1, BICUBIC otherwise), then RGB.
    photo = read_photo(source).resize((size, size)).convert("RGB")
    return to_tensor(np.asarray(photo), cfg)


def sketch_array(source: Any, cfg: PreprocessConfig) -> np.ndarray:
    """Any accepted sketch source -> the cropped, resized and padded uint8 (S, S, 3) RGB image; the drawing is
    first brought to dark strokes on white (:func:`~sketchfind.normalize.normalize_drawing`, identity if clean)."""
    name = _describe(source)
    return sketch_steps(normalize_drawing(read_sketch_rgb(source), name), cfg, name=name)["squared"]


def sketch_steps(rgb: np.ndarray, cfg: PreprocessConfig, *, name: str = "the sketch") -> dict:
    """Official sketch pipeline on a uint8 HxWx3 RGB image, keeping the intermediates."""
    _check_rgb(rgb, name)
    cropped = _crop_to_ink(rgb, cfg, name)
    resized = _aspect_resize(cropped, cfg.image_size)
    squared = _pad_to_square(resized)
    return {"cropped": cropped, "resized": resized, "squared": squared}


def to_tensor(arr: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (3, H, W): ToTensor (/255) then Normalize(cfg.mean, cfg.std)."""
    _check_rgb(arr, "image")
    tensor = torch.tensor(arr).permute(2, 0, 1).to(torch.float32).div(255)  # copies: arr may be read-only
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub(mean).div(std).contiguous()


def read_sketch_rgb(source: Any) -> np.ndarray:
    """Decode any accepted sketch source to uint8 HxWx3 RGB (like cv2.imread; alpha composited on white)."""
    name = _describe(source)
    if isinstance(source, np.ndarray):
        return _gray_to_rgb(_flatten_alpha(_array_to_uint8(source, name)))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, name)
    encoded = _bytes_or_drawing(source, name)
    if isinstance(encoded, Image.Image):
        return np.asarray(encoded)
    return _decode_raster_rgb(encoded, name)


def read_photo(source: Any) -> Image.Image:
    """Open any accepted photo source as a loaded PIL image (EXIF-oriented, alpha composited on white)."""
    name = _describe(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_flatten_alpha(_array_to_uint8(source, name)))
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, name)
        _load(source, name)
        return _flatten_pil(_exif_transpose(source))
    encoded = _bytes_or_drawing(source, name)
    if isinstance(encoded, Image.Image):
        return encoded
    image = _open_image(encoded, name)
    _load(image, name)
    return _flatten_pil(_exif_transpose(image))


def render_strokes(strokes: list, size: int = 256, line_width: int = 3) -> Image.Image:
    """Draw QuickDraw strokes ``[[xs], [ys](, [ts])]`` black on a white RGB canvas, fitted with a margin."""
    if size < 8 or line_width < 1:
        raise ValueError(f"need size >= 8 and line_width >= 1, got size={size}, line_width={line_width}")
    lines = _validate_strokes(strokes, "the stroke list")
    points = np.concatenate(lines)
    low, span = points.min(axis=0), np.ptp(points, axis=0)
    margin = max(line_width, size // 16)
    scale = (size - 2 * margin) / span.max() if span.max() > 0 else 1.0
    offset = (size - span * scale) / 2 - low * scale  # centre the drawing
    canvas = Image.new("RGB", (size, size), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for line in lines:
        _draw_polyline(draw, [tuple(p) for p in line * scale + offset], line_width, _BLACK)
    return canvas


def render_svg(data: bytes | str) -> Image.Image:
    """Rasterise an SVG drawing (shapes, transforms, stroke widths) to an RGB image, ink black on white."""
    svg = _parse_svg(data)
    width, height = float(svg.width or 0), float(svg.height or 0)
    if not (width > 0 and height > 0 and math.isfinite(width * height)):
        raise InputError(f"malformed SVG: the drawing has no usable size ({svg.width} x {svg.height})")
    # Render at the document's own size (like a PNG export of the same canvas), within sane bounds.
    scale = min(max(max(width, height), SVG_MIN_SIDE), SVG_MAX_SIDE) / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", size, _WHITE)
    for element in svg.elements():
        if isinstance(element, se.Shape):
            _draw_shape(canvas, element, scale)
    return canvas


# ----------------------------------------------------------------------------- sketch steps


def _crop_to_ink(rgb: np.ndarray, cfg: PreprocessConfig, name: str) -> np.ndarray:
    """Crop to the bounding box of ink pixels plus the margin (clamped, end exclusive)."""
    ink = rgb.astype(np.int32).sum(axis=2) <= cfg.ink_threshold
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    if rows.size == 0:
        raise EmptySketchError(
            f"the sketch is empty: no pixel darker than the ink threshold (R+G+B <= {cfg.ink_threshold}) in {name}"
        )
    height, width = ink.shape
    margin = cfg.sketch_margin
    top, left = max(0, rows[0] - margin), max(0, cols[0] - margin)
    # The official end is exclusive (ymax + margin); keep at least one row/column when margin == 0.
    bottom = max(min(height, rows[-1] + margin), top + 1)
    right = max(min(width, cols[-1] + margin), left + 1)
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def _aspect_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Longer side -> size, shorter side -> int(size * ratio), with cv2 INTER_LINEAR (official)."""
    height, width = image.shape[:2]
    ratio = height / width
    if height > width:
        target = (max(1, int(size / ratio)), size)  # cv2 sizes are (width, height)
    else:
        target = (size, max(1, int(size * ratio)))
    return cv2.resize(image, target, interpolation=cv2.INTER_LINEAR)


def _pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad the short side with the image's maximum value; top/left get diff // 2."""
    height, width = image.shape[:2]
    diff = abs(height - width)
    before, after = diff // 2, diff - diff // 2
    pads = ((before, after), (0, 0), (0, 0)) if height < width else ((0, 0), (before, after), (0, 0))
    return np.pad(image, pads, mode="constant", constant_values=image.max())


# ----------------------------------------------------------------------------- decoding


def _bytes_or_drawing(source: Any, name: str) -> bytes | Image.Image:
    """Raster sources as encoded bytes; stroke lists and SVG / strokes files rendered to an image."""
    if isinstance(source, list | dict):
        return render_strokes(_strokes_from_object(source, name))
    data, suffix = _read_bytes(source, name)
    kind = _sniff(data, suffix, name)
    if kind == "svg":
        return render_svg(data)
    if kind == "strokes":
        return render_strokes(_parse_strokes_json(data, name))
    return data


def _read_bytes(source: Any, name: str) -> tuple[bytes, str]:
    """Bytes and a lowercase file suffix ('' if unknown) from a path, bytes or a file-like object."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), ""
    if isinstance(source, str | os.PathLike):
        return _read_file(Path(source)), Path(source).suffix.lower()
    if hasattr(source, "read"):
        try:
            data = source.read(MAX_FILE_BYTES + 1)
        except Exception as err:  # any reader failure is an unusable input
            raise InputError(f"cannot read {name}: {err}") from err
        data = data.encode() if isinstance(data, str) else bytes(data)
        _check_file_size(len(data), name)
        return data, Path(str(getattr(source, "name", ""))).suffix.lower()
    raise InputError(
        f"unsupported input type {type(source).__name__}: expected a file path, bytes, a file object, "
        f"a numpy array, a PIL image or a QuickDraw stroke list"
    )


def _read_file(path: Path) -> bytes:
    """Whole file contents, with friendly errors for missing, odd or huge files."""
    try:
        if not path.exists():
            raise InputError(f"file not found: {path}")
        if not path.is_file():
            raise InputError(f"not a regular file: {path}")
        _check_file_size(path.stat().st_size, str(path))
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err


def _check_file_size(num_bytes: int, name: str) -> None:
    if num_bytes > MAX_FILE_BYTES:
        raise InputError(f"{name} is too large: more than {MAX_FILE_BYTES // 2**20} MiB")


def _sniff(data: bytes, suffix: str, name: str) -> str:
    """'raster', 'svg' or 'strokes' from magic bytes, then the file suffix, then the text."""
    if _raster_format(data):
        return "raster"
    if suffix == ".svg":
        return "svg"
    if suffix in (".json", ".ndjson"):
        return "strokes"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"<svg", b"<?xml")) or (head.startswith(b"<!") and b"<svg" in data[:4096]):
        return "svg"
    if head.startswith((b"[", b"{")):
        return "strokes"
    raise InputError(f"{name} is not an image: expected PNG, JPEG, WebP, BMP, SVG or QuickDraw strokes JSON")


def _raster_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


def _open_image(data: bytes, name: str) -> Image.Image:
    """Open lazily with Pillow (header only) and refuse oversized images before decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
    except Image.DecompressionBombError as err:
        raise InputError(f"{name} is too large: more than {MAX_PIXELS:,} pixels") from err
    except UnidentifiedImageError as err:
        raise InputError(f"{name} is corrupt or not a supported image (PNG, JPEG, WebP, BMP)") from err
    except Exception as err:  # Pillow raises many types on broken headers
        raise InputError(f"{name} is corrupt: {err}") from err
    _check_pixels(image.width, image.height, name)
    return image


def _load(image: Image.Image, name: str) -> None:
    """Decode the pixels, turning truncation and corruption into InputError."""
    try:
        image.load()
    except Exception as err:  # OSError (truncated), SyntaxError, ValueError, zlib errors...
        raise InputError(f"{name} is corrupt or truncated: {err}") from err


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"{name} is too large: {width}x{height} = {width * height:,} pixels (limit {MAX_PIXELS:,})")
    if width * height == 0:
        raise InputError(f"{name} has no pixels ({width}x{height})")


def _decode_raster_rgb(data: bytes, name: str) -> np.ndarray:
    """8-bit RGB exactly as cv2.imread gives it; images with transparency are composited on white."""
    image = _open_image(data, name)
    if _has_alpha(image):
        _load(image, name)
        return _pil_to_rgb(image, name)
    if image.format == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # No end-of-image marker after the last scan: some OpenCV builds decode it as gray.
        raise InputError(f"{name} is corrupt or truncated: JPEG data ends early")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise InputError(f"{name} is corrupt: {err}") from err
    if bgr is None:
        raise InputError(f"{name} is corrupt or truncated: OpenCV could not decode it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not make an otherwise fine image unusable
        return image


def _flatten_pil(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white; other images keep their mode (official resize)."""
    if not _has_alpha(image):
        return image
    return Image.fromarray(_flatten_alpha(np.asarray(image.convert("RGBA"))))


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """Any-mode PIL image -> uint8 HxWx3 RGB (EXIF-oriented like cv2.imread, alpha on white)."""
    _check_pixels(image.width, image.height, name)
    _load(image, name)
    image = _exif_transpose(image)
    if _has_alpha(image):
        return _flatten_alpha(np.asarray(image.convert("RGBA")))
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _gray_to_rgb(_high_depth_to_uint8(image))
    return np.asarray(image.convert("RGB"))


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit modes scale 65535 -> 255; 32-bit 'I'/'F' are taken as 0..255 values and clipped."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _array_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate an HxW / HxWx1 / HxWx3 / HxWx4 array and bring it to uint8 (floats must be in [0, 1])."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InputError(f"{name}: expected an HxW, HxWx3 or HxWx4 image array")
    _check_pixels(arr.shape[1], arr.shape[0], name)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise InputError(f"{name}: float image arrays must hold finite values in [0, 1]")
        return np.round(arr * 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    raise InputError(f"{name}: expected uint8 values (0..255) or floats in [0, 1], got dtype {arr.dtype}")


def _flatten_alpha(arr: np.ndarray) -> np.ndarray:
    """Composite an HxWx4 RGBA uint8 array onto white (rounded); other arrays pass through."""
    if arr.ndim != 3 or arr.shape[2] != 4:
        return arr
    rgb, alpha = arr[:, :, :3].astype(np.uint32), arr[:, :, 3:].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _gray_to_rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else np.ascontiguousarray(arr)


def _check_rgb(arr: np.ndarray, name: str) -> None:
    if not (isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3):
        raise InputError(f"{name}: expected a uint8 HxWx3 RGB array")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} has no pixels")


def _describe(source: Any) -> str:
    """A short human name for an input, used in error messages."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"the uploaded data ({len(source)} bytes)"
    if isinstance(source, np.ndarray):
        return f"the image array {source.shape}"
    if isinstance(source, Image.Image):
        return f"the {source.mode} image {source.width}x{source.height}"
    if isinstance(source, list | dict):
        return "the stroke list"
    return str(getattr(source, "name", None) or f"the {type(source).__name__} input")


# ----------------------------------------------------------------------------- strokes


def _parse_strokes_json(data: bytes, name: str) -> list:
    """Stroke list from JSON / NDJSON text: a raw list, or an object with a "drawing" key (first line)."""
    try:
        text = data.decode("utf-8-sig")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            # NDJSON (one QuickDraw drawing per line): take the first drawing.
            first = next((line for line in text.splitlines() if line.strip()), "")
            obj = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"malformed strokes JSON in {name}: {err}") from err
    return _strokes_from_object(obj, name)


def _strokes_from_object(obj: Any, name: str) -> list:
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
    lines = [_stroke_points(stroke, index, name) for index, stroke in enumerate(strokes)]
    lines = [line for line in lines if len(line)]
    if not lines:
        raise EmptySketchError(f"the sketch is empty: {name} has no points")
    return lines


def _stroke_points(stroke: Any, index: int, name: str) -> np.ndarray:
    bad = f"malformed strokes in {name}: stroke {index} must be [[x0, x1, ...], [y0, y1, ...]]"
    if not isinstance(stroke, list | tuple) or len(stroke) not in (2, 3):
        raise InputError(bad)
    try:
        xs, ys = (np.asarray(coords, dtype=np.float64) for coords in stroke[:2])
    except (TypeError, ValueError) as err:
        raise InputError(bad) from err
    if xs.ndim != 1 or xs.shape != ys.shape or not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise InputError(bad + " with equally long lists of finite numbers")
    return np.stack([xs, ys], axis=1)


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


def _parse_svg(data: bytes | str) -> se.SVG:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        svg = se.SVG.parse(io.BytesIO(raw))
    except Exception as err:  # ParseError, ValueError...: the text is not a usable SVG
        raise InputError(f"malformed SVG: {err}") from err
    if not isinstance(svg, se.SVG):
        raise InputError("malformed SVG: no <svg> root element")
    return svg


def _draw_shape(canvas: Image.Image, shape: se.Shape, scale: float) -> None:
    """Fill then stroke one shape (transforms already applied by svgelements), in binary ink."""
    try:
        subpaths = [_flatten_subpath(sub, scale) for sub in se.Path(shape).as_subpaths()]
    except Exception as err:  # degenerate geometry deep inside svgelements
        raise InputError(f"malformed SVG: cannot draw a {type(shape).__name__}: {err}") from err
    subpaths = [points for points in subpaths if points]
    if not subpaths:
        return
    fill = _ink(shape.fill)
    if fill is not None:
        _fill_evenodd(canvas, subpaths, fill)
    stroke = _ink(shape.stroke)
    if stroke is not None:
        width = (shape.implicit_stroke_width or 1.0) * scale
        draw = ImageDraw.Draw(canvas)
        for points in subpaths:
            _draw_polyline(draw, points, width, stroke)


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


def _fill_evenodd(canvas: Image.Image, subpaths: list, color: tuple) -> None:
    """Fill closed subpaths with the even-odd rule (so holes stay open)."""
    mask = Image.new("1", canvas.size, 0)
    for points in subpaths:
        if len(points) < 3:
            continue
        layer = Image.new("1", canvas.size, 0)
        ImageDraw.Draw(layer).polygon(points, fill=1)
        mask = ImageChops.logical_xor(mask, layer)
    canvas.paste(color, mask=mask)


def _ink(color: se.Color | None) -> tuple | None:
    """Binary ink for a paint: None for no paint, white for near-white paint, black otherwise."""
    if color is None or color.value is None or color.alpha == 0:
        return None
    luminance = 0.299 * color.red + 0.587 * color.green + 0.114 * color.blue
    return _WHITE if luminance >= 230 else _BLACK  # white paint (backgrounds, erasers) stays white
