"""Evaluation protocols: doodles drawn as the page draws them, perturbations, metrics with refused queries,
the pointing game, and the whole run on a tiny real subset."""

from __future__ import annotations

import json

import numpy as np

from sketchfind.preprocess import read_sketch_rgb
from sketchfind.protocols import (
    PERTURBATIONS,
    ink_cells,
    perturb,
    pointing_game,
    ranking_metrics,
    render_doodle,
    report_markdown,
    run_protocols,
    sketch_photo_pairs,
    strategy_scores,
)
from sketchfind.rerank import RankSettings

from .conftest import SHARED, SKETCHY, link_sketchy_subset

QUICKDRAW = SHARED / "data" / "quickdraw-mini"
SKETCH = sorted((SKETCHY / "sketches" / "alarm_clock").glob("*.png"))[0]


def test_doodles_are_drawn_like_the_page():
    first = json.loads((QUICKDRAW / "train" / "alarm_clock.ndjson").read_text().splitlines()[0])["drawing"]
    image = render_doodle(first)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    ink = image[:, :, 0] < 128
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    # fitted into the 512 canvas with a 32 px margin, centred: the longer side spans 448 (+ the pen)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) in range(446, 456)
    assert min(rows[0], cols[0]) >= 32 - 3 and max(rows[-1], cols[-1]) <= 512 - 32 + 3
    assert 0 < image.min() < 10 or image.min() == 0  # antialiased black strokes


def test_perturbations_change_the_drawing_as_named():
    clean = read_sketch_rgb(SKETCH)
    out = {name: perturb(name, clean) for name in PERTURBATIONS}
    assert out["faint_grey"].min() == 120
    assert out["transparent_png"].shape == (*clean.shape[:2], 4)
    assert np.array_equal(read_sketch_rgb(out["transparent_png"]), read_sketch_rgb(clean))  # composited on white
    assert out["small_150px"].shape == (150, 150, 3)
    assert (out["thick"] < 128).sum() > (clean < 128).sum() > (out["thin"] < 128).sum()
    assert np.median(out["white_on_black"]) == 0 and np.median(out["scanned_paper"]) < 245


def test_ranking_metrics_count_refused_queries_as_zero():
    labels = np.array([0, 0, 1, 1])
    perfect = np.array([[1.0, 0.9, 0.0, 0.1], [0.0, 0.1, 1.0, 0.9]])
    ok = ranking_metrics(perfect, np.array([0, 1]), labels)
    assert ok == {"map_all": 1.0, "map_100": 1.0, "p_100": 1.0}
    half = ranking_metrics(perfect, np.array([0, 1]), labels, refused=np.array([False, True]))
    assert half["map_all"] == 0.5 and half["p_100"] == 0.5


def test_strategy_scores_are_the_evaluate_rankings():
    rng = np.random.default_rng(0)
    q, p, rel = rng.normal(size=(3, 8)), rng.normal(size=(5, 8)), rng.random((3, 5))
    scores = strategy_scores(q, p, rel, RankSettings(qe_weight=2.0, qe_top=2), fusion=0.25)
    assert list(scores) == ["ret", "rn", "fused", "ann"]
    np.testing.assert_allclose(scores["fused"], 0.25 * scores["ret"] + 0.75 * rel)
    assert list(strategy_scores(q, p, None, RankSettings())) == ["ret", "ann"]


def test_pointing_game_by_hand():
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[1, 0, 1] = True
    heats = np.array([[[1.0, 0], [0, 0]], [[1.0, 0], [0, 0]]])  # first hits, second misses
    result = pointing_game(heats, masks)
    assert result["hit_rate"] == 0.5 and result["random"] == (0.25 + 0.5) / 2 and result["pairs"] == 2
    assert result["auc"] == (1.0 + (0.5 * 0.5 + 0.5 * 0)) / 2  # pair 2: ink cells 0 and 1 (0 heat) vs 1.0, 0
    tie = np.ones((1, 2, 2))  # a flat map: the point is shared by all cells
    assert pointing_game(tie, masks[:1])["hit_rate"] == 0.25


def test_ink_cells_and_pairs():
    cells = ink_cells(read_sketch_rgb(SKETCH), grid=7)
    assert cells.shape == (7, 7) and 0 < cells.sum() < 49
    pairs = sketch_photo_pairs(SKETCHY, ["alarm_clock"])
    assert len(pairs) >= 4 and all(s.stem == p.stem + "-1" for s, p, _ in pairs)


def test_run_protocols_on_a_tiny_real_subset(tmp_path):
    from sketchfind.models.factory import load_model
    from sketchfind.preprocess.normalize import normalize_drawing

    classes = ["alarm_clock", "bear"]  # training classes, both with QuickDraw doodles
    root = link_sketchy_subset(tmp_path / "data", classes + ["cannon"], per_class=3)
    doodles = tmp_path / "doodles"
    doodles.mkdir()
    for c in classes:
        lines = (QUICKDRAW / "train" / f"{c}.ndjson").read_text().splitlines()[:2]
        (doodles / f"{c}.ndjson").write_text("\n".join(lines))
    model = load_model("zse-lite0")
    report = run_protocols(
        model,
        root,
        classes,
        doodles,
        prepare=normalize_drawing,
        rn_per_class=1,
        perturb_per_class=1,
        perturbations=("faint_grey", "white_on_black"),
        cache_dir=tmp_path / "cache",
    )
    retrieval = report["retrieval"]
    assert set(retrieval) == {"sketches vs standard", "sketches vs mixed", "doodles vs standard", "doodles vs mixed"}
    assert retrieval["sketches vs mixed"]["gallery"] == 9 and retrieval["sketches vs standard"]["gallery"] == 6
    assert retrieval["doodles vs standard"]["queries"] == 4 and retrieval["sketches vs standard"]["rn_queries"] == 2
    for entry in retrieval.values():
        assert list(entry["metrics"])[:4] == ["ret", "rn", "fused", "ann"]
        assert all(0 <= v <= 1 for m in entry["metrics"].values() for v in m.values())
    assert set(report["perturbations"]) == {"clean", "faint_grey", "white_on_black"}
    assert report["perturbations"]["faint_grey"]["refused"] == 0
    assert "| faint_grey |" in report_markdown(report)
    # the official input refuses the faint drawing: it counts as AP 0
    official = run_protocols(
        model,
        root,
        classes,
        None,
        rn_per_class=0,
        perturb_per_class=1,
        perturbations=("faint_grey",),
        mixed=False,
        cache_dir=tmp_path / "cache",
    )
    assert official["perturbations"]["faint_grey"] == {
        "map_all": 0.0,
        "map_100": 0.0,
        "p_100": 0.0,
        "refused": 2,
        "drop": 1.0,
    }


def test_eval_command_runs_the_protocols(tmp_path):
    """`sketchfind eval --protocols --doodles DIR` writes the mixed-gallery, doodle and perturbation tables."""
    from typer.testing import CliRunner

    from sketchfind.cli import app

    classes = ["alarm_clock", "bear"]
    root = link_sketchy_subset(tmp_path / "data", classes + ["cannon"], per_class=2)
    (tmp_path / "classes.txt").write_text("\n".join(classes))
    doodles = tmp_path / "doodles"
    doodles.mkdir()
    for c in classes:
        (doodles / f"{c}.ndjson").write_text(
            "\n".join((QUICKDRAW / "train" / f"{c}.ndjson").read_text().splitlines()[:2])
        )
    out = tmp_path / "out"
    args = ["eval", "--sketches", root / "sketches", "--photos", root / "photos", "--classes", tmp_path / "classes.txt"]
    args += ["--no-baselines", "--protocols", "--doodles", doodles, "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    table = (out / "protocols.md").read_text()
    assert "sketches vs mixed" in table and "doodles vs standard" in table and "| faint_grey |" in table
    report = json.loads((out / "protocols.json").read_text())
    assert report["retrieval"]["sketches vs mixed"]["gallery"] == 6  # every photo of the folder, all 3 classes
