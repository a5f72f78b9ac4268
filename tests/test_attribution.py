"""[Ret] attribution: the photo-cell contributions add up exactly to the cosine the ann search ranks by."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sketchfind.attribution import ret_cell_contributions, ret_photo_heat
from sketchfind.errors import ConfigError
from sketchfind.explain import explain, explain_ret
from sketchfind.models.factory import load_model
from sketchfind.preprocess import preprocess_photo, preprocess_sketch, read_photo, sketch_array
from sketchfind.rerank import expand_query

from .conftest import SKETCHY

PHOTOS = sorted((SKETCHY / "photos" / "alarm_clock").glob("*.jpg"))[:2]
SKETCH = sorted((SKETCHY / "sketches" / "alarm_clock").glob("*.png"))[0]


@pytest.fixture(scope="module")
def lite0():
    return load_model("zse-lite0")


def test_contributions_sum_to_the_ret_cosine(lite0):
    images = torch.stack([preprocess_photo(p, lite0.cfg.preprocess) for p in PHOTOS])
    with torch.inference_mode():
        feats = lite0.tokens.features(images, "photo")
        photo_ret = lite0.retrieval_embedding(lite0.encode_tokens(*lite0.tokens.to_tokens(feats), "photo")[0])  # (2, D)
        sketch = lite0.encode_sketch(preprocess_sketch(SKETCH, lite0.cfg.preprocess)[None])
    query = lite0.retrieval_embedding(sketch)[0]
    contributions = ret_cell_contributions(lite0, feats, query)
    assert contributions.shape == (2, 7, 7)
    np.testing.assert_allclose(contributions.sum((1, 2)), (photo_ret @ query).numpy(), atol=1e-5)
    heat = ret_photo_heat(lite0, feats, query)
    assert heat.min() == 0 and heat.max() == 1
    assert np.array_equal(heat.reshape(2, -1).argmax(1), contributions.reshape(2, -1).argmax(1))
    squared, photo = sketch_array(SKETCH, lite0.cfg.preprocess), read_photo(PHOTOS[0]).convert("RGB")
    one = explain_ret(lite0, squared, photo)
    assert one.score == pytest.approx(float(photo_ret[0] @ query), abs=1e-5)
    expanded_query = expand_query(query.numpy(), photo_ret.numpy(), 2.0)  # the heat explains the expanded query
    expanded = explain_ret(lite0, squared, photo, expanded_query)
    assert expanded.score == pytest.approx(float(photo_ret[0] @ torch.from_numpy(expanded_query)), abs=1e-5)
    assert expanded.score != pytest.approx(one.score, abs=1e-4)


def test_encoder_ret_models_are_refused(tiny_model):
    with pytest.raises(ConfigError, match="anchored"):
        ret_cell_contributions(tiny_model, torch.zeros(1, 8, 2, 2), torch.zeros(8))


def test_ret_explanation_renders_the_search_score(lite0):
    photo = PHOTOS[0]
    explanation, images = explain(lite0, SKETCH, photo)  # source='ret' by default
    with torch.inference_mode():
        sketch = lite0.retrieval_embedding(lite0.encode_sketch(preprocess_sketch(SKETCH, lite0.cfg.preprocess)[None]))
        image = lite0.retrieval_embedding(lite0.encode_photo(preprocess_photo(photo, lite0.cfg.preprocess)[None]))
    assert explanation.score == pytest.approx(float(sketch[0] @ image[0]), abs=1e-5)
    assert explanation.source == "ret" and explanation.matrix.sum() == pytest.approx(explanation.score)
    assert explanation.photo_heat.shape == explanation.sketch_heat.shape == (7, 7)
    assert set(images) == {"sketch", "photo", "combined"} and images["combined"].width > images["photo"].width
