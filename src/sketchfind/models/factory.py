"""``create_model`` / ``load_model``: one place where models are built and weights are loaded.

Weights never silently stay random: ``load_model`` either loads every parameter (``strict=True``)
or raises :class:`~sketchfind.errors.CheckpointError` naming the problem. Random weights need
``random_init=True``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..config import ModelConfig, get_model_config
from ..errors import CheckpointError
from .convert import checkpoint_filter_fn, load_state_dict_strict, vit_backbone_filter_fn
from .zse import ZSEModel

DEFAULT_MODEL = "zse-lite0"

# numpy scalars inside the official checkpoint ('map_all', 'precision_100' are numpy.float64)
_numpy_core = getattr(np, "_core", None) or np.core
_NUMPY_SAFE_GLOBALS = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, _numpy_core.multiarray.scalar]


def shipped_weights(name: str) -> Path | None:
    """The weights file that ships inside the package for a named model, if any."""
    entry = resources.files("sketchfind") / "weights" / f"{name}.safetensors"
    return Path(str(entry)) if entry.is_file() else None


def create_model(config: str | Path | ModelConfig) -> ZSEModel:
    """A model with freshly initialised (random) weights."""
    cfg = config if isinstance(config, ModelConfig) else get_model_config(config)
    return ZSEModel(cfg)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None, dict[str, str]]:
    """Reads a weights file (safetensors or a PyTorch checkpoint) -> (state dict, its config if stored, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file is empty: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    checkpoint = _torch_load(path)
    config = None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict):
        config = ModelConfig.from_dict(checkpoint["config"])
    try:
        return checkpoint_filter_fn(checkpoint), config, {}
    except TypeError as exc:
        raise CheckpointError(f"{path} is not a model checkpoint: {exc}") from exc


def _torch_load(path: Path) -> object:
    """``torch.load`` restricted to tensors, containers and numpy scalars, with readable errors."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # zip container or legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unknown file format)")
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from exc
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or holds untrusted objects ({exc})") from exc
    except RuntimeError as exc:
        reason = "truncated or corrupt" if "zip" in str(exc) or "central directory" in str(exc) else "unreadable"
        raise CheckpointError(f"{path} is {reason}: {exc}") from exc
    except Exception as exc:  # the unpickler raises assorted errors on damaged data
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    config = ModelConfig.from_dict(json.loads(meta["config"])) if "config" in meta else None
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}  # fp16 shipped
    return checkpoint_filter_fn(state_dict), config, meta


def load_vit_backbone(model: ZSEModel, path: str | Path) -> None:
    """Loads the official pretrained ViT-B/16 file (``sam_ViT-B_16.pth`` format) into the encoder.

    Every ViT parameter must be present; the conv tokenizer, cross-attention and relation head keep
    their initialisation (the official code does the same)."""
    raw = _torch_load(Path(path))
    try:
        state_dict = vit_backbone_filter_fn(raw)
    except TypeError as exc:
        raise CheckpointError(f"{path} is not a ViT backbone checkpoint: {exc}") from exc
    own = model.state_dict()
    vit_keys = [k for k in own if k.startswith(("tokens.patch_embed.", "encoder."))]
    merged = dict(own)
    merged.update(state_dict)
    missing = [k for k in vit_keys if k not in state_dict]
    if missing:
        raise CheckpointError(f"{path} lacks ViT keys (e.g. {', '.join(missing[:3])}): not a ViT-B/16 backbone file")
    load_state_dict_strict(model, merged, str(path), f"model {model.cfg.name!r}")


def load_model(
    name: str | Path | None = None,
    weights: str | Path | None = None,
    *,
    backbone_weights: str | Path | None = None,
    random_init: bool = False,
) -> ZSEModel:
    """A model in eval mode.

    - ``load_model()``: the default model with the weights shipped in the package.
    - ``load_model(name, weights=PATH)``: an official ``best_checkpoint.pth``, a sketchfind training
      checkpoint or a ``.safetensors`` file; all parameters must load.
    - ``load_model("zse-vit-b16", backbone_weights=PATH)``: pretrained ViT only (for training).
    - ``random_init=True``: random weights on purpose (tests, training from scratch).

    ``model.weights_metadata`` holds the metadata stored beside the weights (e.g. ``fusion``), or {}.
    """
    if weights is not None:
        state_dict, stored_cfg, meta = read_checkpoint(weights)
        if name is None and stored_cfg is None:
            raise CheckpointError(f"{weights} carries no model config: pass the model name, e.g. 'zse-vit-b16'")
        cfg = get_model_config(name) if name is not None else stored_cfg
        if stored_cfg is not None and name is not None and stored_cfg.hash() != cfg.hash():
            raise CheckpointError(f"{weights} holds a {stored_cfg.name!r} model, not {cfg.name!r}")
        # the file's own config: it may differ from the named one in head-only fields (an earlier release's head)
        cfg = stored_cfg or cfg
        model = ZSEModel(cfg)
        load_state_dict_strict(model, state_dict, str(weights), f"model {cfg.name!r}")
        model.weights_metadata.update(meta)
        return model.eval()
    name = name or DEFAULT_MODEL
    cfg = get_model_config(name)
    model = ZSEModel(cfg)
    if backbone_weights is not None:
        load_vit_backbone(model, backbone_weights)
    elif (shipped := shipped_weights(cfg.name)) is not None:
        state_dict, _, meta = read_checkpoint(shipped)
        load_state_dict_strict(model, state_dict, str(shipped), f"model {cfg.name!r}")
        model.weights_metadata.update(meta)
    elif not random_init:
        raise CheckpointError(
            f"model {cfg.name!r} ships no weights: pass weights=PATH (e.g. the official best_checkpoint.pth) "
            "or random_init=True for an untrained model"
        )
    return model.eval()


# the query-time head: it reads stored photo tokens and never produces any, so an index stays valid when only
# these change (e.g. a relation network trained again on the same encoder, ``train --train-only relation``)
HEAD_PREFIXES = ("cross.", "relation.")


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short sha256 of every parameter and buffer: two models with equal fingerprints encode alike."""
    return _fingerprint(model.state_dict().items())


def encoder_fingerprint(model: torch.nn.Module) -> str:
    """:func:`model_fingerprint` without the cross-attention + relation head (:data:`HEAD_PREFIXES`): what
    decides an index's photo tokens, global and [Ret] embeddings, i.e. whether the index fits the model."""
    return _fingerprint((k, v) for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIXES))


def _fingerprint(items) -> str:
    digest = hashlib.sha256()
    for key, value in items:
        digest.update(key.encode())
        digest.update(value.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_weights(model: ZSEModel, path: str | Path, extra: dict[str, str] | None = None, half: bool = False) -> None:
    """Writes a ``.safetensors`` file with the model config in its metadata (atomically); ``half`` stores
    floating-point tensors as fp16 (they load back as fp32)."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(model.cfg.to_dict()), **(extra or {})}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
