"""The official ZSE-SBIR pipelines, driven by :class:`~sketchfind.config.PreprocessConfig`.

Every entry point (indexing, search, training, explanations, the web page) turns images into model
inputs through these functions, so none of them reads a preprocessing constant by hand.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from ..config import PreprocessConfig
from ..errors import ConfigError, EmptySketchError
from .images import check_rgb, describe_source, read_photo, read_sketch_rgb
from .normalize import normalize_drawing


def preprocess_sketch(source: Any, cfg: PreprocessConfig) -> torch.Tensor:
    """Any accepted sketch source -> normalised float32 tensor (3, S, S), official sketch pipeline."""
    return to_tensor(sketch_array(source, cfg), cfg)


def preprocess_photo(source: Any, cfg: PreprocessConfig) -> torch.Tensor:
    """Any accepted photo source -> normalised float32 tensor (3, S, S), official photo pipeline."""
    return to_tensor(photo_array(source, cfg), cfg)


PHOTO_DECODE_FACTOR = 2  # photos are decoded at no less than this many times the model's input side


def sketch_array(source: Any, cfg: PreprocessConfig) -> np.ndarray:
    """Any accepted sketch source -> the cropped, resized and padded uint8 (S, S, 3) RGB image; the drawing is
    first brought to dark strokes on white (:func:`~.normalize.normalize_drawing`, identity if clean)."""
    name = describe_source(source)
    return sketch_steps(normalize_drawing(read_sketch_rgb(source), name), cfg, name=name)["squared"]


def photo_array(source: Any, cfg: PreprocessConfig) -> np.ndarray:
    """Any accepted photo source -> the resized uint8 (S, S, 3) RGB image, official photo pipeline."""
    if cfg.photo_mode != "squash":
        raise ConfigError(f"unknown photo_mode {cfg.photo_mode!r}; supported: 'squash'")
    size = cfg.image_size
    # Official order: resize in the image's own mode (NEAREST for P/1, BICUBIC otherwise), then RGB. A photo
    # more than PHOTO_DECODE_FACTOR x the model's side is first decoded at a reduced size (a JPEG at the
    # smallest DCT scale, other formats box-reduced) that keeps both sides at least that long: a 12 MP JPEG
    # costs ~27 ms instead of ~105 ms on one core (pixels within 3 levels, mean 0.2; [Ret] cosine to the full
    # decode >= 0.9994), and the bicubic resize after it still averages 2+ pixels per output pixel. Smaller
    # photos (all of Sketchy, the reference goldens) are decoded exactly as before.
    photo = read_photo(source, max_side=PHOTO_DECODE_FACTOR * size).resize((size, size)).convert("RGB")
    return np.array(photo)  # a writable copy, like sketch_array's


def sketch_steps(rgb: np.ndarray, cfg: PreprocessConfig, *, name: str = "the sketch") -> dict:
    """Official sketch pipeline on a uint8 HxWx3 RGB image, keeping the intermediates."""
    check_rgb(rgb, name)
    cropped = _crop_to_ink(rgb, cfg, name)
    resized = _aspect_resize(cropped, cfg.image_size)
    squared = _pad_to_square(resized)
    return {"cropped": cropped, "resized": resized, "squared": squared}


def to_tensor(arr: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (3, H, W): ToTensor (/255) then Normalize(cfg.mean, cfg.std)."""
    check_rgb(arr, "image")
    # numpy, in place on one fresh float32 copy: the same IEEE operations in the same order as torchvision's
    # ToTensor + Normalize (bit for bit), ~6x faster than torch ops on a busy 2-core machine
    x = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    x /= np.float32(255)
    x -= np.asarray(cfg.mean, np.float32)[:, None, None]
    x /= np.asarray(cfg.std, np.float32)[:, None, None]
    return torch.from_numpy(x)


def ink_mask(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HxWx3 RGB -> bool (H, W): which pixels are ink (R+G+B <= cfg.ink_threshold, official rule)."""
    # R + G + B <= 765 fits uint16: summed channel by channel, without a (H, W, 3) int32 copy
    level = rgb[:, :, 0].astype(np.uint16)
    level += rgb[:, :, 1]
    level += rgb[:, :, 2]
    return level <= cfg.ink_threshold


# ----------------------------------------------------------------------------- sketch steps


def _crop_to_ink(rgb: np.ndarray, cfg: PreprocessConfig, name: str) -> np.ndarray:
    """Crop to the bounding box of ink pixels plus the margin (clamped, end exclusive)."""
    ink = ink_mask(rgb, cfg)
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
