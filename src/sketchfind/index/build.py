"""``build_index``: photos -> index directory, as reader -> mapper -> writer stages.

* reader + mapper (a thread pool, running ahead of the model): read bytes, hash, decode, preprocess;
* model (main thread): ``encode_with_global`` on a batch, plus the CLIP tower when clustering by CLIP;
* writer: quantise and commit the batch atomically (:meth:`IndexStore.commit_batch`).
Decoding overlaps compute because Pillow and torch release the GIL. A file that cannot be read or
decoded is skipped and listed in the report with its reason; it never aborts the run. Running it again
indexes only new or changed files (size + mtime, then the content hash) and resumes an interrupted run.

The report's words are the ones the CLI, the service and the API use: *new*, *updated* (content
changed), *unchanged* (already indexed), *skipped* (could not be used, with the reason).

:func:`write_encoded` commits photos whose tokens were computed elsewhere (benchmarks, other encoders).
With ``ray=RaySettings(...)`` the reader, mapper and model stages run on Ray Data instead of this process
(:mod:`.distributed`); planning and the writer stay here, so the index and its guarantees are the same.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

from ..errors import IncompleteIndexError, IndexStoreError, SketchfindError
from ..models.factory import encoder_fingerprint, model_fingerprint
from ..models.zse import ZSEModel
from ..preprocess import MAX_FILE_BYTES, PHOTO_SUFFIXES, photo_array, preprocess_photo, read_photo
from ..preprocess.pipeline import PHOTO_DECODE_FACTOR
from ..progress import progress as progress_bar
from ..runtime import load_runtime
from .ann import AUTO
from .artefacts import load_or_build
from .codec import DEFAULT_TOKEN_KIND
from .embedders import embedder_from_spec, make_embedder
from .store import DB_NAME, IndexStore, PhotoRow, Snapshot, index_exists
from .vectors import META_KEY, MilvusSpec, backend_spec, describe, shown_meta

if TYPE_CHECKING:
    from .distributed import RaySettings

COMPACT_AT = 0.5  # shard files are rewritten once half their rows belong to removed or replaced photos


@dataclass
class BuildReport:
    """What one ``build_index`` run did."""

    index_dir: str
    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # indexed before with other content
    unchanged: list[str] = field(default_factory=list)  # already indexed with the same content
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): could not be used
    ids: dict[str, int] = field(default_factory=dict)  # photo id of every new, updated or unchanged file
    photos: int = 0  # photos in the index afterwards
    seconds: float = 0.0
    encode_seconds: float = 0.0  # time inside the model
    ray_seconds: dict[str, float] = field(default_factory=dict)  # a Ray build's fixed costs (RaySession.seconds)

    @property
    def photos_per_second(self) -> float:
        """Newly encoded photos per wall-clock second."""
        return (len(self.new) + len(self.updated)) / self.seconds if self.seconds else 0.0

    @property
    def added_ids(self) -> list[int]:
        """Ids of the photos this run encoded (new and updated), in run order."""
        return [self.ids[path] for path in [*self.new, *self.updated]]

    def summary(self) -> str:
        """One line: '3 new, 0 updated, 5 unchanged, 2 skipped; 8 photos in the index'."""
        return (
            f"{len(self.new)} new, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
            f"{len(self.skipped)} skipped; {self.photos} photos in the index"
        )

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "photos_per_second": self.photos_per_second}


def model_meta(model: ZSEModel, weights: str | Path | None = None) -> dict:
    """The model identity an index records (name, config hash, weights fingerprint, where to load it)."""
    cfg = model.cfg
    return {
        "name": cfg.name,
        "config_hash": cfg.hash(),
        "fingerprint": model_fingerprint(model),
        "encoder_fingerprint": encoder_fingerprint(model),
        "weights": str(Path(weights).resolve()) if weights else None,
        "num_tokens": cfg.num_tokens,
        "width": cfg.width,
        "ret_tokens": cfg.ret_tokens,
        "config": cfg.to_dict(),
    }


# indexes written before the encoder fingerprint was recorded: the weights fingerprint of a shipped release ->
# its encoder fingerprint, so that such an index still opens after a release that changed only the head
RELEASED_ENCODERS = {
    "6ed6e366e5544df6": "3a3d4b02855ed064",  # zse-lite0 before its relation head was trained again (2026-12-03)
}


def check_model(recorded: dict, model: ZSEModel, index_dir: str | Path) -> None:
    """IndexStoreError unless ``model`` is the model the index was built with."""
    if recorded["config_hash"] != model.cfg.hash():
        raise IndexStoreError(
            f"{index_dir} was built with model {recorded['name']!r} "
            f"(config {recorded['config_hash']}), not {model.cfg.name!r} ({model.cfg.hash()})"
        )
    # the encoder decides what the index holds (the head only reads it); an index from before the encoder
    # fingerprint was recorded compares all the weights, unless they are those of a known release
    encoder = recorded.get("encoder_fingerprint") or RELEASED_ENCODERS.get(recorded["fingerprint"])
    if encoder is not None:
        same = encoder == encoder_fingerprint(model)
    else:
        same = recorded["fingerprint"] == model_fingerprint(model)
    if not same:
        hint = "pass the weights it was built with"
        if not recorded.get("weights"):  # the weights a sketchfind release shipped, replaced since
            hint += ", or index the photos again into a new --index folder (or remove this one)"
        raise IndexStoreError(
            f"{index_dir} was built with other {recorded['name']!r} weights "
            f"(fingerprint {recorded['fingerprint']}); {hint}"
        )


def load_index_model(meta: dict, index_dir) -> ZSEModel:
    """The model an index records (its weights file, or the weights shipped in the package)."""
    from ..models.factory import load_model, shipped_weights

    weights = meta.get("weights")
    if weights and Path(weights).is_file():
        return load_model(meta["name"], weights=weights)
    if shipped_weights(meta["name"]) is not None:
        return load_model(meta["name"])
    where = f" from {weights}" if weights else ""
    raise IndexStoreError(
        f"{index_dir} was built with model {meta['name']!r}{where}, which cannot be loaded "
        "here: pass the model (or --weights)"
    )


def scan_photos(sources) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to index from files and folders (recursive, JPEG/PNG/WebP/BMP by suffix; their content is
    checked when they are read) + (path, reason) for sources that do not exist and folders that cannot
    be read. File names may be any bytes the file system allows."""
    found, problems = set(), []
    for source in [sources] if isinstance(sources, str | os.PathLike) else sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found.update(_walk_photos(path, problems))
        elif path.is_file():
            found.add(path.resolve())
        else:
            problems.append((str(path), "not found"))
    return sorted(found), problems


def _walk_photos(folder: Path, problems: list[tuple[str, str]]) -> set[Path]:
    """Photo files under ``folder``; a subfolder that cannot be listed is reported, not skipped silently."""

    def unreadable(err: OSError) -> None:
        problems.append((str(err.filename), f"folder not readable: {err.strerror or err}"))

    found = set()
    for parent, _, names in os.walk(folder, onerror=unreadable):
        for name in names:
            path = Path(parent) / name
            if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file():
                found.add(path.resolve())
    return found


def open_or_create(
    out_dir: Path,
    model: ZSEModel,
    *,
    weights=None,
    embedder: str | None = None,
    token_storage: str | None = None,
    n_clusters: int | None = None,
    ann_type: str | None = None,
    **clip,
) -> tuple:
    """(writable store, embedder) for a new or existing index built with ``model``.

    For an existing index, ``embedder`` and ``token_storage`` default to (and must equal) its own."""
    if index_exists(out_dir):
        try:
            store = IndexStore.open(out_dir, writable=True)
        except IncompleteIndexError:
            for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):  # its creation never committed:
                (out_dir / name).unlink(missing_ok=True)  # nothing to lose (and an old log must not replay)
            store = None
        if store is not None:
            try:
                check_model(store.meta["model"], model, out_dir)
                for name, given, own in (
                    ("embedder", embedder, store.meta["embedder"]["kind"]),
                    ("token storage", token_storage, store.meta["token_storage"]),
                ):
                    if given is not None and given != own:
                        raise IndexStoreError(f"{out_dir} uses the {own!r} {name}, not {given!r}: build a new index")
                emb = embedder_from_spec(store.meta["embedder"], model)
                _apply_settings(store, n_clusters, ann_type)
            except BaseException:
                store.close()
                raise
            return store, emb
    emb = make_embedder(embedder or "default", model, **clip)
    norm = model.encoder.norm
    store = IndexStore.create(
        out_dir,
        model_meta=model_meta(model, weights),
        token_storage=token_storage or DEFAULT_TOKEN_KIND,
        embedder=emb.spec(),
        global_dim=emb.dim,
        ln_affine=(norm.weight.detach().tolist(), norm.bias.detach().tolist()),
    )
    _apply_settings(store, n_clusters, ann_type)
    return store, emb


def _apply_settings(store: IndexStore, n_clusters: int | None, ann_type: str | None) -> None:
    if n_clusters is not None and n_clusters != store.meta.get("n_clusters"):
        if n_clusters < 1:
            raise IndexStoreError("the number of clusters must be at least 1")
        store.set_meta("n_clusters", n_clusters)
    if ann_type is not None and ann_type != store.meta.get("ann_type", AUTO):
        try:
            if ann_type != AUTO:
                faiss.index_factory(8, ann_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexStoreError(f"invalid FAISS index type {ann_type!r}") from exc
        store.set_meta("ann_type", ann_type)


def _load_one(path: Path, known: tuple | None, model_pre, clip_pre, label_from_folder: bool, arrays: bool = False):
    """Reader + mapper for one file -> ('ok', PhotoRow, tensor, clip tensor) | ('same', id, mtime, path) |
    ('skipped', path, reason). ``arrays``: the resized uint8 (S, S, 3) images instead of the tensors (a
    quarter of the bytes to send to another process; ``to_tensor`` of them gives the same tensors)."""
    try:
        stat = path.stat()
        if stat.st_size > MAX_FILE_BYTES:
            return "skipped", str(path), f"larger than {MAX_FILE_BYTES // 2**20} MiB"
        data = path.read_bytes()
        sha = hashlib.sha256(data).digest()
        if known is not None and known[3] == sha:
            return "same", known[0], stat.st_mtime_ns, str(path)
        # decoded once for both embeddings, reduced as photo_array would for the larger of the two input sides
        side = max(pre.image_size for pre in (model_pre, clip_pre) if pre is not None)
        image = read_photo(data, str(path), max_side=PHOTO_DECODE_FACTOR * side)
        prepare = photo_array if arrays else preprocess_photo
        x = prepare(image, model_pre)
        y = prepare(image, clip_pre) if clip_pre is not None else None
        label = path.parent.name if label_from_folder else None
        row = PhotoRow(str(path), sha, len(data), stat.st_mtime_ns, label, known[0] if known else None)
        return "ok", row, x, y
    except SketchfindError as exc:
        return "skipped", str(path), str(exc).replace("the image", "image")
    except Exception as exc:  # anything a broken file can raise must not stop the run
        return "skipped", str(path), f"{type(exc).__name__}: {exc}"


def build_index(
    sources,
    out_dir: str | Path,
    model: ZSEModel | None = None,
    *,
    weights=None,
    batch_size: int = 32,
    workers: int = 2,
    embedder: str | None = None,
    clip_model: str | None = None,
    clip_weights=None,
    clip_config=None,
    token_storage: str | None = None,
    n_clusters: int | None = None,
    ann_type: str | None = None,
    label_from_folder: bool = False,
    progress: bool = False,
    runtime: str | None = None,
    finish: bool = True,
    backend: str | None = None,
    milvus_uri: str | None = None,
    collection: str | None = None,
    ray: RaySettings | None = None,
) -> BuildReport:
    """Indexes (or updates the index of) the photos in ``sources`` into ``out_dir``; see the module doc.

    ``model=None``: the model an existing index was built with, or the default model for a new one.
    ``embedder`` ('default' | 'clip'), ``token_storage`` (int6 default) and ``ann_type`` ('auto', the
    default: exact below :data:`~sketchfind.index.ann.APPROX_FROM` photos, tuned approximate above; or a
    FAISS factory string) are chosen when the index is created. ``runtime``: 'torch' | 'onnx' | 'openvino' |
    'onnx-int8' | 'torch-bf16' | 'auto' (None: ``$SKETCHFIND_RUNTIME``, else auto; see :mod:`sketchfind.runtime`;
    the index does not depend on it: any runtime searches it). ``backend`` ('faiss' | 'milvus'), ``milvus_uri`` and
    ``collection`` choose where ann's first stage searches (recorded in the index; default: what it records, else
    FAISS); a Milvus collection is brought in step at the end.
    ``finish=False`` only commits: compaction, the search structures and the Milvus collection are left to
    :func:`finish_index` (which needs no model). ``ray``: decode and encode on a Ray cluster instead of this
    process (:mod:`.distributed`); the index is the same."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if milvus_uri or ((backend or collection) and not index_exists(out_dir)):
        # wrong vector-backend settings are refused before anything is loaded, created or encoded
        check_vectors(backend_spec({}, backend, milvus_uri, collection))
    session = None
    if ray is not None:
        from .distributed import RaySession

        # Ray starts in the background (seconds) while the model loads and the files are planned; Ray
        # missing or a cluster that does not answer still fails before anything is written
        session = RaySession(ray)
    try:
        if model is None:
            model = _default_model(out_dir)
        if session is None:  # with Ray the encoder actors load the runtime, not this process
            model = load_runtime(model, runtime)
        files, missing = scan_photos(sources)
        report = BuildReport(str(out_dir), skipped=list(missing))
        if session is not None:
            session.check_imported()
        store, emb = open_or_create(
            out_dir,
            model,
            weights=weights,
            embedder=embedder,
            token_storage=token_storage,
            n_clusters=n_clusters,
            ann_type=ann_type,
            clip_model=clip_model,
            clip_weights=clip_weights,
            clip_config=clip_config,
        )
        try:
            spec = vector_backend(store, backend, milvus_uri, collection)
            since = store.generation
            todo = _plan(files, store.file_states(), report)
            with progress_bar(len(todo), "indexing", enabled=progress) as advance:
                if session is None:
                    _run(todo, store, model, emb, report, batch_size, workers, label_from_folder, advance)
                elif todo:
                    from .distributed import run_on_ray

                    run_on_ray(
                        todo, store, model, emb, report, session, batch_size, label_from_folder, advance, runtime
                    )
            if session is not None:  # every batch is committed: Ray shuts down while the search structures build
                session.stop_in_background()
            if finish:
                if progress and (report.new or report.updated):
                    print("clustering and writing the search index...", file=sys.stderr)
                _finish(store, spec, since, report.added_ids)
            report.photos = len(store.snapshot())
        finally:
            store.close()
    finally:
        if session is not None:
            session.close()  # returns once a Ray this build started is shut down
    if session is not None:
        report.ray_seconds = dict(session.seconds)
    report.seconds = time.perf_counter() - start
    return report


def write_encoded(
    out_dir: str | Path,
    model: ZSEModel,
    batches,
    *,
    weights=None,
    token_storage: str | None = None,
    n_clusters: int | None = None,
    ann_type: str | None = None,
    backend: str | None = None,
    milvus_uri: str | None = None,
    collection: str | None = None,
) -> int:
    """Commits photos whose tokens were computed elsewhere and builds the search structures, as
    :func:`build_index` would; returns the number of photos in the index.

    ``batches`` yields ``(rows, tokens, global_emb)``: a list of :class:`PhotoRow`, their (n, T, D) encoder
    tokens and (n, G) global embeddings (the default embedder's: ``model.encode_with_global``)."""
    store, _ = open_or_create(
        Path(out_dir), model, weights=weights, token_storage=token_storage, n_clusters=n_clusters, ann_type=ann_type
    )
    try:
        spec = vector_backend(store, backend, milvus_uri, collection)
        since, changed = store.generation, []
        for rows, tokens, global_emb in batches:
            tokens, global_emb = np.asarray(tokens, np.float32), np.asarray(global_emb, np.float32)
            changed += store.commit_batch(list(rows), store.codec.encode(tokens), store.gcodec.encode(global_emb))
        snapshot = store.snapshot()
        load_or_build(store, snapshot, persist=True)
        sync_vectors(store, snapshot, spec, since, changed)
        return len(snapshot)
    finally:
        store.close()


def _default_model(out_dir: Path) -> ZSEModel:
    if index_exists(out_dir):
        with IndexStore.open(out_dir) as store:
            return load_index_model(store.meta["model"], out_dir)
    from ..models.factory import load_model

    return load_model()


def _plan(files: list[Path], states: dict, report: BuildReport) -> list[tuple[Path, tuple | None]]:
    """Files whose size or mtime differ from the index (or that are new), with their known state."""
    todo = []
    for path in files:
        known = states.get(str(path))
        try:
            stat = path.stat()
        except OSError as exc:
            report.skipped.append((str(path), exc.strerror or str(exc)))
            continue
        if known is not None and known[1] == stat.st_size and known[2] == stat.st_mtime_ns:
            report.unchanged.append(str(path))
            report.ids[str(path)] = known[0]
        else:
            todo.append((path, known))
    return todo


def encode_photos(model, emb, images: list, clip_images: list | None = None, device=None) -> tuple:
    """One model batch: preprocessed photo tensors -> ((B, T, D) tokens, (B, G) global embeddings) as numpy;
    the global embedding is the embedder's (CLIP's when ``clip_images`` are given)."""
    with torch.inference_mode():
        x = torch.stack(images)  # NCHW: the PyTorch model makes it channels-last itself, the ONNX graphs take it so
        tokens, global_emb = model.encode_with_global(x if device is None else x.to(device))  # (B, T, D), (B, G)
        if clip_images is not None:
            clip_x = torch.stack(clip_images)
            global_emb = emb.embed(clip_x if device is None else clip_x.to(device))
    return tokens.float().cpu().numpy(), global_emb.float().cpu().numpy()


def commit_encoded(store: IndexStore, rows: list[PhotoRow], token_codes, global_codes, report: BuildReport) -> None:
    """Commits one batch of encoded photos (already quantised by the store's codecs) and records it."""
    ids = store.commit_batch(rows, token_codes, global_codes)
    for row, photo_id in zip(rows, ids, strict=True):
        (report.updated if row.id is not None else report.new).append(row.path)
        report.ids[row.path] = photo_id


def note_unencoded(result: tuple, report: BuildReport, touched: list[tuple[int, int]]) -> None:
    """Records a ``_load_one`` result that needs no model: 'same' (content unchanged) or 'skipped'."""
    if result[0] == "same":
        touched.append((result[1], result[2]))
        report.unchanged.append(result[3])
        report.ids[result[3]] = result[1]
    else:
        report.skipped.append((result[1], result[2]))


def _run(
    todo,
    store: IndexStore,
    model: ZSEModel,
    emb,
    report: BuildReport,
    batch_size: int,
    workers: int,
    label_from_folder: bool,
    advance,
) -> None:
    clip_pre = getattr(emb, "preprocess", None)
    batch: list = []
    touched: list[tuple[int, int]] = []

    def flush() -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        clip_images = [b[3] for b in batch] if clip_pre is not None else None
        tokens, global_emb = encode_photos(model, emb, [b[2] for b in batch], clip_images)
        report.encode_seconds += time.perf_counter() - t0
        commit_encoded(
            store, [b[1] for b in batch], store.codec.encode(tokens), store.gcodec.encode(global_emb), report
        )
        advance(len(batch))
        batch.clear()

    prefetch = max(2 * batch_size, 8)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="sketchfind-decode") as pool:
        pending: deque = deque()
        items = iter(todo)

        def fill() -> None:
            while len(pending) < prefetch and (item := next(items, None)) is not None:
                pending.append(pool.submit(_load_one, *item, model.cfg.preprocess, clip_pre, label_from_folder))

        fill()
        while pending:
            result = pending.popleft().result()
            fill()
            if result[0] == "ok":
                batch.append(result)
                if len(batch) >= batch_size:
                    flush()
            else:
                note_unencoded(result, report, touched)
                advance(1)
        flush()
    store.touch(touched)


def remove_photos(index_dir: str | Path, targets, finish: bool = True, **backend) -> int:
    """Removes photos by id, path, or everything under a folder path; returns how many were removed.
    ``finish=False`` only commits the removal (see :func:`finish_index`). ``backend``: ``backend``,
    ``milvus_uri``, ``collection`` as for :func:`build_index`."""
    store = IndexStore.open(index_dir, writable=True)
    try:
        spec = vector_backend(store, **backend)
        since = store.generation
        states = store.file_states()
        ids = set()
        for target in targets:
            if isinstance(target, int | np.integer) or (isinstance(target, str) and target.isdigit()):
                ids.add(int(target))
                continue
            path = str(Path(target).expanduser().resolve())
            ids.update(v[0] for p, v in states.items() if p == path or p.startswith(path.rstrip("/") + "/"))
        removed = store.remove(sorted(ids))
        if finish:
            # also when nothing matched: a run killed after its removal committed left the compaction, the
            # artefacts and the Milvus collection to do, and running it again is how a user resumes (all are
            # no-ops when up to date)
            _finish(store, spec, since, ids)
        return removed
    finally:
        store.close()


def finish_index(index_dir: str | Path, **backend) -> None:
    """Compacts the shards if due, writes the search structures of the committed photos and brings a Milvus
    collection in step (no-ops when up to date): what ``build_index`` and ``remove_photos`` do after their
    commits, without a model. ``backend`` as for :func:`build_index`."""
    store = IndexStore.open(index_dir, writable=True)
    try:
        _finish(store, vector_backend(store, **backend), None, ())
    finally:
        store.close()


def _finish(store: IndexStore, spec: MilvusSpec | None, since: int | None, changed) -> None:
    store.compact(min_garbage=COMPACT_AT)  # removed and replaced photos leave their old rows behind
    snapshot = store.snapshot()
    load_or_build(store, snapshot, persist=True)
    sync_vectors(store, snapshot, spec, since, changed)


def vector_backend(
    store: IndexStore, backend: str | None = None, milvus_uri: str | None = None, collection: str | None = None
) -> MilvusSpec | None:
    """The writer's vector backend (:func:`~.vectors.backend_spec`): checked to be reachable before any
    photo is encoded, then recorded in the index meta. None means FAISS."""
    spec = backend_spec(store.meta, backend, milvus_uri, collection)
    if spec is not None:
        from .milvus import open_collection

        open_collection(spec, store, create=True).close()
    if describe(spec) != store.meta.get(META_KEY, describe(None)):
        store.set_meta(META_KEY, describe(spec))
    return spec


def check_vectors(spec: MilvusSpec | None) -> None:
    """ConfigError / VectorBackendError unless the Milvus of ``spec`` answers (None: FAISS, nothing to check)."""
    if spec is not None:
        from .milvus import check_reachable

        check_reachable(spec)


def sync_vectors(store: IndexStore, snapshot: Snapshot, spec: MilvusSpec | None, since: int | None, changed) -> None:
    """After the store has committed: brings a Milvus collection in step (:func:`~.milvus.sync`)."""
    if spec is not None:
        from .milvus import sync

        sync(store, snapshot, spec, since=since, changed=changed)


def index_info(index_dir: str | Path) -> dict:
    """index_info.json of an index, brought up to date in memory if it is stale (nothing is written)."""
    with IndexStore.open(index_dir) as store:
        snapshot = store.snapshot()
        info = {**load_or_build(store, snapshot, persist=False).info, "vectors": shown_meta(store.meta)}
        if "bytes" not in info:
            total = store.disk_bytes()
            info["bytes"] = {"total": total, "per_photo": total / max(1, len(snapshot))}
        return info


def recluster(index_dir: str | Path, n_clusters: int | None = None) -> dict:
    """Runs K-means again (optionally with a new cluster count); returns the new index_info."""
    store = IndexStore.open(index_dir, writable=True)
    try:
        if n_clusters is not None:
            if n_clusters < 1:
                raise IndexStoreError("the number of clusters must be at least 1")
            store.set_meta("n_clusters", n_clusters)
        return load_or_build(store, store.snapshot(), persist=True, recluster=True).info
    finally:
        store.close()
