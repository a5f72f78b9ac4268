"""Inference runtimes: PyTorch eager, or ONNX Runtime on graphs exported from the loaded weights.

``load_runtime(model, runtime)`` returns an object with the ZSEModel methods that search and indexing use
(``cfg``, ``encode_sketch``, ``encode_with_global``, ``retrieval_embedding``, ``relation_scores``):
the model itself for ``"torch"``, an :class:`OnnxModel` for ``"onnx"``. ``"auto"`` (or None, which first
reads ``SKETCHFIND_RUNTIME``) takes the fastest installed one: ONNX Runtime when it imports (about 2x
faster per encode and per pair on 2 CPU cores, see benchmarks/results/runtime.md), else PyTorch.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..errors import SketchfindError
from .export import cache_root, cached_export, export_onnx
from .onnx_model import OnnxModel

RUNTIMES = ("torch", "onnx")
PREFERENCE = ("onnx", "torch")  # fastest first, as measured by benchmarks/bench_runtime.py

__all__ = [
    "RUNTIMES",
    "OnnxModel",
    "available_runtimes",
    "cache_root",
    "cached_export",
    "export_onnx",
    "load_runtime",
    "resolve_runtime",
    "set_threads",
]

_threads_set: int | None = None


def available_runtimes() -> list[str]:
    """The runtimes installed here, fastest first."""
    installed = {"torch": True, "onnx": importlib.util.find_spec("onnxruntime") is not None}
    return [r for r in PREFERENCE if installed[r]]


def resolve_runtime(runtime: str | None = None) -> str:
    """'torch' or 'onnx' for a requested runtime ('auto', None = ``$SKETCHFIND_RUNTIME`` or 'auto')."""
    runtime = (runtime or os.environ.get("SKETCHFIND_RUNTIME") or "auto").lower()
    if runtime == "auto":
        return available_runtimes()[0]
    if runtime not in RUNTIMES:
        raise SketchfindError(f"unknown runtime {runtime!r}; choose auto, {' or '.join(RUNTIMES)}")
    if runtime not in available_runtimes():
        raise SketchfindError("the onnx runtime needs onnxruntime (a dependency): pip install onnxruntime onnx")
    return runtime


def set_threads(threads: int | None) -> None:
    """Sets the intra-op thread count once per process (torch, and the ONNX sessions created after it)."""
    global _threads_set
    if threads and _threads_set != threads:
        torch.set_num_threads(threads)
        _threads_set = threads


def load_runtime(model, runtime: str | None = None, *, cache_dir: str | Path | None = None, threads=None):
    """``model`` run by the requested runtime (see the module doc); an OnnxModel stays as it is for 'onnx' and 'auto';
    with 'auto', a failed export falls back to PyTorch with a warning."""
    requested = (runtime or os.environ.get("SKETCHFIND_RUNTIME") or "auto").lower()
    chosen = resolve_runtime(runtime)
    set_threads(threads)
    if isinstance(model, OnnxModel):
        if chosen == "onnx":
            return model
        model = model.torch_model
    if chosen == "torch":
        return model.eval()
    try:
        return OnnxModel(model.eval(), cached_export(model, cache_dir), threads=threads)
    except SketchfindError as exc:
        if requested != "auto":
            raise
        warnings.warn(f"{exc}; using PyTorch", RuntimeWarning, stacklevel=2)
        return model.eval()
