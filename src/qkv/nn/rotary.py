"""Rotary position embeddings (Su et al., 2021) and the frequency scalings real configs name.

A query or key vector is split into two halves (x1, x2) and each pair (x1[i], x2[i]) is
rotated by the angle ``position * inv_freq[i]``, as GPT-NeoX and Llama do. Two rotated
vectors then score by their *relative* position: ``q_m · k_n`` depends on m - n only.

Context-extension methods change ``inv_freq`` (and for YaRN also scale cos and sin):

- ``default``: ``inv_freq[i] = theta^(-2i/D)``.
- ``linear``: positions divided by ``factor`` (position interpolation).
- ``dynamic``: NTK-aware: theta grows once the sequence passes ``max_position_embeddings``.
- ``llama3``: low frequencies divided by ``factor``, high ones kept, a smooth ramp between.
- ``yarn``: per-frequency blend of interpolation and extrapolation, cos/sin scaled by
  ``0.1 ln(factor) + 1`` (or the given ``attention_factor``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["RotaryEmbedding", "rope_frequencies", "rotate", "ROPE_TYPES"]

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def _base_inv_freq(dim: int, theta: float) -> Tensor:
    """theta^(-2i/D) for i < D/2, in float32 as the reference implementations compute it."""
    # on the CPU even inside a `with torch.device("meta")` block: a model built there keeps real frequencies
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / dim))


def _param(params: Mapping[str, object], name: str, rope_type: str) -> float:
    if params.get(name) is None:
        raise ValueError(f"rope_scaling of type {rope_type!r} needs {name!r}; got {dict(params)}")
    return float(params[name])


def rope_frequencies(
    head_dim: int,
    theta: float = 10000.0,
    scaling: Mapping[str, object] | None = None,
    max_positions: int | None = None,
    seq_len: int | None = None,
) -> tuple[Tensor, float]:
    """Inverse frequencies (D/2,) float32 and the factor cos/sin are multiplied by.

    Args:
        head_dim: D, the rotated width (even).
        theta: ``rope_theta``, the base wavelength.
        scaling: a config's ``rope_scaling`` / ``rope_parameters``: ``rope_type`` (or
            ``type``) in :data:`ROPE_TYPES` and that type's fields (``factor``,
            ``original_max_position_embeddings``, ``low_freq_factor``, ``high_freq_factor``,
            ``beta_fast``, ``beta_slow``, ``attention_factor``, ``mscale``, ``mscale_all_dim``,
            ``truncate``). None: default.
        max_positions: the config's ``max_position_embeddings`` (dynamic and the
            defaults of llama3/yarn need it).
        seq_len: the current sequence length (dynamic only; None: ``max_positions``).
    """
    scaling = dict(scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported; supported: {list(ROPE_TYPES)}")
    dim = head_dim
    if rope_type == "default":
        return _base_inv_freq(dim, theta), 1.0
    factor = scaling.get("factor")
    if rope_type == "linear":
        return _base_inv_freq(dim, theta) / _param(scaling, "factor", rope_type), 1.0
    if rope_type == "dynamic":
        factor = _param(scaling, "factor", rope_type)
        if max_positions is None:
            raise ValueError("rope type 'dynamic' needs max_positions (the config's max_position_embeddings)")
        length = max(seq_len or max_positions, max_positions)
        theta = theta * ((factor * length / max_positions) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(dim, theta), 1.0
    original = scaling.get("original_max_position_embeddings") or max_positions
    if original is None:
        raise ValueError(f"rope type {rope_type!r} needs original_max_position_embeddings")
    if rope_type == "llama3":
        inv_freq = _base_inv_freq(dim, theta)
        factor = _param(scaling, "factor", rope_type)
        low, high = _param(scaling, "low_freq_factor", rope_type), _param(scaling, "high_freq_factor", rope_type)
        low_wavelen, high_wavelen = original / low, original / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)  # long waves: interpolate
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    # yarn
    factor = float(factor) if factor is not None else (max_positions or original) / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all:
            attention_factor = _yarn_mscale(factor, float(mscale)) / _yarn_mscale(factor, float(mscale_all))
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times in `original`
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp  # 1: keep the frequency (fast dims), 0: interpolate (slow dims)
    position_freqs = theta ** (torch.arange(0, dim, 2, device="cpu").to(torch.float32) / dim)
    inv_freq = (1.0 / (factor * position_freqs)) * (1 - extrapolate) + (1.0 / position_freqs) * extrapolate
    return inv_freq, float(attention_factor)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, H, N, Dh) by angles given as ``cos`` and ``sin`` (N, Dh) or (B, 1, N, Dh)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x * cos) + (rotated * sin)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, rotating halves as GPT-NeoX and Llama do.

    One instance may serve every layer of a model: it keeps the cos/sin of the last
    ``positions`` tensor it saw, so a forward pass computes them once.

    Args:
        head_dim: width of a head (even).
        base: ``rope_theta``.
        scaling: the config's rope scaling (see :func:`rope_frequencies`); None: default.
        max_positions: the config's ``max_position_embeddings``.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        *,
        scaling: Mapping[str, object] | None = None,
        max_positions: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim; got {head_dim}")
        self.head_dim, self.base, self.max_positions = head_dim, float(base), max_positions
        self.scaling = dict(scaling or {})
        self.rope_type = self.scaling.get("rope_type", self.scaling.get("type", "default"))
        inv_freq, self.attention_scaling = rope_frequencies(head_dim, base, self.scaling, max_positions)
        # float32 kept outside the buffers: model.to(bfloat16) must not round the frequencies
        self.inv_freq = inv_freq
        self.original_inv_freq = inv_freq
        self.longest_seen = max_positions or 0  # dynamic scaling: the longest sequence so far
        self._cached: tuple | None = None

    def update_dynamic(self, positions: Tensor) -> None:
        """Dynamic NTK: grow theta when a longer sequence arrives; return to the original
        frequencies for a sequence within ``max_positions`` after a longer one."""
        seq_len = int(positions.max()) + 1
        if seq_len > self.longest_seen:
            self.inv_freq, _ = rope_frequencies(self.head_dim, self.base, self.scaling, self.max_positions, seq_len)
            self.longest_seen, self._cached = seq_len, None
        if seq_len < self.max_positions and self.longest_seen > self.max_positions:
            self.inv_freq, self.longest_seen, self._cached = self.original_inv_freq, self.max_positions, None

    def cos_sin(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (N, Dh) or (B, 1, N, Dh) for ``positions`` (N,) or (B, N), in ``dtype``."""
        if self.rope_type == "dynamic":
            self.update_dynamic(positions)
        cached = self._cached
        version = None if positions.is_inference() else positions._version  # inference tensors have none
        if cached is not None and cached[0] is positions and cached[1] == (version, dtype):
            return cached[2], cached[3]
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        inv_freq = self.inv_freq.to(positions.device, compute)
        angles = positions.to(compute)[..., None] * inv_freq  # (B|., N, Dh/2)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, N, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)
        cos = (angles.cos() * self.attention_scaling).to(dtype)
        sin = (angles.sin() * self.attention_scaling).to(dtype)
        self._cached = (positions, (version, dtype), cos, sin)
        return cos, sin

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` (B, H, N, Dh) by its ``positions`` (B, N) or (N,)."""
        return rotate(x, *self.cos_sin(positions, x.dtype))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, rope_type={self.rope_type!r}"
