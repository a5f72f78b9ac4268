"""Hostile inputs, made on the fly (nothing large is stored in the repository): decompression bombs,
truncated and mislabelled images, pathological SVG and strokes, odd file names. Shared by the hardening
tests and ``benchmarks/bench_hostile.py``."""

from __future__ import annotations

import io
import json
import random
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTO = sorted((SHARED / "data" / "sketchy-mini" / "photos" / "cup").glob("*.jpg"))[0]
SKETCH = sorted((SHARED / "data" / "sketchy-mini" / "sketches" / "cup").glob("*.png"))[0]


def big_jpeg(width: int = 8000, height: int = 5000) -> bytes:
    """A 40 MP JPEG (at the pixel limit) with a few lines of ink: small on disk, large when decoded."""
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    draw.line((width // 8, height // 8, width * 7 // 8, height * 7 // 8), fill=0, width=max(4, width // 200))
    draw.ellipse((width // 3, height // 3, width // 2, height // 2), outline=0, width=max(4, width // 200))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=40)
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (900 MP by default): refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def svg_subpaths(n: int = 200_000, seed: int = 0) -> bytes:
    """An SVG of one path with ``n`` sub-paths (200k: ~4 MB, ~20 s to rasterise without a budget)."""
    rng = random.Random(seed)
    d = " ".join(f"M{rng.randint(0, 999)} {rng.randint(0, 999)}l3 3" for _ in range(n))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="1000">'
        f'<path d="{d}" stroke="black" fill="none"/></svg>'
    ).encode()


def svg_elements(n: int = 20_000) -> bytes:
    """An SVG of ``n`` tiny circles (over the element limit)."""
    circles = "".join(f'<circle cx="{i % 100}" cy="{i // 100}" r="1"/>' for i in range(n))
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="200">{circles}</svg>'.encode()


def svg_long_lines(n: int = 2_000) -> bytes:
    """A small SVG whose lines are very long once scaled to the canvas (over the path-length limit)."""
    lines = "".join(f'<line x1="0" y1="{i}" x2="1e9" y2="{i}" stroke="black"/>' for i in range(n))
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="1000">{lines}</svg>'.encode()


def svg_billion_laughs() -> bytes:
    """XML entity expansion: the parser must not expand it into gigabytes."""
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)
    )
    return f'<?xml version="1.0"?><!DOCTYPE svg [{entities}]><svg xmlns="http://www.w3.org/2000/svg">&i;</svg>'.encode()


HUGE_INT = "1" + "0" * 400  # 10^400: an int in JSON, an OverflowError as a float

# (name, JSON text of a strokes body, what the error must say)
BAD_STROKES = [
    ("huge", f'{{"strokes": [[[0, {HUGE_INT}], [0, 1]]]}}', "between"),
    ("huge-float", '{"strokes": [[[0, 1e400], [0, 1]]]}', "between"),
    ("string", '{"strokes": [[["0", "1"], [0, 1]]]}', "between"),
    ("bool", '{"strokes": [[[true, false], [0, 1]]]}', "between"),
    ("null", '{"strokes": [[[null, 1], [0, 1]]]}', "between"),
    ("nested", '{"strokes": [[[[0], [1]], [0, 1]]]}', "between"),
    ("ragged", '{"strokes": [[[0, 1, 2], [0, 1]]]}', "equally long"),
]


def many_points(n: int = 300_000) -> str:
    """A strokes body over the point budget."""
    return json.dumps({"strokes": [[list(range(n)), list(range(n))]]})


def truncated_jpeg() -> bytes:
    data = PHOTO.read_bytes()
    return data[: len(data) // 2]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo_folder(root: Path) -> dict[str, bytes]:
    """A folder of photos with hostile names and mislabelled contents; returns {kind: file name bytes}.

    Good photos: a non-UTF-8 name, a name with a newline, a PNG named .jpg. Not photos: an SVG named .jpg,
    strokes JSON named .png, a truncated JPEG."""
    root.mkdir(parents=True, exist_ok=True)
    good = PHOTO.read_bytes()
    png = png_bytes(Image.open(PHOTO).convert("RGB"))
    files = {
        "latin1": (b"caf\xe9 cr\xe8me.jpg", good),
        "newline": (b"two\nlines.jpg", good),
        "png-as-jpg": (b"really-a-png.jpg", png),
        "svg-as-jpg": (b"drawing.jpg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
        "strokes-as-png": (b"strokes.png", b"[[[0, 10], [0, 10]]]"),
        "truncated": (b"truncated.jpg", truncated_jpeg()),
    }
    base = bytes(root)
    for name, data in files.values():
        with open(base + b"/" + name, "wb") as file:
            file.write(data)
    return {kind: name for kind, (name, _) in files.items()}
