"""Training data: augmentation and the official triplet sampling (folders and splits: :mod:`sketchfind.datasets`)."""

from __future__ import annotations

import cv2
import numpy as np

# ---------------------------------------------------------------------------------------------
# augmentation on preprocessed uint8 (S, S, 3) images


def augment_sketch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip, scale, shift, small rotation and stroke thickness change (white background kept)."""
    size = img.shape[0]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.3:  # thicker or thinner strokes
        kernel = np.ones((2, 2), np.uint8)
        img = cv2.erode(img, kernel) if rng.random() < 0.7 else cv2.dilate(img, kernel)
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.8, 1.05)
    shift = rng.uniform(-0.06, 0.06, size=2) * size
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += shift
    border = tuple(int(v) for v in img.reshape(-1, 3).max(0))
    return cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR, borderValue=border)


def augment_photo(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip, resized crop (scale 0.6-1) and brightness/contrast/saturation jitter."""
    size = img.shape[0]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    area = rng.uniform(0.6, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = int(round(min(size, size * np.sqrt(area * aspect))))
    h = int(round(min(size, size * np.sqrt(area / aspect))))
    x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    img = cv2.resize(np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w]), (size, size), interpolation=cv2.INTER_LINEAR)
    out = img.astype(np.float32)
    out = out * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)  # contrast, brightness
    gray = out.mean(axis=2, keepdims=True)
    out = gray + (out - gray) * rng.uniform(0.7, 1.3)  # saturation
    return np.clip(out, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# the official sampling


def sample_quadruplets(
    sketch_labels: np.ndarray, photo_labels: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """(n, 4) indices [sketch, sketch_neg, photo, photo_neg]: three distinct classes c0, c1, c2 are drawn;
    sketch, sketch_neg and photo come from c0, photo_neg from c2 (as the official training code)."""
    classes = np.unique(sketch_labels)
    by_class_sk = {c: np.flatnonzero(sketch_labels == c) for c in classes}
    by_class_ph = {c: np.flatnonzero(photo_labels == c) for c in classes}
    out = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        c0, _c1, c2 = rng.choice(classes, size=3, replace=False)
        out[i] = (
            rng.choice(by_class_sk[c0]),
            rng.choice(by_class_sk[c0]),
            rng.choice(by_class_ph[c0]),
            rng.choice(by_class_ph[c2]),
        )
    return out
