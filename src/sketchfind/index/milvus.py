"""Milvus as the vector database of an index: the [Ret] embeddings and photo ids in one collection.

The collection is derived from the store like the FAISS file, but lives outside the index directory,
so several ``sketchfind serve`` processes (on one host or several) search the same vectors. pymilvus's
``MilvusClient`` speaks to a Milvus server (``http://host:19530``) and to Milvus Lite (a local ``.db``
path, served inside the process) with the same calls; pymilvus is imported only here, and only when used.

Collection (one per index): ``id`` INT64 primary key = the photo id; ``version`` INT64 = the first 8 bytes
of the photo's sha256 (an updated photo keeps its id, its version changes); ``ret`` FLOAT_VECTOR = the
L2-normalised [Ret] embedding exactly as the FAISS file gets it, metric IP. Collection properties:
``sketchfind.index`` names the index that owns it (another index is refused), ``sketchfind.generation``
the store generation it mirrors, written after the rows.

Keeping it in step (:func:`sync`, run by every writer after the store has committed): when the collection
mirrors the generation the writer started from, only the photos this run changed are upserted/deleted;
otherwise (a writer was killed between the store commit and the Milvus write, or it is new) both sides'
(id, version) lists are compared and the difference is written. So a crash between the two is repaired by
the next ``sketchfind index`` (or any other write).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError, VectorBackendError
from ..rerank import normalize
from .store import IndexStore, Snapshot, crash_point
from .vectors import MilvusSpec

# index type -> (build params, search params); HNSW's ef matches the FAISS HNSW default (efSearch 128)
INDEX_PARAMS = {
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "IVF_FLAT": ({"nlist": 128}, {"nprobe": 16}),
    "FLAT": ({}, {}),
}
MAX_TOPK = 16384  # a Milvus server's largest search limit; longer rankings are completed from the store
WRITE_BATCH = 1024  # rows per upsert call (a gRPC message stays well under Milvus's 64 MB limit)
READ_BATCH = 4096  # rows per page when listing the collection
CONNECT_TIMEOUT = 20.0  # seconds before an unreachable server is reported
# No keepalive pings on an idle connection: a serve process idles for minutes, and servers that enforce gRPC's
# default ping policy (Milvus Lite's) answer a ping every 10 s with GOAWAY "too_many_pings" and drop the
# connection (an error line on stderr; the next call has to reconnect). A dead connection is still found on the
# next call, and pymilvus reconnects.
GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": False}
TOKEN_ENV = "SKETCHFIND_MILVUS_TOKEN"  # a server's "user:password" or API key
PROP_OWNER, PROP_GENERATION = "sketchfind.index", "sketchfind.generation"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def index_owner(meta: dict) -> str:
    """What identifies one index (its creation time and model) across processes and hosts."""
    return f"{meta['model']['config_hash']}/{meta['model']['fingerprint']}/{meta['created']!r}"


def photo_versions(store: IndexStore, snapshot: Snapshot) -> np.ndarray:
    """(N,) int64 content versions in snapshot order: the first 8 bytes of each photo's sha256."""
    by_id = {state[0]: state[3] for state in store.file_states().values()}
    return np.array([int.from_bytes(by_id[int(i)][:8], "big", signed=True) for i in snapshot.ids], np.int64)


class MilvusVectors:
    """One index's collection: search by vector, list, upsert, delete, and the generation it mirrors."""

    def __init__(self, client, errors: tuple[type[BaseException], ...], spec: MilvusSpec):
        self.client, self.spec, self._errors = client, spec, errors
        self.search_params = {"metric_type": "IP", "params": dict(INDEX_PARAMS[spec.index_type][1])}

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def connect(cls, spec: MilvusSpec, *, dim: int, owner: str, create: bool = False) -> MilvusVectors:
        """Opens (or, when ``create``, creates) the collection of the index ``owner``; VectorBackendError when
        pymilvus is missing, the server cannot be reached, or the collection is missing or another index's."""
        vectors = cls(*_client(spec))
        try:
            vectors._open(dim, owner, create)
        except BaseException:
            vectors.close()
            raise
        return vectors

    def _open(self, dim: int, owner: str, create: bool) -> None:
        name = self.spec.collection
        with self._calling("opening the collection"):
            exists = self.client.has_collection(name)
            if not exists and not create:
                raise VectorBackendError(
                    f"Milvus at {self.spec.shown_uri} has no collection {name!r}: build it with "
                    "'sketchfind index PHOTOS --backend milvus --milvus-uri URI'"
                )
            if not exists:
                self._create(dim, owner)
            props = self.client.describe_collection(name).get("properties", {})
            if props.get(PROP_OWNER) != owner:
                raise VectorBackendError(
                    f"the Milvus collection {name!r} at {self.spec.shown_uri} belongs to another index: "
                    "choose another --collection"
                )
            self.client.load_collection(name)  # a server (or a restarted Milvus Lite) serves loaded collections only
            built = self.client.describe_index(name, "ret").get("index_type", self.spec.index_type)
        # search with the parameters of the index the collection has (it may predate a change of default)
        self.search_params = {"metric_type": "IP", "params": dict(INDEX_PARAMS.get(built, ({}, {}))[1])}

    def _create(self, dim: int, owner: str) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, description="sketchfind [Ret] embeddings")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("version", DataType.INT64)
        schema.add_field("ret", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        build = INDEX_PARAMS[self.spec.index_type][0]
        index.add_index("ret", index_type=self.spec.index_type, metric_type="IP", params=dict(build))
        # Strong: a search sees every write acknowledged before it, in any process
        name = self.spec.collection
        self.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        self.client.alter_collection_properties(self.spec.collection, {PROP_OWNER: owner})

    def __enter__(self) -> MilvusVectors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (a Milvus Lite file stays served until the process ends)."""
        try:
            self.client.close()
        except self._errors:
            pass

    # -- reading ---------------------------------------------------------------------------------
    def generation(self) -> int | None:
        """The store generation the collection mirrors (None before the first sync)."""
        with self._calling("reading the collection"):
            props = self.client.describe_collection(self.spec.collection).get("properties", {})
        value = props.get(PROP_GENERATION)
        return int(value) if value is not None else None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n, k), photo ids (n, k)) of the nearest vectors by inner product, -1 padded."""
        queries = np.ascontiguousarray(queries, np.float32)
        limit = max(1, min(k, MAX_TOPK))
        with self._calling("searching"):
            found = self.client.search(
                self.spec.collection,
                data=list(queries),
                limit=limit,
                anns_field="ret",
                output_fields=["id"],
                search_params=self.search_params,
            )
        scores = np.full((len(queries), limit), -np.inf, np.float32)
        ids = np.full((len(queries), limit), -1, np.int64)
        for row, hits in enumerate(found):
            for col, hit in enumerate(hits):
                scores[row, col], ids[row, col] = hit["distance"], hit["id"]
        return scores, ids

    def rows(self) -> dict[int, int]:
        """id -> version of every row in the collection."""
        out: dict[int, int] = {}
        with self._calling("listing the collection"):
            pages = self.client.query_iterator(
                self.spec.collection, batch_size=READ_BATCH, filter="id >= 0", output_fields=["id", "version"]
            )
            try:
                while page := pages.next():
                    out.update((int(r["id"]), int(r["version"])) for r in page)
            finally:
                pages.close()
        return out

    def count(self) -> int:
        """Rows in the collection."""
        return len(self.rows())

    # -- writing ---------------------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, versions: np.ndarray, vectors: np.ndarray) -> None:
        """Inserts or replaces rows."""
        for start in range(0, len(ids), WRITE_BATCH):
            stop = start + WRITE_BATCH
            rows = [
                {"id": int(i), "version": int(v), "ret": vec}
                for i, v, vec in zip(ids[start:stop], versions[start:stop], vectors[start:stop], strict=True)
            ]
            with self._calling("writing vectors"):
                self.client.upsert(self.spec.collection, rows)

    def delete(self, ids: Iterable[int]) -> None:
        """Deletes rows by photo id."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), WRITE_BATCH):
            with self._calling("deleting vectors"):
                self.client.delete(self.spec.collection, ids=ids[start : start + WRITE_BATCH])

    def set_generation(self, generation: int) -> None:
        """Records the store generation the collection now mirrors."""
        with self._calling("writing the collection's generation"):
            self.client.alter_collection_properties(self.spec.collection, {PROP_GENERATION: str(generation)})

    @contextmanager
    def _calling(self, action: str):
        with _reported(self.spec, action, self._errors):
            yield


@contextmanager
def _reported(spec: MilvusSpec, action: str, errors: tuple[type[BaseException], ...]):
    """pymilvus and gRPC failures as VectorBackendError with a sentence for a person."""
    try:
        yield
    except errors as exc:
        reason = getattr(exc, "message", None) or str(exc)
        hint = ""
        if spec.is_lite and action == "connecting" and Path(spec.uri).parent.is_dir():
            hint = (
                " (a Milvus Lite file is served by one process at a time: to share it, run "
                "'milvus-lite server --data-dir FILE' and pass its http:// address)"
            )
        reason = reason.replace(spec.uri, spec.shown_uri)
        raise VectorBackendError(f"Milvus at {spec.shown_uri}: {action} failed: {reason}{hint}") from None


def _client(spec: MilvusSpec) -> tuple:
    """(MilvusClient connected to ``spec.uri``, the exception types its calls raise, spec)."""
    if not _NAME.match(spec.collection):
        raise ConfigError(f"invalid Milvus collection name {spec.collection!r}: letters, digits and _ only")
    if spec.index_type not in INDEX_PARAMS:
        raise ConfigError(f"unknown Milvus index type {spec.index_type!r}; choose one of {', '.join(INDEX_PARAMS)}")
    try:
        import grpc
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError:
        raise VectorBackendError(
            "the Milvus backend needs pymilvus and milvus-lite: pip install -e '.[milvus]'"
        ) from None
    errors = (MilvusException, grpc.RpcError)
    _quiet_lite()
    with _reported(spec, "connecting", errors):
        token = os.environ.get(TOKEN_ENV, "")  # never recorded in the index
        client = MilvusClient(uri=spec.uri, token=token, timeout=CONNECT_TIMEOUT, grpc_options=GRPC_OPTIONS)
        return client, errors, spec


def check_reachable(spec: MilvusSpec) -> None:
    """VectorBackendError (or ConfigError) unless Milvus at ``spec.uri`` answers: checked before any work."""
    client, errors, _ = _client(spec)
    try:
        with _reported(spec, "connecting", errors):
            client.list_collections()
    finally:
        client.close()


def _quiet_lite() -> None:
    """Milvus Lite logs complaints a user can do nothing about, with tracebacks: listing a collection (no MVCC
    timestamps; its gRPC server lacks AllocTimestamp) and a file served by another process (which
    :func:`_reported` turns into a VectorBackendError with what to do). They are filtered out."""
    for name in ("pymilvus.client.iterator.query_iterator", "grpc._server", "milvus_lite.server_manager"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _LiteNoise) for f in log.filters):
            log.addFilter(_LiteNoise())


class _LiteNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "milvus_lite.server_manager":
            return record.exc_info is None  # a failed start: reported as a VectorBackendError
        unimplemented = record.exc_info is not None and record.exc_info[0] is NotImplementedError
        return not unimplemented and "mvccTs" not in record.getMessage()


def open_collection(spec: MilvusSpec, store: IndexStore, *, create: bool = False) -> MilvusVectors:
    """The collection of the index in ``store``."""
    return MilvusVectors.connect(spec, dim=store.codec.ret_dim, owner=index_owner(store.meta), create=create)


def sync(
    store: IndexStore, snapshot: Snapshot, spec: MilvusSpec, *, since: int | None, changed: Iterable[int] = ()
) -> dict:
    """Brings the collection in step with ``snapshot`` (see the module doc); ``since`` is the store generation
    this writer started from and ``changed`` the photo ids it added, updated or removed. Returns counts."""
    with open_collection(spec, store, create=True) as vectors:
        mirrored = vectors.generation()
        if mirrored == snapshot.generation:
            return {"upserted": 0, "deleted": 0, "full": False}
        versions = photo_versions(store, snapshot)
        full = mirrored is None or mirrored != since
        if full:  # compare both sides: repairs whatever an interrupted writer left behind
            present = vectors.rows()
            live = dict(zip(snapshot.ids.tolist(), versions.tolist(), strict=True))
            upsert = np.array([i for i, v in live.items() if present.get(i) != v], np.int64)
            delete = [i for i in present if i not in live]
        else:
            changed = np.unique(np.asarray(list(changed), np.int64))
            known = np.isin(changed, snapshot.ids)
            upsert, delete = changed[known], changed[~known].tolist()
        crash_point("vectors-sync")  # test hook: the store has committed, Milvus not yet
        positions = np.searchsorted(snapshot.ids, upsert)
        for start in range(0, len(positions), WRITE_BATCH):
            part = positions[start : start + WRITE_BATCH]
            vectors.upsert(snapshot.ids[part], versions[part], ret_embeddings(store, snapshot, part))
        vectors.delete(delete)
        vectors.set_generation(snapshot.generation)
        return {"upserted": len(upsert), "deleted": len(delete), "full": full}


def ret_embeddings(store: IndexStore, snapshot: Snapshot, positions: np.ndarray) -> np.ndarray:
    """(n, D) L2-normalised [Ret] embeddings as the FAISS file gets them."""
    return normalize(store.codec.decode_ret(store.read_codes(snapshot, positions)))


class MilvusFirstStage:
    """ann's first stage through Milvus for one snapshot (:class:`~sketchfind.index.vectors.FirstStage`).

    Ids Milvus returns that the snapshot does not hold (removed since, while a writer is between its store
    commit and its Milvus write) are dropped. A whole-gallery ranking (k >= N) is completed from the store
    with the exact [Ret] cosine of the photos Milvus did not return (beyond MAX_TOPK, or not written yet)."""

    def __init__(self, vectors: MilvusVectors, store: IndexStore, snapshot: Snapshot):
        self.vectors, self.store, self.snapshot = vectors, store, snapshot

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's signature: (scores (n, k), snapshot positions (n, k)), -1 where fewer were found."""
        n = len(self.snapshot)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_pos = np.full((len(queries), k), -1, np.int64)
        for row in range(len(queries)):
            row_pos, row_scores = self._search_one(queries[row], k)
            if k >= n and len(row_pos) < n:
                row_pos, row_scores = self._complete(queries[row], row_pos, row_scores)
            take = min(k, len(row_pos))
            out_pos[row, :take], out_scores[row, :take] = row_pos[:take], row_scores[:take]
        return out_scores, out_pos

    def _search_one(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Snapshot positions and scores of one query's hits; asks for more while removed photos fill the page."""
        limit = k
        while True:
            scores, ids = self.vectors.search(query[None], limit)
            pos, keep = self._positions(ids[0])
            if keep.sum() >= k or (ids[0] >= 0).sum() < limit or limit >= MAX_TOPK:
                return pos[keep], scores[0][keep]
            limit = min(2 * limit, MAX_TOPK)

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(snapshot positions, whether each id is in the snapshot)."""
        n = len(self.snapshot)
        if n == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.snapshot.ids, ids), n - 1)
        return pos, (ids >= 0) & (self.snapshot.ids[pos] == ids)

    def _complete(self, query: np.ndarray, pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rest = np.setdiff1d(np.arange(len(self.snapshot)), pos)
        cos = ret_embeddings(self.store, self.snapshot, rest) @ query
        order = np.argsort(-cos, kind="stable")
        return np.concatenate([pos, rest[order]]), np.concatenate([scores, cos[order].astype(np.float32)])
