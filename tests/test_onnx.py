"""The exported graphs on ONNX Runtime and on OpenVINO: parity with PyTorch on real sketchy-mini images, the export
cache, search rankings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from sketchfind.errors import SketchfindError  # noqa: E402
from sketchfind.index import build_index  # noqa: E402
from sketchfind.models import load_model  # noqa: E402
from sketchfind.preprocess import preprocess_photo, preprocess_sketch  # noqa: E402
from sketchfind.runtime import OnnxModel, OpenVinoModel, cached_export, load_runtime, resolve_runtime  # noqa: E402
from sketchfind.runtime import export as export_module  # noqa: E402
from sketchfind.search import Searcher  # noqa: E402

from .conftest import REFERENCE, SKETCHY  # noqa: E402
from .index_helpers import copy_photos, tiny  # noqa: E402

CLASSES = ("cup", "airplane", "swan", "apple", "cat", "tree")
TOKENS, SCORES = 1e-4, 1e-5


@pytest.fixture(scope="module")
def lite():
    return load_model()  # zse-lite0, shipped weights


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def lite_onnx(lite, onnx_cache):
    return load_runtime(lite, "onnx", cache_dir=onnx_cache)


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def lite_graphs(request, lite, onnx_cache):
    """zse-lite0's exported graphs, run by ONNX Runtime and by OpenVINO."""
    return load_runtime(lite, request.param, cache_dir=onnx_cache)


def _images(kind: str, per_class: int, pre) -> torch.Tensor:
    files = [f for c in CLASSES for f in sorted((SKETCHY / kind / c).iterdir())[:per_class]]
    fn = preprocess_sketch if kind == "sketches" else preprocess_photo
    return torch.stack([fn(f, pre) for f in files])


def test_lite_encoders_and_head_match_pytorch_on_real_images(lite, lite_graphs):
    assert isinstance(lite_graphs, OnnxModel) and lite_graphs.cfg == lite.cfg
    sketches = _images("sketches", 2, lite.cfg.preprocess)  # 12
    photos = _images("photos", 4, lite.cfg.preprocess)  # 24
    with torch.inference_mode():
        for images, modality in ((sketches, "sketch"), (photos, "photo"), (sketches[:1], "sketch")):
            want_tokens, want_global = lite.encode_with_global(images, modality)
            got_tokens, got_global = lite_graphs.encode_with_global(images, modality)  # NCHW, as the Searcher passes
            assert (got_tokens - want_tokens).abs().max() <= TOKENS
            assert (got_global - want_global).abs().max() <= TOKENS
            # any memory layout: a channels-last batch is copied to NCHW
            got_tokens = lite_graphs.encode_with_global(images.contiguous(memory_format=torch.channels_last), modality)
            assert (got_tokens[0] - want_tokens).abs().max() <= TOKENS
        sk, ph = lite.encode_sketch(sketches), lite.encode_photo(photos)
        want = lite.relation_scores(sk, ph)
        got = lite_graphs.relation_scores(sk, ph, max_pairs=7)  # several chunks, a short last one
        assert got.shape == want.shape == (12, 24)
        assert (got - want).abs().max() <= SCORES
        assert torch.equal(lite_graphs.retrieval_embedding(sk), lite.retrieval_embedding(sk))


def test_openvino_keeps_a_few_compiled_shapes_and_hands_out_its_own_arrays(lite, onnx_cache):
    from sketchfind.runtime import openvino_model

    ov = load_runtime(lite, "openvino", cache_dir=onnx_cache, threads=1)  # one thread: every batch in one call
    assert isinstance(ov, OpenVinoModel) and ov.runtime == "openvino"
    photos = _images("photos", 2, lite.cfg.preprocess)  # 12
    with torch.inference_mode():
        want = lite.encode_photo(photos)
        first = ov.encode_photo(photos[:3])
        kept = first.clone()
        for n in (1, 2, 4, 5, 6, 12):  # more batch sizes than are kept compiled
            assert (ov.encode_photo(photos[:n]) - want[:n]).abs().max() <= TOKENS
    # each result is a copy: later inferences (OpenVINO reuses its output buffers) leave it as it was
    assert torch.equal(first, kept)
    photo_graph = ov.sessions["photo"]
    assert len(photo_graph.requests) == openvino_model.KEEP_SHAPES and photo_graph.queue is None
    assert list(photo_graph.requests)[-1] == (("images", (12, 3, 224, 224)),)  # the latest size is kept
    with torch.inference_mode():
        tokens = lite.encode_photo(photos)
        scores = ov.relation_scores(tokens[:2], tokens, max_pairs=5)  # chunks of 5, 5 and 2 pairs
        assert (scores - lite.relation_scores(tokens[:2], tokens)).abs().max() <= SCORES
    assert list(ov.sessions["head"].requests) == [None]  # the head is compiled once, with a dynamic batch


def test_openvino_runs_large_batches_as_micro_batches_on_one_stream_per_thread(lite, onnx_cache):
    from sketchfind.runtime import openvino_model

    ov = load_runtime(lite, "openvino", cache_dir=onnx_cache, threads=2)
    photo_graph = ov.sessions["photo"]
    assert photo_graph.streams == 2 and ov.sessions["head"].streams == 1  # the head's batches vary in size
    photos = _images("photos", 3, lite.cfg.preprocess)[:17]  # odd: the last micro-batch is padded
    sketches = _images("sketches", 1, lite.cfg.preprocess)  # 6
    with torch.inference_mode():
        want_tokens, want_global = lite.encode_with_global(photos, "photo")
        tokens, global_emb = ov.encode_with_global(photos, "photo")
        kept = tokens.clone()
        assert tokens.shape == want_tokens.shape and global_emb.shape == want_global.shape
        assert (tokens - want_tokens).abs().max() <= TOKENS and (global_emb - want_global).abs().max() <= TOKENS
        for n in (openvino_model.SPLIT_FROM, 5, 12):  # the same queue for every large batch, rows in order
            got = ov.encode_photo(photos[:n])
            assert got.shape[0] == n and (got - want_tokens[:n]).abs().max() <= TOKENS
        small = ov.encode_photo(photos[: openvino_model.SPLIT_FROM - 1])  # a small batch: one call on both threads
        assert (small - want_tokens[: openvino_model.SPLIT_FROM - 1]).abs().max() <= TOKENS
        assert (ov.encode_sketch(sketches) - lite.encode_sketch(sketches)).abs().max() <= TOKENS
    assert torch.equal(tokens, kept)  # a copy: the micro-batches' buffers are reused by later batches
    shape = [openvino_model.MICRO_BATCH, 3, 224, 224]
    assert photo_graph.queue is not None and len(photo_graph.queue) == 4  # two requests per stream
    assert [list(p.get_shape()) for p in photo_graph.queue[0].model_inputs] == [shape]
    assert list(photo_graph.requests) == [(("images", (openvino_model.SPLIT_FROM - 1, 3, 224, 224)),)]


def test_same_padding_is_folded_into_the_convolutions(lite, lite_onnx, onnx_cache):
    import onnx

    for graph in ("sketch", "photo"):
        nodes = onnx.load(str(cached_export(lite, onnx_cache)[graph])).graph.node
        assert not [n for n in nodes if n.op_type == "Pad"]  # no separate copy of the activations
        pads = [list(a.ints) for n in nodes if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
        assert [0, 0, 1, 1] in pads  # the 3x3 stride-2 "SAME" padding: one extra row and column at the end
    # the exported graphs are for the model's image size (its pads are constants): other sizes are refused
    with pytest.raises(ValueError, match="224"):
        lite_onnx.encode_with_global(torch.zeros(1, 3, 200, 200), "sketch")


def test_export_leaves_the_model_in_eval_mode(lite, lite_onnx):
    assert not lite.training  # the exporter restores its wrappers' (training) mode unless told otherwise


def test_cache_is_reused_keyed_by_weights_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    model = tiny(seed=5)
    calls = []
    real = export_module.export_onnx
    monkeypatch.setattr(export_module, "export_onnx", lambda m, d: calls.append(d) or real(m, d))
    first = cached_export(model, tmp_path)
    again = cached_export(model, tmp_path)
    assert first == again and len(calls) == 1
    folder = first["head"].parent
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"] == export_module.cache_key(model) and set(manifest["sha256"]) == {"sketch", "photo", "head"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folders left

    other = cached_export(tiny(seed=6), tmp_path)  # other weights: another key, another folder
    assert other["head"].parent != folder and len(calls) == 2

    first["photo"].write_bytes(b"truncated")  # a damaged graph is exported again
    repaired = cached_export(model, tmp_path)
    assert len(calls) == 3 and repaired == first
    assert len(list(tmp_path.iterdir())) == 2


def test_runtime_choice(monkeypatch):
    import importlib.util

    monkeypatch.delenv("SKETCHFIND_RUNTIME", raising=False)
    assert resolve_runtime("auto") == resolve_runtime(None) == "openvino"  # the fastest, when installed
    assert resolve_runtime("torch") == "torch" and resolve_runtime("onnx") == "onnx"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "openvino" else find_spec(name))
    assert resolve_runtime("auto") == "onnx"  # without the openvino extra
    with pytest.raises(SketchfindError, match=r"sketchfind\[openvino\]"):
        resolve_runtime("openvino")
    monkeypatch.undo()
    monkeypatch.delenv("SKETCHFIND_RUNTIME", raising=False)
    monkeypatch.setenv("SKETCHFIND_RUNTIME", "torch")
    assert resolve_runtime(None) == "torch"
    with pytest.raises(SketchfindError, match="unknown runtime"):
        resolve_runtime("tensorrt")
    model = tiny()
    assert load_runtime(model, "torch") is model


@pytest.fixture(scope="module")
def lite_index(lite, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-search")
    copy_photos(root / "photos", classes=CLASSES, per_class=10)  # 60 photos
    build_index([root / "photos"], root / "idx", lite, runtime="torch", n_clusters=6, token_storage="fp32")
    return root / "idx"


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
@pytest.mark.parametrize("strategy", ["exhaustive", "clustered", "ann"])
def test_search_ranks_alike_with_either_runtime(lite, lite_index, strategy, runtime):
    queries = [sorted((SKETCHY / "sketches" / c).iterdir())[0] for c in CLASSES]
    eager, ort = (Searcher.open(lite_index, lite, runtime=r) for r in ("torch", runtime))
    with eager, ort:
        assert isinstance(ort.model, OnnxModel) and not isinstance(eager.model, OnnxModel)
        assert ort.model.runtime == runtime
        for query in queries:
            want = eager.search(query, k=None, strategy=strategy).hits
            got = ort.search(query, k=None, strategy=strategy).hits
            assert sorted(h.photo_id for h in got) == sorted(h.photo_id for h in want)
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=SCORES)
            # the same order, except photos whose scores tie within the tolerance (e.g. near-duplicate photos)
            torch_score = {h.photo_id: h.score for h in want}
            np.testing.assert_allclose([torch_score[h.photo_id] for h in got], [h.score for h in want], atol=SCORES)


def test_warm_up_compiles_what_the_first_query_needs_and_changes_no_result(lite, lite_index):
    query = sorted((SKETCHY / "sketches" / "cup").iterdir())[0]
    with Searcher.open(lite_index, lite, runtime="openvino") as cold:
        want = [(h.photo_id, h.score) for h in cold.search(query, k=10).hits]
    with Searcher.open(lite_index, lite, runtime="openvino") as warm:
        sessions = warm.model.sessions
        assert not sessions["sketch"].requests and not sessions["head"].requests  # compiled on first use
        warm.warm_up()
        assert list(sessions["sketch"].requests) == [(("images", (1, 3, 224, 224)),)]  # a query's shape
        assert list(sessions["head"].requests) == [None]  # clustered and exhaustive: the head's dynamic batch
        assert [(h.photo_id, h.score) for h in warm.search(query, k=10).hits] == want


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_an_index_built_through_exported_graphs_searches_like_one_built_through_torch(lite, tmp_path, runtime):
    copy_photos(tmp_path / "photos", classes=CLASSES[:3], per_class=6)  # batches of 4, 4, 4, 4 and 2
    report = build_index(
        [tmp_path / "photos"], tmp_path / "idx", lite, runtime=runtime, token_storage="fp32", batch_size=4
    )
    assert len(report.new) == 18
    query = sorted((SKETCHY / "sketches" / "swan").iterdir())[0]
    with Searcher.open(tmp_path / "idx", lite, runtime="torch") as s:
        with torch.inference_mode():
            photos = torch.stack([preprocess_photo(p, lite.cfg.preprocess) for p in s.state.paths])
            want = lite.encode_photo(photos)
        assert (s.photo_tokens(s.state.snapshot.ids) - want).abs().max() <= TOKENS
        assert s.search(query, k=3).hits[0].path.split("/")[-2] in CLASSES


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_full_size_model_passes_the_official_goldens_through_the_exported_graphs(runtime):
    from sketchfind.reference import run_checks

    failed = [(c.name, c.max_abs_diff) for c in run_checks(REFERENCE, runtime=runtime) if not c.passed]
    assert not failed
