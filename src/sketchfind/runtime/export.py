"""Exporting a loaded ZSEModel to three ONNX graphs, cached on disk by the model's fingerprint.

Graphs (dynamic batch B / pair count P; T tokens, D width, G global dim):
  sketch.onnx  images (B, 3, S, S) -> tokens (B, T, D), global (B, G)   = encode_with_global(images, "sketch")
  photo.onnx   images (B, 3, S, S) -> tokens (B, T, D), global (B, G)   = encode_with_global(images, "photo")
  head.onnx    sketch_tokens (P, T, D), photo_tokens (P, T, D) -> logits (P,)  cross-attention + relation head
               over aligned pairs (pair p = sketch_tokens[p], photo_tokens[p])

The cache folder is ``<cache root>/onnx/<model name>-<key>/``: the key hashes the weights fingerprint, the
config hash, the torch version and :data:`EXPORT_VERSION`, so new weights or a new exporter never reuse a
stale graph. Each export is written into a temporary folder and renamed into place (atomic), with a
``manifest.json`` written last that lists the sha256 of every graph; a folder whose manifest does not
match is exported again (:func:`cached_folder`, which the int8 encoders of :mod:`.quantize` reuse).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import SketchfindError

EXPORT_VERSION = 5  # bump when the exported graphs change shape or meaning (3: [Ret] of several tokens; 4: the
# relation head reads the pair's [Ret] cosine; 5: the head graph outputs logits)
OPSET = 17
GRAPHS = ("sketch", "photo", "head")


class _Encoder(nn.Module):
    """images -> (tokens, global) for one modality."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, images: torch.Tensor):
        return self.model.encode_with_global(images, self.modality)


class _PairHead(nn.Module):
    """Aligned (P, T, D) sketch and photo tokens -> (P,) relation logits (the runtime applies the sigmoid in
    float64: a float32 sigmoid reads 1.0 above a logit of ~17, where the best matches of a lite head lie)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor:
        return self.model.pair_forward(sketch_tokens, photo_tokens, logits=True)[2]


def cache_root() -> Path:
    """``$SKETCHFIND_CACHE_DIR``, else ``$XDG_CACHE_HOME/sketchfind``, else ``~/.cache/sketchfind``."""
    if os.environ.get("SKETCHFIND_CACHE_DIR"):
        return Path(os.environ["SKETCHFIND_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sketchfind"


def fingerprint(model: nn.Module) -> str:
    """The weights fingerprint the index records."""
    from ..models import model_fingerprint

    return model_fingerprint(model)


def cache_key(model: nn.Module) -> str:
    """Hash of everything an exported graph depends on: weights, config, torch, this exporter."""
    parts = [fingerprint(model), model.cfg.hash(), torch.__version__, str(OPSET), str(EXPORT_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def export_onnx(model: nn.Module, out_dir: str | Path) -> dict[str, Path]:
    """Writes sketch.onnx, photo.onnx and head.onnx for ``model`` into ``out_dir`` -> {graph: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    images = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
    tokens = torch.zeros(2, cfg.num_tokens, cfg.width)
    specs = {
        "sketch": (_Encoder(model, "sketch"), (images,), ["images"], ["tokens", "global"]),
        "photo": (_Encoder(model, "photo"), (images,), ["images"], ["tokens", "global"]),
        "head": (_PairHead(model), (tokens, tokens.clone()), ["sketch_tokens", "photo_tokens"], ["logits"]),
    }
    was_training = model.training
    paths = {}
    try:
        for name, (wrapper, args, inputs, outputs) in specs.items():
            # the exporter restores the wrapper's own mode afterwards: a fresh wrapper is in training mode,
            # which would leave the model with dropout on
            wrapper.eval()
            paths[name] = out_dir / f"{name}.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic on fixed sizes
                torch.onnx.export(
                    wrapper,
                    args,
                    str(paths[name]),
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes={n: {0: "batch"} for n in inputs + outputs},
                    opset_version=OPSET,
                    dynamo=False,
                )
            fold_pads_into_convs(paths[name])
    finally:
        model.train(was_training)
    return paths


def fold_pads_into_convs(path: Path) -> int:
    """Rewrites ``path`` so that each zero Pad feeding only a Conv becomes that Conv's own ``pads`` -> how many.

    EfficientNet's TensorFlow "SAME" padding is asymmetric at stride 2, which PyTorch expresses as F.pad
    before the conv. Exported, that is a Pad node whose pads come out of a small constant subgraph; ONNX
    Runtime runs it as a separate copy of the activations and converts its blocked (NCHWc) conv layout to
    plain NCHW and back around it: ~38% of the photo encoder's time at batch 32. ONNX's Conv takes
    asymmetric pads, so the pair is one Conv computing the same values."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inputs = {i.name for i in graph.input}
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        """The value of ``name`` when it depends on constants only (evaluated on its own subgraph), else None."""
        if name in initializers:
            return initializers[name]
        nodes, todo, seen = [], [name], set()
        while todo:
            current = todo.pop()
            if current in seen or current == "":
                continue
            seen.add(current)
            if current in inputs:
                return None
            if current in initializers:
                continue
            node = producer[current]
            nodes.append(node)
            todo.extend(node.input)
        order = [n for n in graph.node if n in nodes]  # graph order is topological
        used = [numpy_helper.from_array(v, k) for k, v in initializers.items() if k in seen]
        sub = helper.make_graph(order, "pads", [], [helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)])
        sub.initializer.extend(used)
        return ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})[0]

    folded = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        users = consumers.get(pad.output[0], [])
        if attrs.get("mode", b"constant") not in (b"constant", "constant") or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or (len(pad.input) > 2 and pad.input[2]):
            continue  # another consumer, or an explicit pad value (zero is the default)
        pads = constant(pad.input[1])
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if pads is None or len(pads) != 8 or pads[[0, 1, 4, 5]].any() or (pads < 0).any():
            continue  # not a constant spatial-only padding of an NCHW tensor
        if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        old = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [int(old[0] + pads[2]), int(old[1] + pads[3]), int(old[2] + pads[6]), int(old[3] + pads[7])]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    if folded:
        live, todo = set(), [o.name for o in graph.output]  # drop the pads' constant subgraphs, now unused
        while todo:
            name = todo.pop()
            if name in live or name not in producer:
                continue
            live.add(name)
            todo.extend(producer[name].input)
        for node in [n for n in graph.node if not any(o in live for o in n.output)]:
            graph.node.remove(node)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return folded


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _valid(folder: Path, key: str, graphs=GRAPHS) -> bool:
    """True when ``folder`` holds a complete export for ``key`` (manifest matches every graph file)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return manifest.get("key") == key and all(
            _sha256(folder / f"{g}.onnx") == manifest["sha256"][g] for g in graphs
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def cached_export(model: nn.Module, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """The ONNX graphs of ``model`` from the cache, exported (atomically) when missing or stale."""
    key = cache_key(model)
    manifest = {
        "model": model.cfg.name,
        "config_hash": model.cfg.hash(),
        "fingerprint": fingerprint(model),
        "torch": torch.__version__,
        "opset": OPSET,
        "export_version": EXPORT_VERSION,
    }
    folder = cached_folder(
        _root(cache_dir), f"{model.cfg.name}-{key}", key, GRAPHS, lambda tmp: export_onnx(model, tmp), manifest
    )
    return {g: folder / f"{g}.onnx" for g in GRAPHS}


def _root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else cache_root() / "onnx"


def cached_folder(root: Path, name: str, key: str, graphs, build, manifest: dict) -> Path:
    """``root/name`` holding ``graphs`` for ``key``; when missing or damaged, ``build(tmp folder)`` writes them
    into a temporary folder that is renamed into place with a manifest (graph sha256s) written last."""
    final = root / name
    if _valid(final, key, graphs):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        paths = build(tmp)
        digests = {g: _sha256(paths[g]) for g in graphs}
        (tmp / "manifest.json").write_text(json.dumps({"key": key, **manifest, "sha256": digests}, indent=2))
        _replace_dir(tmp, final, key, graphs)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, SketchfindError):
            raise
        raise SketchfindError(f"exporting {manifest.get('model', name)!r} to ONNX failed: {exc}") from exc
    return final


def _replace_dir(tmp: Path, final: Path, key: str, graphs=GRAPHS) -> None:
    """Moves a finished export into place; another process may have won the race with a valid one."""
    if final.exists():
        if _valid(final, key, graphs):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        final.rename(stale)  # a damaged or partial folder: out of the way first, then delete
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # lost a race between the check and the rename
        if not _valid(final, key, graphs):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
