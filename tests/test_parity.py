"""The full-size model equals the official ZSE-SBIR code: goldens from ../shared/reference/zse-sbir.

Tolerances are the reference README's: 1e-4 for token-level activations, 1e-5 for cosine maps,
relation-network values and distances, 1e-5 relative for the losses.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sketchfind.models.convert import official_to_sketchfind
from sketchfind.train.losses import zse_losses

from .conftest import REFERENCE

ACT, FINE = 1e-4, 1e-5


def close(actual: torch.Tensor | np.ndarray, expected: np.ndarray, atol: float) -> None:
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


def ret_distance(sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor:
    """The official 'sa' distance: ||normalize(a) - normalize(b) + 1e-6||_2 on [Ret] tokens."""
    from sketchfind.models.zse import retrieval_embedding

    a, b = retrieval_embedding(sketch_tokens), retrieval_embedding(photo_tokens)  # the official model: one [Ret] token
    return torch.linalg.vector_norm(a[:, None] - b[None] + 1e-6, dim=-1)


@pytest.fixture(scope="module")
def run(vit_model, golden_inputs):
    """Every intermediate of the golden run, computed once through the public modules."""
    model = vit_model
    sketch, photo = golden_inputs
    images = torch.cat([sketch, photo])
    out = {}
    with torch.no_grad():
        out["patch_conv_s0"] = model.tokens.patch_embed(sketch[:1])[0]
        out["patch_conv_p0"] = model.tokens.patch_embed(photo[:1])[0]
        out["scale_emb_s0"] = model.tokens.conv_tokenizer(sketch[:1])[0]
        out["scale_emb_p0"] = model.tokens.conv_tokenizer(photo[:1])[0]
        tokens_in = model.encoder.embed(model.tokens(images)[0])
        out["tokens_in"] = tokens_in
        x, blocks = tokens_in[:1], []
        for block in model.encoder.blocks:
            x = block(x)
            blocks.append(x[0])
        out["sa_blocks_s0"] = torch.stack(blocks)
        tokens = model.encode_sketch(sketch), model.encode_photo(photo)
        out["sa_fea"] = torch.cat(tokens)
        sk_tok, ph_tok = tokens
        # pairs p = 4*i + j = (sketch i, photo j), the order the official valid_cls builds
        sk_rows, ph_rows = sk_tok.repeat_interleave(4, dim=0), ph_tok.repeat(4, 1, 1)
        sketch_ca, photo_ca = model.cross(sk_rows, ph_rows)
        out["ca"] = torch.cat([sketch_ca, photo_ca])
        out["conv_in_pair0_sketch"] = model.relation.conv_input(sketch_ca[:1])[0]
        down = model.relation.downsample(out["ca"])
        out["down_fea"] = down
        cos = model.relation.cosine_map(down[:16], down[16:])
        out["cos_map"] = cos
        logits, hidden = model.relation.mlp(cos, return_hidden=True)
        out["rn_h1"], out["rn_h2"], out["rn_logit"] = hidden[0], hidden[1], logits.reshape(4, 4)
        out["rn_score"] = model.relation_scores(sk_tok, ph_tok)
        out["rn_score_chunked"] = model.relation_scores(sk_tok, ph_tok, max_pairs=3)
        out["sa_dist"] = ret_distance(sk_tok, ph_tok)
        # training path, b = 2: sketch = s0,s1; sketch_neg = s2,s3; photo = p0,p1; photo_neg = p2,p3
        ret, scores = model(sketch, photo)
        out["train_cls_fea"], out["train_rn_scores"] = ret, scores
        out["losses"] = zse_losses(ret, scores)
    return out


@pytest.mark.parametrize(
    "key",
    [
        "patch_conv_s0",
        "patch_conv_p0",
        "scale_emb_s0",
        "scale_emb_p0",
        "tokens_in",
        "sa_blocks_s0",
        "sa_fea",
        "conv_in_pair0_sketch",
        "down_fea",
    ],
)
def test_activations(run, goldens, key):
    close(run[key], goldens[key], ACT)


def test_sa_summaries(run, goldens):
    sa = run["sa_fea"]
    close(sa[:, 0], goldens["sa_cls"], ACT)
    close(sa.mean(-1), goldens["sa_token_mean"], ACT)
    close(sa.std(-1, unbiased=False), goldens["sa_token_std"], ACT)


def test_cross_attention(run, goldens):
    ca = run["ca"]
    close(ca[:, 0], goldens["ca_cls"], ACT)
    close(ca.mean(-1), goldens["ca_token_mean"], ACT)
    close(ca.std(-1, unbiased=False), goldens["ca_token_std"], ACT)
    close(ca[:, :8], goldens["ca_first8_all"], ACT)
    diag = [0, 5, 10, 15]  # pairs (i, i)
    close(ca[diag], goldens["ca_out_diag_sketch"], ACT)
    close(ca[[16 + d for d in diag]], goldens["ca_out_diag_photo"], ACT)


@pytest.mark.parametrize("key", ["cos_map", "rn_h1", "rn_h2", "rn_logit", "rn_score", "sa_dist"])
def test_relation_and_distances(run, goldens, key):
    close(run[key], goldens[key], FINE)


def test_relation_scores_batched_equals_unbatched(run, goldens):
    close(run["rn_score_chunked"], goldens["rn_score"], FINE)
    close(-run["rn_score"], goldens["valid_dist_rn"], FINE)
    close(run["sa_dist"], goldens["valid_dist_sa"], FINE)


def test_official_evaluation_metrics(run, goldens):
    from sketchfind.metrics import retrieval_metrics

    labels = np.arange(4)
    for dist, key in ((-run["rn_score"], "valid_metrics_rn"), (run["sa_dist"], "valid_metrics_sa")):
        m = retrieval_metrics(dist.numpy(), labels, labels)
        np.testing.assert_allclose([m["map_all"], m["map_200"], m["p_100"], m["p_200"]], goldens[key], atol=1e-6)


def test_training_forward_and_losses(run, goldens):
    close(run["train_cls_fea"], goldens["train_cls_fea"], ACT)
    close(run["train_rn_scores"], goldens["train_rn_scores"].reshape(-1), FINE)
    losses = run["losses"]
    np.testing.assert_allclose(losses["triplet"].item(), goldens["train_loss_tri_x2"], rtol=1e-5)
    np.testing.assert_allclose(losses["relation"].item(), goldens["train_loss_rn_x4"], rtol=1e-5)


def test_png_pipeline(vit_model, goldens):
    """The 4 reference PNGs through sketchfind's preprocessing and the model."""
    from sketchfind.preprocess import preprocess_photo, preprocess_sketch

    cfg = vit_model.cfg.preprocess
    sketches = torch.stack([preprocess_sketch(REFERENCE / f"sketch_{n}.png", cfg) for n in "ab"])
    photos = torch.stack([preprocess_photo(REFERENCE / f"photo_{n}.png", cfg) for n in "ab"])
    with torch.no_grad():
        sk_tok, ph_tok = vit_model.encode_sketch(sketches), vit_model.encode_photo(photos)
        close(vit_model.relation_scores(sk_tok, ph_tok), goldens["png_rn_score"], FINE)
        close(ret_distance(sk_tok, ph_tok), goldens["png_sa_dist"], FINE)
        close(torch.cat([sk_tok[:, 0], ph_tok[:, 0]]), goldens["png_sa_cls"], ACT)


def test_fp16_close_to_fp32(vit_model, golden_inputs, goldens):
    """Half precision (as the official test runs) stays within the README's fp16 bounds."""
    half = copy.deepcopy(vit_model).half()
    sketch, photo = golden_inputs
    with torch.no_grad():
        sk_tok, ph_tok = half.encode(sketch.half()), half.encode(photo.half())
        close(half.relation_scores(sk_tok, ph_tok).float(), goldens["rn_score"], 1e-3)
        close(torch.cat([sk_tok[:, 0], ph_tok[:, 0]]).float(), goldens["sa_cls"], 2e-2)


def test_state_dict_matches_official_keys(vit_model):
    """Every one of the 210 official keys maps to exactly one parameter of the same shape, and back."""
    keys = json.loads((REFERENCE / "keys.json").read_text())
    ours = {k: tuple(v.shape) for k, v in vit_model.state_dict().items()}
    mapped = {official_to_sketchfind(k["name"]): tuple(k["shape"]) for k in keys}
    assert len(keys) == 210 and len(mapped) == 210
    assert mapped == ours
    assert sum(int(np.prod(s)) for s in ours.values()) == 102_180_632
    assert all(p.dtype == torch.float32 for p in vit_model.parameters())
    assert not list(vit_model.buffers())
