"""GET /api/health, GET /api/info, and the page itself."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ...preprocess import DRAWING_LIMITS, LIGHT_PIXELS, MAX_FILE_BYTES, MAX_PIXELS, MAX_SKETCH_DECODE_PIXELS
from ..deps import MAX_CONCURRENT_DECODES, MAX_LIGHT_DECODES, REFRESH_SECONDS, State
from ..limits import limits_info
from ..schemas import Health, Info
from ..thumbnails import SIZE_BUCKETS

router = APIRouter(tags=["meta"])


@router.get("/api/health", response_model=Health)
async def health() -> Health:
    """Liveness: the app is up and its Searcher is loaded."""
    return Health(status="ok")


@router.get("/api/info", response_model=Info)
async def info(state: State) -> Info:
    """The index (photo count, model, how it was built) and the service's limits."""
    details = dict(state.searcher.info())
    settings = state.settings
    return Info(
        photos=len(state.searcher),
        model=state.searcher.model.cfg.name,
        strategies=["exhaustive", "clustered", "ann"],
        default_strategy=settings.strategy or state.searcher.settings.strategy,
        default_k=settings.default_k,
        max_k=settings.max_k,
        max_upload_bytes=settings.max_upload_bytes,
        max_pixels=MAX_PIXELS,
        limits={
            "max_pixels": MAX_PIXELS,
            "max_file_bytes": MAX_FILE_BYTES,
            "max_upload_bytes": settings.max_upload_bytes,
            "sketch_decode_pixels": MAX_SKETCH_DECODE_PIXELS,
            **{f"drawing_{name}": value for name, value in DRAWING_LIMITS.items()},
            "concurrent_decodes": MAX_CONCURRENT_DECODES,
            "concurrent_light_decodes": MAX_LIGHT_DECODES,
            "light_decode_pixels": LIGHT_PIXELS,
            "thumbnail_sizes_max": max(SIZE_BUCKETS),
            "index_refresh_seconds": REFRESH_SECONDS,
            **limits_info(),
        },
        uploads_enabled=settings.token is not None,
        index=details,
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The draw-to-search page."""
    html = (resources.files("sketchfind.service") / "static" / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})
