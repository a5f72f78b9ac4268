"""Sketch/photo folders, class splits, augmentation and the official triplet sampling.

Folder layout: ``ROOT/sketches/<class>/*`` and ``ROOT/photos/<class>/*`` (the Sketchy layout).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from ..preprocess import PHOTO_SUFFIXES


@dataclass
class Split:
    """Files of one split, grouped by class: ``sketches[c]``, ``photos[c]``."""

    classes: list[str]
    sketches: dict[str, list[Path]] = field(default_factory=dict)
    photos: dict[str, list[Path]] = field(default_factory=dict)

    def flat(self, kind: str) -> tuple[list[Path], np.ndarray]:
        """All files of a kind ("sketches" or "photos") with integer labels (index in ``classes``)."""
        files, labels = [], []
        for i, c in enumerate(self.classes):
            items = getattr(self, kind)[c]
            files += items
            labels += [i] * len(items)
        return files, np.asarray(labels, dtype=np.int64)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside a folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def read_class_file(path: str | Path) -> list[str]:
    """One class name per line (blank lines and # comments ignored)."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def scan(root: str | Path, classes: list[str] | None = None) -> Split:
    """Reads ``root/sketches/<class>`` and ``root/photos/<class>`` for the given (or all common) classes."""
    root = Path(root)
    sk_root, ph_root = root / "sketches", root / "photos"
    if not sk_root.is_dir() or not ph_root.is_dir():
        raise InputError(f"{root} must hold sketches/<class>/ and photos/<class>/ folders")
    common = sorted(
        {p.name for p in sk_root.iterdir() if p.is_dir()} & {p.name for p in ph_root.iterdir() if p.is_dir()}
    )
    if classes is not None:
        missing = [c for c in classes if c not in common]
        if missing:
            raise InputError(f"classes not found under {root}: {', '.join(missing[:5])}")
        common = list(classes)
    split = Split(classes=common)
    for c in common:
        split.sketches[c] = list_images(sk_root / c)
        split.photos[c] = list_images(ph_root / c)
    return split


def split_classes(
    root: str | Path, holdout_file: str | Path | None, val_classes: int, seed: int
) -> tuple[Split, Split, Split | None]:
    """(train, validation, test) splits: test = the held-out (zero-shot) classes, never seen in training;
    validation = ``val_classes`` of the remaining seen classes, for model selection."""
    everything = scan(root)
    held = read_class_file(holdout_file) if holdout_file else []
    unknown = [c for c in held if c not in everything.classes]
    if unknown:
        raise InputError(f"held-out classes not in the data: {', '.join(unknown[:5])}")
    seen = [c for c in everything.classes if c not in set(held)]
    rng = random.Random(seed)
    val = sorted(rng.sample(seen, val_classes)) if val_classes else []
    train = [c for c in seen if c not in set(val)]
    test = scan(root, held) if held else None
    return scan(root, train), scan(root, val), test


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
