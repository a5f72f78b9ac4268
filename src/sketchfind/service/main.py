"""Builds the FastAPI app: settings, the Searcher (loaded once, in the lifespan hook), routers, the page."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .deps import ServiceState
from .errors import install_error_handlers
from .limits import BodyLimit, ClientLimit
from .routes import meta, photos, search
from .settings import Settings
from .thumbnails import ThumbnailCache, start_warming

# The page loads nothing from other hosts; the browser is told so too.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Adds the CSP and nosniff headers to every answer (plain ASGI: a request that ends without an answer,
    like a client gone mid-body, is not turned into a 'No response returned' traceback)."""

    _HEADERS = ((b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"))

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in self._HEADERS if name not in names]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def load_settings_model(settings: Settings) -> Any:
    """The model named by ``settings`` (and its weights), or None: the index's own model."""
    if not (settings.model or settings.weights):
        return None
    from ..models import load_model

    return load_model(settings.model, weights=settings.weights)


def open_searcher(settings: Settings) -> Any:
    """The Searcher for ``settings``: the index's own model unless a model (and weights) is named."""
    from ..runtime import set_threads
    from ..search import DEFAULT_STRATEGY, Searcher

    set_threads(settings.threads)  # before the ONNX sessions are made: they take their thread count then
    return Searcher.open(
        settings.index,
        model=load_settings_model(settings),
        strategy=settings.strategy or DEFAULT_STRATEGY,
        runtime=settings.runtime,
        backend=settings.backend,
        milvus_uri=settings.milvus_uri,
        collection=settings.collection,
        ann_params=settings.ann_params,
    )


def create_app(settings: Settings | None = None, searcher_factory: Callable[[Settings], Any] | None = None) -> FastAPI:
    """The app. ``searcher_factory(settings)`` runs once at start-up (default: :func:`open_searcher`)."""
    settings = settings or Settings()
    factory = searcher_factory or open_searcher

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        searcher = factory(settings)
        if hasattr(searcher, "warm_up"):  # before the first request: it would wait for what runs only once
            searcher.warm_up()
        thumbnails = ThumbnailCache(settings.thumbnail_cache)
        app.state.sketchfind = ServiceState(searcher, settings, thumbnails)
        warming = start_warming(thumbnails, searcher, settings.thumbnail_size) if settings.warm_thumbnails else None
        yield
        if warming is not None:
            warming.set()
        app.state.sketchfind = None

    app = FastAPI(
        title="sketchfind",
        version=__version__,
        description="Draw a sketch, find matching photos in your own collection (ZSE-SBIR). "
        "The page is at /, this schema at /openapi.json.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs and /redoc load their scripts from a CDN: nothing may download at run time
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ClientLimit)  # added last = outermost: a refused request costs no body read

    app.add_middleware(SecurityHeaders)

    for router in (meta.router, search.router, photos.router):
        app.include_router(router)
    static = resources.files("sketchfind.service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
