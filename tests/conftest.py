"""Shared fixtures: paths to ../shared, the official-format checkpoint (written once per session)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference" / "zse-sbir"
SKETCHY = SHARED / "data" / "sketchy-mini"

torch.set_num_threads(2)
# exported ONNX graphs (the default runtime when onnxruntime is installed) go to a per-run folder, never ~/.cache
os.environ.setdefault("SKETCHFIND_CACHE_DIR", tempfile.mkdtemp(prefix="sketchfind-test-cache-"))


def load_make_weights():
    """The reference's own weight generator, imported from ../shared (never copied into the repo)."""
    spec = importlib.util.spec_from_file_location("make_weights", REFERENCE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def link_sketchy_subset(root: Path, classes: list[str], per_class: int) -> Path:
    """A sketches/<class>/ + photos/<class>/ folder of symlinks to the first files of sketchy-mini."""
    for kind in ("sketches", "photos"):
        for c in classes:
            (root / kind / c).mkdir(parents=True)
            for f in sorted((SKETCHY / kind / c).iterdir())[:per_class]:
                (root / kind / c / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in the official container format with the deterministic synthetic weights."""
    make_weights = load_make_weights()
    state_dict = make_weights.make_state_dict(str(REFERENCE / "keys.json"))
    path = tmp_path_factory.mktemp("official") / "best_checkpoint.pth"
    # numpy scalars as in the real file (np.nanmean results)
    torch.save({"model": state_dict, "epoch": 0, "map_all": np.float64(0.0), "precision_100": np.float64(0.0)}, path)
    return path


@pytest.fixture(scope="session")
def vit_model(official_checkpoint):
    import sketchfind

    return sketchfind.load_model("zse-vit-b16", weights=official_checkpoint)


@pytest.fixture(scope="session")
def goldens() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "outputs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def golden_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(REFERENCE / "inputs.npz") as data:
        return torch.from_numpy(data["sketch"]), torch.from_numpy(data["photo"])


@pytest.fixture()
def tiny_model():
    import sketchfind

    torch.manual_seed(0)
    return sketchfind.load_model("zse-tiny", random_init=True)
