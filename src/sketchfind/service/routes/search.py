"""POST /api/search and POST /api/explain: a sketch in, ranked photos or heat-maps out."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...explain import png_bytes
from ...names import shown_name
from ...preprocess import is_light_decode
from ..deps import State, clamp_k, read_sketch
from ..errors import ApiError
from ..schemas import (
    MAX_PHOTO_ID,
    ErrorBody,
    ExplainJSON,
    ExplainResponse,
    Hit,
    SearchResponse,
    SketchJSON,
    Strategy,
)
from ..thumbnails import content_version

router = APIRouter(prefix="/api", tags=["search"])

_BODY_ONLY = ("image", "strokes")
_ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422)}


def _sketch_body(model) -> dict:
    """OpenAPI: the three ways to send a sketch (the route reads the body itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["sketch"],
                        "properties": {
                            "sketch": {
                                "type": "string",
                                "format": "binary",
                                "description": "PNG/JPEG/WebP/BMP/SVG image or QuickDraw strokes JSON",
                            },
                            **{name: {"type": "string"} for name in model.model_fields if name not in _BODY_ONLY},
                        },
                    }
                },
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def photo_urls(photo_id: int, version: str | None = None) -> dict[str, str]:
    """The photo's URL and its thumbnail's; with the photo's content ``version`` the thumbnail URL is one
    browsers may keep for good (a changed photo gets a new URL)."""
    photo = f"/api/photos/{photo_id}"
    return {"url": photo, "thumbnail_url": f"{photo}/thumbnail/{version}" if version else f"{photo}/thumbnail"}


@router.post("/search", response_model=SearchResponse, responses=_ERRORS, openapi_extra=_sketch_body(SketchJSON))
async def search(
    request: Request,
    state: State,
    k: Annotated[int | None, Query(ge=1, description="results wanted (also accepted in the body)")] = None,
    strategy: Annotated[Strategy | None, Query(description="exhaustive, clustered or ann (also in the body)")] = None,
) -> SearchResponse:
    """Rank the indexed photos for a sketch (uploaded file, base64 image, or QuickDraw strokes)."""
    started = time.perf_counter()
    sketch = await read_sketch(request, SketchJSON)
    k = clamp_k(sketch.fields.get("k") or k, state)
    strategy = sketch.fields.get("strategy") or strategy or state.settings.strategy
    searcher = state.searcher
    read = time.perf_counter()
    # decoding and rasterising in a decode slot (a light one for a small sketch); only the model call takes the
    # model lock
    light = is_light_decode(sketch.source)  # header only: microseconds
    prepared = await state.decode(searcher.prepare, sketch.source, request=request, light=light)
    ready = time.perf_counter()
    cheap = (strategy or searcher.settings.strategy) == "ann"  # tens of ms; the others run the RN over many photos
    result, versions = await state.run(_search, searcher, prepared, k, strategy, request=request, cheap=cheap)
    searched = time.perf_counter()
    hits = [
        Hit(
            rank=h.rank,
            id=h.photo_id,
            score=float(h.score),
            name=shown_name(Path(h.path).name),
            label=h.label,
            **photo_urls(h.photo_id, versions.get(h.photo_id)),
        )
        for h in result.hits
    ]
    # the Searcher's stages, and the route's own: reading the body, decoding the sketch (with the wait for a
    # decode slot), waiting for the model (lock and thread pool, outside the Searcher's clock)
    stages = {"read": read - started, "prepare": ready - read, **(result.timings or {})}
    stages["model_wait"] = max(0.0, searched - ready - result.seconds)
    timings = {stage: round(seconds * 1000, 2) for stage, seconds in stages.items()}
    timings.setdefault("total", round(result.seconds * 1000, 2))
    return SearchResponse(
        strategy=result.strategy,
        k=k,
        results=hits,
        timings_ms=timings,
        server_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _search(searcher, prepared, k: int, strategy: str):
    """The ranking, and photo id -> content version for its photos (they version the thumbnail URLs)."""
    result = searcher.search(prepared, k, strategy)
    return result, {r.id: content_version(r) for r in searcher.photos([h.photo_id for h in result.hits])}


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={**_ERRORS, 404: {"model": ErrorBody}, 200: {"content": {"image/png": {}}}},
    openapi_extra=_sketch_body(ExplainJSON),
)
async def explain(
    request: Request,
    state: State,
    photo_id: Annotated[
        int | None, Query(ge=0, le=MAX_PHOTO_ID, description="the indexed photo (also accepted in the body)")
    ] = None,
    strategy: Annotated[
        Strategy | None, Query(description="explain the score this strategy ranks by (default: the server's)")
    ] = None,
    format: Annotated[Literal["json", "png"], Query(description="'png': only the combined picture")] = "json",
):
    """Which sketch regions match which photo regions, for the score the strategy ranks by: heat-maps."""
    started = time.perf_counter()
    sketch = await read_sketch(request, ExplainJSON)
    photo_id = sketch.fields.get("photo_id") if sketch.fields.get("photo_id") is not None else photo_id
    if photo_id is None:
        raise ApiError(422, "say which photo to explain: photo_id", "invalid_request")
    strategy = sketch.fields.get("strategy") or strategy or state.settings.strategy
    searcher = state.searcher
    light = is_light_decode(sketch.source)
    prepared = await state.decode(searcher.prepare, sketch.source, request=request, light=light)
    # the photo too is decoded in a decode slot, never under the model lock (a 40 MP PNG takes seconds)
    light = await run_in_threadpool(lambda: is_light_decode(searcher.photo(photo_id).path))  # its header
    photo = await state.decode(searcher.display_photo, photo_id, request=request, light=light)
    explanation, images = await state.run(searcher.explain, prepared, photo_id, strategy, photo, request=request)
    if format == "png":  # encoding the small pictures of an explanation is light work
        return Response(await state.decode(png_bytes, images["combined"], light=True), media_type="image/png")

    def data_urls() -> dict[str, str]:
        return {
            name: "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode() for name, img in images.items()
        }

    urls = await state.decode(data_urls, light=True)
    summary = explanation.to_dict()
    summary.pop("matrix")
    return ExplainResponse(
        photo_id=photo_id, images=urls, server_ms=round((time.perf_counter() - started) * 1000, 2), **summary
    )
