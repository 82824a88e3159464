"""The geometry teacher: an UPPER-BOUND ORACLE computed from ground-truth depth and poses, not a learned model.

Each token's target is a fixed function of where its pixels are in the world:
1. the token's world point = mean of the valid depth pixels of its patch, unprojected with the frame's
   intrinsics and aligned camera-to-world pose (`threedrs.geometry.token_world_points`);
2. random Fourier features of that point: ``[cos(w . p), sin(w . p)] / sqrt(F)`` for F fixed frequency vectors
   ``w ~ N(0, I / l^2)`` drawn for several length scales l (default 0.25, 0.5, 1 and 2 m). The cosine similarity
   of two tokens' encodings approximates the mean over scales of the Gaussian kernel exp(-|p - q|^2 / (2 l^2)):
   about 1 for tokens a few centimetres apart, about 0 for tokens metres apart;
3. optionally (``normals=True``) the same encoding of the token's mean surface normal (oriented towards the
   camera), weighted by ``normal_weight``;
4. a fixed seeded projection with orthonormal rows (exact inner products when ``channels`` >= the encoding
   size, a random subspace otherwise) maps the encoding to ``channels`` features.

Because it only depends on the world point, the same place seen from different views gets (nearly) the same
features: view-invariant by construction, so its multi-view correspondence score is close to 1. It is the
ceiling a learned 3D teacher such as VGGT approaches, and a weight-free teacher for the demo and CPU users.
Tokens whose patch holds no valid depth have no target: their features are zeros and ``encode_with_validity``
marks them invalid (the cache stores the mask; the alignment loss skips them).

The native grid is ``(H // patch_size, W // patch_size)`` tokens; token boxes partition the frame exactly
(`threedrs.geometry.grid_footprints`), so each covers about ``patch_size`` pixels on a side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from threedrs.data.scene import FrameBatch
from threedrs.geometry import depth_to_world, grid_footprints, token_world_points
from threedrs.teachers.base import PatchTeacher, check_images, register_teacher

__all__ = ["GeometryTeacher", "fourier_encoding", "pixel_normals"]


def fourier_encoding(points: Tensor, frequencies: Tensor) -> Tensor:
    """Random Fourier features of 3-vectors: [..., 3] and frequencies [F, 3] -> [..., 2F], unit norm."""
    phase = points @ frequencies.T
    return torch.cat([phase.cos(), phase.sin()], dim=-1) / math.sqrt(frequencies.shape[0])


def pixel_normals(world: Tensor, valid: Tensor, camera_centres: Tensor) -> tuple[Tensor, Tensor]:
    """Unit surface normal of every depth pixel from its right and lower neighbours' world points.

    Args:
        world: [S, Hd, Wd, 3] world points (metres). valid: [S, Hd, Wd] bool.
        camera_centres: [S, 3] camera positions in the world (metres); normals are flipped to face them.
    Returns:
        normals: [S, Hd, Wd, 3] unit normals (zeros where undefined). valid: [S, Hd, Wd] bool, False on the
        last row and column and wherever a neighbour is invalid or the three points are collinear.
    """
    right = world[:, :-1, 1:] - world[:, :-1, :-1]
    down = world[:, 1:, :-1] - world[:, :-1, :-1]
    normal = torch.cross(right, down, dim=-1)
    length = normal.norm(dim=-1)
    ok = valid[:, :-1, :-1] & valid[:, :-1, 1:] & valid[:, 1:, :-1] & (length > 0)
    view = world[:, :-1, :-1] - camera_centres[:, None, None]
    facing = torch.where(((normal * view).sum(-1) > 0)[..., None], -normal, normal)
    unit = torch.where(ok[..., None], facing / length.clamp(min=1e-12)[..., None], 0.0)
    normals = torch.zeros_like(world)
    normals[:, :-1, :-1] = unit
    out_valid = torch.zeros_like(valid)
    out_valid[:, :-1, :-1] = ok
    return normals, out_valid


def _orthonormal_projection(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """[rows, cols] float64 with orthonormal rows (rows <= cols) or orthonormal columns scaled by sqrt(rows/cols)."""
    big, small = max(rows, cols), min(rows, cols)
    q, r = torch.linalg.qr(torch.randn(big, small, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # unique QR (positive diagonal) so the seed fixes the projection
    return q.T if rows <= cols else q * math.sqrt(rows / cols)


@register_teacher("geometry")
class GeometryTeacher(PatchTeacher):
    """Upper-bound ORACLE teacher (not a learned model): Fourier features of each token's true world point.

    Args:
        channels: C, features per token.
        patch_size: token side on the input frame, pixels.
        length_scales: metres; frequencies are split evenly among them (see the module docstring).
        frequencies: F, number of position frequencies (encoding size 2F).
        normals: also encode the token's mean surface normal.
        normal_weight: share of the squared feature norm given to the normal encoding (0..1).
        seed: fixes frequencies and projection (the same seed gives the same teacher everywhere).
    """


    def __init__(self, channels: int = 256, patch_size: int = 14,
                 length_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0), frequencies: int = 64,
                 normals: bool = False, normal_weight: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        if channels < 1 or patch_size < 1 or frequencies < len(length_scales) or not length_scales:
            raise ValueError(f"GeometryTeacher: need channels >= 1, patch_size >= 1 and at least one frequency per "
                             f"length scale, got channels={channels}, patch_size={patch_size}, "
                             f"frequencies={frequencies}, length_scales={tuple(length_scales)}")
        if any(not (s > 0) for s in length_scales) or not 0.0 <= normal_weight <= 1.0:
            raise ValueError(f"GeometryTeacher: length_scales must be > 0 m and normal_weight in [0, 1], got "
                             f"{tuple(length_scales)} and {normal_weight}")
        self._channels, self._patch = int(channels), int(patch_size)
        self.length_scales = tuple(float(s) for s in length_scales)
        self.use_normals, self.normal_weight, self.seed = bool(normals), float(normal_weight), int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        groups = torch.arange(frequencies) * len(self.length_scales) // frequencies
        scales = torch.tensor(self.length_scales, dtype=torch.float64)[groups]
        self.register_buffer("position_freq", torch.randn(frequencies, 3, generator=gen, dtype=torch.float64)
                             / scales[:, None])
        normal_freq = max(1, frequencies // 4)
        self.register_buffer("normal_freq", torch.randn(normal_freq, 3, generator=gen, dtype=torch.float64) / 0.5)
        size = 2 * frequencies + (2 * normal_freq if self.use_normals else 0)
        self.register_buffer("projection", _orthonormal_projection(size, self._channels, gen))
        self.freeze()

    def describe(self) -> str:
        """One line for reports: what this teacher is (an oracle, not a learned model)."""
        parts = "world point" + (" + surface normal" if self.use_normals else "")
        return (f"geometry: UPPER-BOUND ORACLE from ground-truth depth and poses (not a learned model): Fourier "
                f"features of each {self._patch}-px token's {parts} (length scales {self.length_scales} m, "
                f"seed {self.seed}) -> {self._channels} channels; no weights")

    def encode_with_validity(self, images: Tensor, frames: FrameBatch | None = None) -> tuple[Tensor, Tensor]:
        """Oracle tokens of S frames and which of them have a target.

        Args:
            images: [S, 3, H, W] in [0, 1]; only its size is used (token boxes are laid over H x W).
            frames: the same S frames' depth [S, Hd, Wd] (metres), depth intrinsics and aligned poses; required.
        Returns:
            tokens: [S, h, w, C] float32 on the teacher's device, zeros where invalid.
            valid: [S, h, w] bool, True where the token's patch has at least one valid depth pixel.
        """
        check_images(images)
        with torch.no_grad():
            return self._oracle(images, frames)

    def _encode(self, images: Tensor, frames: FrameBatch | None = None) -> Tensor:
        """Tokens [S, h, w, C] float32, zeros for tokens without valid depth (see ``encode_with_validity``)."""
        return self._oracle(images, frames)[0]

    def _oracle(self, images: Tensor, frames: FrameBatch | None) -> tuple[Tensor, Tensor]:
        if frames is None:
            raise ValueError("frames: the geometry teacher needs the frames' depth, intrinsics and poses "
                             "(pass the FrameBatch of the same frames)")
        if frames.depth.shape[0] != images.shape[0] or frames.poses.shape[0] != images.shape[0]:
            raise ValueError(f"frames: {frames.depth.shape[0]} depth maps and {frames.poses.shape[0]} poses for "
                             f"{images.shape[0]} images")
        height, width = images.shape[-2:]
        rows, cols = self.grid_for(height, width)
        device = self.projection.device
        depth = frames.depth.to(device=device, dtype=torch.float64)
        poses = frames.poses.to(device=device, dtype=torch.float64)
        world, valid = depth_to_world(depth, frames.depth_K.to(device=device, dtype=torch.float64), poses)
        boxes = grid_footprints(height, width, rows, cols)
        points, token_valid = token_world_points(world, valid, boxes, (height, width))
        points = torch.where(token_valid[..., None], points, 0.0)
        encoding = fourier_encoding(points, self.position_freq)
        if self.use_normals:
            normals, normal_valid = pixel_normals(world, valid, poses[:, :3, 3])
            mean_normal, _ = token_world_points(normals, normal_valid, boxes, (height, width))
            mean_normal = torch.nn.functional.normalize(torch.nan_to_num(mean_normal, nan=0.0), dim=-1)
            encoding = torch.cat([math.sqrt(1.0 - self.normal_weight) * encoding,
                                  math.sqrt(self.normal_weight) * fourier_encoding(mean_normal, self.normal_freq)],
                                 dim=-1)
        tokens = torch.where(token_valid[..., None], encoding @ self.projection, 0.0)
        return tokens.float(), token_valid
