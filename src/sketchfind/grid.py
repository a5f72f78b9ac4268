"""Retrieval grid: one row per query, the sketch then its best photos, captioned with rank and score."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from .atomic import atomic_path
from .errors import SketchfindError
from .preprocess import read_photo, read_sketch_rgb
from .search import SearchResult

TILE = 128
CAPTION = 16
GAP = 4


def _tile(image: Image.Image) -> Image.Image:
    return ImageOps.pad(image.convert("RGB"), (TILE, TILE), color=(255, 255, 255))


def render_grid(queries: list[tuple[object, SearchResult]], out: str | Path, columns: int = 8) -> Path:
    """Writes a PNG grid for (sketch source, result) pairs; returns its path."""
    if not queries:
        raise SketchfindError("no search results to draw")
    out = Path(out)
    width = GAP + (columns + 1) * (TILE + GAP)
    height = GAP + len(queries) * (TILE + CAPTION + GAP)
    canvas = Image.new("RGB", (width, height), (240, 240, 240))
    draw = ImageDraw.Draw(canvas)
    for row, (source, result) in enumerate(queries):
        y = GAP + row * (TILE + CAPTION + GAP)
        canvas.paste(_tile(Image.fromarray(read_sketch_rgb(source))), (GAP, y))
        draw.text((GAP + 2, y + TILE + 2), "sketch", fill=(0, 0, 0))
        for col, hit in enumerate(result.hits[:columns], start=1):
            x = GAP + col * (TILE + GAP)
            try:
                tile = _tile(read_photo(hit.path))
            except SketchfindError:  # the photo moved or changed since it was indexed
                tile = Image.new("RGB", (TILE, TILE), (200, 200, 200))
            canvas.paste(tile, (x, y))
            draw.text((x + 2, y + TILE + 2), f"#{hit.rank}  {hit.score:.3f}", fill=(0, 0, 0))
    try:
        with atomic_path(out, durable=False) as tmp:
            canvas.save(tmp, format="PNG")
    except OSError as exc:
        raise SketchfindError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out
