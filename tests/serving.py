"""Helpers for the service and browser tests and the page benchmark: small real indexes, a live server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
SKETCHY = SHARED / "data" / "sketchy-mini"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
]


def photo_paths(classes: list[str] | None = None, per_class: int = 25) -> list[Path]:
    """sketchy-mini photos: the first ``per_class`` of each class (all 125 classes when None)."""
    folders = [SKETCHY / "photos" / c for c in classes] if classes else sorted((SKETCHY / "photos").iterdir())
    return [p for folder in folders for p in sorted(folder.glob("*.jpg"))[:per_class]]


def build_test_index(out_dir: Path, model, paths: list[Path]) -> Path:
    """A real index of ``paths`` built with ``model`` (the same code path as ``sketchfind index``)."""
    from sketchfind.index import build_index

    build_index(paths, out_dir, model, label_from_folder=True)
    return out_dir


@contextmanager
def live_server(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def launch_chromium(playwright):
    """Debian's chromium, headless, with no background network traffic (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def draw(page, strokes, canvas_selector: str = "#canvas", canvas_size: int = 512) -> None:
    """Draw strokes (canvas pixels) with the mouse: one press / moves / release per stroke."""
    box = page.locator(canvas_selector).bounding_box()
    scale = box["width"] / canvas_size
    for stroke in strokes:
        x0, y0 = stroke[0]
        page.mouse.move(box["x"] + x0 * scale, box["y"] + y0 * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.up()
