"""``sketchfind serve``: index a photo folder (new and changed photos only), then serve the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..errors import CheckpointError
from ..names import shown_name
from .settings import Settings


def index_and_open(photos: Path, settings: Settings, console: Console) -> Any:
    """Build (or update) the index at ``settings.index`` from ``photos``, showing progress; the open Searcher."""
    from ..runtime import set_threads
    from ..search import Searcher
    from .main import load_settings_model

    console.print(f"indexing {photos} into {settings.index} (only new or changed photos) ...")
    try:
        model = load_settings_model(settings)  # None: the index's own model, or the default for a new index
    except CheckpointError as err:
        raise CheckpointError(f"{err}; on the command line: --model NAME --weights FILE") from err
    set_threads(settings.threads)  # before the ONNX sessions are made: they take their thread count then
    searcher, report = Searcher.from_photos(
        [photos],
        settings.index,
        model,
        weights=settings.weights,
        strategy=settings.strategy,
        runtime=settings.runtime,
        label_from_folder=True,
        progress=True,
        backend=settings.backend,
        milvus_uri=settings.milvus_uri,
        collection=settings.collection,
    )
    console.print(report.summary())
    for path, reason in report.skipped[:10]:
        console.print(
            f"[yellow]skipped[/yellow] {escape(shown_name(path))}: {escape(shown_name(reason))}", soft_wrap=True
        )
    return searcher


def serve(settings: Settings, photos: Path | None, host: str, port: int, console: Console) -> None:
    """Index ``photos`` if given, load the Searcher once, serve until Ctrl-C."""
    import uvicorn

    from .limits import uvicorn_options
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
    uvicorn.run(app, host=host, port=port, log_level="warning", **uvicorn_options())
