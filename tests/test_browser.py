"""The page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright for Python).

The server runs on 127.0.0.1 with a real index of sketchy-mini photos; the tests draw sketchy-mini
sketches stroke by stroke with the mouse (and a stroke with touch), check the results grid and the
explanation view, and save screenshots under test-artifacts/browser/.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

import sketchfind
from sketchfind.search import Searcher
from sketchfind.service import Settings, create_app

from .serving import CHROMIUM, SKETCHY, build_test_index, draw, launch_chromium, live_server, photo_paths
from .tracing import render_strokes_like_canvas, sketch_strokes

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.fail("Debian's chromium is missing: run scripts/install-test-deps.sh (the README's test command does)")

PEN_WIDTH = 5  # the page's default


@pytest.fixture(scope="module")
def artifacts():
    from .conftest import REPO

    folder = REPO / "test-artifacts" / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def _page(browser, base_url, **context_options):
    # bypass_csp only lets Playwright's own wait_for_function run; the page itself runs under its CSP
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True, **context_options)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base_url + "/")
    page.wait_for_function("document.getElementById('index-info').textContent.includes('photos')")
    return page, errors


def _wait_for_search(page, count: int) -> None:
    """Until at least ``count`` searches have shown results and nothing is pending."""
    page.wait_for_function(f"window.sketchfind.searches >= {count} && window.sketchfind.idle", timeout=60_000)


def _settle(page) -> None:
    """Until the last stroke's search has answered (results or an error)."""
    page.wait_for_function("window.sketchfind.idle", timeout=60_000)


def _labels(page) -> list[str]:
    return page.eval_on_selector_all("#grid .hit", "cards => cards.map(c => c.dataset.label)")


# ----------------------------------------------------------------------------- the page's mechanics (tiny model)


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    torch.manual_seed(0)
    model = sketchfind.load_model("zse-tiny", random_init=True)
    index = build_test_index(tmp_path_factory.mktemp("tiny-index"), model, photo_paths(["airplane", "cat", "chair"], 6))
    app = create_app(Settings(index=index), searcher_factory=lambda s: Searcher.open(s.index, model=model))
    with live_server(app) as url:
        yield url


def test_draw_undo_redo_touch_explain_and_errors(browser, tiny_server, artifacts, tmp_path):
    page, errors = _page(browser, tiny_server, has_touch=True)
    assert "Draw something" in page.inner_text("#status")
    assert page.locator("#grid .empty").count() == 1

    sketch = sorted((SKETCHY / "sketches" / "airplane").glob("*.png"))[0]
    strokes = sketch_strokes(sketch)
    draw(page, strokes[:1])
    _wait_for_search(page, 1)  # one stroke is enough for results
    draw(page, strokes[1:])
    _settle(page)
    assert page.locator("#grid .hit").count() == 18  # the whole small index (k=24 > 18 photos)
    assert page.locator("#grid .hit img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    latency = page.evaluate("window.sketchfind.lastLatencyMs")
    assert latency > 0 and f"{int(latency + 0.5)} ms" in page.inner_text("#status")  # JS Math.round
    page.screenshot(path=str(artifacts / "tiny-results.png"))

    # undo everything -> empty state again; redo one stroke -> results again
    searches = page.evaluate("window.sketchfind.searches")
    for _ in strokes:
        page.click("#undo")
    _settle(page)
    assert page.is_disabled("#undo") and "Draw something" in page.inner_text("#status")
    page.click("#redo")
    _wait_for_search(page, searches + 1)
    page.click("#clear")
    _settle(page)
    assert page.locator("#grid .hit").count() == 0

    # a finger: real touch events through the DevTools protocol become pointer events on the canvas
    box = page.locator("#canvas").bounding_box()
    cdp = page.context.new_cdp_session(page)
    searches = page.evaluate("window.sketchfind.searches")
    points = [(box["x"] + 100 + 6 * i, box["y"] + 100 + 4 * i) for i in range(30)]
    for i, (x, y) in enumerate(points):
        cdp.send(
            "Input.dispatchTouchEvent", {"type": "touchMove" if i else "touchStart", "touchPoints": [{"x": x, "y": y}]}
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    _wait_for_search(page, searches + 1)
    assert page.evaluate("window.sketchfind.lastResults.length") > 0

    # the eraser removes ink: erasing the whole touch stroke leaves an empty sketch the server refuses
    page.click("#eraser")
    page.locator("#width").fill("24")
    draw(page, [[(x - box["x"], y - box["y"]) for x, y in points]], canvas_size=box["width"])
    _settle(page)
    assert "empty" in page.inner_text("#status")
    page.click("#pen")

    # results -> large view with the explanation
    draw(page, strokes)
    _settle(page)
    page.locator("#grid .hit").first.click()
    page.wait_for_function("document.getElementById('viewer').dataset.explained === '1'", timeout=60_000)
    assert page.locator("#viewer").evaluate("d => d.open")
    assert page.locator("#explain-image").evaluate("img => img.naturalWidth") > 600
    assert "Match score" in page.inner_text("#explain-status")
    page.screenshot(path=str(artifacts / "tiny-explanation.png"))
    page.keyboard.press("Escape")
    assert not page.locator("#viewer").evaluate("d => d.open")

    # uploading a file that is no sketch: the person is told what to do
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    answers = page.evaluate("window.sketchfind.answers")
    page.set_input_files("#upload", str(bad))
    page.wait_for_function(f"window.sketchfind.answers > {answers} && window.sketchfind.idle")
    assert "Upload a PNG, JPEG, SVG or QuickDraw JSON" in page.inner_text("#status")
    # ... and uploading a real sketch file (QuickDraw strokes) searches with it
    quickdraw = tmp_path / "tent.ndjson"
    quickdraw.write_text(json.dumps({"word": "tent", "drawing": [[[0, 50, 100, 0], [100, 0, 100, 100]]]}))
    searches = page.evaluate("window.sketchfind.searches")
    page.set_input_files("#upload", str(quickdraw))
    _wait_for_search(page, searches + 1)
    page.screenshot(path=str(artifacts / "tiny-upload.png"))
    assert errors == []


# ----------------------------------------------------------------------------- retrieval with the default model

UNSEEN_CANDIDATES = ["airplane", "teddy_bear", "windmill", "pineapple", "umbrella", "scissors", "wine_bottle", "horse"]


def _default_model():
    return sketchfind.load_model()


def _canvas_png(strokes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render_strokes_like_canvas(strokes, width=PEN_WIDTH)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_drawing_a_sketch_finds_its_class(browser, artifacts, tmp_path_factory):
    model = _default_model()
    classes = UNSEEN_CANDIDATES + ["cup", "swan", "harp", "snail"]
    index = build_test_index(tmp_path_factory.mktemp("default-index"), model, photo_paths(classes, per_class=12))
    searcher = Searcher.open(index, model=model)
    # choose, through the Python API, a sketch the model gets right when drawn as the page draws it
    chosen = None
    for cls in UNSEEN_CANDIDATES:
        for sketch in sorted((SKETCHY / "sketches" / cls).glob("*.png"))[:3]:
            strokes = sketch_strokes(sketch)
            hits = searcher.search(_canvas_png(strokes), k=5).hits
            if cls in [searcher.photo(hit.photo_id).label for hit in hits]:
                chosen = (cls, sketch, strokes)
                break
        if chosen:
            break
    assert chosen, "the default model ranks no candidate sketch's class in its top 5"
    cls, sketch, strokes = chosen

    app = create_app(Settings(index=index), searcher_factory=lambda s: searcher)
    with live_server(app) as url:
        page, errors = _page(browser, url)
        draw(page, strokes[: max(1, len(strokes) // 2)])
        page.screenshot(path=str(artifacts / "drawing.png"))
        draw(page, strokes[max(1, len(strokes) // 2) :])
        _wait_for_search(page, 1)
        top5 = _labels(page)[:5]
        assert cls in top5, f"{sketch.name}: the page's top 5 are {top5}"
        page.screenshot(path=str(artifacts / "results.png"))
        page.locator(f"#grid .hit[data-label='{cls}']").first.click()
        page.wait_for_function("document.getElementById('viewer').dataset.explained === '1'", timeout=60_000)
        page.screenshot(path=str(artifacts / "explanation.png"))
        assert errors == []
