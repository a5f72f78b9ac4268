"""Compare sketchfind with the official ZSE-SBIR goldens (``shared/reference/zse-sbir``) for a person.

``sketchfind check-reference DIR`` writes the official-format checkpoint with the reference's own
``make_weights.py``, loads it through ``load_model`` and reports the max abs difference per golden.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SketchfindError

ACT, FINE = 1e-4, 1e-5


@dataclass
class Check:
    name: str
    max_abs_diff: float
    tolerance: float
    relative: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)


def _diff(actual, expected) -> float:
    actual = actual.detach().float().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    return float(np.max(np.abs(actual.astype(np.float64) - np.asarray(expected, dtype=np.float64))))


def _make_checkpoint(reference: Path, out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_weights", reference / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state_dict = module.make_state_dict(str(reference / "keys.json"))
    path = out / "best_checkpoint.pth"
    torch.save({"model": state_dict, "epoch": 0, "map_all": np.float64(0), "precision_100": np.float64(0)}, path)
    return path


def reference_model(reference: str | Path):
    """zse-vit-b16 with the reference's deterministic weights, loaded from a checkpoint in the official format."""
    from .models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        return load_model("zse-vit-b16", weights=_make_checkpoint(Path(reference), Path(tmp)))


def run_checks(reference: str | Path, runtime: str = "torch") -> Iterator[Check]:
    """Yields one Check per golden, computed through the public model / preprocessing / metrics API; with
    ``runtime="onnx"`` or ``"openvino"`` the encoders and relation scores run on the exported graphs (the internals
    stay torch)."""
    from .metrics import retrieval_metrics
    from .preprocess import preprocess_photo, preprocess_sketch, read_sketch_rgb, sketch_steps
    from .runtime import load_runtime
    from .train.losses import zse_losses

    reference = Path(reference)
    needed = ["keys.json", "make_weights.py", "inputs.npz", "outputs.npz", "preprocess.npz", "metrics.npz"]
    if not all((reference / n).is_file() for n in needed):
        raise SketchfindError(f"{reference} is not the zse-sbir reference folder (needs {', '.join(needed)})")
    gold = np.load(reference / "outputs.npz")
    inputs = np.load(reference / "inputs.npz")
    model = reference_model(reference)
    sketch, photo = torch.from_numpy(inputs["sketch"]), torch.from_numpy(inputs["photo"])
    net = load_runtime(model, runtime)
    with torch.no_grad():
        sk, ph = net.encode_sketch(sketch), net.encode_photo(photo)
        yield Check("sa_fea", _diff(torch.cat([sk, ph]), gold["sa_fea"]), ACT)
        yield Check("sa_cls", _diff(torch.cat([sk, ph])[:, 0], gold["sa_cls"]), ACT)
        ca_sk, ca_ph = model.cross(sk.repeat_interleave(4, dim=0), ph.repeat(4, 1, 1))
        yield Check("ca_cls", _diff(torch.cat([ca_sk, ca_ph])[:, 0], gold["ca_cls"]), ACT)
        down = model.relation.downsample(torch.cat([ca_sk, ca_ph]))
        yield Check("down_fea", _diff(down, gold["down_fea"]), ACT)
        yield Check("cos_map", _diff(model.relation.cosine_map(down[:16], down[16:]), gold["cos_map"]), FINE)
        scores = net.relation_scores(sk, ph)
        yield Check("rn_score", _diff(scores, gold["rn_score"]), FINE)
        a, b = model.retrieval_embedding(sk), model.retrieval_embedding(ph)
        sa_dist = torch.linalg.vector_norm(a[:, None] - b[None] + 1e-6, dim=-1)
        yield Check("sa_dist", _diff(sa_dist, gold["sa_dist"]), FINE)
        ret, train_scores = model(sketch, photo)
        losses = zse_losses(ret, train_scores)
        for key, gold_key in (("triplet", "train_loss_tri_x2"), ("relation", "train_loss_rn_x4")):
            rel = abs(losses[key].item() - float(gold[gold_key])) / abs(float(gold[gold_key]))
            yield Check(f"{gold_key} (relative)", rel, 1e-5, relative=True)
        labels = np.arange(4)
        for dist, key in ((-scores.numpy(), "valid_metrics_rn"), (sa_dist.numpy(), "valid_metrics_sa")):
            m = retrieval_metrics(dist, labels, labels)
            yield Check(key, _diff([m["map_all"], m["map_200"], m["p_100"], m["p_200"]], gold[key]), 1e-6)
    pre = np.load(reference / "preprocess.npz")
    cfg = model.cfg.preprocess
    for name in ("sketch_a", "sketch_b"):
        steps = sketch_steps(read_sketch_rgb(reference / f"{name}.png"), cfg)
        for step in ("cropped", "resized", "squared"):
            got, want = steps[step], pre[f"{name}_{step}"]
            diff = _diff(got.astype(np.int64), want) if got.shape == want.shape else float("inf")
            yield Check(f"{name}_{step} (uint8)", diff, 0.0)
        yield Check(name, _diff(preprocess_sketch(reference / f"{name}.png", cfg), pre[name]), 1e-6)
    for name in ("photo_a", "photo_b"):
        yield Check(name, _diff(preprocess_photo(reference / f"{name}.png", cfg), pre[name]), 1e-6)
    met = np.load(reference / "metrics.npz")
    for case in ("small", "large", "fp16"):
        m = retrieval_metrics(met[f"{case}_dist"], met[f"{case}_query_labels"], met[f"{case}_gallery_labels"])
        got = np.array([m["map_all"], m["map_200"], m["p_100"], m["p_200"]])
        yield Check(f"metrics_{case}", _diff(got, met[f"{case}_metrics"]), 1e-12)
