"""load_model: official checkpoints load strictly; every broken file gives a clear CheckpointError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sketchfind
from sketchfind.errors import CheckpointError, ConfigError
from sketchfind.models import save_weights
from sketchfind.models.convert import official_to_sketchfind


def save(path, obj):
    torch.save(obj, path)
    return path


@pytest.fixture()
def tiny_ckpt(tmp_path, tiny_model):
    return save(tmp_path / "tiny.pth", {"model": tiny_model.state_dict(), "config": tiny_model.cfg.to_dict()})


def test_official_checkpoint_loads_all_210(vit_model, official_checkpoint):
    from .conftest import REFERENCE, load_make_weights

    expected = load_make_weights().make_state_dict(str(REFERENCE / "keys.json"))
    ours = vit_model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(ours[official_to_sketchfind(name)], tensor, rtol=0, atol=0)
    assert not vit_model.training


def test_module_prefix_is_stripped(tmp_path, tiny_model):
    sd = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    path = save(tmp_path / "dp.pth", {"model": sd, "epoch": 3, "map_all": np.float64(0.5)})
    loaded = sketchfind.load_model("zse-tiny", weights=path)
    for k, v in tiny_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_config_travels_with_the_checkpoint(tmp_path, tiny_model, tiny_ckpt):
    loaded = sketchfind.load_model(weights=tiny_ckpt)  # no name: the file says which model it is
    assert loaded.cfg == tiny_model.cfg
    st = tmp_path / "tiny.safetensors"
    save_weights(tiny_model, st)
    again = sketchfind.load_model(weights=st)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x), tiny_model.eval().encode(x))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.pop("relation.out.bias"), "missing keys"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected keys"),
        (lambda sd: sd.__setitem__("relation.out.bias", torch.zeros(2)), "shape mismatch"),
    ],
)
def test_key_problems_are_named(tmp_path, tiny_model, mutate, message):
    sd = dict(tiny_model.state_dict())
    mutate(sd)
    path = save(tmp_path / "bad.pth", {"model": sd})
    with pytest.raises(CheckpointError, match=message):
        sketchfind.load_model("zse-tiny", weights=path)


def test_official_checkpoint_missing_a_key(tmp_path, official_checkpoint):
    ckpt = torch.load(official_checkpoint, weights_only=False)
    del ckpt["model"]["rn.rn.6.bias"]
    path = save(tmp_path / "missing.pth", ckpt)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e\.g\. relation\.out\.bias\)"):
        sketchfind.load_model("zse-vit-b16", weights=path)


def test_wrong_model_for_the_weights(official_checkpoint):
    with pytest.raises(CheckpointError, match="does not fit model 'zse-tiny'"):
        sketchfind.load_model("zse-tiny", weights=official_checkpoint)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        sketchfind.load_model("zse-tiny", weights=tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|corrupt|unreadable"):
        sketchfind.load_model("zse-tiny", weights=path)


def test_truncated_file(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        sketchfind.load_model("zse-tiny", weights=path)


def test_container_without_tensors(tmp_path):
    path = save(tmp_path / "odd.pth", {"epoch": 1, "notes": "hello"})
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        sketchfind.load_model("zse-tiny", weights=path)


def test_truncated_safetensors(tmp_path, tiny_model):
    path = tmp_path / "w.safetensors"
    save_weights(tiny_model, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        sketchfind.load_model(weights=path)


def test_no_silent_random_weights():
    with pytest.raises(CheckpointError, match="ships no weights"):
        sketchfind.load_model("zse-vit-b16")
    with pytest.raises(ConfigError, match="unknown model"):
        sketchfind.load_model("zse-nonexistent", random_init=True)


def test_vit_backbone_file(tmp_path, official_checkpoint):
    """The sam_ViT-B_16.pth format: ViT keys relative to the ViT module, plus an mlp_head that is ignored."""
    ckpt = torch.load(official_checkpoint, weights_only=False)["model"]
    vit = {k.removeprefix("sa.model."): v for k, v in ckpt.items() if k.startswith("sa.model.") and ".scale." not in k}
    vit["mlp_head.weight"] = torch.zeros(1000, 768)
    path = save(tmp_path / "sam_ViT-B_16.pth", vit)
    model = sketchfind.load_model("zse-vit-b16", backbone_weights=path)
    torch.testing.assert_close(model.encoder.pos_embed, ckpt["sa.model.pos_embedding"], rtol=0, atol=0)
    torch.testing.assert_close(
        model.encoder.blocks[11].attn.qkv.weight, ckpt["sa.model.transformer.layers.11.0.attention.to_qkv.weight"]
    )
    del vit["transformer.encoder_norm.weight"]
    save(path, vit)
    with pytest.raises(CheckpointError, match="lacks ViT keys"):
        sketchfind.load_model("zse-vit-b16", backbone_weights=path)


def test_list_models():
    assert {"zse-vit-b16", "zse-tiny"} <= set(sketchfind.list_models())
