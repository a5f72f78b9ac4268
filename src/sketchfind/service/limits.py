"""What one connection or one client may cost the server: body size and read time, header read time,
requests in flight per client. Each limit is a named constant here and is reported by ``/api/info``.

* ``BodyLimit`` (ASGI middleware): bodies over the size limit get 413 before more is read; a body whose
  next chunk does not arrive within ``BODY_IDLE_SECONDS``, or that is not complete after
  ``BODY_TOTAL_SECONDS``, gets 408 (a client that stalls mid-body no longer holds a connection forever).
* ``ClientLimit`` (ASGI middleware): at most ``MAX_REQUESTS_PER_CLIENT`` API requests in flight per client
  address, of which at most ``MAX_MODEL_REQUESTS_PER_CLIENT`` need the model; more get 429, so one client
  cannot queue the model lock or the decode slots for everyone else. (Behind a reverse proxy every client
  has the proxy's address: put the limit in the proxy there.)
* ``release_freed_memory``: after a large decode or an index change, the C heap hands its free pages
  back to the system (glibc keeps freed blocks below its mmap threshold, up to 32 MB each, for reuse:
  without this the server's resident memory only ratchets up under a mix of large requests).
* ``TimedH11Protocol`` (uvicorn's h11 protocol): a connection that has not sent a complete request head
  within ``HEADER_SECONDS`` of its first byte is closed (uvicorn's own keep-alive timer stops at the first
  byte, so a client sending half its headers kept the connection forever).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_response

log = logging.getLogger("sketchfind.service")

HEADER_SECONDS = 10.0  # from a request's first byte to the end of its head
BODY_IDLE_SECONDS = 15.0  # longest wait for the next chunk of a body
BODY_TOTAL_SECONDS = 60.0  # longest time to receive a whole body (10 MB at ~170 kB/s)
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
MAX_HEADER_BYTES = 64 * 1024  # a request head larger than this is refused (h11_max_incomplete_event_size)
MAX_REQUESTS_PER_CLIENT = 16  # API requests in flight per client address (thumbnails included)
MAX_MODEL_REQUESTS_PER_CLIENT = 2  # of those, requests that need the model (search, explain, upload, delete)
_MODEL_ROUTES = ("/api/search", "/api/explain")


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def limits_info() -> dict:
    """The limits as ``/api/info`` reports them."""
    return {
        "header_seconds": HEADER_SECONDS,
        "body_idle_seconds": BODY_IDLE_SECONDS,
        "body_total_seconds": BODY_TOTAL_SECONDS,
        "keep_alive_seconds": KEEP_ALIVE_SECONDS,
        "max_header_bytes": MAX_HEADER_BYTES,
        "max_requests_per_client": MAX_REQUESTS_PER_CLIENT,
        "max_model_requests_per_client": MAX_MODEL_REQUESTS_PER_CLIENT,
    }


def uvicorn_options() -> dict:
    """Keyword arguments for ``uvicorn.run`` that apply the connection limits."""
    return {
        "http": TimedH11Protocol,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, before reading more than that, and bodies that
    arrive too slowly with 408.

    ``Content-Length`` is checked first; bodies without one (chunked) are counted as they stream in
    and cut off at the limit. A body under the limit is buffered and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH", "DELETE"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await error_response(400, "invalid Content-Length header")(scope, receive, send)
            if int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        messages, total = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BODY_TOTAL_SECONDS
        while True:
            wait = min(BODY_IDLE_SECONDS, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except TimeoutError:
                log.info("%s: request body too slow, answered 408", _client(scope))
                response = error_response(408, "the request body arrived too slowly", "body_timeout")
                response.headers["Connection"] = "close"
                return await response(scope, receive, send)
            if message["type"] == "http.disconnect":
                log.info("%s: client disconnected while sending the body", _client(scope))
                return None
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return await self._too_large(scope, receive, send)
            messages.append(message)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        limit = f"{self.max_bytes / 2**20:g} MB"
        response = error_response(413, f"the upload is too large: the limit is {limit}", "too_large")
        return await response(scope, receive, send)


class ClientLimit:
    """At most ``MAX_REQUESTS_PER_CLIENT`` API requests in flight per client address (429 beyond), of which
    ``MAX_MODEL_REQUESTS_PER_CLIENT`` may need the model."""

    def __init__(self, app):
        self.app = app
        self.in_flight: Counter = Counter()
        self.model_in_flight: Counter = Counter()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path == "/api/health":
            return await self.app(scope, receive, send)
        client = _client(scope)
        needs_model = path in _MODEL_ROUTES or (path.startswith("/api/photos") and scope["method"] != "GET")
        if self.in_flight[client] >= MAX_REQUESTS_PER_CLIENT or (
            needs_model and self.model_in_flight[client] >= MAX_MODEL_REQUESTS_PER_CLIENT
        ):
            limit = MAX_MODEL_REQUESTS_PER_CLIENT if needs_model else MAX_REQUESTS_PER_CLIENT
            detail = f"too many requests in flight from {client} (the limit is {limit}): wait for an answer first"
            response = error_response(429, detail, "too_many_requests", headers={"Retry-After": "1"})
            return await response(scope, receive, send)
        self.in_flight[client] += 1
        self.model_in_flight[client] += needs_model
        try:
            return await self.app(scope, receive, send)
        finally:
            for counter, used in ((self.in_flight, 1), (self.model_in_flight, int(needs_model))):
                counter[client] -= used
                if counter[client] <= 0:
                    del counter[client]


def _client(scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head (``HEADER_SECONDS`` from its first byte)."""

    head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting_for_head = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting_for_head and self.head_timer is None:
            self.head_timer = self.loop.call_later(HEADER_SECONDS, self._head_timeout)
        elif not waiting_for_head:
            self._cancel_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed a connection that sent no complete request head within %g s", HEADER_SECONDS)
            self.transport.close()
