"""``build_index(..., ray=RaySettings())`` / ``sketchfind index --ray`` on a local Ray with 2 CPUs: the same
index as the single-process build, incremental, unreadable files reported, and a driver killed with
SIGKILL leaves an index that opens and resumes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchfind.cli import app
from sketchfind.errors import CheckpointError, ConfigError
from sketchfind.index import IndexStore, build_index
from sketchfind.index.distributed import RaySettings
from sketchfind.models.factory import save_weights
from sketchfind.search import Searcher

from .index_helpers import SKETCHY, copy_photos, sketches, tiny, write_corrupt_files

ray = pytest.importorskip("ray")  # the [ray] extra; the README's test command installs it

BATCH = 4
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, bounded object store) for the in-process builds of this module; a build
    uses a running Ray session as it is and leaves it running."""
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("ray-photos")
    photos = copy_photos(root, per_class=4)  # 3 classes x 4 photos -> 3 batches of 4
    broken = write_corrupt_files(root / "broken")
    return root, photos, broken


@pytest.fixture(scope="module")
def single_built(gallery, tmp_path_factory):
    """(single-process index, its report)."""
    out = tmp_path_factory.mktemp("single-built") / "single"
    return out, build_index([gallery[0]], out, tiny(), batch_size=BATCH, workers=1, label_from_folder=True)


def _ray_build(gallery, out: Path, decode: str):
    settings = RaySettings(cpus=2, decode=decode)
    return out, build_index([gallery[0]], out, tiny(), batch_size=BATCH, label_from_folder=True, ray=settings)


@pytest.fixture(scope="module")
def built(single_built, gallery, local_ray, tmp_path_factory):
    """(single-process index, its report, Ray index, its report) over the same photos; on this CPU-only Ray the
    encoder actor decodes its own files (``decode="auto"``)."""
    return *single_built, *_ray_build(gallery, tmp_path_factory.mktemp("ray-built") / "ray", "auto")


@pytest.fixture(scope="module")
def built_with_tasks(single_built, gallery, local_ray, tmp_path_factory):
    """The same with the files decoded by CPU tasks that feed the actor (how GPU actors are fed)."""
    return *single_built, *_ray_build(gallery, tmp_path_factory.mktemp("ray-tasks") / "ray", "tasks")


def _contents(index_dir: Path) -> dict:
    with IndexStore.open(index_dir) as store:
        snap = store.snapshot()
        positions = np.arange(len(snap))
        codes = store.read_codes(snap, positions)
        return {
            "ids": snap.ids.tolist(),
            "paths": store.paths(snap),
            "labels": store.labels(snap),
            "codes": codes,
            "tokens": store.tokens(snap, positions),
            "ret": store.codec.decode_ret(codes),
            "global": store.global_embeddings(snap),
            "step": _token_step(store.codec, codes),
        }


def _token_step(codec, codes: np.ndarray) -> float:
    """The largest quantisation step of any stored token value: two encodings of the same photo that
    differ only by float rounding decode within one step of each other."""
    scales = codes[:, : 2 * codec.T].copy().view("<f2").astype(np.float32)
    return float(scales.max() * np.abs(codec.ln_weight).max())


@pytest.mark.parametrize("decoding", ["built", "built_with_tasks"])
def test_ray_index_equals_the_single_process_index(decoding, request):
    single_dir, single, ray_dir, on_ray = request.getfixturevalue(decoding)
    a, b = _contents(single_dir), _contents(ray_dir)
    assert b["ids"] == a["ids"] and b["paths"] == a["paths"] and b["labels"] == a["labels"]  # same plan order
    assert sorted(on_ray.new) == sorted(single.new) and on_ray.photos == single.photos == 12
    tolerance = max(a["step"], b["step"]) * 1.01
    np.testing.assert_allclose(b["tokens"], a["tokens"], rtol=0, atol=tolerance)
    np.testing.assert_allclose(b["ret"], a["ret"], rtol=0, atol=tolerance)
    np.testing.assert_allclose(b["global"], a["global"], rtol=0, atol=0.05)
    assert (b["codes"] == a["codes"]).mean() > 0.99  # the same runtime on the same machine: (nearly) bitwise
    model = tiny()
    for strategy in ("exhaustive", "ann"):
        with Searcher.open(single_dir, model, strategy=strategy) as s1, Searcher.open(ray_dir, model) as s2:
            for sketch in sketches(per_class=1):
                hits1 = [h.path for h in s1.search(sketch, k=5, strategy=strategy).hits]
                hits2 = [h.path for h in s2.search(sketch, k=5, strategy=strategy).hits]
                assert hits2 == hits1, (strategy, sketch)


@pytest.mark.parametrize("decoding", ["built", "built_with_tasks"])
def test_ray_build_reports_unreadable_files_as_skipped(decoding, gallery, request):
    _, single, _, on_ray = request.getfixturevalue(decoding)
    broken = {str(p.resolve()) for p in gallery[2]}
    assert {path for path, _ in on_ray.skipped} == broken
    assert sorted(on_ray.skipped) == sorted(single.skipped)  # same reasons, word for word
    assert on_ray.encode_seconds > 0 and on_ray.seconds > 0


def test_decoding_runs_in_the_actors_unless_they_have_gpus():
    assert RaySettings(cpus=2).decode_in_actors(gpus=0) and not RaySettings(cpus=2).decode_in_actors(gpus=1)
    assert RaySettings(cpus=2, decode="tasks").decode_in_actors(gpus=0) is False
    assert RaySettings(cpus=2, decode="actors").decode_in_actors(gpus=1) is True
    with pytest.raises(ConfigError, match="--ray-decode gpu: choose one of auto, actors, tasks"):
        RaySettings(cpus=2, decode="gpu")


def test_ray_build_is_incremental(built, gallery, local_ray, tmp_path):
    _, _, ray_dir, _ = built
    index_dir = tmp_path / "idx"
    shutil.copytree(ray_dir, index_dir)
    settings = RaySettings(cpus=2)
    again = build_index([gallery[0]], index_dir, tiny(), batch_size=BATCH, ray=settings)
    assert not again.new and not again.updated and len(again.unchanged) == 12 and len(again.skipped) == 5
    # new content under an indexed path, and a file whose mtime changed but not its content (both go
    # through the Ray pipeline: the plan only compares size and mtime)
    changed, touched = gallery[0] / "cup" / "changed.jpg", gallery[1][0].resolve()
    shutil.copy(sorted((SKETCHY / "photos" / "swan").glob("*.jpg"))[-1], changed)
    try:
        os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
        third = build_index([gallery[0]], index_dir, tiny(), batch_size=BATCH, ray=settings)
        assert third.new == [str(changed.resolve())] and not third.updated and str(touched) in third.unchanged
        assert third.photos == 13
        with IndexStore.open(index_dir) as store:
            assert store.file_states()[str(touched)][2] == touched.stat().st_mtime_ns  # the new mtime recorded
    finally:
        changed.unlink()


def test_ray_without_ray_installed_is_a_clean_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = CliRunner().invoke(app, ["index", str(tmp_path), "--index", str(tmp_path / "idx"), "--ray"])
    assert result.exit_code == 1, result.output
    assert "pip install 'sketchfind[ray]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "idx").exists()


def test_ray_options_are_checked(tmp_path):
    with pytest.raises(Exception, match="at most 1 encoder"):
        RaySettings(cpus=2, actors=2)
    with pytest.raises(Exception, match="--ray-cpus sizes a local Ray"):
        RaySettings(address="auto", cpus=4)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(ConfigError, match=f"cannot join the Ray cluster at {address}"):
        build_index([SKETCHY / "photos" / "cup"], tmp_path / "idx", tiny(), ray=RaySettings(address=address))
    assert not (tmp_path / "idx").exists()  # refused before anything was written


def _cli(gallery: Path, index_dir: Path, weights: Path, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("SKETCHFIND_CRASH_AT", None)
    if crash_at:
        env["SKETCHFIND_CRASH_AT"] = crash_at
    args = ["index", str(gallery), "--index", str(index_dir), "--weights", str(weights), "--batch-size", str(BATCH)]
    return subprocess.Popen(
        [sys.executable, "-m", "sketchfind.cli", *args, "--label-from-folder", "--ray", "--ray-cpus", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_of_the_driver_leaves_an_index_that_opens_and_resumes(built, gallery, tmp_path):
    single_dir = built[0]
    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny(), weights)
    index_dir = tmp_path / "idx"
    proc = _cli(gallery[0], index_dir, weights, crash_at="batch-committed:2")  # killed right after the 2nd batch
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    reference = _contents(single_dir)
    with IndexStore.open(index_dir) as store:  # opens, and holds the first photos of the plan
        committed = store.paths(store.snapshot())
    assert 0 < len(committed) < 12 and committed == reference["paths"][: len(committed)]
    with Searcher.open(index_dir, tiny(), strategy="exhaustive") as searcher:
        assert len(searcher.search(sketches(per_class=1)[0], k=3).hits) == 3
    proc = _cli(gallery[0], index_dir, weights)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{12 - len(committed)} new" in out and f"{len(committed)} unchanged" in out and "5 skipped" in out, out
    resumed = _contents(index_dir)
    assert resumed["paths"] == reference["paths"]
    tolerance = max(resumed["step"], reference["step"]) * 1.01
    np.testing.assert_allclose(resumed["tokens"], reference["tokens"], rtol=0, atol=tolerance)
    assert "Traceback" not in err and "core_worker" not in err, err  # no Ray log lines in the output


def test_a_failing_encoder_actor_stops_the_build_with_a_clean_error(gallery, local_ray, monkeypatch, tmp_path):
    from sketchfind.index import distributed

    original = distributed._model_payload
    monkeypatch.setattr(distributed, "_model_payload", lambda *args: {**original(*args), "fingerprint": "0" * 16})
    with pytest.raises(CheckpointError, match="differs from the index's model") as failure:
        build_index([gallery[0]], tmp_path / "idx", tiny(), batch_size=BATCH, ray=RaySettings(cpus=2))
    assert "Traceback" not in str(failure.value) and "\n" not in str(failure.value)
    with IndexStore.open(tmp_path / "idx") as store:  # nothing committed, and the index opens
        assert len(store.snapshot()) == 0


def test_a_build_that_starts_its_own_ray_shuts_it_down_before_returning(gallery, tmp_path):
    """Ray starts in the background and stops in the background (beside clustering); build_index returns
    only once it is down, also when there was nothing to encode. In a process of its own: this module's
    other builds share one running Ray."""
    script = f"""
import ray
from sketchfind.index import build_index
from sketchfind.index.distributed import RaySettings
from tests.index_helpers import tiny
for run in (1, 2):  # the second has nothing new to encode
    settings = RaySettings(cpus=2)
    report = build_index([{str(gallery[0])!r}], {str(tmp_path / "idx")!r}, tiny(), batch_size=4, ray=settings)
    print(run, len(report.new), ray.is_initialized(), sorted(report.ray_seconds))
"""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[-2:]
    assert first == "1 12 False ['first_batch', 'import', 'start', 'stop', 'waited']", done.stdout
    assert second.startswith("2 0 False ['"), done.stdout  # only the unreadable files go through Ray again
