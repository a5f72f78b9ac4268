"""Compact on-disk codes for photo tokens and global embeddings (pure numpy, no training needed).

Tokens are the model's (T, D) encoder tokens, [Ret] first. The patch tokens are the encoder's final
LayerNorm outputs ``x = weight * x_hat + bias``; so is the [Ret] of the official ViT model, but a model
with the anchored [Ret] (``ret_source="pooled"``, e.g. the shipped ``zse-lite0``) puts a normalised PCA
projection of pooled backbone features, scaled, in that slot instead (in ``ret_tokens`` slots when it is wider
than a token): no LayerNorm output.
The codec needs no more than a per-channel affine and a per-token scale, so it serves both: every token
is stored as ``x_hat = (x - bias) / weight`` (zero mean and unit variance over channels for LayerNorm
outputs; for an anchored [Ret] just an affine image of it) quantised symmetrically with one fp16 scale
per token. The LayerNorm affine removes the per-channel offsets and gains that would otherwise waste
the code range of the patch tokens, and a per-token scale needs no calibration data, so photos added
months later quantise as well as the first batch. Channels whose LayerNorm weight is ~0 are stored as
``x = bias``: exact for LayerNorm outputs, lossy for an anchored [Ret] (the shipped weights have no
such channel). ``int6`` (the default, chosen in ``benchmarks/``) packs four values into three bytes.
Global embeddings (for clustering only) use per-vector min/max ``uint4``.

Row layout (one row per photo, ``row_bytes`` long):
  float kinds   T*D values, little-endian
  intN kinds    T fp16 scales, then T*D values packed to N bits
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

TOKEN_KINDS = ("fp32", "fp16", "int8", "int6", "int4")
DEFAULT_TOKEN_KIND = "int6"
_BITS = {"int8": 8, "int6": 6, "int4": 4}


# ----------------------------------------------------------------------------- bit packing


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """(n, m) uint8 values < 2**bits -> (n, m*bits/8) packed bytes (m*bits must be a multiple of 8)."""
    n, m = values.shape
    if bits == 8:
        return np.ascontiguousarray(values, dtype=np.uint8)
    if bits == 4:
        v = values.reshape(n, m // 2, 2)
        return (v[..., 0] | (v[..., 1] << 4)).astype(np.uint8)
    if bits == 6:  # 4 values -> 24 bits -> 3 bytes
        v = values.reshape(n, m // 4, 4).astype(np.uint32)
        word = v[..., 0] | (v[..., 1] << 6) | (v[..., 2] << 12) | (v[..., 3] << 18)
        out = np.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=-1)
        return out.astype(np.uint8).reshape(n, m * 3 // 4)
    raise ValueError(f"unsupported bit width {bits}")


def unpack_bits(packed: np.ndarray, bits: int, m: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (n, m*bits/8) bytes -> (n, m) uint8 values."""
    n = packed.shape[0]
    if bits == 8:
        return packed
    if bits == 4:
        out = np.empty((n, m // 2, 2), np.uint8)
        out[..., 0], out[..., 1] = packed & 0x0F, packed >> 4
        return out.reshape(n, m)
    if bits == 6:
        b = packed.reshape(n, m // 4, 3).astype(np.uint32)
        word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        out = np.stack([word & 63, (word >> 6) & 63, (word >> 12) & 63, word >> 18], axis=-1)
        return out.astype(np.uint8).reshape(n, m)
    raise ValueError(f"unsupported bit width {bits}")


# ----------------------------------------------------------------------------- tokens


class TokenCodec:
    """Encodes (n, T, D) float tokens to (n, row_bytes) uint8 rows and back."""

    def __init__(self, kind: str, num_tokens: int, width: int, ln_weight=None, ln_bias=None, ret_tokens: int = 1):
        if kind not in TOKEN_KINDS:
            raise ConfigError(f"unknown token storage {kind!r}; choose one of {', '.join(TOKEN_KINDS)}")
        self.kind, self.T, self.D, self.ret_tokens = kind, num_tokens, width, ret_tokens
        self.bits = _BITS.get(kind)
        group = {8: 1, 6: 4, 4: 2}.get(self.bits, 1)  # values packed together into whole bytes
        if (num_tokens * width) % group:
            raise ConfigError(f"{kind} storage needs T*D divisible by {group}, got {num_tokens}x{width}")
        weight = np.ones(width, np.float32) if ln_weight is None else np.asarray(ln_weight, np.float32)
        self.ln_bias = np.zeros(width, np.float32) if ln_bias is None else np.asarray(ln_bias, np.float32)
        # channels the LayerNorm switched off (|weight| ~ 0) carry x = bias exactly: store x_hat = 0 there
        self.ln_weight = np.where(np.abs(weight) < 1e-6, 0.0, weight).astype(np.float32)
        self._inv_weight = np.where(self.ln_weight == 0, 0.0, 1.0 / np.where(self.ln_weight == 0, 1, weight))

    @property
    def row_bytes(self) -> int:
        """Bytes stored per photo."""
        values = self.T * self.D
        if self.kind == "fp32":
            return values * 4
        if self.kind == "fp16":
            return values * 2
        return self.T * 2 + values * self.bits // 8

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """(n, T, D) float tokens -> (n, row_bytes) uint8."""
        tokens = np.asarray(tokens, np.float32)
        n = tokens.shape[0]
        if tokens.shape[1:] != (self.T, self.D):
            raise ValueError(f"tokens of shape {tokens.shape[1:]} do not fit the index ({self.T}, {self.D})")
        if self.kind in ("fp32", "fp16"):
            return tokens.astype("<f4" if self.kind == "fp32" else "<f2").view(np.uint8).reshape(n, -1)
        x_hat = (tokens - self.ln_bias) * self._inv_weight  # (n, T, D), ~unit variance per token
        qmax = 2 ** (self.bits - 1) - 1
        scale = np.abs(x_hat).max(axis=2, keepdims=True) / qmax  # (n, T, 1)
        scale = scale.astype(np.float16).astype(np.float32)  # the stored scale is the one used to quantise
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(x_hat / scale), -qmax, qmax).astype(np.int16) + (qmax + 1)  # (n, T, D) in [1, 2qmax+1]
        packed = pack_bits(q.astype(np.uint8).reshape(n, -1), self.bits)
        scales = scale.reshape(n, self.T).astype("<f2").view(np.uint8)  # (n, 2T)
        return np.concatenate([scales, packed], axis=1)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """(n, row_bytes) uint8 -> (n, T, D) float32 tokens."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        n = rows.shape[0]
        if self.kind in ("fp32", "fp16"):
            dtype = "<f4" if self.kind == "fp32" else "<f2"
            return rows.view(dtype).astype(np.float32).reshape(n, self.T, self.D)
        qmax = 2 ** (self.bits - 1) - 1
        scale = rows[:, : 2 * self.T].copy().view("<f2").astype(np.float32).reshape(n, self.T, 1)
        q = unpack_bits(rows[:, 2 * self.T :], self.bits, self.T * self.D).reshape(n, self.T, self.D)
        x_hat = (q.astype(np.float32) - (qmax + 1)) * scale
        return x_hat * self.ln_weight + self.ln_bias

    @property
    def ret_dim(self) -> int:
        """Width of the [Ret] embedding: its ``ret_tokens`` tokens end to end."""
        return self.ret_tokens * self.D

    def decode_ret(self, rows: np.ndarray) -> np.ndarray:
        """(n, row_bytes) uint8 -> (n, ret_dim) float32: the [Ret] token(s) only, end to end (no full decode
        when the bytes align)."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        n, k, D = len(rows), self.ret_tokens, self.D
        if self.kind in ("fp32", "fp16"):
            width = 4 if self.kind == "fp32" else 2
            return rows[:, : k * D * width].copy().view("<f4" if width == 4 else "<f2").astype(np.float32)
        group = {8: 1, 6: 4, 4: 2}[self.bits]
        if (k * D) % group:  # the [Ret] tokens do not end on a byte boundary
            return self.decode(rows)[:, :k].reshape(n, k * D)
        qmax = 2 ** (self.bits - 1) - 1
        scale = rows[:, : 2 * k].copy().view("<f2").astype(np.float32)[:, :, None]  # (n, k, 1)
        packed = np.ascontiguousarray(rows[:, 2 * self.T : 2 * self.T + k * D * self.bits // 8])
        q = unpack_bits(packed, self.bits, k * D).reshape(n, k, D)
        return (((q.astype(np.float32) - (qmax + 1)) * scale) * self.ln_weight + self.ln_bias).reshape(n, k * D)


# ----------------------------------------------------------------------------- global embeddings


class GlobalCodec:
    """Per-vector min/max uint4 codes for (n, G) global embeddings: G/2 + 8 bytes per photo."""

    bits = 4

    def __init__(self, dim: int):
        if dim % 2:
            raise ConfigError(f"global embeddings need an even dimension, got {dim}")
        self.G = dim

    @property
    def row_bytes(self) -> int:
        """Bytes stored per photo."""
        return 8 + self.G * self.bits // 8

    def encode(self, emb: np.ndarray) -> np.ndarray:
        """(n, G) float -> (n, row_bytes) uint8."""
        emb = np.asarray(emb, np.float32)
        lo = emb.min(axis=1, keepdims=True)
        step = (emb.max(axis=1, keepdims=True) - lo) / (2**self.bits - 1)
        step = np.where(step > 0, step, 1.0).astype(np.float32)
        q = np.clip(np.rint((emb - lo) / step), 0, 2**self.bits - 1).astype(np.uint8)
        head = np.concatenate([lo, step], axis=1).astype("<f4").view(np.uint8)  # (n, 8)
        return np.concatenate([head, pack_bits(q, self.bits)], axis=1)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """(n, row_bytes) uint8 -> (n, G) float32 (not re-normalised)."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        head = rows[:, :8].copy().view("<f4")  # (n, 2): lo, step
        q = unpack_bits(rows[:, 8:], self.bits, self.G).astype(np.float32)
        return head[:, :1] + q * head[:, 1:]
