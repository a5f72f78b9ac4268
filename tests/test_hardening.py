"""Issue #12: bounded memory and time for every request, no 5xx on any input, any file name.

One regression test per finding of the probe, with real hostile inputs (tests/hostile.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from sketchfind.cli import app as cli_app
from sketchfind.config import PreprocessConfig
from sketchfind.errors import InputError, NotAPhotoError, TooComplexError, TooLargeError
from sketchfind.index import build_index
from sketchfind.models.factory import save_weights
from sketchfind.preprocess import images, is_light_decode, preprocess_sketch, read_photo, render_svg
from sketchfind.search import PreparedSketch, Searcher
from sketchfind.service import Settings, create_app, limits
from sketchfind.service import deps as service_deps
from sketchfind.service.thumbnails import ThumbnailCache

from . import hostile
from .index_helpers import copy_photos, tiny

TOKEN = "hardening token"
runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    path.write_bytes(hostile.big_jpeg())
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model, big_jpeg):
    root = tmp_path_factory.mktemp("hard")
    copy_photos(root / "photos", classes=("cup", "swan"), per_class=3)
    hostile.photo_folder(root / "photos" / "odd")
    build_index([root / "photos", big_jpeg], root / "idx", model, label_from_folder=True)
    return root / "idx"


@pytest.fixture()
def client(index_dir, model, tmp_path):
    settings = Settings(index=index_dir, token=TOKEN, upload_dir=tmp_path / "uploads")
    app = create_app(settings, searcher_factory=lambda s: Searcher.open(s.index, model=model))
    with TestClient(app) as client:
        yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ----------------------------------------------------------------------------- 1. memory


def test_big_sketch_is_decoded_reduced_with_bounded_memory(big_jpeg):
    tracemalloc.start()  # numpy and Pillow-to-numpy copies are traced; the old pipeline peaked at ~1 GB here
    try:
        tensor = preprocess_sketch(big_jpeg, PreprocessConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tensor.shape == (3, 224, 224) and peak < 150 * 2**20, peak


def test_a_large_png_photo_is_reduced_before_it_is_copied():
    image = Image.new("RGBA", (4000, 2500), (255, 255, 255, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    photo = read_photo(hostile.png_bytes(image), max_side=320)  # (peak RSS: benchmarks/bench_load.py --hostile)
    assert photo.size == (572, 358) and photo.mode == "RGB"  # reduced by 7 (rounding up): both sides >= 320


def _composited(rgba: np.ndarray) -> np.ndarray:
    """Reference: RGBA on white, rounded, on the whole array at once."""
    rgb, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(1001, 777), (64, 3001), (5, 9)])
def test_strip_wise_reduce_and_compositing_equal_the_whole_image_versions(size, monkeypatch):
    monkeypatch.setattr(images, "STRIP_PIXELS", 5000)  # many strips, heights not dividing the image
    rgba = np.random.default_rng(0).integers(0, 256, (*size, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    for factor in (2, 3, 4, 8):
        assert np.array_equal(np.asarray(images._reduce(image, factor)), np.asarray(image.reduce(factor)))
    assert np.array_equal(images._flatten_alpha(rgba), _composited(rgba))
    assert np.array_equal(np.asarray(images._flatten_pil(image)), _composited(rgba))
    palette = image.convert("P")
    palette.info["transparency"] = 3
    assert np.array_equal(np.asarray(images._flatten_pil(palette)), _composited(np.asarray(palette.convert("RGBA"))))


def test_a_transparent_photo_is_composited_without_full_size_temporaries():
    rgba = np.zeros((2500, 4000, 4), np.uint8)
    rgba[..., 3] = np.arange(4000, dtype=np.uint32)[None, :] * 255 // 3999  # a transparency gradient
    rgba[::7, :, :3] = 200
    data = hostile.png_bytes(Image.fromarray(rgba, "RGBA"))
    tracemalloc.start()  # numpy arrays are traced: ~30 MB of one strip's temporaries; the whole image at once: ~300 MB
    try:
        photo = read_photo(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert photo.mode == "RGB" and np.array_equal(np.asarray(photo), _composited(rgba))
    assert peak < 48 * 2**20, peak


def test_a_refused_svg_leaves_no_garbage_holding_its_expansion():
    """An entity bomb the parser stops still expanded megabytes: they must be freed when the error is,
    not left in a reference cycle for the garbage collector (the server's memory rose 45 MB per request)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with pytest.raises(InputError):
            render_svg(hostile.svg_billion_laughs())
        gc.collect()
        garbage = sum(sys.getsizeof(obj) for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert garbage < 100_000, garbage


def test_thumbnails_use_a_reduced_decode_and_size_buckets(big_jpeg):
    assert max(read_photo(big_jpeg, max_side=256).size) <= 1000  # JPEG DCT scaling 1/8, not 8000x5000
    cache = ThumbnailCache()
    sizes = {Image.open(__import__("io").BytesIO(cache.get(big_jpeg, "h", s))).size for s in range(200, 257)}
    assert len(cache._items) == 1 and sizes == {(256, 160)}  # 57 sizes asked, one thumbnail made


def test_thumbnail_route_answers_per_bucket(client):
    ids = client.get("/api/info").json()["photos"]
    assert ids > 0
    first = client.get("/api/photos/1/thumbnail?size=100")
    second = client.get("/api/photos/1/thumbnail?size=101")
    assert first.status_code == second.status_code == 200 and first.headers["etag"] == second.headers["etag"]


def test_decodes_are_bounded(monkeypatch):
    state = service_deps.ServiceState(searcher=None, settings=Settings(), thumbnails=ThumbnailCache())
    running, peak, guard = [0], [0], threading.Lock()

    def work():
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1

    async def many():
        await asyncio.gather(*(state.decode(work) for _ in range(8)))

    asyncio.run(many())
    assert peak[0] == service_deps.MAX_CONCURRENT_DECODES


def test_light_decodes_never_wait_behind_heavy_ones():
    state = service_deps.ServiceState(searcher=None, settings=Settings(), thumbnails=ThumbnailCache())
    release = threading.Event()

    async def scenario():
        heavy = [asyncio.create_task(state.decode(release.wait, 10)) for _ in range(3)]  # every heavy slot taken
        await asyncio.sleep(0.05)
        light = await asyncio.wait_for(state.decode(lambda: "done", light=True), 5)
        release.set()
        await asyncio.gather(*heavy)
        return light

    assert asyncio.run(scenario()) == "done"


def test_model_lock_serves_cheap_calls_first_without_starving_the_others():
    lock, order = service_deps.ModelLock(), []

    async def call(name: str, cheap: bool):
        async with lock.hold(cheap):
            order.append(name)
            await asyncio.sleep(0.001)

    async def scenario():
        first = asyncio.create_task(call("first", False))
        await asyncio.sleep(0)  # holds the lock; the rest queue up
        waiting = [asyncio.create_task(call(f"explain{i}", False)) for i in range(2)]
        waiting += [asyncio.create_task(call(f"ann{i}", True)) for i in range(6)]
        gone = asyncio.create_task(call("gone", True))
        await asyncio.sleep(0)
        gone.cancel()  # a client that left while waiting gives up its place
        await asyncio.gather(first, *waiting, return_exceptions=True)
        await asyncio.gather(gone, return_exceptions=True)
        assert not lock.locked()

    asyncio.run(scenario())
    streak = ["ann0", "ann1", "ann2", "ann3"]
    assert order == ["first", *streak, "explain0", "ann4", "ann5", "explain1"]


def test_light_decode_is_judged_from_the_header():
    small_png = hostile.png_bytes(Image.new("L", (1600, 1200), 255))
    for light in (hostile.SKETCH.read_bytes(), hostile.PHOTO, small_png):
        assert is_light_decode(light)
    assert is_light_decode([[[0, 10], [0, 10]]]) and is_light_decode(b"[[[0, 10], [0, 10]]]")
    for heavy in (hostile.big_jpeg(), hostile.png_bomb(), hostile.svg_subpaths(10), hostile.many_points().encode()):
        assert not is_light_decode(heavy)
    assert not is_light_decode(json.loads(hostile.many_points())["strokes"]) and not is_light_decode(b"\x89PNG junk")


# ----------------------------------------------------------------------------- 2. file names, 7. photos by content


def test_any_file_name_is_indexed_reported_and_shown(index_dir, tmp_path, model):
    with Searcher.open(index_dir, model=model) as searcher:
        paths = [os.fsencode(p) for p in searcher.state.paths]
        assert any(p.endswith(b"caf\xe9 cr\xe8me.jpg") for p in paths)  # the exact bytes, so the file opens
        assert any(p.endswith(b"two\nlines.jpg") for p in paths)
        assert any(p.endswith(b"really-a-png.jpg") for p in paths)
        assert not any(p.endswith((b"drawing.jpg", b"strokes.png", b"truncated.jpg")) for p in paths)
        hits = searcher.search(hostile.SKETCH, k=None).hits
        assert len(hits) == len(paths)


def test_cli_index_and_search_with_hostile_names(tmp_path, model):
    weights = tmp_path / "tiny.safetensors"
    save_weights(model, weights)
    names = hostile.photo_folder(tmp_path / "photos")
    result = runner.invoke(
        cli_app, ["index", str(tmp_path / "photos"), "-i", str(tmp_path / "idx"), "--weights", str(weights)]
    )
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "3 new" in result.output and "3 skipped" in result.output
    assert "drawing.jpg: " in result.output and "not an image in a photo format" in result.output
    assert "the uploaded data" not in result.output and "truncated.jpg" in result.output
    found = runner.invoke(cli_app, ["search", str(hostile.SKETCH), "-i", str(tmp_path / "idx"), "-k", "all"])
    assert found.exit_code == 0, found.output
    rows = [line for line in found.output.splitlines() if line.startswith("  ") and "rank" not in line]
    assert len(rows) == 3  # one line per photo: the newline in a name is shown as \n
    assert any("caf\\xe9 cr\\xe8me.jpg" in row for row in rows) and any("two\\nlines.jpg" in row for row in rows)
    assert names["latin1"] == b"caf\xe9 cr\xe8me.jpg"


def test_unreadable_subfolder_is_reported(tmp_path, model, monkeypatch):
    from sketchfind.index import build as build_module

    copy_photos(tmp_path / "photos", classes=("cup",), per_class=1)
    real_walk = os.walk

    def walk(top, onerror=None, **kwargs):
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "photos" / "private")))
        return real_walk(top, onerror=onerror, **kwargs)

    monkeypatch.setattr(build_module.os, "walk", walk)
    report = build_index([tmp_path / "photos"], tmp_path / "idx", model)
    assert len(report.new) == 1
    assert report.skipped == [(str(tmp_path / "photos" / "private"), "folder not readable: Permission denied")]


def test_drawings_are_never_photos():
    with pytest.raises(NotAPhotoError):
        read_photo(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
    with pytest.raises(NotAPhotoError):
        read_photo(b"[[[0, 1], [0, 1]]]")
    with pytest.raises(TooLargeError):
        read_photo(hostile.png_bomb())


def test_upload_checks_content_and_stores_the_right_extension(client, tmp_path):
    png = hostile.png_bytes(Image.open(hostile.PHOTO).convert("RGB").resize((90, 70)))
    files = [
        ("files", ("photo.jpg", png, "image/jpeg")),  # a PNG named .jpg
        ("files", ("drawing.jpg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/jpeg")),
        ("files", ("strokes.jpg", b"[[[0, 10], [0, 10]]]", "image/jpeg")),
    ]
    response = client.post("/api/photos", files=files, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["name"] for s in body["skipped"]] == ["drawing.jpg", "strokes.jpg"]
    assert all("not an image in a photo format" in s["reason"] for s in body["skipped"])
    added = body["added"][0]
    assert [p.suffix for p in (tmp_path / "uploads").iterdir()] == [".png"]
    served = client.get(added["url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"


def test_upload_decodes_off_the_event_loop(client, monkeypatch, loop_thread):
    from sketchfind.service.routes import photos as photo_routes

    threads = []
    real = photo_routes._store_upload

    def store(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(photo_routes, "_store_upload", store)
    response = client.post("/api/photos", files=[("files", ("a.jpg", hostile.PHOTO.read_bytes()))], headers=AUTH)
    assert response.status_code == 200 and threads and threads[0] != threading.main_thread().name
    assert threads[0] != loop_thread[0]  # the thread pool, not the thread running the event loop


@pytest.fixture()
def loop_thread(client):
    async def which():
        return threading.current_thread().name

    return [client.portal.call(which)]


# ----------------------------------------------------------------------------- 3. drawings within budget


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (hostile.svg_subpaths, "bytes"),
        (lambda: hostile.svg_subpaths(20_000), "numbers"),
        (hostile.svg_elements, "elements"),
        (hostile.svg_long_lines, "longer than"),
    ],
)
def test_pathological_svg_fails_fast_naming_the_limit(make, limit):
    data = make()
    start = time.monotonic()
    with pytest.raises(TooComplexError, match=limit):
        render_svg(data)
    assert time.monotonic() - start < 5  # generous: the budget is DRAWING_SECONDS; the old code took ~20 s


def test_svg_time_budget(monkeypatch):
    from sketchfind.preprocess import drawings

    monkeypatch.setattr(drawings, "DRAWING_SECONDS", 0.0)
    with pytest.raises(TooComplexError, match="takes more than"):
        render_svg(hostile.svg_subpaths(50))


def test_xml_entity_expansion_is_refused():
    with pytest.raises(InputError):
        render_svg(hostile.svg_billion_laughs())


def test_sketch_work_runs_outside_the_model_lock(client, monkeypatch):
    seen = []
    real = Searcher.prepare

    def prepare(self, source):
        if not isinstance(source, PreparedSketch):  # the decode itself, not the no-op inside search
            seen.append(client.app.state.sketchfind.lock.locked())
        return real(self, source)

    monkeypatch.setattr(Searcher, "prepare", prepare)
    response = client.post("/api/search", content=hostile.SKETCH.read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200 and seen == [False]


def test_index_changes_build_search_structures_outside_the_model_lock(client, monkeypatch):
    seen = []
    real = Searcher.finish_changes

    def finish_changes(self):
        seen.append(client.app.state.sketchfind.lock.locked())
        return real(self)

    monkeypatch.setattr(Searcher, "finish_changes", finish_changes)
    photo = hostile.png_bytes(Image.open(hostile.PHOTO).convert("RGB").resize((120, 90)))
    added = client.post("/api/photos", files=[("files", ("p.png", photo))], headers=AUTH).json()["added"]
    assert client.delete(f"/api/photos/{added[0]['id']}", headers=AUTH).json()["removed"] == 1
    assert seen == [False, False]
    found = client.post("/api/search?k=200", files={"sketch": hostile.SKETCH.read_bytes()}).json()["results"]
    assert added[0]["id"] not in {hit["id"] for hit in found}


def test_explain_decodes_the_photo_outside_the_model_lock(client, monkeypatch):
    seen = []
    real = Searcher.display_photo

    def display_photo(self, photo_id):
        seen.append(client.app.state.sketchfind.lock.locked())
        return real(self, photo_id)

    monkeypatch.setattr(Searcher, "display_photo", display_photo)
    response = client.post("/api/explain?photo_id=1", files={"sketch": hostile.SKETCH.read_bytes()})
    assert response.status_code == 200 and seen == [False]


def test_api_refuses_expensive_drawings_with_422(client):
    svg = client.post("/api/search", files={"sketch": ("x.svg", hostile.svg_subpaths(20_000), "image/svg+xml")})
    assert svg.status_code == 422 and svg.json()["code"] == "too_complex" and "numbers" in svg.json()["detail"]
    many = client.post("/api/search", content=hostile.many_points(), headers={"content-type": "application/json"})
    assert many.status_code == 422 and many.json()["code"] == "too_complex"


# ----------------------------------------------------------------------------- 5. no 5xx


@pytest.mark.parametrize(("name", "body", "says"), hostile.BAD_STROKES, ids=[b[0] for b in hostile.BAD_STROKES])
def test_bad_stroke_values_are_422(client, name, body, says):
    response = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]


def test_huge_json_integer_is_400(client):
    body = '{"strokes": [[[0, ' + "9" * 5000 + "], [0, 1]]]}"
    response = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "malformed_json"


@pytest.mark.parametrize("photo_id", [2**63, 2**64, -1])
def test_out_of_range_photo_ids_are_4xx(client, photo_id):
    strokes = {"strokes": [[[0, 50, 100], [100, 0, 100]]]}
    assert client.post(f"/api/explain?photo_id={photo_id}", json=strokes).status_code == 422
    assert client.post("/api/explain", json={**strokes, "photo_id": photo_id}).status_code == 422
    assert client.get(f"/api/photos/{photo_id}").status_code == 422


def test_cli_strokes_with_huge_numbers_one_line_error(tmp_path, index_dir, model):
    weights = tmp_path / "tiny.safetensors"
    save_weights(model, weights)
    sketch = tmp_path / "huge.json"
    sketch.write_text(hostile.BAD_STROKES[0][1].split(": ", 1)[1][:-1])
    result = runner.invoke(cli_app, ["search", str(sketch), "-i", str(index_dir), "--weights", str(weights)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "between" in result.output


# ----------------------------------------------------------------------------- 6. connections


@pytest.fixture()
def live(index_dir, model, monkeypatch):
    import uvicorn

    monkeypatch.setattr(limits, "HEADER_SECONDS", 0.5)
    monkeypatch.setattr(limits, "BODY_IDLE_SECONDS", 0.5)
    app = create_app(Settings(index=index_dir), searcher_factory=lambda s: Searcher.open(s.index, model=model))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info", **limits.uvicorn_options())
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data + b"<timeout>"
    return data


def test_half_sent_headers_are_cut_off(live):
    with socket.create_connection(("127.0.0.1", live)) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert not _read_all(sock, 5).endswith(b"<timeout>")  # closed by the server within HEADER_SECONDS


def test_stalled_body_gets_408(live):
    with socket.create_connection(("127.0.0.1", live)) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
        sock.sendall(b"\x89PNG")
        answer = _read_all(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer


def test_client_disconnect_mid_body_logs_one_quiet_line(live, caplog):
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", live)) as sock:
        sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
        sock.sendall(b"\x89PNG")
    time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


def test_one_client_cannot_hold_more_than_its_share():
    release = asyncio.Event()
    answers = []

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = limits.ClientLimit(slow_app)

    async def request(client):
        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            if message["type"] == "http.response.start":
                answers.append((client, message["status"]))

        scope = {"type": "http", "path": "/api/search", "method": "POST", "client": (client, 1), "headers": []}
        await middleware(scope, receive, send)

    async def main():
        tasks = [asyncio.create_task(request("10.0.0.1")) for _ in range(limits.MAX_MODEL_REQUESTS_PER_CLIENT + 1)]
        tasks.append(asyncio.create_task(request("10.0.0.2")))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert sorted(answers) == sorted(
        [("10.0.0.1", 200)] * limits.MAX_MODEL_REQUESTS_PER_CLIENT + [("10.0.0.1", 429), ("10.0.0.2", 200)]
    )


# ----------------------------------------------------------------------------- 8. freshness


def test_server_sees_photos_another_writer_committed(tmp_path, model, monkeypatch):
    monkeypatch.setattr(service_deps, "REFRESH_SECONDS", 0.0)
    copy_photos(tmp_path / "a", classes=("cup",), per_class=2)
    copy_photos(tmp_path / "b", classes=("swan",), per_class=2)
    build_index([tmp_path / "a"], tmp_path / "idx", model)
    app = create_app(Settings(index=tmp_path / "idx"), searcher_factory=lambda s: Searcher.open(s.index, model=model))
    with TestClient(app) as client:
        assert client.get("/api/info").json()["photos"] == 2
        build_index([tmp_path / "b"], tmp_path / "idx", model)  # another writer (the CLI, say)
        assert client.get("/api/info").json()["photos"] == 4
        strokes = {"strokes": [[[0, 50, 100], [100, 0, 100]]], "k": 10}
        assert len(client.post("/api/search", json=strokes).json()["results"]) == 4


def test_info_states_the_limits(client):
    limits_ = client.get("/api/info").json()["limits"]
    for key in ("max_pixels", "drawing_points", "drawing_seconds", "concurrent_decodes", "header_seconds"):
        assert key in limits_, key
    assert json.dumps(limits_)
