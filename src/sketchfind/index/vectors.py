"""Where ann's first stage searches the [Ret] embeddings: the FAISS file beside the store, or Milvus.

The store (:mod:`.store`) is always the source of truth; the vector backend is derived from it. The
backend an index uses is recorded in its meta (key ``vectors``) by ``sketchfind index``, so ``search``,
``serve`` and :meth:`Searcher.open <sketchfind.search.Searcher.open>` find it without repeating flags
(flags given there override it for that process, without writing anything).

A first stage is anything with FAISS's search signature over snapshot positions (:class:`FirstStage`):
the FAISS index itself, or :class:`~sketchfind.index.milvus.MilvusFirstStage`. Nothing here imports
pymilvus: the default install stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np

from ..errors import ConfigError

BACKENDS = ("faiss", "milvus")
META_KEY = "vectors"  # store meta: {"backend": "faiss"} or MilvusSpec.to_meta()
DEFAULT_COLLECTION = "sketchfind"
# Chosen by benchmarks/bench_milvus.py: HNSW finds FLAT's exact neighbours on sketchy-mini (mAP equal) and
# is the type Milvus servers serve fastest at 70k+; Milvus Lite builds it with FAISS, so tests run it too.
DEFAULT_MILVUS_INDEX = "HNSW"
MILVUS_SCHEMES = ("http", "https", "tcp", "unix")


class FirstStage(Protocol):
    """ann's first stage: ``search(queries (n, D) float32, k) -> (scores (n, k), positions (n, k))``,
    positions into the snapshot, best first, -1 where fewer than k were found (FAISS's convention)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class MilvusSpec:
    """Which Milvus collection holds an index's vectors."""

    uri: str  # a Milvus server (http://host:19530) or a Milvus Lite file (/abs/path/vectors.db)
    collection: str = DEFAULT_COLLECTION
    index_type: str = DEFAULT_MILVUS_INDEX

    def to_meta(self) -> dict:
        """The store meta entry that records this backend."""
        return {"backend": "milvus", "uri": self.uri, "collection": self.collection, "index_type": self.index_type}

    @property
    def shown_uri(self) -> str:
        """The URI without any user:password part (for messages and ``info``)."""
        parts = urlparse(self.uri)
        if parts.password is None and parts.username is None:
            return self.uri
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    @property
    def is_lite(self) -> bool:
        """Whether the URI names a Milvus Lite file (served inside this process)."""
        return self.uri.endswith(".db") and "://" not in self.uri


def normalise_uri(uri: str) -> str:
    """A server URI as given; a Milvus Lite file as an absolute path (valid from any working directory)."""
    uri = uri.strip()
    scheme = urlparse(uri).scheme.lower()
    if scheme in MILVUS_SCHEMES:
        return uri
    if uri.endswith(".db") and "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    raise ConfigError(
        f"--milvus-uri {uri!r} is neither a Milvus server (http://host:19530) nor a Milvus Lite file ending in .db"
    )


def backend_spec(
    meta: dict, backend: str | None = None, milvus_uri: str | None = None, collection: str | None = None
) -> MilvusSpec | None:
    """The vector backend to use: the index's recorded one, overridden by what is given; None means FAISS.

    Giving ``milvus_uri`` or ``collection`` without ``backend`` means Milvus."""
    recorded = meta.get(META_KEY) or {"backend": "faiss"}
    kind = backend or ("milvus" if milvus_uri or collection else recorded.get("backend", "faiss"))
    if kind not in BACKENDS:
        raise ConfigError(f"unknown vector backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "faiss":
        if milvus_uri or collection:
            raise ConfigError("--milvus-uri and --collection go with --backend milvus, not faiss")
        return None
    was_milvus = recorded.get("backend") == "milvus"
    uri = milvus_uri or (recorded.get("uri") if was_milvus else None)
    if not uri:
        raise ConfigError("--backend milvus needs --milvus-uri (a Milvus server URL or a Milvus Lite .db file)")
    return MilvusSpec(
        normalise_uri(uri),
        collection or (recorded.get("collection") if was_milvus else None) or DEFAULT_COLLECTION,
        (recorded.get("index_type") if was_milvus else None) or DEFAULT_MILVUS_INDEX,
    )


def describe(spec: MilvusSpec | None) -> dict:
    """The backend as the index records it."""
    return spec.to_meta() if spec is not None else {"backend": "faiss"}


def shown(spec: MilvusSpec | None) -> dict:
    """The backend as ``Searcher.info()``, ``sketchfind info`` and /api/info show it (no credentials)."""
    return {**describe(spec), "uri": spec.shown_uri} if spec is not None else describe(None)


def shown_meta(meta: dict) -> dict:
    """The backend an index records, as :func:`shown` shows it."""
    recorded = meta.get(META_KEY) or describe(None)
    if recorded.get("backend") != "milvus":
        return recorded
    return shown(MilvusSpec(recorded["uri"], recorded["collection"], recorded["index_type"]))
