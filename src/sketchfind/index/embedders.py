"""Global photo embeddings for clustering (the CLIP role in the reference system), pluggable.

* ``default``: the ZSE model's own global embedding (the CNN backbone's pooled features, or the mean
  patch token for ViT), computed in the same pass as the tokens, so it costs nothing extra.
* ``clip``: an open_clip image tower loaded from a local weights file the user passes. Nothing is ever
  downloaded: hub names are refused and the hub is switched off while the model is built.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import PreprocessConfig
from ..errors import ConfigError
from ..models.factory import model_fingerprint
from ..models.zse import ZSEModel

EMBEDDERS = ("default", "clip")


class BackboneEmbedder:
    """The model's pooled backbone features (no second network)."""

    kind = "default"
    preprocess = None  # uses the ZSE photo tensor; the embedding comes out of encode_with_global

    def __init__(self, model: ZSEModel):
        self.dim = model.tokens.global_dim  # what encode_with_global returns beside the tokens

    def spec(self) -> dict:
        """What index_info.json records about this embedder."""
        return {"kind": self.kind}


class ClipEmbedder:
    """An open_clip image tower from a local weights file; photos are squashed to its input size."""

    kind = "clip"

    def __init__(self, model_name: str, weights: str | Path, config: str | Path | None = None):
        weights = Path(weights).expanduser().resolve()
        if not weights.is_file():
            raise ConfigError(f"CLIP weights file not found: {weights}")
        if ":" in model_name:
            raise ConfigError(f"{model_name!r}: hub model names are not supported; pass a local weights file")
        open_clip = import_open_clip()
        if config is not None:
            config = Path(config).expanduser().resolve()
            if not config.is_file():
                raise ConfigError(f"open_clip model config not found: {config}")
            open_clip.add_model_config(config)
        if model_name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {model_name!r} (pass --clip-config for a custom one)")
        with _offline():
            clip = open_clip.create_model(model_name, pretrained=None, pretrained_image=False, pretrained_text=False)
            try:
                open_clip.load_checkpoint(clip, str(weights))
            except Exception as exc:  # wrong architecture, truncated file, pickle with foreign objects...
                raise ConfigError(f"{weights} does not load into open_clip {model_name!r}: {exc}") from exc
        self.visual = clip.visual.eval()
        self.model_name, self.weights, self.config = model_name, weights, config
        size = self.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else int(size)
        pre = getattr(self.visual, "preprocess_cfg", {}) or {}
        mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
        self.preprocess = PreprocessConfig(image_size=size, mean=mean, std=std)
        with torch.inference_mode():
            self.dim = int(self.visual(torch.zeros(1, 3, size, size)).shape[-1])
        self.fingerprint = model_fingerprint(self.visual)

    def spec(self) -> dict:
        """What index_info.json records about this embedder."""
        return {
            "kind": self.kind,
            "model": self.model_name,
            "weights": str(self.weights),
            "config": str(self.config) if self.config else None,
            "fingerprint": self.fingerprint,
        }

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) CLIP-normalised images -> (B, G) L2-normalised embeddings."""
        return F.normalize(self.visual(images).float(), dim=-1)


def make_embedder(kind: str, model: ZSEModel, *, clip_model: str | None = None, clip_weights=None, clip_config=None):
    """The embedder named ``kind`` ('default' or 'clip')."""
    if kind == "default":
        return BackboneEmbedder(model)
    if kind == "clip":
        if not clip_model or not clip_weights:
            raise ConfigError("the clip embedder needs an open_clip model name and a local weights file")
        return ClipEmbedder(clip_model, clip_weights, clip_config)
    raise ConfigError(f"unknown global embedder {kind!r}; choose one of {', '.join(EMBEDDERS)}")


def embedder_from_spec(spec: dict, model: ZSEModel):
    """Re-creates the embedder an index was built with (to add photos), checking it is the same one."""
    if spec.get("kind") == "clip":
        embedder = ClipEmbedder(spec["model"], spec["weights"], spec.get("config"))
        if embedder.fingerprint != spec.get("fingerprint"):
            raise ConfigError(f"the CLIP weights at {spec['weights']} changed since the index was built: re-index")
        return embedder
    return make_embedder(spec.get("kind", "default"), model)


# ----------------------------------------------------------------------------- open_clip import


_TV_MODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.misc",
)


class _Missing(type):
    """Metaclass of the torchvision placeholders: any attribute (e.g. ``InterpolationMode.BICUBIC``) exists."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _Unavailable(metaclass=_Missing):
    def __init__(self, *args, **kwargs):
        raise ConfigError(
            "torchvision is not usable in this environment; sketchfind never needs open_clip's "
            "image transforms (preprocessing is its own)"
        )


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(name, (_Unavailable,), {})


def import_open_clip():
    """``import open_clip``, working around a torchvision whose compiled ops do not match torch.

    open_clip imports torchvision at module level for its image transforms (and ``FrozenBatchNorm2d``),
    which sketchfind never uses. When ``import torchvision`` fails with a RuntimeError (e.g. PyPI's CUDA
    build next to a CPU torch: "operator torchvision::nms does not exist"), open_clip is imported once
    against placeholder torchvision modules (and without timm, which needs the real one); the
    placeholders are removed from ``sys.modules`` afterwards, so nothing else in the process sees them."""
    if "open_clip" in sys.modules and sys.modules["open_clip"] is not None:
        return sys.modules["open_clip"]
    try:
        importlib.import_module("torchvision")
    except ImportError as exc:
        raise ConfigError("the clip embedder needs open-clip-torch: pip install 'sketchfind[clip]'") from exc
    except RuntimeError:
        _purge("torchvision", "timm")
        return _import_with_stub()
    try:
        return importlib.import_module("open_clip")
    except ImportError as exc:
        raise ConfigError("the clip embedder needs open-clip-torch: pip install 'sketchfind[clip]'") from exc


def _purge(*prefixes: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def _import_with_stub():
    saved = {name: sys.modules.get(name) for name in (*_TV_MODULES, "timm")}
    stubs = {name: _StubModule(name) for name in _TV_MODULES}
    for name, module in stubs.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(stubs[parent], child, module)
    sys.modules.update(stubs)
    sys.modules["timm"] = None  # open_clip's optional timm towers: ImportError -> disabled
    try:
        return importlib.import_module("open_clip")
    except ImportError as exc:
        _purge("open_clip")
        raise ConfigError(f"open_clip could not be imported: {exc}") from exc
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def _offline():
    """No hub access while open_clip builds a model."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    logging.disable(logging.WARNING)  # "no pretrained weights loaded": ours are loaded right after
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
