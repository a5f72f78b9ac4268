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
    if rng.random() < 0.4:  # thicker strokes (up to a marker's) or thinner ones
        if rng.random() < 0.75:
            size_k = int(rng.integers(2, 6))
            img = cv2.erode(img, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size_k, size_k)))
        else:
            img = cv2.dilate(img, np.ones((2, 2), np.uint8))
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


def augment_strokes(strokes: list, rng: np.random.Generator) -> list:
    """A doodle as someone else might have drawn it: a prefix of its strokes (the drawing while it was
    being drawn) or 0-30% of them dropped, simplified polylines, jittered points and strokes, and a small
    random linear distortion. Strokes are ``[xs, ys]`` pairs (QuickDraw's layout); at least one is kept."""
    lines = [np.asarray(s[:2], dtype=np.float64).T for s in strokes if len(s[0])]
    n = len(lines)
    pick = rng.random()
    if n > 1 and pick < 0.3:
        lines = lines[: int(rng.integers(int(np.ceil(n / 2)), n))]
    elif n > 1 and pick < 0.6:
        drop = rng.random(n) < rng.uniform(0.05, 0.3)
        drop[rng.integers(n)] = False
        lines = [line for line, d in zip(lines, drop, strict=True) if not d]
    if rng.random() < 0.5:
        eps = rng.uniform(0.5, 4.0)  # in QuickDraw units (the drawing spans 0-255)
        lines = [
            cv2.approxPolyDP(line.astype(np.float32)[:, None], eps, False)[:, 0].astype(np.float64) for line in lines
        ]
    sigma = rng.uniform(0.0, 2.5)
    lines = [line + rng.normal(0, sigma, line.shape) + rng.normal(0, 2 * sigma, 2) for line in lines]
    warp = np.eye(2) + rng.normal(0, 0.08, (2, 2))
    return [[line[:, 0], line[:, 1]] for line in (line @ warp.T for line in lines)]


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
