"""``sketchfind serve``: index a photo folder (new and changed photos only), then serve the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .settings import Settings


def update_index(photos: Path, settings: Settings, console: Console) -> Any:
    """Build or update the index at ``settings.index`` from a photo folder, showing progress."""
    from ..index import build_index
    from ..models import load_model

    model = load_model(settings.model, weights=settings.weights) if (settings.model or settings.weights) else None
    if model is None and not (settings.index / "index_info.json").exists():
        model = load_model()  # a new index gets the default model
    console.print(f"indexing {photos} into {settings.index} ...")
    report = build_index([photos], settings.index, model, progress=True)
    console.print(_summary(report))
    return report


def _summary(report: Any) -> str:
    counts = {name: len(getattr(report, name, []) or []) for name in ("new", "updated", "skipped", "failed")}
    return "index: " + ", ".join(f"{n} {name}" for name, n in counts.items())


def serve(settings: Settings, photos: Path | None, host: str, port: int, console: Console) -> None:
    """Index ``photos`` if given, load the Searcher once, serve until Ctrl-C."""
    import uvicorn

    from .main import create_app, open_searcher

    if photos is not None:
        update_index(photos, settings, console)
    searcher = open_searcher(settings)  # fail here, with a clean message, rather than inside uvicorn
    app = create_app(settings, searcher_factory=lambda _: searcher)
    where = f"http://{host}:{port}/"
    uploads = "enabled (bearer token)" if settings.token else "disabled (no --token)"
    console.print(
        f"sketchfind is serving {settings.index} at [bold]{where}[/bold]  (API schema: {where}openapi.json; "
        f"photo upload/delete: {uploads}); Ctrl-C stops it"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
