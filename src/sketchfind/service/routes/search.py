"""POST /api/search and POST /api/explain: a sketch in, ranked photos or heat-maps out."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from ...errors import IndexStoreError
from ...explain import explain_tokens, png_bytes, render
from ...preprocess import read_photo, sketch_array
from ..deps import State, clamp_k, read_sketch
from ..errors import ApiError
from ..schemas import ErrorBody, ExplainJSON, ExplainResponse, Hit, SearchResponse, SketchJSON, Strategy

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


def photo_urls(photo_id: int) -> dict[str, str]:
    return {"url": f"/api/photos/{photo_id}", "thumbnail_url": f"/api/photos/{photo_id}/thumbnail"}


def _label(searcher, photo_id: int) -> str | None:
    try:
        return searcher.photo(photo_id).label
    except IndexStoreError:
        return None


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

    def run():
        result = searcher.search(sketch.source, k=k, strategy=strategy)
        labels = {hit.photo_id: _label(searcher, hit.photo_id) for hit in result.hits}
        return result, labels

    result, labels = await state.run(run, request=request)
    hits = [
        Hit(
            rank=h.rank,
            id=h.photo_id,
            score=float(h.score),
            name=Path(h.path).name,
            label=labels[h.photo_id],
            **photo_urls(h.photo_id),
        )
        for h in result.hits
    ]
    timings = {stage: round(seconds * 1000, 2) for stage, seconds in (result.timings or {}).items()}
    timings.setdefault("total", round(result.seconds * 1000, 2))
    return SearchResponse(
        strategy=result.strategy,
        k=k,
        results=hits,
        timings_ms=timings,
        server_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={**_ERRORS, 404: {"model": ErrorBody}, 200: {"content": {"image/png": {}}}},
    openapi_extra=_sketch_body(ExplainJSON),
)
async def explain(
    request: Request,
    state: State,
    photo_id: Annotated[int | None, Query(description="the indexed photo (also accepted in the body)")] = None,
    format: Annotated[Literal["json", "png"], Query(description="'png': only the combined picture")] = "json",
):
    """Which sketch regions match which photo regions: heat-maps rendered on both images."""
    started = time.perf_counter()
    sketch = await read_sketch(request, ExplainJSON)
    photo_id = sketch.fields.get("photo_id") if sketch.fields.get("photo_id") is not None else photo_id
    if photo_id is None:
        raise ApiError(422, "say which photo to explain: photo_id", "invalid_request")
    searcher = state.searcher
    cfg = searcher.model.cfg

    def run():
        try:
            record = searcher.photo(photo_id)
        except IndexStoreError:
            raise ApiError(404, f"no photo with id {photo_id} in the index") from None
        squared = sketch_array(sketch.source, cfg.preprocess)
        explanation = explain_tokens(
            searcher.model, searcher.encode_query(sketch.source), searcher.photo_tokens([photo_id]), squared
        )
        try:
            photo = read_photo(record.path).convert("RGB")
        except Exception as err:  # the photo file changed or vanished since indexing
            raise ApiError(404, f"the file of photo {photo_id} cannot be read any more") from err
        return explanation, render(explanation, squared, photo)

    explanation, images = await state.run(run, request=request)
    if format == "png":
        return Response(png_bytes(images["combined"]), media_type="image/png")
    urls = {name: "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode() for name, img in images.items()}
    summary = explanation.to_dict()
    summary.pop("matrix")
    return ExplainResponse(
        photo_id=photo_id, images=urls, server_ms=round((time.perf_counter() - started) * 1000, 2), **summary
    )
