"""Turn sketches and photos into model tensors: the one source of truth for preprocessing.

Parity with the official ZSE-SBIR code (``data_utils/utils.py`` ``preprocess``), checked against the
goldens in ``shared/reference/zse-sbir/preprocess.npz``:

* **sketch**: decode to 8-bit RGB like ``cv2.imread`` -> ink = pixels with R+G+B <= ``ink_threshold``
  -> crop the ink bounding box with ``sketch_margin`` -> aspect resize with ``cv2.resize`` (INTER_LINEAR)
  -> pad to a square with the image's maximum -> ToTensor / Normalize.
* **photo**: Pillow ``resize((S, S))`` with Pillow's default filter, then ``convert('RGB')``.

Deliberate improvements that leave the goldens unchanged: any drawing with visible strokes is first
brought to dark strokes on white paper (:mod:`.normalize`: inverted, coloured, faint, scanned drawings;
the identity on clean ones, so "empty" means no stroke at all); images with transparency are composited
onto white (a transparent PNG with black strokes stays black on white instead of turning all black),
photos follow their EXIF orientation, and every failure is a :mod:`sketchfind.errors` exception that
names the input. Sketches may also be QuickDraw stroke lists or SVG drawings, rendered black on white.

By concern: :mod:`.pipeline` (the config-driven pipelines), :mod:`.images` (reading, format sniffing,
size limits, suffixes), :mod:`.drawings` (QuickDraw strokes and SVG), :mod:`.normalize` (drawings of
any style -> dark strokes on white).
"""

from .drawings import DRAWING_LIMITS, render_strokes, render_svg
from .images import (
    LIGHT_PIXELS,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MAX_SKETCH_DECODE_PIXELS,
    PHOTO_SUFFIXES,
    RASTER_FORMATS,
    SKETCH_SUFFIXES,
    RasterFormat,
    is_light_decode,
    photo_format,
    raster_format,
    read_photo,
    read_sketch_rgb,
)
from .normalize import normalize_drawing
from .pipeline import (
    ink_mask,
    photo_array,
    preprocess_photo,
    preprocess_sketch,
    sketch_array,
    sketch_steps,
    to_tensor,
)

__all__ = [
    "DRAWING_LIMITS",
    "LIGHT_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MAX_SKETCH_DECODE_PIXELS",
    "PHOTO_SUFFIXES",
    "RASTER_FORMATS",
    "SKETCH_SUFFIXES",
    "RasterFormat",
    "ink_mask",
    "is_light_decode",
    "normalize_drawing",
    "photo_format",
    "photo_array",
    "preprocess_photo",
    "preprocess_sketch",
    "raster_format",
    "read_photo",
    "read_sketch_rgb",
    "render_strokes",
    "render_svg",
    "sketch_array",
    "sketch_steps",
    "to_tensor",
]
