"""The page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright for Python).

The server runs on 127.0.0.1 with a real index of sketchy-mini photos; the tests draw sketchy-mini
sketches stroke by stroke with the mouse (and a stroke with touch), check the results grid and the
explanation view, and save screenshots under test-artifacts/browser/.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import threading
import time

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


def _page(browser, base_url, viewport=(1280, 900), **context_options):
    # bypass_csp only lets Playwright's own wait_for_function run; the page itself runs under its CSP
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True, **context_options)
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
    assert "regions" in page.inner_text("#explain-status")
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


# ----------------------------------------------------------------------------- toolbar, captions, scores (tiny model)

LONG_LABEL = "a_class_folder_name_far_too_long_to_fit_under_any_thumbnail"


SLOW_SEARCH_S = 0.8  # as `exhaustive` on a gallery of a few thousand photos


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """The tiny model behind searches that take SLOW_SEARCH_S each; yields (url, the queries searched, the model,
    a gate the searches wait at while a test holds it cleared)."""
    torch.manual_seed(0)
    model = sketchfind.load_model("zse-tiny", random_init=True)
    index = build_test_index(tmp_path_factory.mktemp("slow-index"), model, photo_paths(["airplane", "cat"], 4))
    searched = []
    lock = threading.Lock()
    gate = threading.Event()  # cleared by a test: searches wait at it
    gate.set()

    def factory(settings):
        searcher = Searcher.open(settings.index, model=model)
        search_tokens = searcher.search_tokens

        def slow(query, *args, **kwargs):
            with lock:
                searched.append(query.clone())
            gate.wait(timeout=60)
            time.sleep(SLOW_SEARCH_S)
            return search_tokens(query, *args, **kwargs)

        searcher.search_tokens = slow
        return searcher

    app = create_app(Settings(index=index), searcher_factory=factory)
    with live_server(app) as url:
        yield url, searched, model, gate


def test_strokes_faster_than_the_search_send_one_request_at_a_time(browser, slow_server, artifacts):
    """Each lifted pen asks for a search; while one is out the page waits and then sends only the newest sketch,
    so the server never gets a pile of searches nobody will see (nor answers 429), and what it searches last is
    the whole drawing."""
    url, searched, model, _ = slow_server
    page, errors = _page(browser, url)
    strokes = sketch_strokes(sorted((SKETCHY / "sketches" / "airplane").glob("*.png"))[0])
    assert len(strokes) >= 6
    searched.clear()
    draw(page, strokes)  # a stroke every few tens of ms: many end while a search is out
    _settle(page)
    state = page.evaluate("({requests: window.sketchfind.requests, maxInFlight: window.sketchfind.maxInFlight})")
    assert state["maxInFlight"] == 1
    assert 2 <= state["requests"] < len(strokes) and state["requests"] == len(searched)
    assert "error" not in (page.get_attribute("#status", "class") or "")
    assert page.locator("#grid .hit").count() == 8
    # the last search was the finished drawing: the canvas as it is now, encoded here, gives its query
    data_url = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
    final = base64.b64decode(data_url.split(",", 1)[1])
    from sketchfind.preprocess import preprocess_sketch

    with torch.inference_mode():
        want = model.encode_sketch(preprocess_sketch(final, model.cfg.preprocess)[None])
    torch.testing.assert_close(searched[-1], want, atol=1e-5, rtol=1e-5)
    page.screenshot(path=str(artifacts / "slow-search.png"))
    assert errors == []


def test_a_busy_server_is_asked_again_not_reported_as_an_error(browser, slow_server):
    """Three tabs of one client search at once: the server takes two model requests per client and answers
    the third 429 with Retry-After; that tab searches again after it instead of showing an error."""
    url, _, _, gate = slow_server
    pages = [_page(browser, url) for _ in range(3)]
    strokes = sketch_strokes(sorted((SKETCHY / "sketches" / "cat").glob("*.png"))[0])
    gate.clear()  # the first two searches wait in the server
    try:
        for page, _ in pages:
            draw(page, strokes[:1])
        pages[2][0].wait_for_function("document.getElementById('status').textContent.includes('busy')", timeout=30_000)
    finally:
        gate.set()
    for page, errors in pages:
        _wait_for_search(page, 1)
        assert page.locator("#grid .hit").count() == 8
        assert "error" not in (page.get_attribute("#status", "class") or "")
        assert errors == []
    assert pages[2][0].evaluate("window.sketchfind.requests") == 2  # refused once, then sent again


@pytest.fixture(scope="module")
def long_names_server(tmp_path_factory):
    """Six photos: three airplanes as they are, three cups with a very long class (folder) and file name."""
    torch.manual_seed(0)
    model = sketchfind.load_model("zse-tiny", random_init=True)
    root = tmp_path_factory.mktemp("long-names")
    folder = root / LONG_LABEL
    folder.mkdir()
    cups = []
    for i, photo in enumerate(photo_paths(["cup"], 3)):
        cups.append(folder / f"{photo.stem}_a_descriptive_file_name_that_goes_on_and_on_{i}.jpg")
        shutil.copy(photo, cups[-1])
    index = build_test_index(root / "index", model, photo_paths(["airplane"], 3) + cups)
    app = create_app(Settings(index=index), searcher_factory=lambda s: Searcher.open(s.index, model=model))
    with live_server(app) as url:
        yield url


def _search_with_a_sketch(page, cls: str = "cup") -> None:
    searches = page.evaluate("window.sketchfind.searches")
    draw(page, sketch_strokes(sorted((SKETCHY / "sketches" / cls).glob("*.png"))[0]))
    _wait_for_search(page, searches + 1)


def _choose_strategy(page, strategy: str) -> None:
    searches = page.evaluate("window.sketchfind.searches")
    page.select_option("#strategy", strategy)
    _wait_for_search(page, searches + 1)  # a drawn sketch is searched again with the new strategy
    assert f"{strategy})" in page.inner_text("#status")


def _toolbar_rows(page) -> list[int]:
    """The distinct rows (rounded vertical centres) the toolbar's visible controls sit on."""
    return page.eval_on_selector_all(
        ".toolbar > :not(.warning)",
        """items => [...new Set(items.filter(e => e.offsetParent !== null).map(e => {
             const r = e.getBoundingClientRect(); return Math.round((r.top + r.bottom) / 2);
           }))]""",
    )


def test_toolbar_fits_one_row_at_1280(browser, long_names_server, artifacts):
    page, errors = _page(browser, long_names_server, viewport=(1280, 800))
    controls = page.eval_on_selector_all(".toolbar > :not(.warning)", "items => items.length")
    assert controls >= 9 and page.locator(".toolbar").locator("#strategy, #k").count() == 2
    rows = _toolbar_rows(page)
    assert len(rows) == 1 or max(rows) - min(rows) <= 2, f"toolbar controls on rows {rows}"
    toolbar = page.locator(".toolbar").bounding_box()
    assert toolbar["x"] + toolbar["width"] <= 1280
    page.select_option("#strategy", "exhaustive")  # the warning takes its own space: the controls keep their row
    assert _toolbar_rows(page) == rows
    page.screenshot(path=str(artifacts / "toolbar-1280.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 160})
    assert errors == []


def test_exhaustive_warns_that_it_is_slow(browser, long_names_server, artifacts):
    page, errors = _page(browser, long_names_server, viewport=(1280, 800))
    hint = page.locator("#strategy-hint")
    assert page.input_value("#strategy") == "ann" and not hint.is_visible()  # the server's default strategy
    _search_with_a_sketch(page)
    _choose_strategy(page, "exhaustive")
    assert hint.is_visible()
    text = hint.inner_text()
    assert "slow" in text.lower() and "every photo" in text and "6 photos" in text  # this index's size
    assert page.locator("#grid .hit").count() == 6  # non-blocking: the search ran, results are there
    page.screenshot(path=str(artifacts / "exhaustive-warning.png"))
    _choose_strategy(page, "clustered")
    assert not hint.is_visible()
    _choose_strategy(page, "ann")
    assert not hint.is_visible()
    # the results count is a search option too
    searches = page.evaluate("window.sketchfind.searches")
    page.fill("#k", "2")
    page.press("#k", "Enter")
    _wait_for_search(page, searches + 1)
    assert page.locator("#grid .hit").count() == 2
    assert errors == []


def test_long_names_never_hide_the_score(browser, long_names_server, artifacts):
    page, errors = _page(browser, long_names_server, viewport=(1280, 800))
    _search_with_a_sketch(page)
    tiles = page.eval_on_selector_all(
        "#grid .hit",
        """cards => cards.map(card => {
             const box = (e) => e.getBoundingClientRect(), score = card.querySelector('.score');
             const name = card.querySelector('.name');
             const c = box(card), s = box(score);
             const inside = s.width > 0 && s.left >= c.left && s.right <= c.right && s.top >= c.top
               && s.bottom <= c.bottom;
             return {label: card.dataset.label, score: score.textContent, inside,
                     scoreCut: score.scrollWidth > score.clientWidth, nameCut: name.scrollWidth > name.clientWidth};
           })""",
    )
    assert len(tiles) == 6
    long_tiles = [t for t in tiles if t["label"] == LONG_LABEL]
    assert len(long_tiles) == 3 and all(t["nameCut"] for t in long_tiles)  # the long names are ellipsised ...
    for tile in tiles:  # ... and every score is whole and inside its tile
        assert tile["inside"] and not tile["scoreCut"], tile
        assert re.fullmatch(r"-?\d\.\d\d", tile["score"]), tile
    page.screenshot(path=str(artifacts / "long-names.png"))
    assert errors == []


def _dialog_numbers(page) -> list[str]:
    """Every decimal number a person reads in the open result dialog (its text, not the picture)."""
    return re.findall(r"\d+\.\d+", page.inner_text("#viewer"))


def _open_first_result(page) -> tuple[dict, dict]:
    """Opens the first result; returns its hit and the /api/explain answer."""
    hit = page.evaluate("window.sketchfind.lastResults[0]")
    with page.expect_response("**/api/explain") as answer:
        page.locator("#grid .hit").first.click()
    page.wait_for_function("document.getElementById('viewer').dataset.explained === '1'", timeout=60_000)
    return hit, answer.value.json()


def test_result_dialog_shows_one_labelled_score(browser, long_names_server, artifacts):
    page, errors = _page(browser, long_names_server, viewport=(1280, 800))
    _search_with_a_sketch(page, "airplane")

    # ann ranks by embedding similarity: that is the one number, named; the picture's score is named as another
    # (zse-tiny's [Ret] cannot be split over cells, so its explanation is the relation network's)
    hit, _ = _open_first_result(page)
    shown = f"{hit['score']:.3f}"
    assert _dialog_numbers(page) == [shown]
    assert page.inner_text("#viewer-score").startswith(f"similarity {shown} — how close")
    assert "score" not in page.inner_text("#viewer-title")
    assert "a different measure from the similarity" in page.inner_text("#explain-status")
    page.screenshot(path=str(artifacts / "dialog-ann.png"))
    page.keyboard.press("Escape")

    # exhaustive ranks by the relation network: the dialog's score is the picture's "match score"
    _choose_strategy(page, "exhaustive")
    hit, explained = _open_first_result(page)
    shown = f"{hit['score']:.3f}"
    assert _dialog_numbers(page) == [shown]
    assert page.inner_text("#viewer-score").startswith(f"match score {shown} — how sure the relation network")
    assert f"{explained['score']:.3f}" == shown  # the same number as in the picture's caption
    assert "the same as above" in page.inner_text("#explain-status")
    page.screenshot(path=str(artifacts / "dialog-exhaustive.png"))
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
