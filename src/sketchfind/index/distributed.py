"""Building an index with Ray Data (``sketchfind index --ray``): the same index as a single-process
:func:`~sketchfind.index.build_index`, with decoding and encoding spread over a Ray cluster.

    driver       scan + plan: which files are new or changed (``build._plan``, unchanged)
    actor pool   each actor builds the model once from the driver's weights (sent through the object store
                 and checked against the index's fingerprint), with the same runtime, preprocessing and
                 codecs as the single-process build, and encodes + quantises batches of photos; a GPU per
                 actor when the cluster has GPUs
    decoding     read, hash, decode, resize (``build._load_one``):
                   on CPU actors (``decode="actors"``, the default without GPUs) each actor decodes the 256
                   files it is given with its own threads while it encodes, as the single-process build
                   does: only file names go in and quantised tokens come out, no pixels cross processes;
                   for GPU actors (``decode="tasks"``, the default with GPUs) CPU tasks decode 32 files each
                   into uint8 images that the actors normalise (``to_tensor``) and encode, so the GPUs do
                   not wait for the CPUs of their own process
    driver       commits each encoded batch with ``IndexStore.commit_batch``, in plan order

The driver stays the only writer, so the guarantees of the single-process build hold unchanged: only
new or changed photos are encoded, unreadable files are skipped and reported, and a driver killed at
any point leaves an index that opens and resumes. Batches keep the plan order (Ray Data's
``preserve_order``), so photo ids, clusters and the FAISS index come out as in the single-process build.

Without an address a local Ray is started with a bounded footprint (the CPUs this process may use, a
512 MiB object store, no dashboard, no usage reporting) and shut down afterwards; with one, the driver
joins that cluster, whose nodes need sketchfind installed and the photos at the same paths. Ray is
imported here only, and only when asked for: the base install does not need it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, ConfigError, SketchfindError
from ..preprocess import to_tensor
from .build import BuildReport, _load_one, commit_encoded, encode_photos, note_unencoded
from .store import IndexStore

LOCAL_OBJECT_STORE_MB = 512  # shared memory of a local Ray's object store: a few batches of photo tensors
ACTOR_FILES = 256  # files per call of an actor that decodes its own: the first model batch of each call waits
# for its files to be decoded (bench_ray at 3,125 photos: 128 files 23.8 s, 256 22.9 s)
DECODE_BATCH = 32  # files per decoding task: 8 left the encoder idle a third of the time (bench_ray: steady
# 74% of the single process on an idle machine; 32: 93-96%), 128 delays the first batch by seconds
CONNECT_TIMEOUT = 10  # seconds to reach --ray-address before giving up
DECODE_CHOICES = ("auto", "actors", "tasks")
INSTALL_HINT = "pip install 'sketchfind[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """Where a Ray build runs and how wide."""

    address: str | None = None  # existing cluster ('auto', 'HOST:PORT', 'ray://HOST:PORT'); None: a local Ray
    actors: int = 1  # encoder actors, each with its own copy of the model
    cpus: int | None = None  # local Ray only: CPUs it may use (None: the cores this process may use)
    threads: int | None = None  # intra-op threads per actor (None: local CPUs / actors; 1 on a cluster)
    gpus: float | None = None  # GPUs per actor (None: 1 when the cluster has GPUs, else 0)
    object_store_mb: int = LOCAL_OBJECT_STORE_MB  # local Ray only
    decode: str = "auto"  # where files are decoded: "actors" (the encoders' own threads), "tasks" (CPU tasks
    # feeding the actors), "auto" (actors unless they have GPUs)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_CHOICES:
            raise ConfigError(f"--ray-decode {self.decode}: choose one of {', '.join(DECODE_CHOICES)}")
        if self.actors < 1:
            raise ConfigError("--ray-actors must be at least 1")
        if self.address is not None and self.cpus is not None:
            raise ConfigError("--ray-cpus sizes a local Ray; a cluster at --ray-address has its own CPUs")
        if self.address is None and self.local_cpus() < self.actors + 1:
            raise ConfigError(
                f"a local Ray with {self.local_cpus()} CPUs runs at most {self.local_cpus() - 1} encoder "
                "actor(s): each actor takes one CPU and decoding needs one"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--ray-threads must be at least 1")

    def local_cpus(self) -> int:
        """CPUs of the local Ray this build starts."""
        return self.cpus or len(os.sched_getaffinity(0))

    def decode_in_actors(self, gpus: float) -> bool:
        """Whether the encoder actors decode their own files (see the module doc)."""
        return self.decode == "actors" or (self.decode == "auto" and gpus == 0)

    def actor_threads(self) -> int:
        """Intra-op threads of each encoder actor: on a local Ray the actors share all its CPUs with the
        decoding tasks (as the single-process build shares them with its decoding threads)."""
        if self.threads is not None:
            return self.threads
        return max(1, self.local_cpus() // self.actors) if self.address is None else 1


def import_ray():
    """The ``ray`` module with Ray Data, or ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]; plain ray lacks it)
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray Data, an optional dependency: {INSTALL_HINT}") from exc
    return ray


def check_ray_installed() -> None:
    """ConfigError unless the ``ray`` package is installed: a look-up, not the 1 s import."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except ValueError:  # a module object without a spec stands in for it
        found = True
    if not found:
        raise ConfigError(f"--ray needs Ray Data, an optional dependency: {INSTALL_HINT}")


class RaySession:
    """The Ray a build runs on, started in a background thread as soon as the build starts.

    Importing Ray and starting a local Ray take seconds in which the driver would otherwise wait; started
    here, they overlap what the driver does anyway (loading the model, scanning and planning the files).
    Errors keep their ConfigError wording and surface where a synchronous start would raise them: Ray
    missing before anything is written (:meth:`check_imported`), a Ray that does not start when it is first
    needed (:meth:`ray`). Once the driver needs Ray no more (:meth:`stop_in_background`), a Ray this session
    started shuts down while the driver goes on; :meth:`close` returns once it is down. A Ray the caller had
    already started is used as it is and left running.

    One thread starts, holds and stops a local Ray: its processes are tied to the thread that started them
    (Linux's parent-death signal follows the thread), so that thread lives until the shutdown.
    """

    def __init__(self, settings: RaySettings):
        check_ray_installed()
        if settings.address:
            _check_reachable(settings.address)  # a socket connect: fails at once, before any thread
        self.settings = settings
        # where the fixed cost goes: import, start (ray.init), waited (the driver, for the start), first_batch
        # (from the pipeline's start: actors, workers, the first decoded batch), stop (ray.shutdown)
        self.seconds: dict[str, float] = {}
        self._ray = None
        self._error: BaseException | None = None  # the start's, re-raised in the driver's thread
        self._import_error: BaseException | None = None
        self._imported = threading.Event()
        self._ready = threading.Event()  # Ray runs, or the start failed or was called off
        self._done = threading.Event()  # Ray is not needed any more: stop it (or never start it)
        self._thread = threading.Thread(target=self._hold, name="sketchfind-ray", daemon=True)
        self._thread.start()

    def _hold(self) -> None:
        try:
            ray = self._import()
            if ray is None or self._done.is_set():
                return
            if ray.is_initialized():  # the caller's own Ray
                self._ray = ray
                return
            start = time.perf_counter()
            try:
                _init(ray, self.settings)
            except BaseException as exc:
                self._error = exc
                return
            self._ray = ray
            self.seconds["start"] = time.perf_counter() - start
            if not self.settings.decode_in_actors(_gpus_per_actor(ray, self.settings, check=False)):
                _warm_up(ray)  # actors that decode their own files need no worker for decoding tasks
            self._ready.set()
            self._done.wait()
            start = time.perf_counter()
            ray.shutdown()
            self.seconds["stop"] = time.perf_counter() - start
        finally:
            self._imported.set()
            self._ready.set()

    def _import(self):
        start = time.perf_counter()
        try:
            return import_ray()
        except BaseException as exc:
            self._import_error = self._error = exc
            return None
        finally:
            self.seconds["import"] = time.perf_counter() - start
            self._imported.set()

    def check_imported(self) -> None:
        """Waits for ``import ray``; ConfigError if Ray Data is not installed."""
        self._imported.wait()
        if self._import_error is not None:
            raise self._import_error

    def ray(self):
        """The ``ray`` module once Ray runs (waits for the background start); its ConfigError if it failed."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        if self._ray is None:
            raise SketchfindError("Ray was stopped before the build used it")
        return self._ray

    def stop_in_background(self) -> None:
        """Ray is not needed any more (every batch is committed, or there was nothing to encode): a Ray this
        session started shuts down in the background; one that has not started yet does not start."""
        self._done.set()

    def close(self) -> None:
        """Returns once a Ray this session started is shut down."""
        self._done.set()
        self._thread.join()


def run_on_ray(
    todo: list,
    store: IndexStore,
    model,
    emb,
    report: BuildReport,
    session: RaySession,
    batch_size: int,
    label_from_folder: bool,
    advance,
    runtime: str | None = None,
) -> None:
    """Decodes, encodes and commits the planned files ``todo`` (see the module doc); fills ``report``."""
    from ..runtime import resolve_runtime

    runtime = (runtime or os.environ.get("SKETCHFIND_RUNTIME") or "auto").lower()
    resolve_runtime(runtime)  # an unknown runtime fails here, before the cluster is used
    waited = time.perf_counter()
    ray, settings = session.ray(), session.settings
    session.seconds["waited"] = time.perf_counter() - waited  # the part of the start nothing overlapped
    with _quiet_data_context(ray):
        gpus = _gpus_per_actor(ray, settings)
        payload = _model_payload(model, emb, store, runtime, settings.actor_threads(), gpus > 0)
        clip_pre = getattr(emb, "preprocess", None)
        decoding = {"model_pre": model.cfg.preprocess, "clip_pre": clip_pre, "labels": label_from_folder}
        items = [{"todo": pickle.dumps(item)} for item in todo]
        if settings.decode_in_actors(gpus):
            payload |= {"decoding": decoding, "batch_size": batch_size}
            source, actor_batch = (
                ray.data.from_items(items, override_num_blocks=_blocks(items, ACTOR_FILES)),
                ACTOR_FILES,
            )
        else:
            source = ray.data.from_items(items, override_num_blocks=_blocks(items, DECODE_BATCH)).map_batches(
                _decode_batch, batch_size=DECODE_BATCH, batch_format="numpy", fn_kwargs=decoding, num_cpus=1
            )
            actor_batch = batch_size
        with warnings.catch_warnings():
            # max_restarts is passed the only way Ray 2.60 takes it, which it marks deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = source.map_batches(
                _EncoderActor,
                batch_size=actor_batch,
                batch_format="numpy",
                fn_constructor_kwargs={"payload": payload},
                compute=ray.data.ActorPoolStrategy(size=settings.actors),
                num_cpus=1,
                num_gpus=gpus,
                # an actor that dies stops the build (re-running resumes it) instead of being re-created
                # from constructor arguments Ray may have dropped (it logs a warning about that otherwise).
                # Remote arguments that differ from the decoding tasks' also keep Ray Data from fusing them
                # into the actors, which would serialise decoding and encoding in one thread (no memory
                # reservation for that: a local Ray on a busy machine may have less to give).
                max_restarts=0,
            )
        touched: list[tuple[int, int]] = []
        pipeline = time.perf_counter()
        for batch in _batches(ray, dataset, batch_size):
            session.seconds.setdefault("first_batch", time.perf_counter() - pipeline)
            outcomes = [pickle.loads(blob) for blob in batch["outcome"]]
            ok = [i for i, outcome in enumerate(outcomes) if outcome[0] == "ok"]
            for outcome in outcomes:
                if outcome[0] != "ok":
                    note_unencoded(outcome, report, touched)
            if ok:
                rows = [outcomes[i][1] for i in ok]
                commit_encoded(store, rows, batch["tokens"][ok], batch["global"][ok], report)
            report.encode_seconds += float(batch["encode_seconds"].sum())
            advance(len(outcomes))
        store.touch(touched)


def _blocks(items: list, per_block: int) -> int:
    return max(1, -(-len(items) // per_block))


def _warm_up(ray) -> None:
    """One task that imports what a decoding task needs (Ray Data, torch, sketchfind) into a worker Ray has
    already started, while the driver plans the pipeline: the first decoding task then finds it loaded."""
    ray.remote(num_cpus=1)(_import_pipeline).remote()


def _import_pipeline() -> None:
    import ray.data  # noqa: F401

    from . import distributed  # noqa: F401  (torch, the preprocessing, the codecs)


def _init(ray, settings: RaySettings) -> None:
    """Joins the cluster at ``settings.address`` or starts a local Ray; ConfigError in Ray's words if not."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if settings.address:
        start = lambda: ray.init(address=settings.address, **quiet)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage from a local build
        start = lambda: ray.init(
            address="local",  # a new local Ray even when RAY_ADDRESS names a cluster
            num_cpus=settings.local_cpus(),
            object_store_memory=settings.object_store_mb * 2**20,
            include_dashboard=False,
            **quiet,
        )
    worker_log = logging.getLogger("ray._private.worker")
    level = worker_log.level
    # outside the main thread Ray warns that it leaves SIGTERM alone: its processes share the driver's
    # fate either way (they exit with it), and the warning would reach the user's terminal
    worker_log.setLevel(logging.ERROR)
    try:
        for attempt in (1, 2):
            try:
                start()
                return
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError... each worded by Ray
                ray.shutdown()  # whatever half-started
                # a local Ray gives its processes 30 s to come up: on a saturated machine once is not always enough
                if attempt == 2 or settings.address:
                    where = f"join the Ray cluster at {settings.address}" if settings.address else "start a local Ray"
                    raise ConfigError(f"cannot {where}: {_first_line(exc)}") from None
    finally:
        worker_log.setLevel(level)


def _check_reachable(address: str) -> None:
    """ConfigError unless something answers at a HOST:PORT or ray://HOST:PORT address: Ray itself would
    keep retrying for minutes, logging a warning every few seconds."""
    if address == "auto":  # the cluster this machine runs; Ray says at once when there is none
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {exc.strerror or exc}") from None


@contextmanager
def _quiet_data_context(ray) -> Iterator[None]:
    """Ray Data in plan order, without its progress bars and INFO lines (sketchfind reports progress)."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    ctx.execution_options.preserve_order = True
    # a sketchfind error in a task keeps its type (not Ray Data's UserCodeException): the driver reports
    # it as one line, so Ray Data's own error lines about it are left out as well
    ctx.enable_progress_bars, ctx.raise_original_map_exception = False, True
    data_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception = saved
        data_logger.setLevel(level)


def _gpus_per_actor(ray, settings: RaySettings, check: bool = True) -> float:
    """GPUs each encoder actor gets; ConfigError (``check``) if the cluster lacks the CPUs or GPUs asked for."""
    resources = ray.cluster_resources()
    if not check:
        return settings.gpus if settings.gpus is not None else float(resources.get("GPU", 0) >= settings.actors)
    if resources.get("CPU", 0) < settings.actors + 1:
        raise ConfigError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs: {settings.actors} encoder actor(s) "
            "need one each, and decoding needs one more"
        )
    if settings.gpus is None:
        return 1.0 if resources.get("GPU", 0) >= settings.actors else 0.0
    if settings.gpus * settings.actors > resources.get("GPU", 0):
        raise ConfigError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs, fewer than the actors need")
    return float(settings.gpus)


def _model_payload(model, emb, store: IndexStore, runtime: str, threads: int, gpu: bool) -> dict:
    """What an encoder actor needs to encode exactly as this process would: the weights themselves (a
    remote node may not have the driver's weights file), the fingerprint they must have, the runtime,
    the embedder and the index's codecs."""
    from ..models.factory import model_fingerprint

    torch_model = getattr(model, "torch_model", model)  # an OnnxModel carries the PyTorch model
    return {
        "config": torch_model.cfg.to_dict(),
        "state": {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()},
        "fingerprint": model_fingerprint(torch_model),
        "runtime": runtime,
        "threads": threads,
        "gpu": gpu,
        "embedder": store.meta["embedder"],
        "codecs": (store.codec, store.gcodec),
    }


def _decode_batch(batch: dict, model_pre, clip_pre, labels: bool) -> dict:
    """CPU task: planned files -> their ``_load_one`` outcomes (pickled, images apart) + the resized uint8
    photos (the encoder makes the tensors: a quarter of the bytes through the object store). Files that are
    skipped or unchanged get blank images, which the encoder ignores."""
    outcomes, images, clip_images = [], [], []
    for blob in batch["todo"]:
        result = _load_one(*pickle.loads(blob), model_pre, clip_pre, labels, arrays=True)
        ok = result[0] == "ok"
        outcomes.append(pickle.dumps(result[:2] if ok else result))
        images.append(result[2] if ok else _blank(model_pre))
        if clip_pre is not None:
            clip_images.append(result[3] if ok else _blank(clip_pre))
    out = {"outcome": np.array(outcomes, dtype=object), "image": np.stack(images)}
    if clip_pre is not None:
        out["clip_image"] = np.stack(clip_images)
    return out


def _blank(pre) -> np.ndarray:
    return np.zeros((pre.image_size, pre.image_size, 3), np.uint8)


class _EncoderActor:
    """Ray Data actor: builds the model once, then encodes and quantises batches of decoded photos."""

    def __init__(self, payload: dict):
        # an error here would reach the driver as Ray's text only; raised from the first call, it keeps
        # its type and message (and the driver reports it like any other sketchfind error)
        self.error: SketchfindError | None = None
        try:
            self._load(payload)
        except SketchfindError as exc:
            self.error = exc

    def _load(self, payload: dict) -> None:
        import torch

        from ..config import ModelConfig
        from ..models.convert import load_state_dict_strict
        from ..models.factory import model_fingerprint
        from ..models.zse import ZSEModel
        from ..runtime import load_runtime
        from .embedders import embedder_from_spec

        model = ZSEModel(ModelConfig.from_dict(payload["config"]))
        state = {k: torch.from_numpy(v) for k, v in payload["state"].items()}
        load_state_dict_strict(model, state, "the driver's weights", f"model {model.cfg.name!r}")
        if model_fingerprint(model) != payload["fingerprint"]:
            raise CheckpointError("an encoder actor's model differs from the index's model (fingerprint)")
        model.eval()
        self.device = "cuda" if payload["gpu"] else None
        if self.device:  # PyTorch on the GPU; ONNX Runtime here runs on CPUs only
            torch.set_num_threads(payload["threads"])
            self.model = model.to(self.device)
        else:
            self.model = load_runtime(model, payload["runtime"], threads=payload["threads"])
        self.emb = embedder_from_spec(payload["embedder"], model)
        if self.device and hasattr(self.emb, "visual"):
            self.emb.visual.to(self.device)
        self.codec, self.gcodec = payload["codecs"]
        self.model_pre, self.clip_pre = model.cfg.preprocess, getattr(self.emb, "preprocess", None)
        self.decoding, self.pool = payload.get("decoding"), None
        if self.decoding is not None:  # this actor decodes its own files, on as many threads as it encodes with
            self.batch_size = payload["batch_size"]
            self.pool = ThreadPoolExecutor(payload["threads"], thread_name_prefix="sketchfind-decode")

    def __call__(self, batch: dict) -> dict:
        if self.error is not None:
            raise self.error
        if self.decoding is not None:
            return self._decode_and_encode(batch["todo"])
        n = len(batch["outcome"])
        ok = [i for i, blob in enumerate(batch["outcome"]) if pickle.loads(blob)[0] == "ok"]
        codes = self._blank_codes(n)
        start = time.perf_counter()
        if ok:
            images = [to_tensor(image, self.model_pre) for image in batch["image"][ok]]
            clip_images = None
            if "clip_image" in batch:
                clip_images = [to_tensor(image, self.clip_pre) for image in batch["clip_image"][ok]]
            self._encode_into(codes, ok, images, clip_images)
        return _encoded(batch["outcome"], codes, time.perf_counter() - start)

    def _decode_and_encode(self, todo) -> dict:
        """Planned files -> their outcomes and quantised encodings: each model batch is encoded as soon as its
        files are decoded, while the threads decode the next batch (the single-process build's pipeline, over
        the files of one call; at most three batches of decoded photos are held)."""
        d = self.decoding
        n = len(todo)
        futures: list = []

        def submit(upto: int) -> None:
            for blob in todo[len(futures) : min(upto, n)]:
                futures.append(
                    self.pool.submit(_load_one, *pickle.loads(blob), d["model_pre"], d["clip_pre"], d["labels"])
                )

        submit(2 * self.batch_size)
        outcomes: list[bytes] = []
        codes = self._blank_codes(n)
        seconds = 0.0
        for start in range(0, n, self.batch_size):
            results = [future.result() for future in futures[start : start + self.batch_size]]
            for i in range(start, min(start + self.batch_size, n)):
                futures[i] = None  # the photo is in results: the decoded tensor goes with them
            submit(start + 3 * self.batch_size)  # the batch after the next one, decoded while this one encodes
            outcomes += [pickle.dumps(r[:2] if r[0] == "ok" else r) for r in results]
            ok = [i for i, r in enumerate(results) if r[0] == "ok"]
            if not ok:
                continue
            began = time.perf_counter()
            clip_images = [results[i][3] for i in ok] if d["clip_pre"] is not None else None
            self._encode_into(codes, [start + i for i in ok], [results[i][2] for i in ok], clip_images)
            seconds += time.perf_counter() - began
        return _encoded(np.array(outcomes, dtype=object), codes, seconds)

    def _blank_codes(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Token and global-embedding codes for n files, zero for those that are not encoded."""
        return np.zeros((n, self.codec.row_bytes), np.uint8), np.zeros((n, self.gcodec.row_bytes), np.uint8)

    def _encode_into(self, codes: tuple[np.ndarray, np.ndarray], rows: list[int], images, clip_images) -> None:
        """Encodes preprocessed photos and quantises them into ``rows`` of ``codes``."""
        photo_tokens, photo_global = encode_photos(self.model, self.emb, images, clip_images, self.device)
        codes[0][rows] = self.codec.encode(photo_tokens)
        codes[1][rows] = self.gcodec.encode(photo_global)


def _encoded(outcomes: np.ndarray, codes: tuple[np.ndarray, np.ndarray], seconds: float) -> dict:
    """An actor call's output: the files' outcomes, their codes and the model's seconds spread over them."""
    n = len(outcomes)
    return {
        "outcome": outcomes,
        "tokens": codes[0],
        "global": codes[1],
        "encode_seconds": np.full(n, seconds / max(1, n)),
    }


def _batches(ray, dataset, batch_size: int) -> Iterator[dict]:
    """The encoded files in batches of ``batch_size`` (Ray's blocks may hold several model batches), in plan
    order. A sketchfind error raised in a task or an actor comes out as itself, with its one-line message;
    any other failure inside Ray as one SketchfindError."""
    try:
        yield from dataset.iter_batches(batch_size=batch_size, batch_format="numpy")
    except Exception as exc:
        cause = _sketchfind_cause(ray, exc)
        if cause is not None:  # Ray appends notes (retries, how to configure them) to the message
            raise type(cause)(_first_line(cause)) from None
        if not type(exc).__module__.startswith("ray."):
            raise
        raise SketchfindError(
            f"the Ray build stopped: {_first_line(exc)}; what was committed stays in the index, "
            "run the same command again to resume"
        ) from None


def _sketchfind_cause(ray, exc: BaseException | None) -> SketchfindError | None:
    """The SketchfindError a Ray task or actor raised, however Ray wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # RayTaskError(CheckpointError) is also a CheckpointError, with Ray's traceback as its text
        if isinstance(exc, SketchfindError) and not isinstance(exc, ray.exceptions.RayError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
