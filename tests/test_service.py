"""The REST API with FastAPI's TestClient, over the real Searcher and a real index of sketchy-mini photos
(zse-tiny, random weights: these tests check the service, not retrieval quality)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import sketchfind
from sketchfind.search import Searcher
from sketchfind.service import Settings, create_app

from .serving import SKETCHY, build_test_index, photo_paths

CLASSES = ["airplane", "cat", "chair", "teapot"]
SKETCH_PATH = sorted((SKETCHY / "sketches" / "cat").glob("*.png"))[0]
SKETCH = SKETCH_PATH.read_bytes()
TOKEN = "correct horse battery staple"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sketchfind.load_model("zse-tiny", random_init=True)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model):
    return build_test_index(tmp_path_factory.mktemp("index"), model, photo_paths(CLASSES, per_class=5))


@pytest.fixture(scope="module")
def searcher(index_dir, model):
    return Searcher.open(index_dir, model=model)


@pytest.fixture(scope="module")
def opened():
    return []


@pytest.fixture(scope="module")
def client(searcher, index_dir, opened):
    def factory(settings):
        opened.append(settings)
        return searcher

    with TestClient(create_app(Settings(index=index_dir), searcher_factory=factory)) as client:
        yield client


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


# ----------------------------------------------------------------------------- meta


def test_health_info_and_schema(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["photos"] == 20 and info["model"] == "zse-tiny"
    assert info["uploads_enabled"] is False and info["max_upload_bytes"] == 10 * 2**20
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/search", "/api/explain", "/api/photos", "/api/photos/{photo_id}", "/api/info", "/api/health"):
        assert path in paths
    assert "multipart/form-data" in paths["/api/search"]["post"]["requestBody"]["content"]


def test_searcher_loaded_once_at_start_up(client, opened):
    for _ in range(3):
        client.post("/api/search", files={"sketch": ("s.png", SKETCH, "image/png")})
    assert len(opened) == 1


def test_the_searcher_is_warmed_up_before_the_first_request(index_dir, model):
    searcher, calls = Searcher.open(index_dir, model=model), []
    warm_up = searcher.warm_up
    searcher.warm_up = lambda: (calls.append("warm-up"), warm_up())
    with TestClient(create_app(Settings(index=index_dir), searcher_factory=lambda s: searcher)) as client:
        assert calls == ["warm-up"]  # during start-up
        assert _ids(client.post("/api/search", files={"sketch": ("s.png", SKETCH, "image/png")}))
    assert calls == ["warm-up"]


def test_page_loads_nothing_from_other_hosts(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        response = client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text
    assert "http://" not in page.text and "https://" not in page.text


# ----------------------------------------------------------------------------- search


def test_search_upload_matches_the_python_api(client, searcher):
    response = client.post("/api/search", files={"sketch": ("cat.png", SKETCH, "image/png")}, data={"k": "7"})
    body = response.json()
    assert len(body["results"]) == 7
    assert [hit["rank"] for hit in body["results"]] == list(range(1, 8))
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["server_ms"] > 0 and body["timings_ms"]
    expected = searcher.search(SKETCH, k=7)
    assert _ids(response) == [hit.photo_id for hit in expected.hits]
    first = body["results"][0]
    assert first["label"] in CLASSES and first["name"].endswith(".jpg")
    assert first["url"] == f"/api/photos/{first['id']}"


def test_every_way_of_sending_a_sketch(client):
    reference = _ids(client.post("/api/search", files={"sketch": ("s.png", SKETCH, "image/png")}))
    b64 = base64.b64encode(SKETCH).decode()
    assert _ids(client.post("/api/search", json={"image": b64})) == reference
    assert _ids(client.post("/api/search", json={"image": "data:image/png;base64," + b64})) == reference
    raw = client.post("/api/search?k=5", content=SKETCH, headers={"content-type": "image/png"})
    assert _ids(raw) == reference[:5]
    strokes = [[[10, 60, 110, 60, 10], [10, 100, 10, 10, 10]], [[30, 90], [60, 60]]]
    response = client.post("/api/search", json={"strokes": strokes, "k": 3})
    assert len(_ids(response)) == 3
    quickdraw = json.dumps({"word": "tent", "drawing": strokes}).encode()
    assert len(_ids(client.post("/api/search", files={"sketch": ("tent.ndjson", quickdraw, "application/json")})))


@pytest.mark.parametrize("strategy", ["exhaustive", "clustered", "ann"])
def test_strategies(client, strategy):
    response = client.post("/api/search", json={"image": base64.b64encode(SKETCH).decode(), "strategy": strategy})
    assert response.status_code == 200, response.text
    assert response.json()["strategy"] == strategy


# ----------------------------------------------------------------------------- bad input: 4xx + JSON, never 500


def _huge_png() -> bytes:
    return _png(Image.new("1", (8000, 5001), 1))  # 40,008,000 pixels in a few KB


BAD_SEARCHES = [
    ("not an image", {"files": {"sketch": ("a.png", b"hello world", "image/png")}}, 422, "bad_input"),
    (
        "empty canvas",
        {"files": {"sketch": ("a.png", _png(Image.new("RGB", (512, 512), "white")), "image/png")}},
        422,
        "empty_sketch",
    ),
    ("40 megapixels", {"files": {"sketch": ("big.png", _huge_png(), "image/png")}}, 413, "too_large"),
    ("truncated png", {"files": {"sketch": ("a.png", SKETCH[: len(SKETCH) // 2], "image/png")}}, 422, "bad_input"),
    (
        "malformed json",
        {"content": b'{"image": ', "headers": {"content-type": "application/json"}},
        400,
        "malformed_json",
    ),
    ("json list", {"json": [1, 2]}, 422, "invalid_request"),
    ("neither image nor strokes", {"json": {"k": 3}}, 422, "invalid_request"),
    ("both image and strokes", {"json": {"image": "aGk=", "strokes": []}}, 422, "invalid_request"),
    ("unknown field", {"json": {"strokes": [[[0, 1], [0, 1]]], "colour": "red"}}, 422, "invalid_request"),
    ("bad base64", {"json": {"image": "@@@"}}, 422, "bad_input"),
    ("empty strokes", {"json": {"strokes": []}}, 422, "empty_sketch"),
    ("malformed strokes", {"json": {"strokes": [[1, 2, 3]]}}, 422, "bad_input"),
    ("k zero", {"json": {"strokes": [[[0, 1], [0, 1]]], "k": 0}}, 422, "invalid_request"),
    ("k too large", {"json": {"strokes": [[[0, 1], [0, 1]]], "k": 100000}}, 422, "invalid_request"),
    (
        "k not a number",
        {"files": {"sketch": ("a.png", SKETCH, "image/png")}, "data": {"k": "many"}},
        422,
        "invalid_request",
    ),
    ("unknown strategy", {"json": {"strokes": [[[0, 1], [0, 1]]], "strategy": "magic"}}, 422, "invalid_request"),
    (
        "form without sketch",
        {"data": {"k": "3"}, "files": {"other": ("a.png", SKETCH, "image/png")}},
        422,
        "invalid_request",
    ),
    (
        "deeply nested json",
        {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
        400,
        "malformed_json",
    ),
    (
        "deeply nested strokes file",
        {"files": {"sketch": ("deep.json", b"[" * 100_000, "application/json")}},
        422,
        "bad_input",
    ),
    (
        "infinite coordinates",
        {"content": b'{"strokes": [[[0, 1e309], [0, 1]]]}', "headers": {"content-type": "application/json"}},
        422,
        "bad_input",
    ),
    ("plain text", {"content": b"a cat", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    (
        "over 10 MB",
        {"content": b"\x89PNG" + bytes(10 * 2**20), "headers": {"content-type": "image/png"}},
        413,
        "too_large",
    ),
]


@pytest.mark.parametrize("name,request_kwargs,status,code", BAD_SEARCHES, ids=[case[0] for case in BAD_SEARCHES])
def test_bad_search_input_is_a_4xx_json_error(client, name, request_kwargs, status, code):
    response = client.post("/api/search", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text


def test_streamed_body_over_the_limit_is_cut_off(client):
    sent = []

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(64):
            sent.append(1)
            yield bytes(256 * 1024)

    response = client.post("/api/search", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413 and response.json()["code"] == "too_large"


# ----------------------------------------------------------------------------- photos


def test_photos_and_thumbnails_come_from_the_index(client, searcher):
    hit = client.post("/api/search", files={"sketch": ("s.png", SKETCH, "image/png")}).json()["results"][0]
    original = client.get(hit["url"])
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content == open(searcher.photo(hit["id"]).path, "rb").read()
    thumb = client.get(hit["thumbnail_url"] + "?size=64")
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "JPEG" and max(image.size) == 64
    again = client.get(hit["thumbnail_url"] + "?size=64", headers={"if-none-match": thumb.headers["etag"]})
    assert again.status_code == 304


def test_result_thumbnails_have_versioned_urls_browsers_keep(client, searcher):
    hit = client.post("/api/search", files={"sketch": ("s.png", SKETCH, "image/png")}).json()["results"][0]
    version = searcher.photo(hit["id"]).sha256[:16]
    assert hit["thumbnail_url"] == f"/api/photos/{hit['id']}/thumbnail/{version}"
    thumb = client.get(hit["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    # the same picture without a version, or under an outdated one (the photo changed): cached briefly
    for url in (f"/api/photos/{hit['id']}/thumbnail", f"/api/photos/{hit['id']}/thumbnail/0123456789abcdef"):
        other = client.get(url)
        assert other.status_code == 200 and other.content == thumb.content
        assert other.headers["cache-control"] == "private, max-age=300"


def test_thumbnails_are_made_in_the_background_when_the_gallery_fits(searcher):
    import threading

    from sketchfind.service.thumbnails import ThumbnailCache, warm

    def warmed(cache, stop=None):
        made = []  # in its own thread: warm() lowers its thread's CPU priority
        worker = threading.Thread(target=lambda: made.append(warm(cache, searcher, 256, stop or threading.Event())))
        worker.start()
        worker.join()
        return made[0]

    cache = ThumbnailCache()
    assert warmed(cache) == len(searcher) > 0
    assert all(cache.peek(r.path, r.sha256, 256) for r in searcher.photos(searcher.photo_ids()))
    assert warmed(cache) == 0  # all there already
    assert warmed(ThumbnailCache(capacity=len(searcher) - 1)) == 0  # the gallery does not fit: on demand
    stopped = threading.Event()
    stopped.set()
    assert warmed(ThumbnailCache(), stopped) == 0


@pytest.mark.parametrize(
    "url,status",
    [
        ("/api/photos/999999", 404),
        ("/api/photos/999999/thumbnail", 404),
        ("/api/photos/-1", 422),
        ("/api/photos/1.5", 422),
        ("/api/photos/abc", 422),
        ("/api/photos/99999999999999999999999", 422),
        ("/api/photos/..%2F..%2F..%2Fetc%2Fpasswd", 404),
        ("/api/photos/%2e%2e/%2e%2e/pyproject.toml", 404),
        ("/api/photos/../../etc/passwd", 404),
        ("/api/photos/1/../../../etc/passwd", 404),
        ("/static/../../../../etc/passwd", 404),
        ("/static/%2e%2e/%2e%2e/errors.py", 404),
        ("/api/photos/1/thumbnail?size=100000", 422),
        ("/api/photos/1/thumbnail/" + "0" * 65, 422),
        ("/api/photos/999999/thumbnail/0123456789abcdef", 404),
    ],
)
def test_unknown_ids_and_path_tricks(client, url, status):
    response = client.get(url)
    assert response.status_code == status, (url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert "root:" not in response.text and "import" not in response.text


# ----------------------------------------------------------------------------- explain


def test_explain_returns_heatmaps_on_both_images(client, searcher, model):
    photo_id = searcher.search(SKETCH, k=1).hits[0].photo_id
    response = client.post(
        "/api/explain", files={"sketch": ("s.png", SKETCH, "image/png")}, data={"photo_id": str(photo_id)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["photo_id"] == photo_id and body["grid"] == model.cfg.grid
    with torch.inference_mode():
        expected = float(model.relation_scores(searcher.encode_query(SKETCH), searcher.photo_tokens([photo_id]))[0, 0])
    assert body["score"] == pytest.approx(expected, abs=1e-4)
    for name in ("sketch", "photo", "combined"):
        header, _, data = body["images"][name].partition(",")
        assert header == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    assert np.array(body["sketch_heat"]).shape == (model.cfg.grid, model.cfg.grid)

    png = client.post(
        f"/api/explain?photo_id={photo_id}&format=png", content=SKETCH, headers={"content-type": "image/png"}
    )
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "kwargs,status",
    [
        ({"json": {"strokes": [[[0, 9], [0, 9]]], "photo_id": 999999}}, 404),
        ({"json": {"strokes": [[[0, 9], [0, 9]]]}}, 422),
        ({"json": {"strokes": [[[0, 9], [0, 9]]], "photo_id": "../../etc/passwd"}}, 422),
        ({"json": {"strokes": [], "photo_id": 1}}, 422),
    ],
)
def test_explain_bad_input(client, kwargs, status):
    response = client.post("/api/explain", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["code"]


# ----------------------------------------------------------------------------- upload / delete


def test_changing_the_index_is_refused_without_a_configured_token(client):
    files = [("files", ("new.jpg", photo_paths(["bear"], 1)[0].read_bytes(), "image/jpeg"))]
    for response in (
        client.post("/api/photos", files=files, headers={"authorization": "Bearer anything"}),
        client.delete("/api/photos/1", headers={"authorization": "Bearer anything"}),
    ):
        assert response.status_code == 403 and response.json()["code"] == "uploads_disabled"


def test_upload_and_delete_with_the_token(tmp_path, index_dir, model):
    own_index = tmp_path / "index"
    shutil.copytree(index_dir, own_index)
    settings = Settings(index=own_index, token=TOKEN, upload_dir=tmp_path / "uploads")
    app = create_app(settings, searcher_factory=lambda s: Searcher.open(s.index, model=model))
    auth = {"authorization": f"Bearer {TOKEN}"}
    bear = photo_paths(["bear"], 1)[0]
    with TestClient(app) as client:
        before = client.get("/api/info").json()["photos"]
        files = [
            ("files", ("bear.jpg", bear.read_bytes(), "image/jpeg")),
            ("files", ("notes.txt", b"not a photo", "text/plain")),
        ]
        assert client.post("/api/photos", files=files).status_code == 401
        assert client.post("/api/photos", files=files, headers={"authorization": "Bearer wrong"}).status_code == 401
        response = client.post("/api/photos", files=files, headers=auth)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [f["name"] for f in body["skipped"]] == ["notes.txt"] and body["skipped"][0]["reason"]
        (added,) = body["added"]
        assert client.get("/api/info").json()["photos"] == before + 1
        assert client.get(added["url"]).content == bear.read_bytes()
        # uploading the same photo again adds nothing
        again = client.post("/api/photos", files=files[:1], headers=auth).json()
        assert again["added"] == [] and again["unchanged"] == ["bear.jpg"]

        assert client.delete(f"/api/photos/{added['id']}").status_code == 401
        assert client.delete(f"/api/photos/{added['id']}", headers=auth).json() == {"removed": 1}
        assert client.get(added["url"]).status_code == 404
        assert client.delete(f"/api/photos/{added['id']}", headers=auth).status_code == 404
        assert client.get("/api/info").json()["photos"] == before
        # uploads are written under their content hash, never under the client's file name
        assert all(p.name != "bear.jpg" for p in (tmp_path / "uploads").iterdir())


def test_a_search_whose_client_left_costs_no_model_time(searcher):
    import asyncio

    from sketchfind.service.deps import ServiceState
    from sketchfind.service.errors import ApiError
    from sketchfind.service.thumbnails import ThumbnailCache

    class Gone:
        async def is_disconnected(self):
            return True

    calls = []
    state = ServiceState(searcher, Settings(), ThumbnailCache())
    with pytest.raises(ApiError) as err:
        asyncio.run(state.run(calls.append, "work", request=Gone()))
    assert err.value.status == 499 and calls == []
    assert asyncio.run(state.run(calls.append, "work")) is None and calls == ["work"]
