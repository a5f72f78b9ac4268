"""Helpers for the index, search and CLI tests: small real galleries, corrupt files, tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
SKETCHY = SHARED / "data" / "sketchy-mini"
CLASSES = ("cup", "airplane", "swan")


def tiny(seed: int = 0):
    """The random-init zse-tiny model with a fixed seed (same weights in every process)."""
    import sketchfind

    torch.manual_seed(seed)
    return sketchfind.load_model("zse-tiny", random_init=True)


def copy_photos(dst: Path, classes=CLASSES, per_class: int = 8) -> list[Path]:
    """Copies the first ``per_class`` sketchy-mini photos of each class into dst/<class>/."""
    out = []
    for name in classes:
        folder = dst / name
        folder.mkdir(parents=True, exist_ok=True)
        for src in sorted((SKETCHY / "photos" / name).glob("*.jpg"))[:per_class]:
            out.append(Path(shutil.copy(src, folder / src.name)))
    return out


def sketches(classes=CLASSES, per_class: int = 2) -> list[Path]:
    """The first ``per_class`` sketchy-mini sketches of each class."""
    return [p for c in classes for p in sorted((SKETCHY / "sketches" / c).glob("*.png"))[:per_class]]


def write_corrupt_files(folder: Path) -> list[Path]:
    """Files an indexer must skip: truncated JPEG, random bytes, empty file, text named .webp."""
    folder.mkdir(parents=True, exist_ok=True)
    good = sorted((SKETCHY / "photos" / "cup").glob("*.jpg"))[0].read_bytes()
    files = {
        "truncated.jpg": good[: len(good) // 3],
        "noise.png": bytes(range(256)) * 8,
        "empty.jpg": b"",
        "notes.webp": b"this is not an image\n",
        "fake.bmp": b"BM" + b"\x00" * 10,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def run_cli(argv: list[str], crash_at: str | None, log: str) -> None:
    """Runs ``sketchfind ARGV`` as the console script would, in a process of its own (the crash tests start
    it from a forkserver that has imported sketchfind already), with ``SKETCHFIND_CRASH_AT`` set to
    ``crash_at``; stdout and stderr go to ``log``. The exit status is the CLI's, or -SIGKILL."""
    import os

    from sketchfind.cli import app

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.pop("SKETCHFIND_CRASH_AT", None)
    if crash_at:
        os.environ["SKETCHFIND_CRASH_AT"] = crash_at
    os.environ["SKETCHFIND_RUNTIME"] = "torch"  # no ONNX export per process
    torch.set_num_threads(1)  # the same arithmetic in every run, so token codes compare bitwise
    app(argv, prog_name="sketchfind")
