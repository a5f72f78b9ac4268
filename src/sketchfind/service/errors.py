"""Every failure becomes a JSON body ``{"detail": sentence, "code": word}`` with a 4xx status.

Bad input is the client's problem and says so (never a 500 or a traceback); a bug still answers
JSON (500, "internal") and is logged with its traceback on the server side only.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import (
    EmptySketchError,
    IndexStoreError,
    InputError,
    NotAPhotoError,
    PhotoMissingError,
    SketchfindError,
    TooComplexError,
    TooLargeError,
    UnknownPhotoError,
    VectorBackendError,
)

log = logging.getLogger("sketchfind.service")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    499: "client_closed",
}


class ApiError(Exception):
    """An error answered as ``status`` with a JSON body."""

    def __init__(self, status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.code, self.headers = status, detail, code or _CODES.get(status, "error"), headers


def error_response(status: int, detail: str, code: str | None = None, headers=None) -> JSONResponse:
    """The one shape every error takes."""
    return JSONResponse({"detail": detail, "code": code or _CODES.get(status, "error")}, status, headers=headers)


def _validation_message(errors: list) -> str:
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


# sketchfind errors answered as they are: their message is meant for a person
_STATUS_BY_TYPE = {
    TooLargeError: (413, "too_large"),
    TooComplexError: (422, "too_complex"),
    NotAPhotoError: (422, "not_a_photo"),
    InputError: (422, "bad_input"),
    UnknownPhotoError: (404, "not_found"),
    PhotoMissingError: (404, "photo_file_missing"),
    SketchfindError: (422, "bad_input"),
}


def _answer(status: int, code: str):
    async def handler(_: Request, exc: Exception):
        return error_response(status, str(exc), code)

    return handler


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that keep every answer JSON."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.detail, exc.code, exc.headers)

    @app.exception_handler(EmptySketchError)
    async def empty_sketch(_: Request, exc: EmptySketchError):
        return error_response(422, f"{str(exc).rstrip('.')}. Draw something first.", "empty_sketch")

    for exc_type, (status, code) in _STATUS_BY_TYPE.items():  # the most specific type's handler answers
        app.add_exception_handler(exc_type, _answer(status, code))

    @app.exception_handler(IndexStoreError)
    async def index_error(_: Request, exc: IndexStoreError):
        log.error("index error: %s", exc)
        return error_response(503, f"the index cannot be used: {exc}", "index_unavailable")

    @app.exception_handler(VectorBackendError)
    async def vectors_error(_: Request, exc: VectorBackendError):
        log.error("vector database error: %s", exc)
        return error_response(503, str(exc), "vectors_unavailable")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        errors = json.loads(json.dumps(exc.errors(), default=str))  # ctx may hold exceptions
        body = {"detail": _validation_message(errors), "code": "invalid_request", "errors": errors}
        return JSONResponse(body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such page or API route (the API lives under /api; its schema is at /openapi.json)"
        return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(_: Request, exc: RecursionError):  # json.loads on "[[[[..." raises this, not a JSON error
        return error_response(422, "the JSON is nested too deeply to be a sketch", "bad_input")

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):  # nobody reads the answer: one quiet line
        log.info("%s %s: the client disconnected before the request was read", request.method, request.url.path)
        return error_response(499, "the client closed the request", "client_closed")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal error: the server log has the details", "internal")
