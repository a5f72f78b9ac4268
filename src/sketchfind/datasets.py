"""Sketch/photo folders with one subfolder per class, and the class splits of training and evaluation.

Layout: ``sketches/<class>/*`` and ``photos/<class>/*`` (the Sketchy layout). The two folders need not be
siblings: :func:`scan` takes each one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .preprocess import PHOTO_SUFFIXES


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


def scan(sketches_dir: str | Path, photos_dir: str | Path, classes: list[str] | None = None) -> Split:
    """Reads ``sketches_dir/<class>`` and ``photos_dir/<class>`` for the given (or all common) classes."""
    sk_root, ph_root = Path(sketches_dir), Path(photos_dir)
    if not sk_root.is_dir() or not ph_root.is_dir():
        raise InputError(
            f"{sk_root} and {ph_root} must be folders with one subfolder per class (sketches/<class>/, photos/<class>/)"
        )
    common = sorted(
        {p.name for p in sk_root.iterdir() if p.is_dir()} & {p.name for p in ph_root.iterdir() if p.is_dir()}
    )
    if classes is not None:
        missing = [c for c in classes if c not in common]
        if missing:
            raise InputError(f"classes not found under both {sk_root} and {ph_root}: {', '.join(missing[:5])}")
        common = list(classes)
    split = Split(classes=common)
    for c in common:
        split.sketches[c] = list_images(sk_root / c)
        split.photos[c] = list_images(ph_root / c)
    return split


def scan_root(root: str | Path, classes: list[str] | None = None) -> Split:
    """:func:`scan` of ``root/sketches`` and ``root/photos``."""
    root = Path(root)
    return scan(root / "sketches", root / "photos", classes)


def split_classes(
    root: str | Path, holdout_file: str | Path | None, val_classes: int, seed: int
) -> tuple[Split, Split, Split | None]:
    """(train, validation, test) splits: test = the held-out (zero-shot) classes, never seen in training;
    validation = ``val_classes`` of the remaining seen classes, for model selection."""
    everything = scan_root(root)
    held = read_class_file(holdout_file) if holdout_file else []
    unknown = [c for c in held if c not in everything.classes]
    if unknown:
        raise InputError(f"held-out classes not in the data: {', '.join(unknown[:5])}")
    seen = [c for c in everything.classes if c not in set(held)]
    rng = random.Random(seed)
    val = sorted(rng.sample(seen, val_classes)) if val_classes else []
    train = [c for c in seen if c not in set(val)]
    test = scan_root(root, held) if held else None
    return scan_root(root, train), scan_root(root, val), test
