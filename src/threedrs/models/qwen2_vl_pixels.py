"""Pixels of the Qwen2-VL / Qwen2.5-VL adapter: frame size, resize, patchify, footprints.

Every frame of a sample is one IMAGE (never a video: Qwen's video path merges pairs of frames temporally, which
would break per-frame tokens); its MERGED token grid (h, w) is its resized size / (patch_size * merge_size).

Frame size (`PixelSpec.size_for`): a fixed (height, width), multiples of patch_size * merge_size, or "native": the
size the checkpoint's own image processor gives the frame (transformers' `smart_resize`: each side rounded to a
multiple of 28, the area kept within the processor's min_pixels / max_pixels; 224 x 224 -> 224 x 224, 8 x 8 tokens;
ScanNet's 1296 x 968 -> 1288 x 980, 46 x 35 tokens).

Pixels: frames are resized here (torch bicubic with anti-aliasing on the float frame, clamped to [0, 1]), then
normalised and patchified exactly like transformers' `Qwen2VLImageProcessorPil` with `do_resize=False,
do_rescale=False` (tests check equality on one image). Doing it in torch keeps the frames on their device and
avoids a CPU/PIL round trip per frame; the resize itself differs from the processor's PIL bicubic on uint8 by
interpolation rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize


@dataclass(frozen=True)
class PixelSpec:
    """How frames become Qwen2-VL pixel patches.

    image_size: (height, width) in pixels every frame is resized to, multiples of patch_size * merge_size; None =
        native: each frame's own size through the processor's `smart_resize` (min_pixels..max_pixels).
    patch_size: ViT patch side in pixels; merge_size: spatial merge factor (2x2 patches -> one LLM token);
    temporal_patch_size: frames per temporal patch (an image is repeated to fill it).
    mean, std: per-channel normalisation of [0, 1] RGB values.
    min_pixels, max_pixels: the checkpoint processor's bounds on the resized area (native only).
    """

    image_size: tuple[int, int] | None
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_pixels: int
    max_pixels: int

    @property
    def token_pixels(self) -> int:
        """Side in resized pixels of one merged token (patch_size * merge_size)."""
        return self.patch_size * self.merge_size

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) in pixels a `height` x `width` frame is resized to."""
        if height <= 0 or width <= 0:
            raise ValueError(f"frame size: expected positive height and width, got {height}x{width}")
        if self.image_size is not None:
            return self.image_size
        return smart_resize(height, width, factor=self.token_pixels, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Merged token grid (h, w) of a `height` x `width` frame."""
        size = self.size_for(height, width)
        return size[0] // self.token_pixels, size[1] // self.token_pixels


def check_image_size(image_size: Sequence[int], token_pixels: int) -> tuple[int, int]:
    """Validate a (height, width) model input size: two positive multiples of `token_pixels`."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0 or any(v % token_pixels for v in size):
        raise ValueError(f"image_size: expected (height, width), positive multiples of patch_size*merge_size="
                         f"{token_pixels}, got {tuple(image_size)}")
    return size[0], size[1]


def resize_frames(frames: Tensor, spec: PixelSpec) -> Tensor:
    """Resize frames [N, 3, H, W] float in [0, 1] to [N, 3, *spec.size_for(H, W)] float32 in [0, 1]."""
    frames = frames.float()
    size = spec.size_for(*frames.shape[-2:])
    if tuple(frames.shape[-2:]) == size:
        return frames
    out = F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def patchify(images: Tensor, spec: PixelSpec) -> tuple[Tensor, Tensor]:
    """Normalise and patchify resized images like `Qwen2VLImageProcessorPil`.

    images: [N, 3, Hr, Wr] float in [0, 1], already resized (`resize_frames`).
    Returns pixel_values [N * gh * gw, 3 * T * p * p] float32 (gh, gw = patch grid; patches ordered per image by
    merged-token row, merged-token col, then the merge_size x merge_size patches inside it, so that consecutive
    merge_size**2 rows form one LLM token in row-major order) and image_grid_thw [N, 3] int64 = (1, gh, gw).
    """
    n, c, height, width = images.shape
    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    x = (images - mean) / std
    gh, gw = height // p, width // p
    x = x.reshape(n, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, gh/m, gw/m, mh, mw, c, ph, pw
    x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)  # repeat the image over the temporal patch
    pixel_values = x.reshape(n * gh * gw, c * t * p * p)
    grid = torch.tensor([1, gh, gw], dtype=torch.long, device=images.device).expand(n, 3).contiguous()
    return pixel_values, grid


def footprint_boxes(height: int, width: int, grid: tuple[int, int]) -> Tensor:
    """Pixel box of each merged token in an original frame of `height` x `width` pixels.

    The token (r, c) covers rows [r, r+1) * Hr/h of the resized frame, i.e. [r, r+1) * height/h of the original;
    box edges are those fractions rounded to the nearest pixel, so the half-open boxes tile the frame exactly.
    Returns [h, w, 4] int64 (x0, y0, x1, y1).
    """
    gh, gw = grid
    if height < gh or width < gw:
        raise ValueError(f"frame size: {height}x{width} pixels is smaller than the {gh}x{gw} token grid")
    ys = (2 * torch.arange(gh + 1) * height + gh) // (2 * gh)
    xs = (2 * torch.arange(gw + 1) * width + gw) // (2 * gw)
    y0, x0 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y1, x1 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x0, y0, x1, y1], dim=-1).long()
