"""``sketchfind index / search / info / remove / recluster`` end to end on real photos and sketches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchfind.cli import app
from sketchfind.models.factory import save_weights

from .index_helpers import copy_photos, sketches, tiny, write_corrupt_files

CLASSES = ("cup", "swan")
runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = root / "tiny.safetensors"
    save_weights(tiny(), weights)
    photos = copy_photos(root / "photos", classes=CLASSES, per_class=6)
    write_corrupt_files(root / "photos" / "broken")
    result = run(
        "index",
        root / "photos",
        "--index",
        root / "idx",
        "--weights",
        weights,
        "--batch-size",
        "4",
        "--label-from-folder",
        "--report",
        root / "report.json",
    )
    assert result.exit_code == 0, result.output
    return root, weights, photos, result.output


def test_index_reports_new_and_skipped_files(setup):
    root, weights, photos, output = setup
    assert f"{len(photos)} new" in output and "5 skipped" in output and "truncated.jpg" in output
    report = json.loads((root / "report.json").read_text())
    assert len(report["new"]) == len(photos) and len(report["skipped"]) == 5
    again = run("index", root / "photos", "--index", root / "idx")  # the index's own model (its weights file)
    assert again.exit_code == 0 and "0 new" in again.output and f"{len(photos)} unchanged" in again.output


def test_search_json_lines_for_several_sketches_and_a_folder(setup, tmp_path):
    root, *_ = setup
    folder = tmp_path / "queries"
    folder.mkdir()
    for path in sketches(CLASSES, 1):
        (folder / path.name).write_bytes(path.read_bytes())
    single = sketches(("cup",), 2)[1]
    result = run("search", single, folder, "--index", root / "idx", "-k", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(rows) == 3 and rows[0]["query"] == str(single)
    for row in rows:
        assert row["strategy"] == "ann" and row["seconds"] > 0 and len(row["results"]) == 3
        assert [r["rank"] for r in row["results"]] == [1, 2, 3]


@pytest.mark.parametrize("strategy", ["exhaustive", "clustered", "ann"])
def test_search_top_k_all_ranks_the_gallery(setup, strategy):
    root, _, photos, _ = setup
    result = run(
        "search",
        sketches(("swan",), 1)[0],
        "--index",
        root / "idx",
        "--top-k",
        "all",
        "--strategy",
        strategy,
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in photos)


def test_search_table_and_grid(setup, tmp_path):
    root, *_ = setup
    grid = tmp_path / "grid.png"
    result = run("search", *sketches(CLASSES, 1), "--index", root / "idx", "-k", "4", "--grid", grid)
    assert result.exit_code == 0, result.output
    assert "rank" in result.stdout and ".jpg" in result.stdout
    with Image.open(grid) as image:
        assert image.width > image.height > 100


def test_bad_inputs_exit_non_zero_with_a_message(setup, tmp_path):
    root, *_ = setup
    blank = tmp_path / "blank.png"
    Image.new("RGB", (50, 50), "white").save(blank)
    good = sketches(("cup",), 1)[0]
    result = run("search", blank, good, "--index", root / "idx", "--format", "json")
    assert result.exit_code == 1 and "error" in result.output
    assert len(result.stdout.strip().splitlines()) == 1  # the good sketch still got its answer
    for args, message in [
        (("search", good, "--index", tmp_path / "none"), "no sketchfind index"),
        (("search", good, "--index", root / "idx", "-k", "zero"), "--top-k"),
        (("search", good, "--index", root / "idx", "--strategy", "fast"), "unknown strategy"),
        (("search", good, "--index", root / "idx", "--model", "zse-tiny"), "ships no weights"),
        (("index", root / "photos", "-i", root / "idx", "--model", "zse-lite0"), "was built with model"),
        (("remove", "nothing.jpg", "--index", root / "idx"), "nothing in"),
        (("index", tmp_path / "no-such-folder", "--index", tmp_path / "new-idx"), "not found"),
        (("info", "--index", tmp_path / "none"), "no sketchfind index"),
    ]:
        result = run(*args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)


def test_info_remove_recluster(setup, tmp_path):
    root, weights, photos, _ = setup
    out = tmp_path / "idx"
    assert run("index", root / "photos" / "cup", "--index", out, "--weights", weights).exit_code == 0
    info = run("info", "-i", out)
    assert info.exit_code == 0 and "zse-tiny" in info.stdout and "int6" in info.stdout
    as_json = json.loads(run("info", "-i", out, "--format", "json").stdout)
    assert as_json["counts"]["photos"] == 6
    removed = run("remove", photos[0], "--index", out)
    assert removed.exit_code == 0 and "removed 1" in removed.stdout
    assert json.loads(run("info", "-i", out, "--format", "json").stdout)["counts"]["photos"] == 5
    again = run("recluster", "--index", out, "--clusters", "2")
    assert again.exit_code == 0 and "clusters over 5 photos" in again.stdout


def test_console_script_exit_code(setup, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (40, 40), "white").save(blank)
    proc = subprocess.run(
        [sys.executable, "-m", "sketchfind.cli", "search", str(blank), "--index", str(setup[0] / "idx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "error" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_commands_in_workflow_order_with_one_line_each():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "160"})
    order = ["serve", "index", "search", "info", "remove", "recluster", "explain", "eval", "train", "export"]
    order.append("check-reference")
    listed = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
    listed = [name for name in listed if name in order]
    assert listed == order
    search_help = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "160"}).output
    assert "list[Path]" not in search_help and "<str>" not in search_help and "DIR" in search_help


def test_every_index_command_finds_the_index_in_the_environment(setup, tmp_path):
    root, *_ = setup
    env = {"SKETCHFIND_INDEX": str(root / "idx")}
    info = runner.invoke(app, ["info", "--format", "json"], env=env)
    assert info.exit_code == 0 and json.loads(info.stdout)["counts"]["photos"] == 12
    found = runner.invoke(app, ["search", str(sketches(("cup",), 1)[0]), "-k", "2", "--format", "json"], env=env)
    assert found.exit_code == 0 and len(json.loads(found.stdout)["results"]) == 2


def test_serve_leaves_options_not_given_to_the_environment(monkeypatch, tmp_path):
    """``sketchfind serve`` without --weights / --model / --collection takes them from $SKETCHFIND_*, as the
    service's settings document; an option given on the command line wins."""
    import sketchfind.service.run

    seen = []
    monkeypatch.setattr(sketchfind.service.run, "serve", lambda settings, *args: seen.append(settings))
    weights = tmp_path / "stage3.safetensors"
    monkeypatch.setenv("SKETCHFIND_WEIGHTS", str(weights))
    monkeypatch.setenv("SKETCHFIND_MODEL", "zse-tiny")
    monkeypatch.setenv("SKETCHFIND_COLLECTION", "shop_photos")
    monkeypatch.setenv("SKETCHFIND_STRATEGY", "clustered")
    assert run("serve", "-i", tmp_path / "idx").exit_code == 0
    assert (seen[0].weights, seen[0].model, seen[0].collection) == (weights, "zse-tiny", "shop_photos")
    assert seen[0].strategy == "clustered" and seen[0].index == tmp_path / "idx"
    assert run("serve", "-i", tmp_path / "idx", "--weights", tmp_path / "other.safetensors").exit_code == 0
    assert seen[1].weights == tmp_path / "other.safetensors" and seen[1].model == "zse-tiny"
