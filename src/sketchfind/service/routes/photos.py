"""Photos: served only from the index (by integer id, never by a client-chosen path); upload and delete
need the bearer token."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ...atomic import atomic_write_bytes
from ...errors import NotAPhotoError, SketchfindError, UnknownPhotoError
from ...names import shown_name
from ...preprocess import is_light_decode, photo_format, read_photo
from ..deps import State, require_token
from ..errors import ApiError
from ..schemas import MAX_PHOTO_ID, DeleteResponse, ErrorBody, PhotoInfo, UploadResponse
from ..thumbnails import THUMBNAIL_CACHE, THUMBNAIL_IMMUTABLE, content_version, size_bucket
from .search import photo_urls

router = APIRouter(prefix="/api/photos", tags=["photos"])

PhotoId = Annotated[int, PathParam(description="the photo's id in the index", ge=0, le=MAX_PHOTO_ID)]
_NOT_FOUND = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}


def _record(searcher, photo_id: int):
    try:
        return searcher.photo(photo_id)
    except UnknownPhotoError:
        raise ApiError(404, f"no photo with id {photo_id} in the index") from None


def _existing_file(record) -> Path:
    path = Path(record.path)
    if not path.is_file():
        raise ApiError(404, f"the file of photo {record.id} is no longer on disk", "photo_file_missing")
    return path


def _media_type(path: Path, photo_id: int) -> str:
    """The media type of the photo file by its content (never its name): a photo format, or 404."""
    try:
        with path.open("rb") as file:
            head = file.read(16)
        return photo_format(head).media_type
    except OSError:
        raise ApiError(404, f"the file of photo {photo_id} cannot be read any more", "photo_file_missing") from None
    except NotAPhotoError:
        raise ApiError(404, f"the file of photo {photo_id} is no longer a photo", "photo_file_missing") from None


_PHOTO_TYPES = {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, "image/bmp": {}}}


@router.get("/{photo_id}", responses={200: _PHOTO_TYPES, **_NOT_FOUND})
async def photo(state: State, photo_id: PhotoId) -> FileResponse:
    """The original photo file, with the media type of its content."""
    path = _existing_file(_record(state.searcher, photo_id))
    media_type = _media_type(path, photo_id)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})


_THUMBNAIL = {200: {"content": {"image/jpeg": {}}}, **_NOT_FOUND}
ThumbnailSize = Annotated[int | None, Query(ge=32, le=1024)]
Version = Annotated[str, PathParam(description="the photo's content version (search results give it)", max_length=64)]


@router.get("/{photo_id}/thumbnail", responses=_THUMBNAIL)
async def thumbnail(request: Request, state: State, photo_id: PhotoId, size: ThumbnailSize = None) -> Response:
    """A JPEG thumbnail (longer side ``size`` rounded up to 64, 128, 256, 512 or 1024; default 256), made
    once per size bucket and cached in memory."""
    return await _thumbnail(request, state, photo_id, size, None)


@router.get("/{photo_id}/thumbnail/{version}", responses=_THUMBNAIL)
async def versioned_thumbnail(
    request: Request, state: State, photo_id: PhotoId, version: Version, size: ThumbnailSize = None
) -> Response:
    """The thumbnail at the URL search results give (``version``: the photo's content version): while the
    version is current the answer never changes, so browsers keep it (``immutable``) and never ask again."""
    return await _thumbnail(request, state, photo_id, size, version)


async def _thumbnail(request: Request, state: State, photo_id: int, size: int | None, version: str | None):
    record = _record(state.searcher, photo_id)
    path = _existing_file(record)
    size = size_bucket(size or state.settings.thumbnail_size)
    etag = f'"{(record.sha256 or "")[:16]}-{size}"'
    # an outdated version (the photo changed since the results were sent) gets today's photo, cached briefly
    immutable = version is not None and version == content_version(record)
    headers = {"ETag": etag, "Cache-Control": THUMBNAIL_IMMUTABLE if immutable else THUMBNAIL_CACHE}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        data = state.thumbnails.peek(path, record.sha256 or "", size)
        if data is None:  # a decode: one of the bounded decode slots (a light one for a photo of few pixels)
            light = await run_in_threadpool(is_light_decode, path)  # reads the file's header
            data = await state.decode(
                state.thumbnails.get, path, record.sha256 or "", size, request=request, light=light
            )
    except SketchfindError as err:
        raise ApiError(404, f"photo {photo_id} cannot be read any more: {err}", "photo_file_missing") from None
    return Response(data, media_type="image/jpeg", headers=headers)


def photo_info(record) -> PhotoInfo:
    return PhotoInfo(
        id=record.id,
        name=shown_name(Path(record.path).name),
        label=record.label,
        size=record.size,
        **photo_urls(record.id, content_version(record)),
    )


@router.post(
    "",
    response_model=UploadResponse,
    dependencies=[Depends(require_token)],
    responses={code: {"model": ErrorBody} for code in (401, 403, 413, 422)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["files"],
                        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    }
                }
            },
        }
    },
)
async def upload(request: Request, state: State) -> UploadResponse:
    """Add photos to the index (multipart field ``files``, one or more). Needs the bearer token."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise ApiError(415, "upload photos as multipart/form-data in the field 'files'")
    form = await request.form(max_files=64, max_fields=8)
    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not uploads:
        raise ApiError(422, "no files: send one or more photos in the multipart field 'files'", "invalid_request")
    saved, skipped = [], []
    for upload_file in uploads:
        name = shown_name(Path(upload_file.filename or "photo").name)
        data = await upload_file.read()
        try:  # decoding checks the photo: off the event loop, in a decode slot
            light = is_light_decode(data)
            saved.append((name, await state.decode(_store_upload, data, name, state.settings.uploads, light=light)))
        except SketchfindError as err:
            skipped.append({"name": name, "reason": shown_name(str(err))})
    if not saved:
        return UploadResponse(added=[], unchanged=[], skipped=skipped)

    def add():
        report = state.searcher.add_photos([path for _, path in saved], finish=False)
        return report, {r.id: r for r in state.searcher.photos(report.ids.values())}

    report, records = await state.change(add)
    names = {str(path): name for name, path in saved}
    added = [photo_info(records[report.ids[path]]) for path in [*report.new, *report.updated]]
    unchanged = [names.get(path, shown_name(Path(path).name)) for path in report.unchanged]
    skipped += [
        {"name": names.get(path, shown_name(Path(path).name)), "reason": shown_name(reason)}
        for path, reason in report.skipped
    ]
    return UploadResponse(added=added, unchanged=unchanged, skipped=skipped)


def _store_upload(data: bytes, name: str, folder: Path) -> Path:
    """Check the bytes are a usable photo, then write them (atomically) under a content-hash file name with
    the extension of their format (by content: a drawing or a mislabelled file is refused)."""
    extension = photo_format(data).extension  # NotAPhotoError for SVG, strokes JSON, anything else
    read_photo(data, name)  # InputError for >40 MP, corrupt or truncated files
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (hashlib.sha256(data).hexdigest()[:32] + extension)
    if not target.exists():
        atomic_write_bytes(target, data)
    return target.resolve()


@router.delete(
    "/{photo_id}",
    response_model=DeleteResponse,
    dependencies=[Depends(require_token)],
    responses={code: {"model": ErrorBody} for code in (401, 403, 404, 422)},
)
async def delete(state: State, photo_id: PhotoId) -> DeleteResponse:
    """Remove a photo from the index (its file stays where it is). Needs the bearer token."""

    def remove():
        _record(state.searcher, photo_id)
        return state.searcher.remove_photos([photo_id], finish=False)

    return DeleteResponse(removed=int(await state.change(remove)))
