"""The Video-3D LLM 3D position encoding, added to the visual embeddings before the LLM (METHOD.md).

Each visual token's world point (mean of the valid depth pixels it covers, aligned frame, metres) is clamped to
x, y in [-15, 15] m and z in [-5, 5] m, shifted to the range minimum and quantised to 0.1 m voxels (rounded), then
encoded with a fixed sinusoidal encoding per axis: for D channels, each axis gets F = D // 3 channels, channel i
has the frequency 1 / 10000^(2 floor(i/2) / F), even channels take the sine and odd ones the cosine; the three
axes are concatenated and zero-padded to D. There are no parameters: the encoding is a fixed function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PositionEncodingRange:
    """Clamp range (metres) and voxel size of the 3D position encoding (Video-3D LLM's values by default)."""

    low: tuple[float, float, float] = (-15.0, -15.0, -5.0)
    high: tuple[float, float, float] = (15.0, 15.0, 5.0)
    voxel: float = 0.1
    temperature: float = 10000.0


def discretise(points: Tensor, spec: PositionEncodingRange = PositionEncodingRange()) -> Tensor:
    """World points [..., 3] metres -> voxel coordinates [..., 3] (float, integral values) from the range minimum."""
    low = points.new_tensor(spec.low)
    high = points.new_tensor(spec.high)
    return ((points.clamp(low, high) - low) / spec.voxel).round()


def sinusoidal_3d(coords: Tensor, channels: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal encoding of 3D coordinates [..., 3] into [..., channels] (F = channels // 3 per axis, zero pad)."""
    if coords.shape[-1] != 3:
        raise ValueError(f"coords: expected [..., 3], got {tuple(coords.shape)}")
    per_axis = channels // 3
    if per_axis < 1:
        raise ValueError(f"channels: need at least 3 channels for a 3D encoding, got {channels}")
    i = torch.arange(per_axis, device=coords.device, dtype=torch.float64)
    inv_freq = temperature ** (-2.0 * torch.div(i, 2, rounding_mode="floor") / per_axis)  # [F]
    angles = coords.double()[..., None] * inv_freq  # [..., 3, F]
    even = (torch.arange(per_axis, device=coords.device) % 2) == 0
    enc = torch.where(even, angles.sin(), angles.cos()).flatten(-2)  # [..., 3F]: x block, y block, z block
    pad = channels - enc.shape[-1]
    if pad:
        enc = torch.nn.functional.pad(enc, (0, pad))
    return enc


def position_encoding(points: Tensor, valid: Tensor, channels: int,
                      spec: PositionEncodingRange = PositionEncodingRange(), dtype: torch.dtype = torch.float32) -> Tensor:
    """The 3D position encoding of visual tokens.

    points: [..., 3] token world points (metres, aligned frame); valid: [...] bool (tokens without valid depth get
    a zero encoding, i.e. nothing is added). Returns [..., channels] in `dtype`.
    """
    if points.shape[:-1] != valid.shape:
        raise ValueError(f"valid: shape {tuple(valid.shape)} does not match points {tuple(points.shape[:-1])}")
    safe = torch.where(valid[..., None], points, torch.zeros_like(points))
    enc = sinusoidal_3d(discretise(safe, spec), channels, spec.temperature)
    return (enc * valid[..., None]).to(dtype)
