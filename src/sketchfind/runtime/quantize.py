"""int8 encoders: the exported sketch and photo graphs statically quantised by ONNX Runtime.

What runs in int8 (:data:`RECIPE`): the CNN token source, i.e. the backbone convolutions with their ReLU6
clips and residual adds, in QDQ format with per-channel int8 weights (uint8 on x86 CPUs without VNNI:
:func:`int8_dot_products`) and uint8 activations. Everything
after it stays fp32: the projection to tokens, the transformer encoder, the anchored [Ret] (its PCA
projection and the sketch MLP), the pooled global embedding, and the relation head (``head.onnx`` is the
fp32 export's). The quantised backbone is where the time goes; the fp32 tail keeps [Ret] accurate.

Activation ranges come from a calibration file, keyed by the weights fingerprint and the recipe:
``<cache root>/int8/<model>-<fingerprint>.json`` written by :func:`calibrate`, else the file shipped beside
the weights (``sketchfind/weights/<model>.int8.json``, fitted on training-class images only). Without
one, the int8 runtime is unavailable for those weights (``auto`` then runs fp32). The quantised graphs
are cached like the fp32 export (:func:`~sketchfind.runtime.export.cached_folder`), in a folder keyed by
the fp32 export, the recipe, the calibration and the onnxruntime version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import platform
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import SketchfindError, UncalibratedError
from .export import _root, cache_key, cache_root, cached_export, cached_folder, fingerprint

ENCODERS = ("sketch", "photo")
CALIBRATION_FORMAT = 1


@dataclass(frozen=True)
class Int8Recipe:
    """What is quantised and how; its :meth:`key` names the calibration and the cached graphs."""

    op_types: tuple[str, ...] = ("Conv", "Clip", "Add")  # convs with their ReLU6 folded into the output range
    prefix: str = "/tokens/"  # only nodes of the CNN token source (exported module path)
    keep_fp32: tuple[str, ...] = ("/tokens/proj/",)  # node-name prefixes left fp32: the token projection's bias
    per_channel: bool = True  # one weight scale per output channel (depthwise convs need it)
    calibration: str = "MinMax"  # onnxruntime CalibrationMethod name
    calibration_options: tuple[tuple[str, float | bool], ...] = ()  # create_calibrator extra_options
    version: int = 1  # bump when the quantised graphs change for the same settings

    def key(self) -> str:
        """Short hash of every setting."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def nodes(self, graph) -> list[str]:
        """Names of the nodes of an ONNX graph this recipe quantises."""
        return [
            n.name
            for n in graph.node
            if n.op_type in self.op_types
            and n.name.startswith(self.prefix)
            and not n.name.startswith(self.keep_fp32 or ("\0",))
        ]


RECIPE = Int8Recipe()


def _require_quantizer():
    """onnxruntime.quantization with calibration caches (ranges computed once, reused at export time)."""
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise SketchfindError("the onnx-int8 runtime needs onnxruntime and onnx: pip install onnxruntime onnx") from exc
    if "calibration_cache_path" not in inspect.signature(quantization.quantize_static).parameters:
        raise SketchfindError("the onnx-int8 runtime needs a newer onnxruntime (quantize_static calibration caches)")
    return quantization


# ------------------------------------------------------------------------------------------ calibration


def user_calibration_path(model: nn.Module) -> Path:
    """Where :func:`calibrate` writes the calibration of ``model``'s weights by default."""
    return cache_root() / "int8" / f"{model.cfg.name}-{fingerprint(model)}.json"


def shipped_calibration_path(name: str) -> Path | None:
    """The calibration file shipped beside a named model's weights, if any."""
    entry = resources.files("sketchfind") / "weights" / f"{name}.int8.json"
    return Path(str(entry)) if entry.is_file() else None


def find_calibration(model: nn.Module, recipe: Int8Recipe = RECIPE) -> dict | None:
    """The calibration for ``model``'s weights and ``recipe`` (the user's first, then the shipped one), or None."""
    for path in (user_calibration_path(model), shipped_calibration_path(model.cfg.name)):
        if path is None or not path.is_file():
            continue
        try:
            calib = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            calib.get("format") == CALIBRATION_FORMAT
            and calib.get("fingerprint") == fingerprint(model)
            and calib.get("recipe") == recipe.key()
        ):
            return calib
    return None


class _Batches:
    """An onnxruntime CalibrationDataReader over image files, preprocessed a batch at a time."""

    def __init__(self, files, prep, pre, batch: int):
        self.chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
        self.prep, self.pre = prep, pre

    def get_next(self):
        if not self.chunks:
            return None
        images = torch.stack([self.prep(f, self.pre) for f in self.chunks.pop(0)])
        return {"images": np.ascontiguousarray(images.numpy())}


CALIBRATION_CHUNK = 32  # images per collect_data call: the calibrator keeps every intermediate tensor of a call


def calibrate(
    model: nn.Module,
    sketch_files,
    photo_files,
    out: str | Path | None = None,
    *,
    recipe: Int8Recipe = RECIPE,
    cache_dir: str | Path | None = None,
    batch: int = 16,
    note: str = "",
) -> Path:
    """Activation ranges of the sketch and photo encoders on real images -> the calibration file (written
    atomically to ``out``, default :func:`user_calibration_path`). Use training-class images only: images
    of the classes the model is evaluated on would leak into the figures."""
    from onnxruntime.quantization.calibrate import create_calibrator

    quantization = _require_quantizer()
    from ..preprocess import preprocess_photo, preprocess_sketch

    paths = cached_export(model, cache_dir)
    graphs = {}
    sources = {"sketch": (list(sketch_files), preprocess_sketch), "photo": (list(photo_files), preprocess_photo)}
    for name, (files, prep) in sources.items():
        if not files:
            raise SketchfindError(f"int8 calibration needs {name} images")
        with tempfile.TemporaryDirectory(prefix="sketchfind-calib-") as tmp:
            calibrator = create_calibrator(
                Path(paths[name]),
                list(recipe.op_types),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=getattr(quantization.CalibrationMethod, recipe.calibration),
                extra_options=dict(recipe.calibration_options),
            )
            for start in range(0, len(files), CALIBRATION_CHUNK):  # ranges merge across calls; memory stays bounded
                chunk = files[start : start + CALIBRATION_CHUNK]
                calibrator.collect_data(_Batches(chunk, prep, model.cfg.preprocess, batch))
            quantization.calibrate.save_tensors_data(calibrator.compute_data(), Path(tmp) / "ranges.json")
            graphs[name] = _needed_ranges(json.loads((Path(tmp) / "ranges.json").read_text()), paths[name], recipe)
    calib = {
        "format": CALIBRATION_FORMAT,
        "model": model.cfg.name,
        "fingerprint": fingerprint(model),
        "recipe": recipe.key(),
        "recipe_settings": dataclasses.asdict(recipe),
        "images": {"sketch": len(sources["sketch"][0]), "photo": len(sources["photo"][0])},
        "note": note,
        "graphs": graphs,
    }
    out = Path(out) if out is not None else user_calibration_path(model)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(calib, indent=1, sort_keys=True) + "\n")
    return out


def _needed_ranges(ranges: dict, graph_path: Path, recipe: Int8Recipe) -> dict:
    """The calibration cache reduced to the tensors the recipe's nodes read or write."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    chosen = set(recipe.nodes(graph))
    constants = {t for n in graph.node if n.op_type == "Constant" for t in n.output}  # weights: no range needed
    names = {t for n in graph.node if n.name in chosen for t in (*n.input, *n.output)} - constants
    return {**ranges, "data": {k: v for k, v in ranges["data"].items() if k in names}}


# ------------------------------------------------------------------------------------------ quantising


def quantize_encoder(
    fp32_path: Path, ranges: dict, out_path: Path, recipe: Int8Recipe = RECIPE, model_name: str = ""
) -> Path:
    """One encoder graph quantised by the recipe with the given calibration ranges (onnxruntime's cache form)."""
    import onnx

    quantization = _require_quantizer()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="sketchfind-int8-") as tmp, _quiet():
        # constant folding turns the exporter's Constant-node weights into initializers the quantiser can read
        prepared, cache = Path(tmp) / "prepared.onnx", Path(tmp) / "ranges.json"
        quant_pre_process(str(fp32_path), str(prepared))
        graph = onnx.load(str(prepared), load_external_data=False).graph
        nodes = recipe.nodes(graph)
        chosen = set(nodes)
        needed = {t for n in graph.node if n.name in chosen for t in (n.input[0], n.output[0])}
        missing = sorted(needed - set(ranges.get("data", {})))
        if missing:
            raise SketchfindError(
                f"the int8 calibration of {model_name!r} does not match its ONNX export (e.g. no range for "
                f"{missing[0]!r}; another torch version?): run sketchfind.runtime.calibrate again"
            )
        cache.write_text(json.dumps(ranges))
        quantization.quantize_static(
            str(prepared),
            str(out_path),
            calibration_data_reader=None,
            calibration_cache_path=cache,
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.op_types),
            nodes_to_quantize=nodes,
            per_channel=recipe.per_channel,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8 if int8_dot_products() else quantization.QuantType.QUInt8,
            calibrate_method=getattr(quantization.CalibrationMethod, recipe.calibration),
        )
    return out_path


def int8_dot_products() -> bool:
    """Whether this CPU multiplies uint8 by int8 with 32-bit accumulation in one instruction (x86: VNNI in
    AVX-512 or AVX, or AMX). Without it, x86 kernels sum pairs of uint8 x int8 products in int16 first (AVX2,
    plain AVX-512), which saturates with int8 weights: on such a CPU (an AVX2-only AMD EPYC) the sketch [Ret]
    of the quantised graph fell to cosine 0.11 with fp32 (7-bit weights, onnxruntime's ``reduce_range``: 0.35).
    There the weights are quantised as uint8 instead (onnxruntime's U8U8 kernels widen to int16 before
    multiplying: no saturation; the int8 tests pass again). Other architectures: True."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here, so the uint8 weights that cannot saturate
        return False
    return any(f" {flag}" in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization logs advice to the root logger (pre-processing, bias layouts): not for our users."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def int8_cache_key(model: nn.Module, calib: dict, recipe: Int8Recipe = RECIPE) -> str:
    """Hash of everything the quantised graphs depend on: the fp32 export, recipe, calibration, onnxruntime."""
    import onnxruntime

    ranges = hashlib.sha256(json.dumps(calib["graphs"], sort_keys=True).encode()).hexdigest()
    parts = [
        cache_key(model),
        recipe.key(),
        ranges,
        onnxruntime.__version__,
        f"uint8_weights={not int8_dot_products()}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cached_int8_export(
    model: nn.Module, cache_dir: str | Path | None = None, recipe: Int8Recipe = RECIPE
) -> dict[str, Path]:
    """{sketch, photo: int8 graphs; head: the fp32 head} from the cache, quantised (atomically) when missing
    or stale. UncalibratedError when the weights have no calibration for the recipe."""
    _require_quantizer()
    calib = find_calibration(model, recipe)
    if calib is None:
        raise UncalibratedError(
            f"no int8 calibration for these {model.cfg.name!r} weights (fingerprint {fingerprint(model)}): "
            "run sketchfind.runtime.calibrate on training images, or use the onnx runtime"
        )
    fp32 = cached_export(model, cache_dir)
    key = int8_cache_key(model, calib, recipe)

    def build(tmp: Path) -> dict[str, Path]:
        return {
            g: quantize_encoder(fp32[g], calib["graphs"][g], tmp / f"{g}.onnx", recipe, model.cfg.name)
            for g in ENCODERS
        }

    manifest = {"model": model.cfg.name, "fingerprint": fingerprint(model), "recipe": dataclasses.asdict(recipe)}
    folder = cached_folder(_root(cache_dir), f"{model.cfg.name}-int8-{key}", key, ENCODERS, build, manifest)
    return {**{g: folder / f"{g}.onnx" for g in ENCODERS}, "head": fp32["head"]}
