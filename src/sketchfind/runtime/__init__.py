"""Inference runtimes: PyTorch eager (fp32 or bf16), or ONNX Runtime on graphs exported from the loaded weights.

``load_runtime(model, runtime)`` returns an object with the ZSEModel methods that search and indexing use
(``cfg``, ``encode_sketch``, ``encode_with_global``, ``retrieval_embedding``, ``relation_scores``):

* ``"torch"``: the model itself;
* ``"onnx"``: an :class:`OnnxModel` on the fp32 graphs (about 2x faster than PyTorch on 2 CPU cores);
* ``"openvino"``: an :class:`OpenVinoModel`, the same fp32 graphs run by OpenVINO's CPU plugin (the ``openvino``
  extra): a sketch encoded ~1.4 ms faster than by ONNX Runtime on 2 cores, and no slow wake-up after a pause;
* ``"openvino-bf16"``: an :class:`OpenVinoBf16Model`, ``openvino`` with the sketch encoder in bf16 (CPUs with
  native bf16 only): a query sketch encoded ~1.8x faster, photos and the relation head unchanged (the same
  index as ``openvino`` builds). What auto picks for the models in :data:`OPENVINO_BF16_AUTO`, whose ranking it
  keeps (zse-lite0 on unseen-25: ann and exhaustive top-10 overlap with fp32 >= 0.9, mAP@all within 0.005);
* ``"onnx-int8"``: an :class:`OnnxModel` whose sketch and photo encoders run a statically quantised
  backbone (:mod:`sketchfind.runtime.quantize`; the relation head stays fp32). It needs an int8
  calibration for the weights: the shipped weights carry one.
* ``"torch-bf16"``: a :class:`Bf16Model`, PyTorch in bfloat16 with fp32 inputs and outputs (the ViT encoder,
  cross-attention and relation head; a CNN backbone stays fp32). Only on CPUs with native bf16
  (:func:`native_bf16`); elsewhere asking for it raises SketchfindError.

``"auto"`` (or None, which first reads ``SKETCHFIND_RUNTIME``) takes the first of :data:`PREFERENCE` that is
installed and serves the weights, as measured by benchmarks/bench_runtime.py: a failed export falls back to
the next one with a warning, weights without an int8 calibration quietly run fp32. For the models in
:data:`BF16_AUTO` (zse-vit-b16) it tries torch-bf16 first on a CPU with native bf16, because there it is ~3x
faster and keeps the ranking: tokens within 1.2% of the fp32 goldens, relation scores within 4.5e-4 (the
official fp16 evaluation: 2.5e-4), top-10 overlap with fp32 0.996 ([Ret]) and 0.944 (relation) on unseen-25
sketchy-mini with the reference's deterministic weights, mAP@all within 0.002 (the bar: overlap >= 0.9,
|mAP diff| <= 0.005). The lite models stay on openvino (or onnx): faster there, and their CNN backbone stays fp32 in
bf16.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..errors import SketchfindError, UncalibratedError
from .bf16 import Bf16Model, native_bf16
from .export import cache_root, cached_export, export_onnx
from .onnx_model import OnnxModel
from .openvino_model import OpenVinoBf16Model, OpenVinoModel
from .quantize import RECIPE, Int8Recipe, cached_int8_export, calibrate, find_calibration

RUNTIMES = ("torch", "onnx", "openvino", "openvino-bf16", "onnx-int8", "torch-bf16")
PREFERENCE = ("openvino", "onnx", "torch")  # what auto tries, fastest first (bench_runtime.py)
# models for which auto tries torch-bf16 first on a CPU with native bf16: faster there and the same ranking
BF16_AUTO = frozenset({"zse-vit-b16"})
# models for which auto tries openvino-bf16 first there: measured to keep the ranking (bench_runtime.py, bf16)
OPENVINO_BF16_AUTO = frozenset({"zse-lite0"})

__all__ = [
    "RECIPE",
    "RUNTIMES",
    "Bf16Model",
    "Int8Recipe",
    "OnnxModel",
    "OpenVinoBf16Model",
    "OpenVinoModel",
    "available_runtimes",
    "cache_root",
    "cached_export",
    "cached_int8_export",
    "calibrate",
    "export_onnx",
    "find_calibration",
    "load_runtime",
    "native_bf16",
    "resolve_runtime",
    "set_threads",
]

_threads_set: int | None = None


def available_runtimes(model_name: str | None = None) -> list[str]:
    """The runtimes that can run here, in the order auto tries them for ``model_name`` (those it never tries
    last)."""
    ort = importlib.util.find_spec("onnxruntime") is not None
    installed = {
        "torch": True,
        "onnx": ort,
        "openvino": importlib.util.find_spec("openvino") is not None,
        "openvino-bf16": importlib.util.find_spec("openvino") is not None and native_bf16(),
        "onnx-int8": ort and importlib.util.find_spec("onnx") is not None,
        "torch-bf16": native_bf16(),
    }
    order = [r for r in _auto_order(model_name) if installed[r]]
    return order + [r for r in RUNTIMES if r not in order and installed[r]]


def _auto_order(model_name: str | None) -> tuple[str, ...]:
    """What auto tries for a model, best first, whether or not it can run here."""
    if model_name in BF16_AUTO:
        return ("torch-bf16", *PREFERENCE)
    return ("openvino-bf16", *PREFERENCE) if model_name in OPENVINO_BF16_AUTO else PREFERENCE


def _requested(runtime: str | None) -> str:
    return (runtime or os.environ.get("SKETCHFIND_RUNTIME") or "auto").lower()


def resolve_runtime(runtime: str | None = None, model_name: str | None = None) -> str:
    """The runtime a request names ('auto', None = ``$SKETCHFIND_RUNTIME`` or 'auto': the first auto tries for
    ``model_name``, e.g. 'zse-vit-b16')."""
    runtime = _requested(runtime)
    if runtime == "auto":
        return available_runtimes(model_name)[0]
    if runtime not in RUNTIMES:
        raise SketchfindError(f"unknown runtime {runtime!r}; choose auto, {', '.join(RUNTIMES)}")
    if runtime in available_runtimes():
        return runtime
    if runtime == "openvino-bf16" and importlib.util.find_spec("openvino") is not None:
        raise SketchfindError(
            "the openvino-bf16 runtime needs a CPU that computes bf16 natively (AMX or AVX512-BF16): use openvino"
        )
    if runtime == "torch-bf16":
        raise SketchfindError(
            "the torch-bf16 runtime needs a CPU that computes bf16 natively (AVX512-BF16 or AMX on x86, BF16 on "
            "Arm); this one would emulate it, several times slower than fp32: use torch or onnx"
        )
    if runtime.startswith("openvino"):
        raise SketchfindError(f"the {runtime} runtime needs OpenVINO: pip install 'sketchfind[openvino]'")
    raise SketchfindError(
        f"the {runtime} runtime needs onnxruntime and onnx (dependencies): pip install onnxruntime onnx"
    )


def set_threads(threads: int | None) -> None:
    """Sets the intra-op thread count once per process (torch, and the ONNX sessions created after it)."""
    global _threads_set
    if threads and _threads_set != threads:
        torch.set_num_threads(threads)
        _threads_set = threads


def load_runtime(model, runtime: str | None = None, *, cache_dir: str | Path | None = None, threads=None):
    """``model`` run by the requested runtime (see the module doc). An OnnxModel or Bf16Model stays as it is
    for its own runtime and for 'auto'."""
    requested = _requested(runtime)
    chosen = resolve_runtime(runtime, model.cfg.name)
    set_threads(threads)
    if isinstance(model, (OnnxModel, Bf16Model)):
        if requested == "auto" or model.runtime == chosen:
            return model
        model = model.torch_model
    model = model.eval()
    if requested != "auto":
        return _load(model, chosen, cache_dir, threads)
    for name in [r for r in available_runtimes(model.cfg.name) if r in _auto_order(model.cfg.name)]:
        try:
            return _load(model, name, cache_dir, threads)
        except UncalibratedError:
            continue  # weights nobody calibrated for int8: fp32 is the right runtime for them
        except SketchfindError as exc:
            warnings.warn(f"{exc}; trying the next runtime", RuntimeWarning, stacklevel=2)
    return model  # PyTorch always works


def _load(model, runtime: str, cache_dir, threads):
    if runtime == "torch":
        return model
    if runtime == "torch-bf16":
        return Bf16Model(model)
    paths = cached_int8_export(model, cache_dir) if runtime == "onnx-int8" else cached_export(model, cache_dir)
    if runtime == "openvino":
        return OpenVinoModel(model, paths, threads=threads)
    if runtime == "openvino-bf16":
        return OpenVinoBf16Model(model, paths, threads=threads)
    return OnnxModel(model, paths, threads=threads, runtime=runtime)
