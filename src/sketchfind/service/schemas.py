"""Request and response models of the REST API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["exhaustive", "clustered", "ann"]
MAX_PHOTO_ID = 2**62  # photo ids are SQLite integers: larger ones are refused (422), never an overflow (500)


class SketchJSON(BaseModel):
    """A sketch sent as JSON: a base64 image (plain or a ``data:`` URL) or QuickDraw strokes."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="base64 PNG/JPEG/WebP, or a data: URL")
    strokes: list[Any] | None = Field(
        None, description="QuickDraw strokes: a list of [[x0, x1, ...], [y0, y1, ...]] (optional 3rd list: times)"
    )
    k: int | None = Field(None, ge=1, description="how many results (default and maximum: see /api/info)")
    strategy: Strategy | None = None

    @model_validator(mode="after")
    def _one_sketch(self) -> SketchJSON:
        if (self.image is None) == (self.strokes is None):
            raise ValueError("send exactly one of 'image' (base64) or 'strokes' (QuickDraw list)")
        return self


class ExplainJSON(SketchJSON):
    """A sketch (as in /api/search) and the indexed photo to explain it against."""

    photo_id: int | None = Field(
        None, ge=0, le=MAX_PHOTO_ID, description="the indexed photo; may be a query parameter instead"
    )


class Hit(BaseModel):
    """One ranked photo."""

    rank: int
    id: int
    score: float
    name: str = Field(description="the photo's file name")
    label: str | None = Field(None, description="the photo's class (its folder name) when the index knows it")
    url: str
    thumbnail_url: str = Field(description="versioned by the photo's content: it never changes, browsers keep it")


class SearchResponse(BaseModel):
    """Ranked results and where the time went."""

    strategy: str
    k: int
    results: list[Hit]
    timings_ms: dict[str, float] = Field(description="per stage, as reported by the Searcher")
    server_ms: float = Field(description="from request received to response ready")


class Link(BaseModel):
    """A sketch cell and the photo cell that matches it best (cells are row-major on a grid x grid grid)."""

    sketch_cell: int
    photo_cell: int
    strength: float


class ExplainImages(BaseModel):
    """PNG overlays as data: URLs."""

    sketch: str
    photo: str
    combined: str


class ExplainResponse(BaseModel):
    """Token-correspondence heat-maps for one sketch-photo pair."""

    photo_id: int | None = Field(None, description="the indexed photo; may be a query parameter instead")
    score: float = Field(
        description="the score explained: the [Ret] similarity ann ranks by ('ret') or the relation score in (0, 1)"
    )
    source: str = Field(
        description="'ret' (the [Ret] similarity split over cells), 'relation' (the relation score's [Ret] and map "
        "terms split over cells), 'cosine' (the relation head's cosine map) or 'cross-attention'"
    )
    parts: dict[str, float] | None = Field(
        None, description="'relation' only: the relation logit's two terms, 'ret' ([Ret] cosine x its weight) and 'map'"
    )
    grid: int
    sketch_heat: list[list[float]]
    photo_heat: list[list[float]]
    links: list[Link]
    images: ExplainImages
    server_ms: float


class PhotoInfo(BaseModel):
    """An indexed photo."""

    id: int
    name: str
    label: str | None = None
    size: int | None = None
    url: str
    thumbnail_url: str


class UploadResponse(BaseModel):
    """What happened to each uploaded file."""

    added: list[PhotoInfo] = Field(description="photos indexed by this upload (new, or a new version)")
    unchanged: list[str] = Field(description="files already in the index with the same content")
    skipped: list[dict[str, str]] = Field(description="{'name', 'reason'} for each file that could not be used")


class DeleteResponse(BaseModel):
    removed: int


class Health(BaseModel):
    status: Literal["ok"]


class Info(BaseModel):
    """The index, the model and the service's limits."""

    photos: int
    model: str
    strategies: list[str]
    default_strategy: str | None
    default_k: int
    max_k: int
    max_upload_bytes: int
    max_pixels: int
    limits: dict[str, float | int] = Field(
        description="every resource bound: pixels, drawing budget, decodes and requests at once, timeouts"
    )
    uploads_enabled: bool
    index: dict[str, Any] = Field(description="index_info.json as written by the index builder")


class ErrorBody(BaseModel):
    """Every error: a sentence for a person and a stable code for a program."""

    detail: str
    code: str
