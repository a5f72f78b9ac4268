"""Foreign checkpoints -> sketchfind parameter names.

The official ZSE-SBIR state dict (``best_checkpoint.pth``) and the official pretrained ViT-B/16 file
(``sam_ViT-B_16.pth``) use the research code's module names; ``checkpoint_filter_fn`` renames them
through one (old, new) swap table so that the model can load them with ``strict=True``
(:func:`load_state_dict_strict`, also used for the EfficientNet ImageNet weights).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError

# applied in order with re.sub; each official key passes through every rule
OFFICIAL_SWAPS: tuple[tuple[str, str], ...] = (
    (r"^sa\.model\.embedding\.", "tokens.patch_embed."),
    (r"^sa\.model\.scale\.seq\.", "tokens.conv_tokenizer."),
    (r"^sa\.model\.cls$", "encoder.ret_token"),
    (r"^sa\.model\.pos_embedding$", "encoder.pos_embed"),
    (r"^sa\.model\.transformer\.encoder_norm\.", "encoder.norm."),
    (r"^sa\.model\.transformer\.layers\.(\d+)\.0\.", r"encoder.blocks.\1."),
    (r"\.layer_norm_input\.", ".norm1."),
    (r"\.layer_norm_out\.", ".norm2."),
    (r"\.attention\.to_qkv\.", ".attn.qkv."),
    (r"\.attention\.to_out\.0\.", ".attn.proj."),
    (r"\.mlp\.net\.0\.", ".mlp.fc1."),
    (r"\.mlp\.net\.3\.", ".mlp.fc2."),
    (r"^ca\.encoder\.layer1\.0\.", "cross.sketch_layer."),
    (r"^ca\.encoder\.layer2\.0\.", "cross.photo_layer."),
    (r"^ca\.encoder\.layers\.0\.", "cross.unused_layer."),
    (r"\.self_attn\.linears\.0\.", ".q."),
    (r"\.self_attn\.linears\.1\.", ".k."),
    (r"\.self_attn\.linears\.2\.", ".v."),
    (r"\.self_attn\.linears\.3\.", ".out."),
    (r"\.feed_forward\.w_1\.", ".fc1."),
    (r"\.feed_forward\.w_2\.", ".fc2."),
    (r"\.sublayer\.(\d)\.norm\.a$", lambda m: f".norm{int(m.group(1)) + 1}.weight"),
    (r"\.sublayer\.(\d)\.norm\.b$", lambda m: f".norm{int(m.group(1)) + 1}.bias"),
    (r"^conv2d\.", "relation.down."),
    (r"^rn\.rn\.0\.", "relation.hidden.0."),
    (r"^rn\.rn\.3\.", "relation.hidden.1."),
    (r"^rn\.rn\.6\.", "relation.out."),
)

# the official ViT backbone file is keyed relative to the ViT module (no "sa.model." prefix)
VIT_BACKBONE_PREFIX = "sa.model."


def official_to_sketchfind(name: str) -> str:
    """One official parameter name -> the sketchfind name."""
    for pattern, repl in OFFICIAL_SWAPS:
        name = re.sub(pattern, repl, name)
    return name


def unwrap_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    """Finds the state dict inside a checkpoint container ({'model': ...}, {'state_dict': ...} or flat)."""
    obj = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TypeError("no state dict of tensors found (expected {'model': state_dict} or a flat state dict)")
    return obj


def is_official(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys use the official ZSE-SBIR module names."""
    return any(k.startswith(("sa.model.", "ca.encoder.", "rn.rn.")) for k in state_dict)


def checkpoint_filter_fn(checkpoint: object) -> dict[str, torch.Tensor]:
    """Unwraps a checkpoint, strips a DataParallel ``module.`` prefix, renames official keys."""
    state_dict = unwrap_state_dict(checkpoint)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if is_official(state_dict):
        state_dict = {official_to_sketchfind(k): v for k, v in state_dict.items()}
    return state_dict


def vit_backbone_filter_fn(checkpoint: object) -> dict[str, torch.Tensor]:
    """The official ``sam_ViT-B_16.pth`` (keys relative to the ViT, optional ``mlp_head``) -> sketchfind names."""
    state_dict = unwrap_state_dict(checkpoint)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items() if "mlp_head" not in k}
    return {official_to_sketchfind(VIT_BACKBONE_PREFIX + k): v for k, v in state_dict.items()}


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, target: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, or a :class:`CheckpointError` a person can act on:
    "<source> does not fit <target>: n missing keys (e.g. ...); n unexpected keys ...; n shape mismatches ..."."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: file {tuple(getattr(v, 'shape', ()))} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and getattr(v, "shape", None) != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise CheckpointError(f"{source} does not fit {target}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
