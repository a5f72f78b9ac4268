"""The committed part of an index directory: SQLite metadata + append-only token shards.

Commit protocol (a SIGKILL at any instant loses nothing committed before it):
  1. a batch's token and global-embedding codes are appended to the open shard files and fsynced;
  2. one SQLite transaction inserts/updates the photo rows that point at (shard, row), raises the
     shard's committed row count and the store generation. That COMMIT is the commit point.
Bytes beyond a shard's committed row count are orphans of a crashed batch: readers never look at
them and the next writer truncates them. Derived artefacts (FAISS index, clusters, index_info.json)
live in :mod:`.artefacts`, carry the generation they were built from and are rebuilt when stale.

Readers open the database read-only and never write (a read-only index directory works); one writer
at a time holds ``.lock``.

Crash points (:func:`sketchfind.atomic.crash_point`; ``tests/test_index_crash.py`` kills the CLI at each):
``shard-partial`` (half a batch's token bytes written), ``shard-appended`` (one shard file's rows fsynced),
``shard-written`` (a batch's rows on disk, not committed), ``compact-written`` (compacted copies on disk, not
committed), ``<step>-pending`` / ``<step>-committed`` (a transaction's statements run / committed, for the steps
``create``, ``batch``, ``touch``, ``remove``, ``compact``, ``meta``), ``shard-dropped`` (recovery deleted or
truncated one orphan file), ``checkpointed``, ``db-opened`` (a new database file without tables); with
``atomic-tmp-written`` / ``atomic-replaced`` of every whole-file write and those of :mod:`.artefacts`.

Layout of an index directory:
  index.sqlite (+ -wal, -shm)   photos (id, path, hash, label, shard address), shards, meta
  shards/tokens-NNNNN.bin       token codes, one fixed-size row per photo (:mod:`.codec`)
  shards/global-NNNNN.bin       global-embedding codes (clustering), same rows
  ann-GEN.faiss                 FAISS index over the [Ret] embeddings of generation GEN
  clusters-GEN.npz              K-means centroids, assignment, representatives of generation GEN
  index_info.json               what was built, with which settings; names the two files above
  uploads/                      photos added over HTTP (the service's default upload folder)
  .lock                         the writer lock
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import TMP_SUFFIX, crash_armed, crash_point, fsync_path
from ..cluster import DEFAULT_CLUSTERS
from ..errors import IncompleteIndexError, IndexStoreError, UnknownPhotoError
from .codec import DEFAULT_TOKEN_KIND, GlobalCodec, TokenCodec

FORMAT_VERSION = 1
SHARD_ROWS = 16384  # photos per shard file
TOKEN_CHUNK_BYTES = 4 * 2**20  # float32 tokens decoded at a time when a pass reads them all (iter_tokens)
DB_NAME = "index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    label TEXT,
    added REAL NOT NULL,
    shard INTEGER NOT NULL,
    row INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class PhotoRecord:
    """One indexed photo."""

    id: int
    path: str
    sha256: str
    size: int
    label: str | None
    added: float


@dataclass(frozen=True)
class PhotoRow:
    """A photo to commit: ``id`` is set when it replaces the tokens of an indexed path."""

    path: str
    sha256: bytes
    size: int
    mtime_ns: int
    label: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """The committed photos at one generation, in id order: position i <-> ids[i]."""

    generation: int
    ids: np.ndarray  # (N,) int64
    shard: np.ndarray  # (N,) int32
    row: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, photo_ids) -> np.ndarray:
        """Snapshot positions of photo ids (UnknownPhotoError for an id not in this snapshot)."""
        ids = np.asarray(photo_ids, np.int64).reshape(-1)
        pos = np.searchsorted(self.ids, ids)
        bad = (pos >= len(self.ids)) | (self.ids[np.minimum(pos, len(self.ids) - 1)] != ids)
        if len(self.ids) == 0 or bad.any():
            raise UnknownPhotoError(f"unknown photo id {int(ids[bad][0]) if bad.any() else int(ids[0])}")
        return pos


MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id is unknown, never an OverflowError


def _to_db(text: str | None) -> str | bytes | None:
    """A path or label as SQLite keeps it: text when it is valid UTF-8, else its exact file-system bytes
    (a BLOB; Python holds such names with surrogate escapes, which SQLite's text cannot store)."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text)


def _from_db(value: str | bytes | None) -> str | None:
    """The inverse of :func:`_to_db`: the path exactly as the file system gave it."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def index_exists(root: str | Path) -> bool:
    """Whether ``root`` holds an index database (complete or not)."""
    return (Path(root) / DB_NAME).is_file()


class IndexStore:
    """SQLite metadata + memory-mapped token shards of one index directory."""

    def __init__(self, root: Path, conn: sqlite3.Connection, writable: bool, lock_fd: int | None):
        self.root, self.conn, self.writable, self._lock_fd = root, conn, writable, lock_fd
        self._db_lock = threading.RLock()  # one connection shared by the threads of a web service
        self.meta = self._read_meta()
        self._check_format()
        self.codec = TokenCodec(
            self.meta["token_storage"],
            self.meta["num_tokens"],
            self.meta["width"],
            *self.meta["ln_affine"],
            ret_tokens=self.meta.get("ret_tokens", 1),  # indexes written before wider [Ret]s: one token
        )
        self.gcodec = GlobalCodec(self.meta["global_dim"])
        self._maps: dict[tuple[str, int], np.memmap] = {}

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, *, writable: bool = False) -> IndexStore:
        """Opens an existing index; a writer takes the directory lock and drops orphans of a crash."""
        root = Path(root)
        if not index_exists(root):
            raise IndexStoreError(
                f"no sketchfind index at {root} (missing {DB_NAME}); build one with 'sketchfind index'"
            )
        lock_fd = _take_lock(root) if writable else None
        try:
            conn = _connect(root / DB_NAME, writable)
            if _read_meta_raw(conn).get("format_version") is None:
                conn.close()
                raise IncompleteIndexError(f"{root} holds an index whose creation was interrupted: build it again")
            store = cls(root, conn, writable, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if writable:
            store._recover()
        return store

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        model_meta: dict,
        token_storage: str = DEFAULT_TOKEN_KIND,
        embedder: dict,
        global_dim: int,
        ln_affine: tuple[list, list],
    ) -> IndexStore:
        """A new, empty index (writable). Meta are committed in one transaction."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise IndexStoreError(f"{root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        (root / "shards").mkdir(exist_ok=True)
        lock_fd = _take_lock(root)
        try:
            conn = _connect(root / DB_NAME, writable=True)
            existing = _read_meta_raw(conn)
            if existing.get("format_version") is not None:
                raise IndexStoreError(f"an index already exists at {root}")
            TokenCodec(token_storage, model_meta["num_tokens"], model_meta["width"])  # validates the storage kind
            meta = {
                "format_version": FORMAT_VERSION,
                "generation": 0,
                "created": time.time(),
                "model": model_meta,
                "token_storage": token_storage,
                "num_tokens": model_meta["num_tokens"],
                "width": model_meta["width"],
                "ret_tokens": model_meta.get("ret_tokens", 1),
                "ln_affine": [list(map(float, a)) for a in ln_affine],
                "embedder": embedder,
                "global_dim": global_dim,
                "n_clusters": DEFAULT_CLUSTERS,
            }
            with _transaction(conn, "create"):
                conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
                )
            return cls(root, conn, True, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Closes the database and releases the writer lock."""
        with self._db_lock:
            self._maps.clear()
            self.conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------------------------
    def _read_meta(self) -> dict:
        with self._db_lock:
            return _read_meta_raw(self.conn)

    def _check_format(self) -> None:
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise IndexStoreError(
                f"{self.root} has index format {self.meta.get('format_version')}; "
                f"this sketchfind reads format {FORMAT_VERSION}"
            )

    @property
    def generation(self) -> int:
        """Increases with every committed change."""
        with self._db_lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(json.loads(row[0]))

    def set_meta(self, key: str, value) -> None:
        """Commits one meta value (e.g. the requested number of clusters) as a new generation: the derived
        artefacts depend on such settings, so the ones on disk become stale and are rebuilt with it."""
        self._require_writable()
        with self._write("meta"):
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            self._bump_generation()
        self.meta[key] = value

    # -- reading ---------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Ids and shard addresses of every committed photo (one consistent read); ``meta`` is brought up to
        the same generation (another process may have changed the settings the artefacts are built with)."""
        with self._db_lock, self.conn:
            self.conn.execute("BEGIN")
            self.meta = _read_meta_raw(self.conn)
            gen = int(self.meta["generation"])
            rows = np.array(self.conn.execute("SELECT id, shard, row FROM photos ORDER BY id").fetchall(), np.int64)
        rows = rows.reshape(-1, 3)
        return Snapshot(gen, rows[:, 0].copy(), rows[:, 1].astype(np.int32), rows[:, 2].copy())

    def photo(self, photo_id: int) -> PhotoRecord:
        """The record of one photo; IndexStoreError for an unknown id."""
        records = self.photos([photo_id])
        if not records:
            raise UnknownPhotoError(f"unknown photo id {photo_id}")
        return records[0]

    def photos(self, ids) -> list[PhotoRecord]:
        """Records of the given ids that exist, in the given order."""
        ids = [int(i) for i in ids]
        ids = [i for i in ids if 0 <= i <= MAX_ID]
        found: dict[int, PhotoRecord] = {}
        with self._db_lock:
            for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                chunk = ids[start : start + 900]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, path, sha256, size, label, added FROM photos WHERE id IN ({marks})"
                for r in self.conn.execute(sql, chunk):
                    found[r[0]] = PhotoRecord(r[0], _from_db(r[1]), r[2].hex(), r[3], _from_db(r[4]), r[5])
        return [found[i] for i in ids if i in found]

    def paths(self, snapshot: Snapshot) -> list[str]:
        """Paths in snapshot order."""
        with self._db_lock:
            by_id = dict(self.conn.execute("SELECT id, path FROM photos"))
        return [_from_db(by_id.get(int(i), "")) for i in snapshot.ids]

    def labels(self, snapshot: Snapshot) -> list[str | None]:
        """Labels in snapshot order."""
        with self._db_lock:
            by_id = dict(self.conn.execute("SELECT id, label FROM photos"))
        return [_from_db(by_id.get(int(i))) for i in snapshot.ids]

    def file_states(self) -> dict[str, tuple[int, int, int, bytes]]:
        """path -> (id, size, mtime_ns, sha256) for incremental indexing."""
        with self._db_lock:
            rows = self.conn.execute("SELECT path, id, size, mtime_ns, sha256 FROM photos").fetchall()
        return {_from_db(r[0]): (r[1], r[2], r[3], r[4]) for r in rows}

    def _shard_map(self, kind: str, shard: int, rows: int) -> np.ndarray:
        """(rows, row_bytes) read-only view of one shard's committed rows."""
        row_bytes = self.codec.row_bytes if kind == "tokens" else self.gcodec.row_bytes
        cached = self._maps.get((kind, shard))
        if cached is None or cached.shape[0] < rows:
            path = self.root / "shards" / f"{kind}-{shard:05d}.bin"
            if not path.is_file() or path.stat().st_size < rows * row_bytes:
                raise IndexStoreError(f"{path} is missing or shorter than its committed rows: the index is damaged")
            cached = np.memmap(path, dtype=np.uint8, mode="r", shape=(rows, row_bytes))
            self._maps[(kind, shard)] = cached
        return cached

    def read_codes(self, snapshot: Snapshot, positions: np.ndarray, kind: str = "tokens") -> np.ndarray:
        """(n, row_bytes) codes of the photos at the given snapshot positions."""
        positions = np.asarray(positions, np.int64)
        row_bytes = self.codec.row_bytes if kind == "tokens" else self.gcodec.row_bytes
        out = np.empty((len(positions), row_bytes), np.uint8)
        shards, rows = snapshot.shard[positions], snapshot.row[positions]
        for s in np.unique(shards):
            sel = np.nonzero(shards == s)[0]
            view = self._shard_map(kind, int(s), int(snapshot.row[snapshot.shard == s].max()) + 1)
            out[sel] = view[rows[sel]]
        return out

    def tokens(self, snapshot: Snapshot, positions: np.ndarray) -> np.ndarray:
        """(n, T, D) float32 tokens of the photos at the given positions."""
        return self.codec.decode(self.read_codes(snapshot, positions))

    def global_embeddings(self, snapshot: Snapshot) -> np.ndarray:
        """(N, G) float32 L2-normalised global embeddings in snapshot order."""
        emb = self.gcodec.decode(self.read_codes(snapshot, np.arange(len(snapshot)), "global"))
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def iter_tokens(self, snapshot: Snapshot, chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """(positions slice, (n, T, D) tokens) over the whole snapshot, chunk by chunk (by default as many
        photos as ``TOKEN_CHUNK_BYTES`` of float32 tokens: decoding makes a few temporaries of that size)."""
        chunk = chunk or max(1, TOKEN_CHUNK_BYTES // (4 * self.codec.T * self.codec.D))
        for start in range(0, len(snapshot), chunk):
            stop = min(len(snapshot), start + chunk)
            yield slice(start, stop), self.tokens(snapshot, np.arange(start, stop))

    # -- writing ---------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexStoreError("this index was opened read-only")

    def _recover(self) -> None:
        """Truncates shard bytes beyond the committed rows, deletes uncommitted shard files, and deletes the
        temporary files of whole-file writes a crash interrupted (in the index folder and ``shards/`` only
        the lock holder writes, and it is us)."""
        with self._db_lock:
            committed = dict(self.conn.execute("SELECT id, rows FROM shards"))
        shard_dir = self.root / "shards"
        shard_dir.mkdir(exist_ok=True)
        for path in [*shard_dir.iterdir(), *self.root.iterdir()]:
            if path.name.endswith(TMP_SUFFIX) and path.is_file():
                path.unlink()
                continue
            kind, _, number = path.stem.partition("-")
            shard_file = path.parent == shard_dir and path.suffix == ".bin" and kind in ("tokens", "global")
            if not (shard_file and number.isdigit()):
                continue
            row_bytes = self.codec.row_bytes if kind == "tokens" else self.gcodec.row_bytes
            keep = committed.get(int(number), 0) * row_bytes
            if keep == 0:
                path.unlink()
            elif path.stat().st_size > keep:
                with open(path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
            else:
                continue  # nothing to drop
            crash_point("shard-dropped")  # one orphan file deleted or truncated, others maybe not yet

    def _append(self, kind: str, shard: int, start_row: int, rows: np.ndarray) -> None:
        path = self.root / "shards" / f"{kind}-{shard:05d}.bin"
        new = not path.exists()
        with open(path, "w+b" if new else "r+b") as f:
            f.seek(start_row * rows.shape[1])
            data = rows.tobytes()
            if kind == "tokens" and crash_armed("shard-partial"):
                f.write(data[: len(data) // 2])  # test hook: die with half a batch on disk
                f.flush()
                crash_point("shard-partial")
                f.seek(start_row * rows.shape[1])
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        crash_point("shard-appended")  # this file's rows are on disk (a new file's folder entry not flushed)
        if new:
            fsync_path(path.parent)

    def commit_batch(self, photos: list[PhotoRow], token_rows: np.ndarray, global_rows: np.ndarray) -> list[int]:
        """Appends a batch and commits it atomically; returns the photo ids in batch order."""
        self._require_writable()
        n = len(photos)
        if not (len(token_rows) == len(global_rows) == n):
            raise ValueError("photos, token rows and global rows differ in length")
        with self._db_lock:
            tail = self.conn.execute("SELECT id, rows FROM shards ORDER BY id DESC LIMIT 1").fetchone()
        shard, used = tail if tail else (0, 0)
        places, shard_rows, i = [], {}, 0
        while i < n:
            if used >= SHARD_ROWS:
                shard, used = shard + 1, 0
            take = min(n - i, SHARD_ROWS - used)
            self._append("tokens", shard, used, token_rows[i : i + take])
            self._append("global", shard, used, global_rows[i : i + take])
            places += [(shard, used + j) for j in range(take)]
            used, i = used + take, i + take
            shard_rows[shard] = used
        crash_point("shard-written")  # the batch's rows are on disk, uncommitted: orphans if we die now
        now = time.time()
        ids = []
        with self._write("batch"):
            self.conn.executemany("INSERT OR REPLACE INTO shards VALUES (?, ?)", list(shard_rows.items()))
            for photo, (s, r) in zip(photos, places, strict=True):
                values = (photo.sha256, photo.size, photo.mtime_ns, _to_db(photo.label), now, s, r)
                if photo.id is None:
                    cur = self.conn.execute(
                        "INSERT INTO photos (sha256, size, mtime_ns, label, added, shard, row, path) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, _to_db(photo.path)),
                    )
                    ids.append(cur.lastrowid)
                else:
                    self.conn.execute(
                        "UPDATE photos SET sha256=?, size=?, mtime_ns=?, label=?, added=?, shard=?, row=? WHERE id=?",
                        (*values, photo.id),
                    )
                    ids.append(photo.id)
            self._bump_generation()
        return ids

    def touch(self, updates: list[tuple[int, int]]) -> None:
        """Records new modification times ((id, mtime_ns)) of files whose content did not change."""
        self._require_writable()
        if updates:
            with self._write("touch"):
                self.conn.executemany("UPDATE photos SET mtime_ns=? WHERE id=?", [(m, i) for i, m in updates])

    def remove(self, ids) -> int:
        """Removes photos by id (their shard bytes become unreferenced); returns how many existed."""
        self._require_writable()
        ids = [int(i) for i in ids if 0 <= int(i) <= MAX_ID]
        removed = 0
        with self._write("remove"):
            for start in range(0, len(ids), 900):
                chunk = ids[start : start + 900]
                removed += self.conn.execute(
                    f"DELETE FROM photos WHERE id IN ({','.join('?' * len(chunk))})", chunk
                ).rowcount
            if removed:
                self._bump_generation()
        return removed

    def garbage_fraction(self) -> float:
        """Share of stored shard rows no photo points at any more (removed or replaced photos)."""
        with self._db_lock:
            stored = self.conn.execute("SELECT COALESCE(SUM(rows), 0) FROM shards").fetchone()[0]
            live = self.conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
        return 1.0 - live / stored if stored else 0.0

    def compact(self, min_garbage: float = 0.0) -> bool:
        """Rewrites the live rows into new shard files when at least ``min_garbage`` of the stored rows are
        unreferenced; one transaction switches every photo over, then the old files are deleted (a crash
        before the commit leaves uncommitted new files, after it unreferenced old ones: both are dropped
        by the next writer's recovery). Returns whether it compacted."""
        self._require_writable()
        garbage = self.garbage_fraction()
        if garbage <= 0 or garbage < min_garbage:
            return False
        snap = self.snapshot()
        with self._db_lock:
            old = [r[0] for r in self.conn.execute("SELECT id FROM shards")]
        first = max(old) + 1
        places, shard_rows = [], {}
        for start in range(0, len(snap), SHARD_ROWS):
            positions = np.arange(start, min(len(snap), start + SHARD_ROWS))
            shard = first + start // SHARD_ROWS
            self._append("tokens", shard, 0, self.read_codes(snap, positions))
            self._append("global", shard, 0, self.read_codes(snap, positions, "global"))
            places += [(shard, i) for i in range(len(positions))]
            shard_rows[shard] = len(positions)
        crash_point("compact-written")  # new shard files complete, uncommitted: orphans if we die now
        with self._write("compact"):
            self.conn.executemany(
                "UPDATE photos SET shard=?, row=? WHERE id=?",
                [(s, r, int(i)) for (s, r), i in zip(places, snap.ids, strict=True)],
            )
            self.conn.execute("DELETE FROM shards")
            self.conn.executemany("INSERT INTO shards VALUES (?, ?)", list(shard_rows.items()))
            self._bump_generation()
        self._maps.clear()
        self._recover()  # deletes the old shard files
        return True

    def _bump_generation(self) -> None:
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    @contextmanager
    def _write(self, point: str) -> Iterator[None]:
        """One write transaction of this store (under the connection lock); see :func:`_transaction`."""
        with self._db_lock, _transaction(self.conn, point):
            yield

    def checkpoint(self) -> None:
        """Folds the SQLite write-ahead log into the database file (keeps the directory compact)."""
        with self._db_lock:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        crash_point("checkpointed")

    def disk_bytes(self) -> int:
        """Bytes used by the whole index directory."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


@contextmanager
def _transaction(conn: sqlite3.Connection, point: str) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on an exception), with the crash points
    ``<point>-pending`` (every statement run, COMMIT not reached) and ``<point>-committed``."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        yield
        crash_point(f"{point}-pending")
    crash_point(f"{point}-committed")


def _connect(path: Path, writable: bool) -> sqlite3.Connection:
    """A writer's connection (WAL, full sync, schema ensured), or a reader's that never writes: read-only,
    and on a directory where SQLite cannot even create its shared-memory file, immutable."""
    try:
        if writable:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            crash_point("db-opened")  # a new database file without its tables yet
            conn.executescript(_SCHEMA)
            return conn
        uri = path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        except sqlite3.OperationalError:  # no -shm/-wal and no right to create them: nobody can be writing
            conn.close()
            conn = sqlite3.connect(
                f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
            )
        return conn
    except sqlite3.DatabaseError as exc:
        raise IndexStoreError(f"{path} is not a readable index database: {exc}") from exc


def _read_meta_raw(conn: sqlite3.Connection) -> dict:
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
            return {}  # a database file whose creation was interrupted before its schema
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise IndexStoreError(f"the index database is damaged: {exc}") from exc


def _take_lock(root: Path) -> int:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexStoreError(
            f"{root} is being written by another sketchfind process; try again when it is done"
        ) from None
    return fd
