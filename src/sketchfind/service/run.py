"""``sketchfind serve``: index a photo folder (new and changed photos only), then serve the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import CheckpointError
from .settings import Settings

INDEX_DB = "index.sqlite"


def index_and_open(photos: Path, settings: Settings, console: Console) -> Any:
    """Build (or update) the index at ``settings.index`` from ``photos``, showing progress; the open Searcher."""
    from ..index import build_index
    from ..models import load_model
    from ..search import Searcher
    from .main import open_searcher

    console.print(f"indexing {photos} into {settings.index} (only new or changed photos) ...")
    if (settings.index / INDEX_DB).is_file():  # an existing index keeps its own model
        searcher = open_searcher(settings)
        report = searcher.add_photos([photos], label_from_folder=True, progress=True)
    else:
        try:
            model = load_model(settings.model, weights=settings.weights)  # None: the default model
        except CheckpointError as err:
            raise CheckpointError(f"{err}; on the command line: --model NAME --weights FILE") from err
        report = build_index(
            [photos],
            settings.index,
            model,
            weights=settings.weights,
            label_from_folder=True,
            progress=True,
            runtime=settings.runtime,
        )
        kwargs = {"strategy": settings.strategy} if settings.strategy else {}
        searcher = Searcher.open(settings.index, model=model, runtime=settings.runtime, **kwargs)
    console.print(
        f"{len(report.new)} new, {len(report.updated)} updated, {len(report.skipped)} unchanged, "
        f"{len(report.failed)} skipped as unreadable; {len(searcher)} photos in the index"
    )
    for path, reason in report.failed[:10]:
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False)
    return searcher


def serve(settings: Settings, photos: Path | None, host: str, port: int, console: Console) -> None:
    """Index ``photos`` if given, load the Searcher once, serve until Ctrl-C."""
    import uvicorn

    from .main import create_app, open_searcher

    # open the Searcher before uvicorn starts, so a missing index or model fails with a clean message
    searcher = index_and_open(photos, settings, console) if photos is not None else open_searcher(settings)
    app = create_app(settings, searcher_factory=lambda _: searcher)
    where = f"http://{host}:{port}/"
    uploads = "enabled (bearer token)" if settings.token else "disabled (no --token)"
    console.print(
        f"sketchfind: {len(searcher)} photos, serving at [bold]{where}[/bold]  (API schema: {where}openapi.json; "
        f"photo upload/delete: {uploads}). Ctrl-C stops it."
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
