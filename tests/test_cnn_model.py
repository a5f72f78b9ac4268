"""The CNN family's sketch branch and anchored [Ret] on real sketchy-mini images."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sketchfind.config import get_model_config
from sketchfind.models.efficientnet import load_pretrained
from sketchfind.models.zse import RET_SKIP_INIT, ZSEModel
from sketchfind.preprocess import preprocess_photo, preprocess_sketch

from .conftest import SKETCHY

CLASSES = ["airplane", "cat", "pineapple", "zebra"]


@pytest.fixture(scope="module")
def images():
    cfg = get_model_config("zse-lite0").preprocess
    photos = [sorted((SKETCHY / "photos" / c).glob("*.jpg"))[0] for c in CLASSES]
    sketches = [sorted((SKETCHY / "sketches" / c).glob("*.png"))[0] for c in CLASSES]
    return (
        torch.stack([preprocess_sketch(p, cfg) for p in sketches]),
        torch.stack([preprocess_photo(p, cfg) for p in photos]),
    )


@pytest.fixture(scope="module")
def model():
    """zse-lite0's architecture on the ImageNet backbone (sketch branch = a copy of its last stages)."""
    torch.manual_seed(0)
    return ZSEModel(get_model_config("zse-lite0"), backbone=load_pretrained("lite0")).eval()


def test_photos_run_the_imagenet_backbone_and_sketches_their_own_stages(model, images):
    sketches, photos = images
    imagenet = load_pretrained("lite0")
    n = model.cfg.sketch_stages
    assert n > 0 and len(model.tokens.stages("sketch")) == len(model.tokens.stages("photo"))
    with torch.no_grad():
        expected = imagenet.forward_features(photos)
        torch.testing.assert_close(model.tokens.features(photos, "photo"), expected)
        # a fresh sketch branch is a copy of the ImageNet stages ...
        torch.testing.assert_close(model.tokens.features(sketches, "sketch"), imagenet.forward_features(sketches))
        # ... and changing it changes sketches only
        changed = ZSEModel(model.cfg, backbone=load_pretrained("lite0")).eval()
        for p in changed.tokens.sketch_tail.parameters():
            p.add_(0.01)
        torch.testing.assert_close(changed.tokens.features(photos, "photo"), expected)
        assert not torch.allclose(changed.tokens.features(sketches, "sketch"), imagenet.forward_features(sketches))


def test_freeze_trains_only_the_sketch_branch(model):
    m = ZSEModel(model.cfg, backbone=load_pretrained("lite0"))
    m.tokens.freeze(2)
    assert not any(p.requires_grad for p in m.tokens.backbone.parameters())
    tail = m.tokens.sketch_tail
    assert [any(p.requires_grad for p in s.parameters()) for s in tail] == [False] * (len(tail) - 2) + [True] * 2
    m.train()
    assert not tail[0].training and tail[-1].training
    assert not any(stage.training for stage in m.tokens.backbone.stages)
    with pytest.raises(ValueError, match="sketch branch"):
        m.tokens.freeze(len(tail) + 1)


def test_anchored_ret_of_photos_is_the_pca_of_imagenet_features(model, images):
    sketches, photos = images
    cfg = dataclasses.replace(model.cfg, ret_tokens=1, ret_whiten=0.0)  # the plain PCA of one token
    m = ZSEModel(cfg, backbone=load_pretrained("lite0")).eval()
    imagenet = load_pretrained("lite0")
    with torch.no_grad():
        fit_photos = torch.stack(
            [preprocess_photo(p, m.cfg.preprocess) for p in sorted((SKETCHY / "photos").glob("*/*.jpg"))[::20]]
        )
        pooled = imagenet.forward_features(fit_photos).mean((2, 3))
        m.ret.fit(pooled)
        basis = m.ret.basis
        torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4, rtol=0)
        tokens, global_emb = m.encode_with_global(photos)
        feats = F.normalize(imagenet.forward_features(photos).mean((2, 3)), dim=-1)
        expected = F.normalize((feats - m.ret.mean) @ basis, dim=-1)
        torch.testing.assert_close(m.retrieval_embedding(tokens), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(global_emb, feats)
        assert tokens[:, 0].norm(dim=-1).allclose(torch.full((4,), math.sqrt(m.cfg.width)))
        # the sketch head starts as the identity; once trained it moves sketches and never photos
        before = m.retrieval_embedding(m.encode_sketch(sketches))
        m.ret.sketch_head[2].bias.add_(0.05)
        assert not torch.allclose(m.retrieval_embedding(m.encode_sketch(sketches)), before)
        torch.testing.assert_close(m.retrieval_embedding(m.encode_photo(photos)), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fit_pooled():
    """Pooled ImageNet features of every 5th sketchy-mini photo (625): more photos than [Ret] dimensions."""
    cfg = get_model_config("zse-lite0").preprocess
    files = sorted((SKETCHY / "photos").glob("*/*.jpg"))[::5]
    imagenet = load_pretrained("lite0")
    with torch.no_grad():
        return torch.cat(
            [
                imagenet.forward_features(torch.stack([preprocess_photo(f, cfg) for f in files[i : i + 64]])).mean(
                    (2, 3)
                )
                for i in range(0, len(files), 64)
            ]
        )


def test_wide_whitened_ret_spans_several_tokens(model, images, fit_pooled):
    """zse-lite0's [Ret]: ret_tokens x width principal axes of the photos' ImageNet features, each divided by
    its singular value ** ret_whiten, stored as the first ret_tokens tokens; cross-attention reads the first."""
    sketches, photos = images
    cfg = model.cfg
    assert cfg.ret_tokens == 3 and cfg.ret_whiten == 0.5 and cfg.num_tokens == 3 + 49 and cfg.ret_dim == 384
    m = ZSEModel(cfg, backbone=load_pretrained("lite0")).eval()
    m.ret.fit(fit_pooled)
    x = F.normalize(fit_pooled, dim=-1)
    _, sv, vt = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    expected_basis = vt[:384].T * (sv[:384] / sv[0]) ** -0.5
    torch.testing.assert_close(m.ret.basis, expected_basis, atol=1e-3, rtol=1e-3)
    with torch.no_grad():
        tokens = m.encode_photo(photos)
        assert tokens.shape == (4, 52, 128)
        feats = F.normalize(load_pretrained("lite0").forward_features(photos).mean((2, 3)), dim=-1)
        expected = F.normalize((feats - m.ret.mean) @ m.ret.basis, dim=-1)
        torch.testing.assert_close(m.retrieval_embedding(tokens), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.retrieval_embedding(tokens.numpy()), expected.numpy(), atol=1e-5, rtol=1e-5)
        assert tokens[:, :3].reshape(4, -1).norm(dim=-1).allclose(torch.full((4,), math.sqrt(384)))
        # cross-attention reads the first [Ret] token and the 49 patches, not the others; the relation head's
        # last layer reads the whole [Ret] through the pair's cosine: changing the other two [Ret] tokens moves
        # each logit by exactly that input's weight times the change of the cosine
        sketch_tokens = m.encode_sketch(sketches)
        scores = m.relation_scores(sketch_tokens, tokens)
        logits = m.relation_scores(sketch_tokens, tokens, logits=True)
        changed = tokens.clone()
        changed[:, 1:3] = torch.randn(4, 2, 128)
        cosine = m.retrieval_embedding(sketch_tokens) @ m.retrieval_embedding(tokens).T  # (4, 4)
        moved = m.retrieval_embedding(sketch_tokens) @ m.retrieval_embedding(changed).T
        weight = float(m.relation.out.weight[0, -1])
        assert weight == RET_SKIP_INIT
        got = m.relation_scores(sketch_tokens, changed, logits=True)
        torch.testing.assert_close(got - logits, weight * (moved - cosine), atol=1e-4, rtol=1e-4)
        assert (got - logits).abs().max() > 0.1
        changed[:, 0] = torch.randn(4, 128)
        assert not torch.allclose(m.relation_scores(sketch_tokens, changed), scores)
        sketch_ca, photo_ca, pair_scores = m.pair_forward(sketch_tokens, tokens)
        assert sketch_ca.shape == photo_ca.shape == (4, 50, 128)
        torch.testing.assert_close(pair_scores, scores.diagonal())


def test_fit_on_fewer_photos_than_dimensions_completes_the_basis(model):
    m = ZSEModel(dataclasses.replace(model.cfg, ret_tokens=1, ret_whiten=0.0), backbone=load_pretrained("lite0"))
    pooled = torch.rand(10, model.cfg.backbone_channels)
    m.ret.fit(pooled)
    basis = m.ret.basis
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4, rtol=0)
    centred = F.normalize(pooled, dim=-1) - m.ret.mean
    # the 9 principal directions come first and carry all the variance of the photos fitted on
    torch.testing.assert_close((centred @ basis[:, :9]).norm(), centred.norm(), atol=1e-4, rtol=1e-4)


def test_pooled_ret_needs_a_cnn():
    cfg = dataclasses.replace(get_model_config("zse-tiny"), ret_source="pooled")
    with pytest.raises(ValueError, match="ret_source"):
        ZSEModel(cfg)


def test_lite2_config_gives_the_same_49_tokens_on_its_imagenet_backbone(images):
    """zse-lite2 (the lite0-vs-lite2 comparison of the model card) is the same model on EfficientNet-Lite2:
    224 px inputs still give a 7x7 map, so 49 tokens + 3 [Ret] tokens and a 49x49 map for the relation network."""
    cfg = get_model_config("zse-lite2")
    lite0 = get_model_config("zse-lite0")
    assert cfg.backbone == "efficientnet_lite2" and cfg.preprocess == lite0.preprocess
    assert dataclasses.replace(cfg, name=lite0.name, backbone=lite0.backbone) == lite0
    imagenet = load_pretrained("lite2")
    model = ZSEModel(cfg, backbone=load_pretrained("lite2")).eval()
    sketches, photos = images
    with torch.no_grad():
        torch.testing.assert_close(model.tokens.features(photos, "photo"), imagenet.forward_features(photos))
        tokens = model.encode(sketches, "sketch")
    assert tokens.shape == (len(CLASSES), 52, cfg.width) and cfg.num_tokens == 52


def test_sorted_relation_head_ignores_where_on_the_grid_a_match_lies(tmp_path):
    """relation_head="sorted" reads each anchor's best match, sorted: shuffling the photo anchors (or the
    sketch anchors) of a cosine map leaves the head's score unchanged, where the official "map" head reads
    positions; ONNX runs the sorted head as PyTorch does."""
    from sketchfind.runtime import load_runtime

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_model_config("zse-lite0"), relation_head="sorted")
    model = ZSEModel(cfg).eval()
    assert cfg.hash() != get_model_config("zse-lite0").hash()  # indexes know which head they were built with
    official = ZSEModel(get_model_config("zse-lite0")).eval()
    anchors = cfg.relation_grid**2
    cos = torch.rand(4, anchors, anchors) * 2 - 1
    rows, cols = torch.randperm(anchors), torch.randperm(anchors)
    shuffled = cos[:, rows][:, :, cols]
    ret_cos = torch.rand(4) * 2 - 1  # the pairs' [Ret] cosines, which the lite heads' last layer also reads
    with torch.no_grad():
        torch.testing.assert_close(
            model.relation.mlp(shuffled, ret_cos=ret_cos), model.relation.mlp(cos, ret_cos=ret_cos)
        )
        assert not torch.allclose(
            official.relation.mlp(shuffled, ret_cos=ret_cos), official.relation.mlp(cos, ret_cos=ret_cos)
        )
        with pytest.raises(ValueError, match="ret_cos"):
            model.relation.mlp(cos)
        sketch, photos = torch.randn(2, cfg.num_tokens, cfg.width), torch.randn(5, cfg.num_tokens, cfg.width)
        scores = model.relation_scores(sketch, photos)
    onnx = load_runtime(model, "onnx", cache_dir=tmp_path)
    torch.testing.assert_close(onnx.relation_scores(sketch, photos), scores, atol=1e-5, rtol=1e-4)
