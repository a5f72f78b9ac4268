"""What routes share: the service state (one Searcher), the token check, reading a sketch from a request."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .errors import ApiError
from .limits import release_freed_memory
from .settings import Settings
from .thumbnails import ThumbnailCache

# Heavy decodes (large images, SVG; each up to ~4 bytes x MAX_PIXELS and seconds of CPU): one at a time, so
# one core stays free for everything else. Light ones (preprocess.is_light_decode: a few MB, milliseconds) have
# slots of their own and never queue behind a heavy one: a small sketch is not held up by a 40 MP upload.
MAX_CONCURRENT_DECODES = 1
MAX_LIGHT_DECODES = 4
REFRESH_SECONDS = 1.0  # at most this often a request checks whether another process committed to the index
CHEAP_STREAK = 4  # cheap model calls that may go ahead of a waiting expensive one, in a row


class ModelLock:
    """One model call at a time; cheap calls (``ann`` searches: tens of ms) go ahead of expensive ones
    (explanations, the other strategies, index changes: up to seconds), first come first served within each
    kind. After ``CHEAP_STREAK`` cheap calls in a row a waiting expensive one goes next: neither kind starves."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: dict[bool, deque] = {True: deque(), False: deque()}  # cheap? -> futures in arrival order
        self._streak = 0  # cheap calls granted in a row

    def locked(self) -> bool:
        """Whether a model call is running."""
        return self._held

    @asynccontextmanager
    async def hold(self, cheap: bool):
        """Holds the lock for one model call."""
        await self._acquire(cheap)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, cheap: bool) -> None:
        if not self._held and not (self._waiting[True] or self._waiting[False]):
            self._held = True
            self._granted(cheap)
            return
        queue = self._waiting[cheap]
        future = asyncio.get_running_loop().create_future()
        queue.append(future)
        try:
            await future  # resolved by _release: the lock is handed over, still held
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed over just as this request was cancelled
                self._release()
            elif future in queue:
                queue.remove(future)
            raise

    def _release(self) -> None:
        order = (True, False) if self._streak < CHEAP_STREAK or not self._waiting[False] else (False, True)
        for cheap in order:
            queue = self._waiting[cheap]
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)
                    self._granted(cheap)
                    return
        self._held = False

    def _granted(self, cheap: bool) -> None:
        self._streak = self._streak + 1 if cheap else 0


@dataclass
class ServiceState:
    """Built once in the lifespan hook: the Searcher and what goes with it."""

    searcher: Any
    settings: Settings
    thumbnails: ThumbnailCache
    # One model call at a time: torch already uses both cores for one query. An index change holds it while it
    # encodes and commits, not for its compaction and search structures (see ``writes``). Decoding,
    # rasterising, photo files and thumbnails happen without it.
    lock: ModelLock = field(default_factory=ModelLock)
    # Decoding is what costs memory (a 40 MP photo is 120 MB of pixels): a fixed number at a time.
    decodes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_DECODES))
    light_decodes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_LIGHT_DECODES))
    checked_at: float = 0.0  # time.monotonic() of the last freshness check
    # One index change at a time: its encoding and commit take the model lock, its compaction and search
    # structures (a second of K-means and FAISS per few thousand photos) do not, so searches go on meanwhile.
    writes: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, fn, *args, request: Request | None = None, cheap: bool = False):
        """Run blocking Searcher work in the thread pool, one call at a time (``cheap`` ones first, see
        :class:`ModelLock`).

        A request whose client has gone while it waited (the page aborts a search when a newer stroke
        ends) is dropped before it costs any model time."""
        async with self.lock.hold(cheap):
            await _check_connected(request)
            return await run_in_threadpool(self._call, fn, *args)

    async def change(self, fn, *args):
        """An index change: ``fn`` (commits only: ``finish=False``) under the model lock, then the compaction and
        search structures outside it (:meth:`Searcher.finish_changes`); one change at a time."""
        async with self.writes:
            try:
                return await self.run(fn, *args)
            finally:  # also after a failure: whatever it committed before failing gets its structures
                await run_in_threadpool(_releasing, self.searcher.finish_changes)

    async def decode(self, fn, *args, request: Request | None = None, light: bool = False):
        """Run CPU- and memory-heavy work without the model (decoding, rasterising) in the thread pool,
        at most ``MAX_CONCURRENT_DECODES`` at a time; ``light`` work (small inputs, see
        :func:`~sketchfind.preprocess.is_light_decode`) in one of ``MAX_LIGHT_DECODES`` slots of its own."""
        async with self.light_decodes if light else self.decodes:
            await _check_connected(request)
            return await run_in_threadpool(fn, *args) if light else await run_in_threadpool(_releasing, fn, *args)

    async def refresh(self) -> None:
        """See photos another process committed to the index (at most every ``REFRESH_SECONDS``); the
        Searcher swaps in a whole committed generation, never a half-written one."""
        now = time.monotonic()
        if now - self.checked_at < REFRESH_SECONDS or self.writes.locked():  # a change refreshes when done
            return
        self.checked_at = now
        await run_in_threadpool(self.searcher.refresh)

    def _call(self, fn, *args):
        threads = self.settings.threads
        if threads and torch.get_num_threads() != threads:  # per worker thread: set where the model runs
            torch.set_num_threads(threads)
        return fn(*args)


def _releasing(fn, *args):
    """``fn(*args)``, then the memory it freed goes back to the system (large decodes, index changes)."""
    try:
        return fn(*args)
    finally:
        release_freed_memory()


async def _check_connected(request: Request | None) -> None:
    if request is not None and await request.is_disconnected():
        raise ApiError(499, "the client closed the request", "client_closed")


async def get_state(request: Request) -> ServiceState:
    """The service state, with the index brought up to date when another process committed to it."""
    state = request.app.state.sketchfind
    await state.refresh()
    return state


State = Annotated[ServiceState, Depends(get_state)]


def require_token(request: Request, state: State) -> None:
    """Photo upload and delete need ``Authorization: Bearer <token>`` matching the configured token."""
    if state.settings.token is None:
        raise ApiError(
            403,
            "changing the index over HTTP is disabled: start the server with --token "
            "(or set SKETCHFIND_TOKEN) to allow it",
            "uploads_disabled",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = state.settings.token.get_secret_value()
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(
            401,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


@dataclass
class SketchRequest:
    """A sketch source the preprocessing accepts, plus the other fields that came with it."""

    source: Any
    fields: dict[str, Any]


async def read_sketch(request: Request, model: type[BaseModel]) -> SketchRequest:
    """The sketch from a multipart upload (field ``sketch``), a JSON body, or a raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _from_form(request, model)
    if content_type in ("application/json", "text/json"):
        body = await request.body()
        return await run_in_threadpool(_from_json, body, model)  # 10 MB of JSON is ~0.1 s of CPU
    if content_type.startswith("image/") or content_type in ("application/octet-stream",):
        data = await request.body()
        return SketchRequest(
            data, _validate(model, {"image": "-", **_known(request.query_params, model)}, skip="image")
        )
    raise ApiError(
        415,
        "send the sketch as multipart/form-data (field 'sketch'), as JSON "
        "({'image': base64} or {'strokes': [...]}) or as a raw image/png body",
    )


async def _from_form(request: Request, model: type[BaseModel]) -> SketchRequest:
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("sketch")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "the form needs a file field named 'sketch'", "invalid_request")
    data = await upload.read()
    values = {key: value for key, value in form.items() if key != "sketch" and isinstance(value, str)}
    fields = {"image": "-", **_known(request.query_params, model), **values}
    return SketchRequest(data, _validate(model, fields, skip="image"))


def _known(params, model: type[BaseModel]) -> dict[str, str]:
    """Query parameters that are fields of the body model (others, like ``format``, belong to the route)."""
    return {key: value for key, value in params.items() if key in model.model_fields}


def _from_json(body: bytes, model: type[BaseModel]) -> SketchRequest:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:  # ValueError: JSONDecodeError, or an int of 4,300+ digits
        raise ApiError(400, f"malformed JSON: {err}", "malformed_json") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply", "malformed_json") from None
    if not isinstance(obj, dict):
        raise ApiError(
            422, 'the JSON body must be an object like {"image": ...} or {"strokes": [...]}', "invalid_request"
        )
    fields = _validate(model, obj)
    strokes, image = fields.pop("strokes"), fields.pop("image")
    return SketchRequest(strokes if strokes is not None else decode_base64_image(image), fields)


def _validate(model: type[BaseModel], values: dict, skip: str | None = None) -> dict[str, Any]:
    """Validate with the pydantic model; answer 422 naming the first problems."""
    try:
        fields = model.model_validate(values).model_dump()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:3])
        raise ApiError(422, problems, "invalid_request") from None
    if skip:
        fields.pop(skip, None)
        fields.pop("strokes", None)
    return fields


def decode_base64_image(text: str) -> bytes:
    """Plain base64 or a ``data:image/...;base64,`` URL -> bytes."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ApiError(422, "a data: URL must be base64-encoded (data:image/png;base64,...)", "bad_input")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "'image' is not valid base64", "bad_input") from None
    if not data:
        raise ApiError(422, "'image' is empty", "bad_input")
    return data


def clamp_k(k: int | None, state: ServiceState) -> int:
    """The requested number of results, or the default; over the maximum is refused."""
    settings = state.settings
    k = settings.default_k if k is None else k
    if k > settings.max_k:
        raise ApiError(422, f"k must be at most {settings.max_k}", "invalid_request")
    return k
