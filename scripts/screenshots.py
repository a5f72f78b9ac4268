"""Screenshots of the page for the README: drawing, results, explanation (headless Chromium).

    python scripts/screenshots.py --index INDEX_DIR [--sketch SKETCH.png] [--out docs]

Serves INDEX_DIR with ``sketchfind serve`` (the index's own model), draws the sketch stroke by stroke
like a person, and saves ``page-drawing.png``, ``page-results.png`` and ``page-explanation.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_page import free_port, start_server  # noqa: E402
from tests.serving import SKETCHY, draw, launch_chromium  # noqa: E402
from tests.tracing import sketch_strokes  # noqa: E402


def shrink(path: Path, width: int = 1100) -> None:
    """Keep README images small (< 500 KB): scale down and quantise to a palette PNG."""
    image = Image.open(path).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--sketch", type=Path, default=sorted((SKETCHY / "sketches" / "airplane").glob("*.png"))[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--result", type=int, default=0, help="which result to open (0 = the first)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(args.index, port, None)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_context(viewport={"width": 1240, "height": 820}, bypass_csp=True).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('index-info').textContent.includes('photos')")
            strokes = sketch_strokes(args.sketch)
            half = max(1, len(strokes) // 3)
            draw(page, strokes[:half])
            page.wait_for_function("window.sketchfind.idle && window.sketchfind.searches > 0", timeout=60_000)
            page.screenshot(path=str(args.out / "page-drawing.png"))
            draw(page, strokes[half:])
            page.wait_for_function("window.sketchfind.idle", timeout=60_000)
            page.screenshot(path=str(args.out / "page-results.png"))
            page.locator("#grid .hit").nth(args.result).click()
            page.wait_for_function("document.getElementById('viewer').dataset.explained === '1'", timeout=60_000)
            page.screenshot(path=str(args.out / "page-explanation.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("page-drawing.png", "page-results.png", "page-explanation.png"):
        shrink(args.out / name)
        print(args.out / name, (args.out / name).stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()
