"""Training smoke tests on a small real subset of sketchy-mini (zse-lite0, frozen-prefix cache)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import sketchfind
from sketchfind.datasets import split_classes
from sketchfind.errors import InputError
from sketchfind.train.data import sample_quadruplets
from sketchfind.train.loop import TrainConfig, Trainer

from .conftest import SHARED, link_sketchy_subset

CLASSES = ["airplane", "apple", "bicycle", "cup", "fan", "shark"]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """6 classes x 6 sketches/photos linked from sketchy-mini; 'shark' held out."""
    root = link_sketchy_subset(tmp_path_factory.mktemp("subset"), CLASSES, 6)
    (root / "holdout.txt").write_text("shark\n")
    return root


def config(subset, out, **kw):
    base = dict(
        data=str(subset),
        holdout=str(subset / "holdout.txt"),
        out=str(out),
        epochs=2,
        steps_per_epoch=2,
        batch_size=3,
        views=2,
        val_classes=1,
        trainable_stages=1,
        seed=7,
        val_queries_per_class=2,
        edges=0.0,
    )
    return TrainConfig(**{**base, **kw})


def test_splits_never_touch_held_out_classes(subset):
    train, val, test = split_classes(subset, subset / "holdout.txt", 1, seed=7)
    assert test.classes == ["shark"]
    assert "shark" not in train.classes + val.classes
    assert len(val.classes) == 1 and not set(val.classes) & set(train.classes)
    assert len(train.classes) == 4


def test_quadruplets_follow_the_official_sampling():
    sk_lab, ph_lab = np.repeat(np.arange(5), 4), np.repeat(np.arange(5), 3)
    quad = sample_quadruplets(sk_lab, ph_lab, 200, np.random.default_rng(0))
    assert (sk_lab[quad[:, 0]] == sk_lab[quad[:, 1]]).all()  # sketch_neg is of the sketch's class
    assert (sk_lab[quad[:, 0]] == ph_lab[quad[:, 2]]).all()  # photo: same class
    assert (sk_lab[quad[:, 0]] != ph_lab[quad[:, 3]]).all()  # photo_neg: another class


def test_train_resume_and_load(subset, tmp_path):
    out = tmp_path / "run"
    history = Trainer(config(subset, out, epochs=1, val_classes=2)).fit()  # 2: pairs of both kinds to calibrate on
    assert len(history) == 1 and np.isfinite(history[0]["total"])
    assert 0 <= history[0]["val_map_ret"] <= 1
    assert {"last.pth", "best.safetensors", "train_config.json"} <= {p.name for p in out.iterdir()}
    # resume continues from epoch 1 to epoch 2 and reuses the cache
    history = Trainer(config(subset, out, epochs=2, val_classes=2)).fit(resume=True)
    assert [h["epoch"] for h in history] == [1, 2]
    model = sketchfind.load_model(weights=out / "best.safetensors")
    assert model.cfg.name == "zse-lite0"
    meta = model.weights_metadata
    assert "val_metrics" in meta and json.loads(meta["val_metrics"])
    # the photo backbone is ImageNet's, untouched; the sketch branch's trained last stage is not
    from sketchfind.models.efficientnet import load_pretrained

    ref = load_pretrained("lite0").state_dict()
    ours = model.tokens.backbone.state_dict()
    for key, value in ours.items():
        torch.testing.assert_close(value, ref[key], atol=0, rtol=0)
    assert not torch.equal(model.tokens.sketch_tail[-1].conv.weight, ref["head.conv.weight"])
    frozen_copy = model.tokens.sketch_tail[0].state_dict()  # trainable_stages=1: the first copies stay ImageNet's
    torch.testing.assert_close(frozen_copy, load_pretrained("lite0").stages[-4].state_dict())
    # export: fp16 file, half the size, the validated fusion weight and the training settings inside
    from sketchfind.rerank import RankSettings
    from sketchfind.train.export import choose_settings, export_run

    meta = export_run(out, tmp_path / "shipped.safetensors")
    shipped = sketchfind.load_model(weights=tmp_path / "shipped.safetensors")
    assert (tmp_path / "shipped.safetensors").stat().st_size < 0.55 * (out / "best.safetensors").stat().st_size
    chosen = choose_settings(json.loads(meta["val_metrics"]))
    assert RankSettings.from_metadata(shipped.weights_metadata) == chosen
    assert json.loads(shipped.weights_metadata["train_config"])["seed"] == 7
    # the shown relation score is calibrated on the validation pairs (Platt scaling), and exported with it
    from sketchfind.models.zse import score_calibration

    val = json.loads(meta["val_metrics"])
    assert score_calibration(shipped.weights_metadata) == (val["score_scale"], val["score_shift"])
    assert val["score_scale"] != 1.0 or val["score_shift"] != 0.0
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(shipped.encode(x), model.encode(x), atol=0.05, rtol=0.05)


def test_choose_fusion_and_search_settings():
    from sketchfind.rerank import RankSettings, settings_key, validation_grid
    from sketchfind.train.export import choose_fusion, choose_settings

    assert choose_fusion({"val_map_ret": 0.3, "val_map_rn": 0.2, "val_map_fused_0.75": 0.35}) == 0.75
    assert choose_fusion({"val_map_ret": 0.3, "val_map_rn": 0.4, "val_map_fused_0.25": 0.35}) == 0.0
    grid = validation_grid()
    metrics = {settings_key(s): 0.1 * i / len(grid) for i, s in enumerate(grid)} | {"val_map_ret": 0.9}
    assert choose_settings(metrics) == grid[-1]  # the best pipeline setting, not the best plain ranking
    assert choose_settings({"val_map_ret": 0.3, "val_map_fused_0.5": 0.4}) == RankSettings(fusion=0.5)
    # a tie (within 0.001) goes to the cheaper setting: no relation-network head, then fewer photos expanded
    f75, f1 = (RankSettings(fusion=f, qe_top=30, qe_weight=3.0, qe_alpha=3.0) for f in (0.75, 1.0))
    tie = {settings_key(s): 0.5 for s in grid} | {settings_key(f75): 0.5581, settings_key(f1): 0.5579}
    assert choose_settings(tie) == f1
    assert choose_settings(tie | {settings_key(f75): 0.56}) == f75


def test_same_seed_same_losses(subset, tmp_path):
    first = Trainer(config(subset, tmp_path / "a", epochs=1, cache_dir=str(tmp_path / "cache"))).fit()
    second = Trainer(config(subset, tmp_path / "b", epochs=1, cache_dir=str(tmp_path / "cache"))).fit()
    assert first[0]["total"] == pytest.approx(second[0]["total"], rel=1e-6)


def test_bad_data_folder(tmp_path):
    with pytest.raises(InputError, match="sketches/<class>"):
        Trainer(TrainConfig(data=str(tmp_path)))


def test_hed_drawings_of_train_photos_stand_in_for_sketches(subset, tmp_path):
    from PIL import Image

    from sketchfind.models.hed import load_hed
    from sketchfind.preprocess import sketch_array, to_tensor

    trainer = Trainer(config(subset, tmp_path / "run", epochs=1, edges=1.0))
    history = trainer.fit()  # every training sketch is a drawing of a photo here
    assert np.isfinite(history[0]["total"])
    edges, photos = trainer.data["train_edges"], trainer.data["train_photos"]
    assert edges.shape == photos.shape  # one drawing per training photo and view
    # the plain view of the first drawing: its photo's HED edge map through the sketch preprocessing
    first, _ = trainer.train_split.flat("photos")
    drawing = load_hed().edge_image(np.asarray(Image.open(first[0]).convert("RGB")))
    pre = trainer.model.cfg.preprocess
    x = to_tensor(sketch_array(drawing, pre), pre)[None]
    with torch.no_grad():
        for stage in trainer.model.tokens.stages("photo")[: trainer.start]:
            x = stage(x)
    torch.testing.assert_close(edges[0, 0].float(), x[0], atol=2e-2, rtol=1e-2)


QUICKDRAW = SHARED / "data" / "quickdraw-mini" / "train"


def test_stroke_augmentation_keeps_a_drawing():
    from sketchfind.protocols import load_doodles, render_doodle
    from sketchfind.train.data import augment_strokes

    drawings, _ = load_doodles(QUICKDRAW, ["apple", "bicycle"])
    rng = np.random.default_rng(0)
    counts = []
    for strokes in drawings[:20]:
        for _ in range(5):
            out = augment_strokes(strokes, rng)
            assert 1 <= len(out) <= len(strokes)  # strokes dropped or cut to a prefix, never all
            counts.append(len(out) < len(strokes))
            image = render_doodle(out)
            ink = (image < 128).mean()
            assert 0.002 < ink < 0.5  # still a drawing, fitted to the canvas
    assert 0.2 < np.mean(counts) < 0.8  # some augmented doodles lose strokes, most keep enough


def test_doodles_join_training_and_validation(subset, tmp_path):
    trainer = Trainer(config(subset, tmp_path / "run", epochs=1, doodles=str(QUICKDRAW), doodle_share=1.0))
    history = trainer.fit()
    row = history[0]
    assert np.isfinite(row["total"]) and np.isfinite(row["rn_rank"])
    # doodles of the training classes of the subset that QuickDraw has (apple, bicycle, cup, fan, airplane)
    labels = trainer.data["train_doodles_labels"].numpy()
    names = {trainer.train_split.classes[i] for i in labels}
    assert names and names <= set(trainer.train_split.classes)
    assert trainer.data["train_doodles"].shape[:2] == (len(labels), 2)  # plain + one augmented view each
    # validation ranks the mixed gallery and selects on the mean of the query sets
    assert 0 <= row["val_mixed_map_ret"] <= 1
    assert row["val_score"] == max(v for k, v in row.items() if k.startswith("val_map_ann_"))


def test_doodle_folder_without_training_classes(subset, tmp_path):
    empty = tmp_path / "doodles"
    empty.mkdir()
    (empty / "zebra.ndjson").write_text("")
    with pytest.raises(Exception, match="no <class>.ndjson"):
        Trainer(config(subset, tmp_path / "run", epochs=1, doodles=str(empty))).fit()


def test_train_only_relation_keeps_the_encoder(subset, tmp_path):
    from sketchfind.errors import ConfigError
    from sketchfind.models.factory import save_weights
    from sketchfind.train.loop import build_model

    init = tmp_path / "init.safetensors"
    save_weights(build_model(config(subset, tmp_path / "unused")), init)
    with pytest.raises(ConfigError, match="--init"):
        Trainer(config(subset, tmp_path / "run", train_only="relation"))
    trainer = Trainer(
        config(subset, tmp_path / "run", epochs=1, steps_per_epoch=3, init=str(init), train_only="relation")
    )
    head = ("cross.", "relation.")
    assert all(p.requires_grad == n.startswith(head) for n, p in trainer.model.named_parameters())
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        tokens_before = [trainer.model.eval().encode(x, m) for m in ("sketch", "photo")]
    row = trainer.fit()[0]
    assert np.isfinite(row["rn_rank"]) and "ret" not in row  # the [Ret] loss has nothing to train
    after = trainer.model.state_dict()
    for key, value in before.items():  # encoder, [Ret] and BatchNorm statistics bitwise as loaded
        if not key.startswith(head):
            assert torch.equal(after[key], value), key
    for key in ("cross.sketch_layer.q.weight", "cross.photo_layer.fc1.weight", "relation.out.weight"):
        assert not torch.equal(after[key], before[key]), key
    with torch.no_grad():
        for tokens, m in zip(tokens_before, ("sketch", "photo"), strict=True):
            assert torch.equal(trainer.model.eval().encode(x, m), tokens)
    assert (tmp_path / "run" / "best.safetensors").is_file()  # selected by the relation network's mAP
    # another relation head starts its MLP fresh on the same encoder
    sorted_head = Trainer(config(subset, tmp_path / "s", init=str(init), train_only="relation", relation_head="sorted"))
    assert torch.equal(sorted_head.model.encoder.norm.weight, before["encoder.norm.weight"])


def test_distillation_pulls_the_relation_ranking_towards_the_ret_ranking():
    from sketchfind.train.loop import distillation_loss

    torch.manual_seed(0)
    sketch_ret = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    photo_ret = torch.nn.functional.normalize(torch.randn(9, 16), dim=-1)
    teacher_logits = sketch_ret @ photo_ret.T / 0.07
    same = distillation_loss(teacher_logits.log_softmax(1), sketch_ret, photo_ret, 0.07)
    assert abs(float(same)) < 1e-5  # a student that ranks as [Ret] does pays nothing
    logits = torch.zeros(4, 9, requires_grad=True)  # a student with no opinion
    opt = torch.optim.SGD([logits], lr=5.0)
    with torch.no_grad():
        start = float(distillation_loss(logits.log_softmax(1), sketch_ret, photo_ret, 0.07))
    for _ in range(200):
        opt.zero_grad()
        distillation_loss(logits.log_softmax(1), sketch_ret, photo_ret, 0.07).backward()
        opt.step()
    with torch.no_grad():
        end = float(distillation_loss(logits.log_softmax(1), sketch_ret, photo_ret, 0.07))
    assert start > 0.5 and end < 0.05 * start
    assert torch.equal(logits.argsort(1, descending=True)[:, :3], teacher_logits.argsort(1, descending=True)[:, :3])


def test_train_only_relation_with_distillation(subset, tmp_path):
    from sketchfind.models.factory import save_weights
    from sketchfind.train.loop import build_model

    init = tmp_path / "init.safetensors"
    save_weights(build_model(config(subset, tmp_path / "unused")), init)
    run = config(subset, tmp_path / "run", epochs=1, init=str(init), train_only="relation")
    trainer = Trainer(dataclasses.replace(run, rn_rank_weight=0.0, rn_distill_weight=2.0))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    row = trainer.fit()[0]
    assert np.isfinite(row["rn_distill"]) and row["rn_distill"] > 0 and "rn_rank" not in row
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith(("cross.", "relation.")))
    assert not torch.equal(after["relation.out.weight"], before["relation.out.weight"])


def test_init_from_another_ret_space_fits_the_basis_on_the_training_photos(subset, tmp_path):
    """Weights with a one-token, unwhitened [Ret] start a run of zse-lite0 (three tokens, whitened): everything
    loads except the [Ret] basis, which the run fits again on its training photos."""
    from sketchfind.config import get_model_config
    from sketchfind.models.efficientnet import load_pretrained
    from sketchfind.models.factory import save_weights
    from sketchfind.models.zse import ZSEModel

    old = ZSEModel(
        dataclasses.replace(get_model_config("zse-lite0"), ret_tokens=1, ret_whiten=0.0), load_pretrained("lite0")
    )
    torch.manual_seed(0)
    old.ret.fit(torch.rand(300, 1280))
    with torch.no_grad():
        old.ret.sketch_head[2].bias.fill_(0.1)
    init = tmp_path / "old.safetensors"
    save_weights(old, init)
    run = config(subset, tmp_path / "run", epochs=1, steps_per_epoch=1, init=str(init), train_only="relation")
    trainer = Trainer(run)
    assert not trainer.init_ret_space
    model = trainer.model
    assert torch.equal(model.ret.sketch_head[2].bias, old.ret.sketch_head[2].bias)
    assert torch.equal(model.encoder.pos_embed, old.encoder.pos_embed)  # the encoder's 1 + 49 positions
    assert model.ret.basis.shape == (1280, 384)
    trainer.fit()
    photos = trainer.data["train_photos"][:, 0]
    with torch.no_grad():
        feats = model.tokens.features(photos.float(), "photo", start=trainer.start).mean((2, 3))
    x = torch.nn.functional.normalize(feats, dim=-1)
    torch.testing.assert_close(model.ret.mean, x.mean(0))  # fitted on this run's training photos
    # weights of the same [Ret] space keep their basis; --epochs 0 takes no step, validates and saves them
    save_weights(model, tmp_path / "new.safetensors")
    again = Trainer(
        dataclasses.replace(run, init=str(tmp_path / "new.safetensors"), out=str(tmp_path / "again"), epochs=0)
    )
    assert again.init_ret_space and torch.equal(again.model.ret.basis, model.ret.basis)
    history = again.fit()
    assert [row["epoch"] for row in history] == [0] and "val_rn_score" in history[0]
    saved = sketchfind.load_model(weights=tmp_path / "again" / "best.safetensors")
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], msg=key)


def test_init_from_a_head_that_does_not_read_the_ret_cosine(subset, tmp_path):
    """Weights whose relation head does not read the [Ret] cosine (zse-lite0 up to stage 5) load into the
    current head: every weight as stored, the last layer's [Ret]-cosine input at its starting weight; and back."""
    from sketchfind.models.factory import read_checkpoint, save_weights
    from sketchfind.models.zse import RET_SKIP_INIT, ZSEModel
    from sketchfind.train.loop import build_model, load_init

    current = build_model(config(subset, tmp_path / "unused"))
    assert current.cfg.relation_ret and current.relation.out.weight.shape == (1, 33)
    older = ZSEModel(dataclasses.replace(current.cfg, relation_ret=False))
    state = current.state_dict()
    state["relation.out.weight"] = torch.randn(1, 32)
    older.load_state_dict(state)
    path = tmp_path / "stage5.safetensors"
    save_weights(older, path)
    assert not read_checkpoint(path)[1].relation_ret
    # such a file (an earlier release) also loads by name: with its own head
    assert not sketchfind.load_model("zse-lite0", weights=path).relation.reads_ret
    trainer = Trainer(config(subset, tmp_path / "run", init=str(path), train_only="relation", epochs=0))
    loaded = trainer.model.state_dict()
    for key, value in older.state_dict().items():
        if key != "relation.out.weight":
            assert torch.equal(loaded[key], value), key
    out = loaded["relation.out.weight"]
    assert torch.equal(out[:, :32], state["relation.out.weight"]) and float(out[0, 32]) == RET_SKIP_INIT
    # and back: a head that does not read it drops that input
    back = ZSEModel(older.cfg)
    save_weights(trainer.model, tmp_path / "stage6.safetensors")
    load_init(back, str(tmp_path / "stage6.safetensors"))
    assert torch.equal(back.relation.out.weight, state["relation.out.weight"])
