"""``Bf16Model``: the PyTorch model run in bfloat16 on CPUs that compute bf16 natively (AVX512-BF16 / AMX on x86,
the BF16 extension on Arm), behind the ZSEModel methods search and indexing use.

A bf16 copy of the weights runs the encoders, the cross-attention and the relation head (but its last layer,
whose fp32 output keeps scores from tying); inputs are cast to bf16 and every output comes back as float32,
so token codecs, FAISS and everything after them see what the fp32 runtimes give them. A CNN backbone and the
anchored [Ret] built on its pooled features stay fp32: in bf16 they move the ranking (zse-lite0 on unseen-25:
sketch [Ret] cosine to fp32 down to 0.956, ann top-10 overlap 0.87), while the ViT's tokens stay within ~1%.

Every other attribute (``state_dict`` for the fingerprint check, ``encoder``, ``tokens``, ...) is the fp32
model's, which stays loaded for those checks and for training and explain (the bf16 copy adds half the fp32
weights' memory).
"""

from __future__ import annotations

import copy
import platform

import torch

from ..models.zse import Encodes, ZSEModel


def native_bf16() -> bool:
    """True when this CPU computes bf16 matrix products in hardware (oneDNN bf16 kernels on bf16 instructions).

    oneDNN also reports bf16 support on plain AVX-512 x86 CPUs, where it converts to fp32 and is several times
    slower than fp32 (benchmarks/results/runtime.md), so x86 additionally needs the AVX512-BF16 instructions
    (every AMX CPU has them). PyTorch has no public query for either: both are private, so their absence reads
    as no support."""
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if not (torch.backends.mkldnn.is_available() and mkldnn_bf16 is not None and mkldnn_bf16()):
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(avx512_bf16 is not None and avx512_bf16())
    return True  # Arm: oneDNN only reports bf16 when the CPU has the BF16 extension


class Bf16Model(Encodes):
    """A ZSEModel's encoders, cross-attention and relation head in bf16, with fp32 inputs and outputs."""

    runtime = "torch-bf16"

    def __init__(self, model: ZSEModel):
        self.torch_model = model
        self.cfg = model.cfg
        self.weights_metadata = getattr(model, "weights_metadata", {})
        # a copy: the fp32 weights stay as they are (fingerprint, explain, another runtime later)
        self.half = copy.deepcopy(model).to(torch.bfloat16).eval()
        # the relation head's last layer (49 -> 1) stays fp32: bf16 scores would tie (128 values in [0.5, 1))
        self.half.relation.out.float()
        self.fp32_backbone = model.cfg.backbone != "vit"
        if self.fp32_backbone:  # shared with the fp32 model, not copied
            self.half.tokens, self.half.ret = model.tokens, model.ret

    def __getattr__(self, name: str):
        if name == "torch_model":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.torch_model, name)

    def eval(self) -> Bf16Model:
        """Inference only: already in eval mode."""
        return self

    # -- encoding ---------------------------------------------------------------------------
    def encode_with_global(self, images: torch.Tensor, modality: str = "photo") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images -> (tokens (B, T, D), global embedding (B, G)) in float32, computed in bf16."""
        if self.fp32_backbone:
            images = images.contiguous(memory_format=torch.channels_last)  # as ZSEModel.encode_with_global
            patch_tokens, pooled = self.half.tokens(images, modality)  # fp32: (B, N, D), (B, C)
            tokens, global_emb = self.half.encode_tokens(patch_tokens.to(torch.bfloat16), pooled, modality)
        else:
            tokens, global_emb = self.half.encode_with_global(images.to(torch.bfloat16), modality)
        return tokens.float(), global_emb.float()

    # -- pairs --------------------------------------------------------------------------------
    def relation_scores(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        max_pairs: int | None = None,
        logits: bool = False,
    ) -> torch.Tensor:
        """(S, T, D) x (P, T, D) -> (S, P) float32 relation scores, computed in bf16 (as ZSEModel's)."""
        return self.half.relation_scores(sketch_tokens, photo_tokens, max_pairs, logits).float()
