"""Service settings, read from the environment (``SKETCHFIND_*``) or given by ``sketchfind serve``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the app needs to know; ``SKETCHFIND_INDEX=/data/index`` etc. override the defaults."""

    model_config = SettingsConfigDict(env_prefix="SKETCHFIND_", extra="ignore")

    index: Path = Path("sketchfind-index")  # the index directory the Searcher opens
    model: str | None = None  # model name; None = the model the index was built with
    weights: Path | None = None  # weights file for ``model``; None = the weights shipped in the package
    token: SecretStr | None = None  # bearer token for photo upload / delete; None = those are refused
    upload_dir: Path | None = None  # where uploaded photos are kept; None = <index>/uploads
    max_upload_bytes: int = Field(10 * 2**20, ge=1024)  # larger request bodies get 413
    default_k: int = Field(20, ge=1)
    max_k: int = Field(200, ge=1)
    strategy: str | None = None  # default search strategy; None = the Searcher's default
    # torch | onnx | openvino | openvino-bf16 | onnx-int8 | torch-bf16 | auto; None = auto (sketchfind.runtime)
    runtime: str | None = None
    backend: str | None = None  # faiss | milvus; None = what the index records
    milvus_uri: str | None = None  # Milvus server URL or Milvus Lite .db file (implies backend milvus)
    collection: str | None = None  # Milvus collection; None = what the index records, else "sketchfind"
    ann_params: dict[str, float] = {}  # FAISS search parameters overriding the index's (e.g. {"nprobe": 32})
    threads: int | None = Field(None, ge=1)  # torch threads for one query; None = torch's default (all cores)
    thumbnail_size: int = Field(256, ge=32, le=1024)
    thumbnail_cache: int = Field(4096, ge=0)  # thumbnails kept in memory (LRU)
    warm_thumbnails: bool = True  # make the gallery's thumbnails at start when they all fit in the cache

    @property
    def uploads(self) -> Path:
        """The folder uploaded photos are written to."""
        return self.upload_dir or self.index / "uploads"
