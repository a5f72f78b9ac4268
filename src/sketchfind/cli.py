"""The ``sketchfind`` command line: a dispatch table over library functions.

Every command catches :class:`SketchfindError` and exits with status 1 and a one-line message;
nothing here holds logic a Python user could not reach from the library.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .errors import SketchfindError

app = typer.Typer(
    help="Find photos in your own collection by drawing a sketch (ZSE-SBIR, zero-shot).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


def friendly(fn):
    """Turns SketchfindError (and Ctrl-C) into a clean message and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SketchfindError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@app.command("check-reference")
@friendly
def check_reference(
    reference: Annotated[Path, typer.Argument(help="the zse-sbir reference folder (shared/reference/zse-sbir)")],
) -> None:
    """Compare the model, preprocessing and metrics with the official ZSE-SBIR goldens."""
    from rich.table import Table

    from .reference import run_checks

    table = Table("golden", "max |diff|", "tolerance", "result")
    failed = 0
    with console.status("running the official-format checkpoint through sketchfind..."):
        for check in run_checks(reference):
            failed += not check.passed
            verdict = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
            table.add_row(check.name, f"{check.max_abs_diff:.3g}", f"{check.tolerance:g}", verdict)
    Console().print(table)
    Console().print("all checks PASS" if not failed else f"{failed} checks FAIL")
    raise typer.Exit(1 if failed else 0)


@app.command("models")
def models() -> None:
    """List the built-in model configurations."""
    from .config import list_models
    from .models.factory import DEFAULT_MODEL, shipped_weights

    for name in list_models():
        tags = [t for t, on in (("default", name == DEFAULT_MODEL), ("weights shipped", shipped_weights(name))) if on]
        print(name + (f"  ({', '.join(tags)})" if tags else ""))


@app.command("serve")
@friendly
def serve(
    photos: Annotated[Path | None, typer.Argument(help="photo folder to index (new and changed photos) first")] = None,
    index: Annotated[Path, typer.Option("--index", help="index directory", envvar="SKETCHFIND_INDEX")] = Path(
        "sketchfind-index"
    ),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    model: Annotated[str | None, typer.Option(help="model name (default: the index's model)")] = None,
    weights: Annotated[Path | None, typer.Option(help="weights file for --model")] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token that allows photo upload/delete", envvar="SKETCHFIND_TOKEN")
    ] = None,
) -> None:
    """Serve the draw-to-search page and the REST API (indexing PHOTOS first when given)."""
    from .service.run import serve as run_serve
    from .service.settings import Settings

    settings = Settings(index=index, model=model, weights=weights, token=token)
    run_serve(settings, photos, host, port, console)


@app.command("explain")
@friendly
def explain(
    sketch: Annotated[Path, typer.Argument(help="the sketch (PNG/JPEG/SVG/QuickDraw JSON)")],
    photo: Annotated[Path, typer.Argument(help="the photo")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write: both images with their heat-maps")] = Path(
        "explanation.png"
    ),
    model: Annotated[str | None, typer.Option(help="model name (default: the default model)")] = None,
    weights: Annotated[Path | None, typer.Option(help="weights file for --model")] = None,
) -> None:
    """Show which parts of SKETCH match which parts of PHOTO (token-correspondence heat-maps)."""
    from .explain import explain as explain_pair
    from .models import load_model

    explanation, images = explain_pair(load_model(model, weights=weights), sketch, photo)
    try:
        images["combined"].save(out, format="PNG")
    except OSError as err:
        raise SketchfindError(f"cannot write {out}: {err.strerror or err}") from err
    grid = f"{explanation.grid}x{explanation.grid}"
    print(f"match score {explanation.score:.3f} ({explanation.source} map {grid}) -> {out}")


if __name__ == "__main__":
    app()
