"""Reading images: any accepted source -> pixels, with format sniffing and size limits.

Raster files (PNG, JPEG, WebP, BMP) are recognised by their magic bytes, drawings (SVG, QuickDraw
strokes) by their suffix or text and handed to :mod:`.drawings`. Every failure is a
:mod:`sketchfind.errors` exception that names the input.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, NotAPhotoError, TooLargeError
from .drawings import parse_strokes_json, render_strokes, render_svg, strokes_from_object

MAX_PIXELS = 40_000_000  # larger images (photos and sketches) are refused before their pixels are decoded
MAX_FILE_BYTES = 256 * 2**20  # larger files are refused before they are read
# Sketches end at 224 px: larger raster sketches are decoded reduced (JPEG DCT scaling, else a box
# reduction), so a 40 MP upload costs one decode of its pixels instead of ~20 full-size copies.
MAX_SKETCH_DECODE_PIXELS = 4_000_000
# Light decodes: a raster image of at most this many pixels (by its header) or a strokes drawing of at most
# this many bytes takes milliseconds and a few MB; the service never queues them behind large decodes.
LIGHT_PIXELS = 2_000_000
LIGHT_DRAWING_BYTES = 64 * 1024
# Large images are reduced and composited onto white a strip of rows at a time, so that neither makes a
# full-size copy (Pillow premultiplies a whole RGBA image before reducing it; numpy's compositing makes
# several uint16 temporaries): a 40 MP PNG with alpha then costs its decoded pixels plus the result.
STRIP_PIXELS = 1 << 20


@dataclass(frozen=True)
class RasterFormat:
    """One accepted raster format: its Pillow name, file extension, media type and magic bytes."""

    name: str  # Pillow's format name, e.g. "JPEG"
    extension: str  # the file extension we write, e.g. ".jpg"
    media_type: str  # e.g. "image/jpeg"
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes) pairs that must all match
    aliases: tuple[str, ...] = ()  # other suffixes of the same format, e.g. ".jpeg"

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Every file suffix of the format, the written extension first."""
        return (self.extension, *self.aliases)

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` starts like a file of this format."""
        return all(data[offset : offset + len(magic)] == magic for offset, magic in self.magic)


# Pillow tries the formats in this order; the magic bytes never overlap, so the order does not matter.
RASTER_FORMATS = {
    fmt.name: fmt
    for fmt in (
        RasterFormat("PNG", ".png", "image/png", ((0, b"\x89PNG\r\n\x1a\n"),)),
        RasterFormat("JPEG", ".jpg", "image/jpeg", ((0, b"\xff\xd8\xff"),), aliases=(".jpeg",)),
        RasterFormat("WEBP", ".webp", "image/webp", ((0, b"RIFF"), (8, b"WEBP"))),
        RasterFormat("BMP", ".bmp", "image/bmp", ((0, b"BM"),)),
    )
}
PHOTO_SUFFIXES = tuple(suffix for fmt in RASTER_FORMATS.values() for suffix in fmt.suffixes)
SVG_SUFFIXES = (".svg",)
STROKES_SUFFIXES = (".json", ".ndjson")  # QuickDraw drawings (NDJSON: the first line)
SKETCH_SUFFIXES = PHOTO_SUFFIXES + SVG_SUFFIXES + STROKES_SUFFIXES

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def raster_format(data: bytes) -> str | None:
    """The name of the raster format (a key of ``RASTER_FORMATS``) ``data`` starts with, or None."""
    return next((fmt.name for fmt in RASTER_FORMATS.values() if fmt.matches(data)), None)


def read_sketch_rgb(source: Any, name: str | None = None) -> np.ndarray:
    """Decode any accepted sketch source to uint8 HxWx3 RGB (like cv2.imread; alpha composited on white).

    Raster sketches over ``MAX_SKETCH_DECODE_PIXELS`` are decoded reduced by 2, 4 or 8."""
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return _gray_to_rgb(_flatten_alpha(_array_to_uint8(source, name)))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, name)
    encoded = _bytes_or_drawing(source, name)
    if isinstance(encoded, Image.Image):
        return np.asarray(encoded)
    return _decode_raster_rgb(encoded, name)


def is_light_decode(source: Any) -> bool:
    """Whether decoding ``source`` is cheap (see ``LIGHT_PIXELS``), judged from its header or size only; never
    raises. SVG is never light (its cost is known only once parsed), nor is anything unreadable."""
    try:
        if isinstance(source, list):  # parsed QuickDraw strokes: [[xs, ys], ...]
            return sum(len(stroke[0]) for stroke in source) <= LIGHT_DRAWING_BYTES // 8
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as file:
                return _light_raster(file)
        if isinstance(source, bytes | bytearray | memoryview):
            if raster_format(bytes(source[:16])) is None:
                return len(source) <= LIGHT_DRAWING_BYTES and _sniff(bytes(source), "", "") == "strokes"
            return _light_raster(io.BytesIO(source))
    except Exception:  # a header Pillow cannot read (or a bomb): decoded in a heavy slot, where it fails
        return False
    return False


def _light_raster(file) -> bool:
    """A raster image of at most ``LIGHT_PIXELS``, from its header (Pillow reads no pixels here)."""
    if raster_format(file.read(16)) is None:
        return False
    file.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(file, formats=tuple(RASTER_FORMATS)) as image:
            return image.width * image.height <= LIGHT_PIXELS


def read_photo(source: Any, name: str | None = None, max_side: int | None = None) -> Image.Image:
    """Open a photo (PNG, JPEG, WebP or BMP by content: never a drawing) as a loaded PIL image,
    EXIF-oriented, alpha composited on white. ``max_side``: a JPEG is decoded at the smallest DCT scale
    that keeps both sides at least that long (thumbnails), so it never costs a full decode; other formats
    are decoded whole, then reduced the same way before any further copy (a 40 MP PNG took 2 GB without)."""
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_flatten_alpha(_array_to_uint8(source, name)))
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, name)
        _load(source, name)
        return _flatten_pil(_exif_transpose(source))
    data, _ = read_bytes(source, name)
    if raster_format(data) is None:
        raise NotAPhotoError(f"{name} is not an image in a photo format (PNG, JPEG, WebP, BMP)")
    image = _open_image(data, name)
    if max_side is not None and image.format == "JPEG" and min(image.size) >= 2 * max_side:
        # only when a DCT scale of 1/2 or less applies: Pillow's draft mode also decodes with a faster, less
        # exact IDCT, which would change the pixels of a photo that cannot be reduced at all
        image.draft("RGB", (max_side, max_side))
    _load(image, name)
    factor = min(image.size) // max_side if max_side else 1
    image = _reduce(image, factor)  # box reduction, as a DCT-scaled decode; both sides stay >= max_side
    return _flatten_pil(_exif_transpose(image))


def photo_format(data: bytes) -> RasterFormat:
    """The raster format of photo bytes (by content); NotAPhotoError for anything else."""
    fmt = raster_format(data)
    if fmt is None:
        raise NotAPhotoError("not an image in a photo format (PNG, JPEG, WebP, BMP)")
    return RASTER_FORMATS[fmt]


def read_bytes(source: Any, name: str) -> tuple[bytes, str]:
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


def check_rgb(arr: np.ndarray, name: str) -> None:
    """Raise InputError unless ``arr`` is a non-empty uint8 HxWx3 array."""
    if not (isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3):
        raise InputError(f"{name}: expected a uint8 HxWx3 RGB array")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} has no pixels")


def describe_source(source: Any) -> str:
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


# ----------------------------------------------------------------------------- decoding


def _bytes_or_drawing(source: Any, name: str) -> bytes | Image.Image:
    """Raster sources as encoded bytes; stroke lists and SVG / strokes files rendered to an image."""
    if isinstance(source, list | dict):
        return render_strokes(strokes_from_object(source, name))
    data, suffix = read_bytes(source, name)
    kind = _sniff(data, suffix, name)
    if kind == "svg":
        return render_svg(data, name)
    if kind == "strokes":
        return render_strokes(parse_strokes_json(data, name))
    return data


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
        raise TooLargeError(f"{name} is too large: more than {MAX_FILE_BYTES // 2**20} MiB")


def _sniff(data: bytes, suffix: str, name: str) -> str:
    """'raster', 'svg' or 'strokes' from magic bytes, then the file suffix, then the text."""
    if raster_format(data):
        return "raster"
    if suffix in SVG_SUFFIXES:
        return "svg"
    if suffix in STROKES_SUFFIXES:
        return "strokes"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"<svg", b"<?xml")) or (head.startswith(b"<!") and b"<svg" in data[:4096]):
        return "svg"
    if head.startswith((b"[", b"{")):
        return "strokes"
    raise InputError(f"{name} is not an image: expected PNG, JPEG, WebP, BMP, SVG or QuickDraw strokes JSON")


def _open_image(data: bytes, name: str) -> Image.Image:
    """Open lazily with Pillow (header only) and refuse oversized images before decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=tuple(RASTER_FORMATS))
    except Image.DecompressionBombError as err:
        raise TooLargeError(f"{name} is too large: more than {MAX_PIXELS:,} pixels") from err
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
        raise TooLargeError(f"{name} is too large: {width}x{height} = {width * height:,} pixels (limit {MAX_PIXELS:,})")
    if width * height == 0:
        raise InputError(f"{name} has no pixels ({width}x{height})")


_REDUCED_READS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
_REDUCED_READS[8] = cv2.IMREAD_REDUCED_COLOR_8


def sketch_reduction(width: int, height: int) -> int:
    """1, 2, 4 or 8: the smallest factor that brings a sketch under ``MAX_SKETCH_DECODE_PIXELS``."""
    return next((f for f in (1, 2, 4) if width * height <= MAX_SKETCH_DECODE_PIXELS * f * f), 8)


def _decode_raster_rgb(data: bytes, name: str) -> np.ndarray:
    """8-bit RGB exactly as cv2.imread gives it; images with transparency are composited on white."""
    image = _open_image(data, name)
    factor = sketch_reduction(image.width, image.height)
    if _has_alpha(image):
        _load(image, name)
        return _pil_to_rgb(_reduce(image, factor), name)
    if image.format == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # No end-of-image marker after the last scan: some OpenCV builds decode it as gray.
        raise InputError(f"{name} is corrupt or truncated: JPEG data ends early")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_READS[factor])
    except cv2.error as err:
        raise InputError(f"{name} is corrupt: {err}") from err
    if bgr is None:
        raise InputError(f"{name} is corrupt or truncated: OpenCV could not decode it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_TURNED = range(2, 9)  # EXIF orientations other than upright (1)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than fatal."""
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) not in _TURNED:
            return image  # upright already (a canvas drawing, most photos): no copy of the pixels
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not make an otherwise fine image unusable
        return image


def _strips(height: int, width: int, multiple: int = 1) -> Iterator[tuple[int, int]]:
    """(top, bottom) rows of strips of about ``STRIP_PIXELS`` pixels, their heights a multiple of ``multiple``."""
    rows = multiple * max(1, STRIP_PIXELS // max(1, width * multiple))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """``image.reduce(factor)`` (box), the same pixels computed a strip at a time: Pillow would premultiply
    a whole image with alpha into a full-size copy first. Palette and 1-bit images (which Pillow cannot
    reduce) come out as RGBA, RGB or L."""
    if factor <= 1:
        return image
    mode = "RGBA" if _has_alpha(image) else {"P": "RGB", "1": "L"}.get(image.mode, image.mode)
    if mode == image.mode and mode not in ("RGBA", "LA"):
        return image.reduce(factor)  # no premultiplied copy for these modes
    width, height = image.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    for top, bottom in _strips(height, width, factor):
        strip = image.crop((0, top, width, bottom))
        out.paste((strip if strip.mode == mode else strip.convert(mode)).reduce(factor), (0, top // factor))
    return out


def _flatten_pil(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white (a strip at a time); other images keep their mode
    (official resize)."""
    if not _has_alpha(image):
        return image
    width, height = image.size
    out = Image.new("RGB", image.size)
    for top, bottom in _strips(height, width):
        strip = np.asarray(image.crop((0, top, width, bottom)).convert("RGBA"))
        out.paste(Image.fromarray(_flatten_alpha(strip)), (0, top))
    return out


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """Any-mode PIL image -> uint8 HxWx3 RGB (EXIF-oriented like cv2.imread, alpha on white)."""
    _check_pixels(image.width, image.height, name)
    _load(image, name)
    image = _exif_transpose(_reduce(image, sketch_reduction(image.width, image.height)))
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 255:
        return np.asarray(image.convert("RGB"))  # opaque (a page's canvas): compositing is the identity
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
    if arr[:, :, 3].min() == 255:  # opaque (a page's canvas): compositing is the identity
        return np.ascontiguousarray(arr[:, :, :3])
    out = np.empty(arr.shape[:2] + (3,), np.uint8)
    for top, bottom in _strips(arr.shape[0], arr.shape[1]):  # uint16 temporaries of one strip at a time
        # rgb * a + 255 * (255 - a) + 127 <= 65152: exact in uint16, a quarter of the memory traffic of uint32
        rgb, alpha = arr[top:bottom, :, :3].astype(np.uint16), arr[top:bottom, :, 3:].astype(np.uint16)
        out[top:bottom] = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out


def _gray_to_rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else np.ascontiguousarray(arr)
