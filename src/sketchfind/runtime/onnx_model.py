"""``OnnxModel``: the exported graphs (fp32, or int8 encoders) run by ONNX Runtime behind the ZSEModel methods search
and indexing use.

Inputs and outputs are torch tensors, as with :class:`~sketchfind.models.zse.ZSEModel`; every other
attribute (``state_dict`` for the fingerprint check, ``encoder``, ``tokens``, ...) is the PyTorch model's,
which stays loaded for those checks and for what the graphs do not cover (training, explain).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models.zse import Encodes, ZSEModel, relation_probability


def _array(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (a copy only for channels-last or non-float input)."""
    return np.ascontiguousarray(x.detach().float().numpy())


class OnnxModel(Encodes):
    """ONNX Runtime sessions for the sketch encoder, the photo encoder and the pair head of one model."""

    runtime = "onnx"

    def __init__(self, model: ZSEModel, paths: dict[str, Path], threads: int | None = None, runtime: str = "onnx"):
        self.torch_model = model
        self.runtime = runtime  # "onnx", or "onnx-int8" when the encoder graphs are the quantised ones
        self.cfg = model.cfg
        self.weights_metadata = getattr(model, "weights_metadata", {})
        # name -> something with ONNX Runtime's ``run(None, feeds) -> [outputs]``
        self.sessions = self.open_sessions(paths, threads or torch.get_num_threads())
        # pairs per head call: the PyTorch chunk size (~64 MB of activations)
        cfg = self.cfg
        self.max_pairs = max(1, (1 << 24) // (cfg.num_tokens * max(cfg.width, cfg.ca_ff)))

    @staticmethod
    def open_sessions(paths: dict[str, Path], threads: int) -> dict:
        """ONNX Runtime sessions for the graphs ``paths`` names ("sketch", "photo", "head")."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # idle threads must not spin: they would burn the CPU that torch, FAISS and the other sessions need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # incl. NCHWc conv layouts
        return {
            name: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            for name, path in paths.items()
        }

    def __getattr__(self, name: str):
        if name == "torch_model":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.torch_model, name)

    def eval(self) -> OnnxModel:
        """Inference only: already in eval mode."""
        return self

    # -- encoding ---------------------------------------------------------------------------
    def encode_with_global(self, images: torch.Tensor, modality: str = "photo") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images -> (tokens (B, T, D), global embedding (B, G)), as ZSEModel."""
        if modality not in ("sketch", "photo"):
            raise ValueError(f"unknown modality {modality!r}")
        size = self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"the exported encoders take (B, 3, {size}, {size}) images, not {tuple(images.shape)}")
        tokens, global_emb = self.sessions[modality].run(None, {"images": _array(images)})
        return torch.from_numpy(tokens), torch.from_numpy(global_emb)

    # -- pairs --------------------------------------------------------------------------------
    def pair_logits(self, sketch_tokens: np.ndarray, photo_tokens: np.ndarray) -> np.ndarray:
        """Aligned (P, T, D) float32 arrays -> (P,) relation logits (one head call)."""
        feeds = {"sketch_tokens": sketch_tokens, "photo_tokens": photo_tokens}
        return self.sessions["head"].run(None, feeds)[0]

    def relation_scores(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        max_pairs: int | None = None,
        logits: bool = False,
    ) -> torch.Tensor:
        """(S, T, D) x (P, T, D) -> (S, P) relation scores for every pair, in chunks of at most max_pairs (their
        logits with ``logits=True``; the head graph gives logits, the sigmoid is taken here in float64)."""
        sketches, photos = _array(sketch_tokens), _array(photo_tokens)
        S, P = sketches.shape[0], photos.shape[0]
        chunk = max_pairs or self.max_pairs
        out = np.empty((S, P), np.float32)
        for s in range(S):
            repeated = None  # the sketch's tokens repeated once per photo of a chunk, reused across chunks
            for p0 in range(0, P, chunk):
                ph = photos[p0 : p0 + chunk]
                if repeated is None or repeated.shape[0] != ph.shape[0]:
                    repeated = np.ascontiguousarray(np.broadcast_to(sketches[s], ph.shape))
                out[s, p0 : p0 + ph.shape[0]] = self.pair_logits(repeated, ph)
        if not logits:
            out = relation_probability(out).astype(np.float32)
        return torch.from_numpy(out)
