"""Configuration dataclasses: model architecture and the preprocessing that travels with it.

Named architectures live as JSON in ``model_configs/`` (see :func:`sketchfind.list_models`).
A checkpoint written by sketchfind carries its ``ModelConfig`` beside the weights, so indexing,
search, training and the web page always agree on sizes and preprocessing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model inputs; shared by every entry point."""

    image_size: int = 224  # square side fed to the model
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel, applied after /255
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    ink_threshold: int = 300  # a sketch pixel is ink when R+G+B <= this (official rule)
    sketch_margin: int = 10  # pixels kept around the ink bounding box
    photo_mode: str = "squash"  # "squash": official resize to a square ignoring aspect


# ModelConfig fields added after indexes existed, with their defaults
LATER_FIELDS = {"relation_head": "map", "ret_tokens": 1, "ret_whiten": 0.0, "relation_ret": False}
# fields that change only how the relation head reads stored tokens, not what an index stores: not hashed, so an
# index opens with weights whose head reads differently (its encoder fingerprint still has to match)
HEAD_ONLY_FIELDS = ("relation_ret",)


@dataclass(frozen=True)
class ModelConfig:
    """One ZSE-SBIR family member: token source (ViT or CNN), encoder, cross-attention, relation net."""

    name: str = "zse-vit-b16"
    backbone: str = "vit"  # "vit": ViT patch embedding + conv tokenizer; "efficientnet_lite0/1/2": CNN features
    width: int = 768  # token dimension D in encoder and cross-attention
    # ViT token source (backbone == "vit")
    patch_size: int = 16
    tokenizer_channels: tuple[int, ...] = (64, 128, 256)  # conv tokenizer hidden widths (stride 2 each)
    # CNN token source (backbone startswith "efficientnet")
    backbone_channels: int = 1280  # channels of the CNN's last feature map
    sketch_stages: int = 0  # >0: sketches run their own copy of the backbone's last N stages; photos keep ImageNet's
    ret_source: str = "encoder"  # "encoder": [Ret] is the encoder's output (official); "pooled": anchored [Ret]
    ret_head_hidden: int = 512  # hidden width of the sketch-side residual MLP of the anchored [Ret]
    # the anchored [Ret] may be wider than a token: ret_tokens x width values, stored as that many tokens in front
    # of the patch tokens (the cross-attention sees the first as its [Ret] token)
    ret_tokens: int = 1
    ret_whiten: float = 0.0  # anchored [Ret]: each principal axis scaled by its singular value ** -ret_whiten
    # self-attention encoder
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    ln_eps: float = 1e-5
    dropout: float = 0.1
    # cross-attention module
    ca_heads: int = 8
    ca_ff: int = 1024
    # relation head
    downsample: str = "conv2x2"  # "conv2x2": official 2x2/2 conv with its reshape quirk; "linear": per token
    down_dim: int = 512  # channels of the tokens the cosine map is computed on
    rn_hidden: tuple[int, ...] = (343, 49)
    # what the relation MLP reads: "map" = the whole flattened A x A cosine map (official); "sorted" = each
    # sketch anchor's and each photo anchor's best match, sorted (2A order statistics: position-invariant)
    relation_head: str = "map"
    # lite models: the relation network's last layer also reads the cosine of the two images' stored [Ret]
    # embeddings (the [Ret]-to-[Ret] correspondence, beside the patch map); False = official
    relation_ret: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def grid(self) -> int:
        """Side of the encoder's token grid (14 for ViT-B/16 at 224, 7 for a CNN at stride 32)."""
        stride = self.patch_size if self.backbone == "vit" else 32
        return self.image_size // stride

    @property
    def relation_grid(self) -> int:
        """Side of the grid the cosine map is built on (7 -> a 49x49 map)."""
        return self.grid // 2 if self.downsample == "conv2x2" else self.grid

    @property
    def num_tokens(self) -> int:
        """Tokens per image as encoding gives them and an index stores them: the [Ret] token(s), then the patches."""
        return self.grid * self.grid + self.ret_tokens

    @property
    def ret_dim(self) -> int:
        """Width of the [Ret] embedding that ann ranks by."""
        return self.ret_tokens * self.width

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
        pre = data.pop("preprocess", {}) or {}
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(preprocess=PreprocessConfig(**pre), **data)

    def hash(self) -> str:
        """Stable short hash of the architecture + preprocessing (index compatibility check)."""
        data = self.to_dict()
        for name in HEAD_ONLY_FIELDS:
            data.pop(name)
        for name, default in LATER_FIELDS.items():  # fields added later leave older configs' hashes as they were
            if data.get(name) == default:
                data.pop(name)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def list_models() -> list[str]:
    """Names of the built-in model configs."""
    folder = resources.files("sketchfind") / "model_configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def get_model_config(name_or_path: str | Path) -> ModelConfig:
    """A built-in config by name, or a config JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        return ModelConfig.from_dict(json.loads(path.read_text()))
    folder = resources.files("sketchfind") / "model_configs"
    entry = folder / f"{name_or_path}.json"
    if not entry.is_file():
        raise ConfigError(f"unknown model {str(name_or_path)!r}; known models: {', '.join(list_models())}")
    return ModelConfig.from_dict(json.loads(entry.read_text()))
