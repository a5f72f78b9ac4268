"""sketchfind eval on a small real subset with the shipped default model: metrics, baselines, report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import sketchfind
from sketchfind.cli import app
from sketchfind.evaluate import evaluate, write_report
from sketchfind.metrics import retrieval_metrics

from .conftest import link_sketchy_subset

CLASSES = ["bicycle", "shark", "zebra"]  # seen (training) classes: this checks the plumbing, not zero-shot


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    return link_sketchy_subset(tmp_path_factory.mktemp("evalset"), CLASSES, 5)


@pytest.fixture(scope="module")
def result(subset):
    from sketchfind.rerank import RankSettings

    model = sketchfind.load_model()
    settings = RankSettings.from_metadata(model.weights_metadata).updated(fusion=0.75)
    return evaluate(model, subset / "sketches", subset / "photos", settings=settings)


def test_rankings_and_baselines(result):
    assert set(result.metrics) == {"ret", "rn", "fused", "ann", "random", "imagenet_backbone"}
    assert result.settings["queries"] == 15 and result.settings["gallery"] == 15
    for name, m in result.metrics.items():
        assert set(m) >= {"map_all", "map_100", "map_200", "p_10", "p_25", "p_100", "p_200"}
        assert 0 <= m["map_all"] <= 1, name
    # metrics are the official ones on the returned scores
    again = retrieval_metrics(-result.scores["fused"], result.query_labels, result.gallery_labels)
    assert again["map_all"] == pytest.approx(result.metrics["fused"]["map_all"])
    np.testing.assert_allclose(result.scores["fused"], 0.75 * result.scores["ret"] + 0.25 * result.scores["rn"])
    # ann: the search pipeline with the settings stored in the shipped weights (fusion as asked)
    from dataclasses import replace

    from sketchfind.evaluate import encode_files
    from sketchfind.rerank import RankSettings, pipeline_scores

    model = sketchfind.load_model()
    settings = replace(RankSettings.from_metadata(model.weights_metadata), fusion=0.75)
    assert result.settings["ann"] == settings.__dict__
    sk, _ = encode_files(model, result.query_files, "sketch")
    ph, _ = encode_files(model, result.gallery_files, "photo")
    emb = model.retrieval_embedding
    expected = pipeline_scores(emb(sk).numpy(), emb(ph).numpy(), result.scores["rn"], settings)
    np.testing.assert_allclose(result.scores["ann"], expected, atol=1e-5)
    # the trained model separates three easy seen classes far better than chance
    assert result.metrics["fused"]["map_all"] > result.metrics["random"]["map_all"] + 0.3


def test_report_files(result, tmp_path):
    paths = write_report(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["metrics"]["rn"]["map_all"] == pytest.approx(result.metrics["rn"]["map_all"])
    assert "| fused |" in paths["markdown"].read_text()
    for key in ("pr", "grid"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.width > 300
    grid = np.asarray(Image.open(paths["grid"]).convert("RGB"))
    green = ((grid[..., 0] == 40) & (grid[..., 1] == 170) & (grid[..., 2] == 60)).sum()
    assert green > 0  # right-class borders are drawn


def test_cli_eval(subset, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--sketches",
            str(subset / "sketches"),
            "--photos",
            str(subset / "photos"),
            "--out",
            str(out),
            "--no-baselines",
        ],
    )
    assert res.exit_code == 0, res.output
    shipped = float(sketchfind.load_model().weights_metadata["fusion"])
    assert json.loads((out / "metrics.json").read_text())["settings"]["fusion"] == shipped  # from the weights
    bad = CliRunner().invoke(app, ["eval", "--sketches", str(tmp_path / "nope"), "--photos", str(tmp_path)])
    assert bad.exit_code == 1 and "error" in bad.output


def test_the_relation_network_ranks_unseen_classes_as_well_as_ret(tmp_path):
    """Issue #10: the shipped relation network (whose last layer also reads the [Ret] cosine) ranks sketches of
    classes that training never saw at least 0.9x as well as [Ret] (five unseen-25 classes, 8 sketches and 8 photos
    each); the head without its [Ret] input, the map's network alone, is far below."""
    import torch

    from sketchfind.evaluate import encode_files

    unseen = ["cup", "swan", "harp", "squirrel", "snail"]
    root = link_sketchy_subset(tmp_path, unseen, 8)
    model = sketchfind.load_model()
    result = evaluate(model, root / "sketches", root / "photos")
    ret, rn = result.metrics["ret"]["map_all"], result.metrics["rn"]["map_all"]
    assert rn >= 0.9 * ret and ret > result.metrics["random"]["map_all"] + 0.2
    sk, _ = encode_files(model, result.query_files, "sketch")
    ph, _ = encode_files(model, result.gallery_files, "photo")
    with torch.no_grad():
        model.relation.out.weight[0, -1] = 0.0  # the map's evidence alone
        alone = model.relation_scores(sk, ph).numpy()
    map_alone = retrieval_metrics(-alone, result.query_labels, result.gallery_labels)["map_all"]
    assert map_alone < rn - 0.05
