"""The index directory: codecs, building from real photos, incremental updates, removal, clustering."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from sketchfind.cluster import cluster_count
from sketchfind.errors import ConfigError, IndexStoreError
from sketchfind.index import IndexStore, build_index, index_info, recluster, remove_photos
from sketchfind.index.codec import TOKEN_KINDS, GlobalCodec, TokenCodec
from sketchfind.models import create_model
from sketchfind.models.factory import save_weights

from .index_helpers import CLASSES, copy_photos, sketches, tiny, write_corrupt_files


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture()
def gallery(tmp_path):
    return tmp_path / "photos", copy_photos(tmp_path / "photos", per_class=6)  # 18 real photos


# ----------------------------------------------------------------------------- codecs


def test_token_codecs_round_trip_with_bounded_error():
    rng = np.random.default_rng(0)
    weight, bias = rng.uniform(0.2, 3.0, 32), rng.normal(size=32)
    tokens = (rng.normal(size=(6, 17, 32)) * weight + bias).astype(np.float32)  # LayerNorm-like outputs
    errors = {}
    for kind in TOKEN_KINDS:
        codec = TokenCodec(kind, 17, 32, weight, bias)
        rows = codec.encode(tokens)
        assert rows.shape == (6, codec.row_bytes) and rows.dtype == np.uint8
        decoded = codec.decode(rows)
        np.testing.assert_array_equal(codec.decode_ret(rows), decoded[:, 0])
        for k in (2, 3):  # a [Ret] of k tokens: the first k, end to end
            wide = TokenCodec(kind, 17, 32, weight, bias, ret_tokens=k)
            np.testing.assert_array_equal(wide.decode_ret(rows), decoded[:, :k].reshape(6, k * 32))
        odd = TokenCodec(kind, 4, 3, ret_tokens=3)  # 9 values: int6 / int4 [Ret] codes end inside a byte
        small = rng.normal(size=(5, 4, 3)).astype(np.float32)
        rows = odd.encode(small)
        np.testing.assert_array_equal(odd.decode_ret(rows), odd.decode(rows)[:, :3].reshape(5, 9))
        errors[kind] = float(np.sqrt(np.mean((decoded - tokens) ** 2)) / tokens.std())
    assert errors["fp32"] == 0
    assert errors["fp16"] < 1e-3 < errors["int8"] < errors["int6"] < errors["int4"] < 0.2
    assert errors["int6"] < 0.05
    # int6 stores 6 bits per value + one fp16 scale per token
    assert TokenCodec("int6", 17, 32).row_bytes == 17 * 2 + 17 * 32 * 6 // 8


def test_codec_rejects_bad_kind_and_shape():
    with pytest.raises(ConfigError):
        TokenCodec("int3", 17, 32)
    with pytest.raises(ValueError):
        TokenCodec("int6", 17, 32).encode(np.zeros((1, 16, 32), np.float32))


def test_global_codec_keeps_direction():
    rng = np.random.default_rng(1)
    emb = np.abs(rng.normal(size=(5, 64))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codec = GlobalCodec(64)
    back = codec.decode(codec.encode(emb))
    cos = (back * emb).sum(1) / np.linalg.norm(back, axis=1)
    assert codec.row_bytes == 8 + 32 and cos.min() > 0.98


# ----------------------------------------------------------------------------- building


def test_build_skips_corrupt_files_and_records_everything(model, gallery, tmp_path):
    folder, photos = gallery
    bad = write_corrupt_files(folder / "broken")
    out = tmp_path / "idx"
    report = build_index([folder, tmp_path / "missing.jpg"], out, model, batch_size=4, label_from_folder=True)
    assert sorted(report.new) == sorted(str(p) for p in photos)
    failed = dict(report.skipped)
    assert set(failed) == {str(p) for p in bad} | {str(tmp_path / "missing.jpg")}
    assert all(reason for reason in failed.values())
    assert report.photos == len(photos)

    info = json.loads((out / "index_info.json").read_text())
    assert info["model"]["name"] == "zse-tiny" and info["model"]["config_hash"] == model.cfg.hash()
    assert info["counts"]["photos"] == len(photos)
    assert info["tokens"]["storage"] == "int6" and info["ann"]["type"] == "SQ8"
    assert info["clusters"]["n_clusters"] == cluster_count(len(photos))
    assert (out / info["ann"]["file"]).is_file() and (out / info["clusters"]["file"]).is_file()
    assert info["bytes"]["per_photo"] > info["tokens"]["row_bytes"]

    with IndexStore.open(out) as store:
        snap = store.snapshot()
        assert sorted(store.labels(snap)) == sorted(p.parent.name for p in photos)
        record = store.photo(int(snap.ids[0]))
        assert record.path in report.new and len(record.sha256) == 64 and record.size > 0
        with pytest.raises(IndexStoreError, match="unknown photo id"):
            store.photo(10_000)


def test_stored_tokens_match_the_model(model, gallery, tmp_path):
    from sketchfind.preprocess import preprocess_photo

    folder, photos = gallery
    out = tmp_path / "idx"
    build_index([folder], out, model, token_storage="fp32", batch_size=5)
    with IndexStore.open(out) as store:
        snap = store.snapshot()
        paths = store.paths(snap)
        stored = store.tokens(snap, np.arange(len(snap)))
    images = torch.stack([preprocess_photo(p, model.cfg.preprocess) for p in paths])
    with torch.inference_mode():
        expected = model.encode_photo(images).numpy()
    np.testing.assert_allclose(stored, expected, atol=1e-5)


def test_incremental_update_indexes_only_new_or_changed(model, gallery, tmp_path):
    folder, photos = gallery
    out = tmp_path / "idx"
    build_index([folder], out, model, batch_size=8)
    gen = IndexStore.open(out).generation
    again = build_index([folder], out, model)
    assert not again.new and not again.updated and len(again.unchanged) == len(photos)

    os.utime(photos[0], ns=(1, 1))  # touched, same content: re-hashed, not re-encoded
    shutil.copy(photos[1], photos[2])  # content changed
    extra = copy_photos(tmp_path / "more", classes=("apple",), per_class=2)
    report = build_index([folder, extra[0].parent], out, model)
    assert report.new == [str(p) for p in extra]
    assert report.updated == [str(photos[2])]
    assert str(photos[0]) in report.unchanged
    with IndexStore.open(out) as store:
        assert store.generation > gen
        states = store.file_states()
        assert states[str(photos[0])][2] == 1  # new mtime recorded
        assert states[str(photos[2])][3] == states[str(photos[1])][3]  # same content hash now
        assert len(store.snapshot()) == len(photos) + 2


def test_other_model_is_refused(model, gallery, tmp_path):
    out = tmp_path / "idx"
    build_index([gallery[0]], out, model)
    with pytest.raises(IndexStoreError, match="other 'zse-tiny' weights"):
        build_index([gallery[0]], out, tiny(seed=1))
    other = create_model(dataclasses.replace(model.cfg, depth=1)).eval()
    with pytest.raises(IndexStoreError, match="was built with model"):
        build_index([gallery[0]], out, other)
    with pytest.raises(IndexStoreError, match="token storage"):
        build_index([gallery[0]], out, model, token_storage="fp16")


def test_a_model_with_the_same_encoder_and_another_head_opens_the_index(model, gallery, tmp_path, monkeypatch):
    from sketchfind.index import build
    from sketchfind.search import Searcher

    out = tmp_path / "idx"
    build_index([gallery[0]], out, model)
    head = copy.deepcopy(model)  # a relation network trained again on the same encoder
    with torch.no_grad():
        head.relation.out.bias.add_(0.5)
        head.cross.sketch_layer.q.weight.mul_(1.1)
    sketch = sketches(CLASSES, 1)[0]
    with Searcher.open(out, model) as a, Searcher.open(out, head) as b:
        query = a.encode_query(sketch)
        assert torch.equal(query, b.encode_query(sketch))  # the same tokens, [Ret] ranking and index
        ids = a.photo_ids()
        tokens = a.photo_tokens(ids)
        assert [h.photo_id for h in a.search(sketch, k=None, strategy="ann").hits] == [
            h.photo_id for h in b.search(sketch, k=None, strategy="ann").hits
        ]
        # ... scored by each model's own head
        got = b.search(sketch, k=None, strategy="exhaustive").hits
        with torch.inference_mode():
            want = head.relation_scores(query, tokens)[0].numpy()
        by_id = dict(zip(ids, want, strict=True))
        np.testing.assert_allclose([h.score for h in got], [by_id[h.photo_id] for h in got], atol=1e-5)
    assert len(build_index([gallery[0]], out, head).unchanged) == len(gallery[1])  # nothing re-encoded
    encoder = copy.deepcopy(model)  # any change before the head: another index
    with torch.no_grad():
        next(encoder.encoder.parameters()).mul_(1.01)
    with pytest.raises(IndexStoreError, match="other 'zse-tiny' weights") as refused:
        Searcher.open(out, encoder)
    # built with shipped weights (no file recorded) that a newer release replaced: the way out is to index again
    assert "index the photos again into a new --index folder" in str(refused.value)
    weights = tmp_path / "tiny.safetensors"
    save_weights(model, weights)
    build_index([gallery[0]], tmp_path / "from-file", model, weights=weights)
    with pytest.raises(IndexStoreError, match="pass the weights it was built with$"):
        Searcher.open(tmp_path / "from-file", encoder)
    # an index written before the encoder fingerprint was recorded: all the weights must match ...
    with sqlite3.connect(out / "index.sqlite") as conn:
        recorded = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0])
        del recorded["encoder_fingerprint"]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(recorded),))
    conn.close()
    Searcher.open(out, model).close()
    with pytest.raises(IndexStoreError, match="other 'zse-tiny' weights"):
        Searcher.open(out, head)
    # ... unless they are a release's whose encoder is known
    monkeypatch.setitem(build.RELEASED_ENCODERS, recorded["fingerprint"], build.encoder_fingerprint(model))
    Searcher.open(out, head).close()


def test_remove_by_id_path_and_folder(model, gallery, tmp_path):
    folder, photos = gallery
    out = tmp_path / "idx"
    build_index([folder], out, model)
    with IndexStore.open(out) as store:
        first = int(store.snapshot().ids[0])
    assert remove_photos(out, [first]) == 1
    assert remove_photos(out, [str(photos[-1])]) == 1
    assert remove_photos(out, [str(folder / "cup")]) == 6
    assert remove_photos(out, [str(folder / "nothing-here")]) == 0
    assert index_info(out)["counts"]["photos"] == len(photos) - 8
    with IndexStore.open(out) as store:
        assert len(store.snapshot()) == len(photos) - 8
    # re-adding the removed photos works
    assert len(build_index([folder], out, model).new) == 8


def test_recluster_and_writer_lock(model, gallery, tmp_path):
    out = tmp_path / "idx"
    build_index([gallery[0]], out, model)
    info = recluster(out, n_clusters=3)
    assert info["clusters"]["n_clusters"] == 3 and info["clusters"]["requested"] == 3
    with IndexStore.open(out, writable=True):
        with pytest.raises(IndexStoreError, match="being written"):
            build_index([gallery[0]], out, model)
    with pytest.raises(IndexStoreError, match="no sketchfind index"):
        IndexStore.open(tmp_path / "nowhere")


def test_missing_artefacts_are_rebuilt(model, gallery, tmp_path):
    out = tmp_path / "idx"
    build_index([gallery[0]], out, model)
    info = json.loads((out / "index_info.json").read_text())
    (out / info["ann"]["file"]).unlink()
    (out / info["clusters"]["file"]).write_bytes(b"garbage")
    rebuilt = index_info(out)  # read-only: rebuilt in memory
    assert rebuilt["counts"]["photos"] == len(gallery[1])
    build_index([gallery[0]], out, model)  # a writer puts them back
    info = json.loads((out / "index_info.json").read_text())
    assert (out / info["ann"]["file"]).is_file()


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open-clip-torch not installed")
def test_clip_embedder_from_local_weights(model, gallery, tmp_path):
    from sketchfind.index.embedders import import_open_clip

    open_clip = import_open_clip()
    config = tmp_path / "sf-tiny-clip.json"
    config.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = tmp_path / "clip.pt"
    torch.save(open_clip.create_model("sf-tiny-clip").state_dict(), weights)

    out = tmp_path / "idx"
    kw = {"clip_model": "sf-tiny-clip", "clip_weights": weights, "clip_config": config}
    report = build_index([gallery[0]], out, model, embedder="clip", **kw)
    assert len(report.new) == len(gallery[1])
    info = json.loads((out / "index_info.json").read_text())
    assert info["global_embedder"]["kind"] == "clip" and info["global_embedder"]["dim"] == 16
    extra = copy_photos(tmp_path / "more", classes=("apple",), per_class=2)
    assert len(build_index([extra[0].parent], out, model).new) == 2  # the recorded CLIP tower is reloaded
    with pytest.raises(IndexStoreError, match="'clip' embedder"):
        build_index([extra[0].parent], out, model, embedder="default")
    with pytest.raises(ConfigError, match="not found"):
        build_index(
            [gallery[0]],
            tmp_path / "idx2",
            model,
            embedder="clip",
            clip_model="sf-tiny-clip",
            clip_weights=tmp_path / "none.pt",
        )


def test_removing_most_photos_compacts_the_shards(model, gallery, tmp_path):
    folder, photos = gallery
    out = tmp_path / "idx"
    build_index([folder], out, model)
    with IndexStore.open(out) as store:
        snap = store.snapshot()
        before = dict(zip(store.paths(snap), store.tokens(snap, np.arange(len(snap))), strict=True))
    size = sum(p.stat().st_size for p in (out / "shards").iterdir())
    assert remove_photos(out, [str(folder / "cup"), str(folder / "airplane")]) == 12  # 2/3 garbage -> compact
    with IndexStore.open(out) as store:
        snap = store.snapshot()
        assert store.garbage_fraction() == 0 and len(snap) == 6
        for path, tokens in zip(store.paths(snap), store.tokens(snap, np.arange(6)), strict=True):
            np.testing.assert_array_equal(tokens, before[path])
    assert sum(p.stat().st_size for p in (out / "shards").iterdir()) < size / 2
    assert len(build_index([folder], out, model).new) == 12  # and the index keeps growing normally
