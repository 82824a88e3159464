"""Camera and 3D geometry as pure tensor math: unprojection, rigid transforms, token footprints, voxels.

Conventions (FORMATS.md §1.4, §1.5):
- Camera frame: OpenCV, +x right, +y down, +z forward. Pixel centres sit at integer coordinates, u = column,
  v = row, so the camera point of pixel (u, v) with depth z is ((u - cx) z / fx, (v - cy) z / fy, z).
- Depth in metres; 0 or non-finite means invalid.
- Poses are camera-to-world 4x4 matrices; world points are in metres.
- Pixel boxes are int64 (x0, y0, x1, y1), half-open: columns x0 <= u < x1, rows y0 <= v < y1.

Every function works on any floating dtype and device; nothing here reads files.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "VOXEL_INDEX_BITS",
    "depth_to_world",
    "depth_token_points",
    "grid_footprints",
    "scale_intrinsics",
    "token_world_points",
    "transform_points",
    "unproject_depth",
    "voxel_indices",
    "voxel_keys",
]

VOXEL_INDEX_BITS = 21
"""Bits per axis in a packed voxel key: indices must lie in [-2**20, 2**20) (about +-105 km at 0.1 m)."""

_VOXEL_OFFSET = 1 << (VOXEL_INDEX_BITS - 1)


def _check_matrix(name: str, value: Tensor, size: int) -> None:
    if value.ndim < 2 or value.shape[-2:] != (size, size):
        raise ValueError(f"{name}: expected shape [..., {size}, {size}], got {list(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")


def _check_intrinsics(K: Tensor) -> None:
    _check_matrix("K", K, 3)
    if not bool(torch.isfinite(K).all()):
        raise ValueError("K: non-finite intrinsics (NaN or inf entries)")
    if bool(((K[..., 0, 0] == 0) | (K[..., 1, 1] == 0)).any()):
        raise ValueError("K: zero focal length (fx or fy is 0)")


def _check_points(name: str, points: Tensor) -> None:
    if points.ndim < 1 or points.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [..., 3], got {list(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {points.dtype}")


def unproject_depth(depth: Tensor, K: Tensor) -> Tensor:
    """Back-project a depth map to camera-frame points.

    Args:
        depth: [..., H, W] float, metres. Invalid pixels (0 or non-finite) are unprojected like any other
            (0 lands on the camera centre, non-finite gives non-finite points); mask them with the depth.
        K: [..., 3, 3] float pinhole intrinsics; leading dims broadcast against depth's.
    Returns:
        [..., H, W, 3] camera points (OpenCV axes, metres), dtype of depth and K promoted.
    """
    _check_intrinsics(K)
    if depth.ndim < 2:
        raise ValueError(f"depth: expected shape [..., H, W], got {list(depth.shape)}")
    if not depth.is_floating_point():
        raise ValueError(f"depth: expected float metres, got {depth.dtype} (millimetre PNGs: divide by 1000)")
    height, width = depth.shape[-2:]
    dtype = torch.promote_types(depth.dtype, K.dtype)
    z = depth.to(dtype)
    K = K.to(dtype)
    u = torch.arange(width, dtype=dtype, device=z.device)
    v = torch.arange(height, dtype=dtype, device=z.device)[:, None]
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (u - cx) * z / fx
    y = (v - cy) * z / fy
    z = z.expand_as(x)
    return torch.stack([x, y, z], dim=-1)


def transform_points(T: Tensor, points: Tensor) -> Tensor:
    """Apply homogeneous 4x4 transforms to 3D points.

    Args:
        T: [*B, 4, 4] float. Its batch dims *B match (or broadcast against) the LEADING dims of points and
            are broadcast over the remaining point dims: T [S, 4, 4] with points [S, H, W, 3] applies T[s]
            to every point of frame s; T [4, 4] applies one transform to all points.
        points: [*B, *N, 3] float.
    Returns:
        [*B, *N, 3] transformed points. The result is divided by the homogeneous w (w = 1 for rigid poses).
    """
    _check_matrix("T", T, 4)
    _check_points("points", points)
    batch = T.shape[:-2]
    if points.ndim - 1 < len(batch):
        raise ValueError(
            f"points: shape {list(points.shape)} has fewer leading dims than T's batch dims {list(batch)}"
        )
    try:
        lead = torch.broadcast_shapes(batch, points.shape[: len(batch)])
    except RuntimeError:
        raise ValueError(
            f"T: batch dims {list(batch)} do not match the leading dims of points {list(points.shape)}"
        ) from None
    dtype = torch.promote_types(T.dtype, points.dtype)
    rest = points.shape[len(batch) : -1]
    T = T.to(dtype).expand(*lead, 4, 4)
    flat = points.to(dtype).expand(*lead, *rest, 3).reshape(*lead, -1, 3)
    rotated = flat @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]
    w = flat @ T[..., 3, :3, None] + T[..., None, 3, 3:]
    return (rotated / w).reshape(*lead, *rest, 3)


def depth_to_world(depth: Tensor, K: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """World point of every depth pixel of S frames.

    Args:
        depth: [S, H, W] float, metres; 0 or non-finite = invalid.
        K: [S, 3, 3] or [3, 3] float intrinsics of the depth image.
        cam_to_world: [S, 4, 4] float camera-to-world poses.
    Returns:
        world: [S, H, W, 3] world points in metres; NaN where invalid.
        valid: [S, H, W] bool, depth > 0 and finite (and the world point finite, which excludes frames
            whose pose holds inf/NaN, FORMATS §1.5).
    """
    if depth.ndim != 3:
        raise ValueError(f"depth: expected shape [S, H, W], got {list(depth.shape)}")
    frames = depth.shape[0]
    _check_intrinsics(K)
    if K.ndim not in (2, 3) or (K.ndim == 3 and K.shape[0] != frames):
        raise ValueError(f"K: expected shape [{frames}, 3, 3] or [3, 3], got {list(K.shape)}")
    _check_matrix("cam_to_world", cam_to_world, 4)
    if cam_to_world.ndim != 3 or cam_to_world.shape[0] != frames:
        raise ValueError(f"cam_to_world: expected shape [{frames}, 4, 4], got {list(cam_to_world.shape)}")
    K = K if K.ndim == 3 else K.expand(frames, 3, 3)
    camera = unproject_depth(depth, K)
    world = transform_points(cam_to_world, camera)
    valid = (depth > 0) & torch.isfinite(depth) & torch.isfinite(world).all(dim=-1)
    world = torch.where(valid[..., None], world, torch.full_like(world, float("nan")))
    return world, valid


def scale_intrinsics(K: Tensor, sx: float, sy: float) -> Tensor:
    """Intrinsics of an image resized by factors (sx, sy) (new width = sx * old width).

    Uses the convention of ScanNet and V3D: fx, cx scale by sx and fy, cy by sy. This is exact when pixel
    centres sit at half-integer coordinates; with the integer-centre convention of `unproject_depth` the exact
    principal point would be (cx + 0.5) * sx - 0.5, so the result is off by 0.5 * (sx - 1) pixels (under half a
    pixel for any downscale), which we accept for compatibility.

    Args:
        K: [..., 3, 3] float. sx, sy: positive finite scale factors.
    Returns:
        [..., 3, 3] new intrinsics (a copy).
    """
    _check_intrinsics(K)
    for name, value in (("sx", sx), ("sy", sy)):
        if not (float(value) > 0 and float(value) < float("inf")):
            raise ValueError(f"{name}: scale factor must be positive and finite, got {value}")
    scale = K.new_tensor([[sx, sx, sx], [sy, sy, sy], [1.0, 1.0, 1.0]])
    return K * scale


def grid_footprints(height: int, width: int, rows: int, cols: int) -> Tensor:
    """Pixel boxes of a regular rows x cols token grid over a height x width image.

    Token (i, j) covers columns floor(j W / cols) <= u < floor((j + 1) W / cols) and rows likewise, so the
    boxes partition the image exactly, also when W is not divisible by cols.

    Returns:
        [rows, cols, 4] int64 (x0, y0, x1, y1), half-open, pixels.
    """
    for name, value in (("height", height), ("width", width), ("rows", rows), ("cols", cols)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value}")
    if rows > height:
        raise ValueError(f"rows: {rows} token rows exceed the image height {height}")
    if cols > width:
        raise ValueError(f"cols: {cols} token columns exceed the image width {width}")
    height, width, rows, cols = int(height), int(width), int(rows), int(cols)
    xs = torch.arange(cols + 1, dtype=torch.int64) * width // cols
    ys = torch.arange(rows + 1, dtype=torch.int64) * height // rows
    x0 = xs[:-1].expand(rows, cols)
    x1 = xs[1:].expand(rows, cols)
    y0 = ys[:-1, None].expand(rows, cols)
    y1 = ys[1:, None].expand(rows, cols)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def _rescale_edges(edges: Tensor, source: int, target: int) -> Tensor:
    """Map pixel edges of a `source`-pixel axis to a `target`-pixel axis covering the same field of view.

    A target pixel belongs to a box when its centre lies inside the box's continuous extent, i.e. the new
    edge is ceil(e * target / source - 1/2), computed exactly in integers. Monotone, so partitions stay
    partitions.
    """
    if source == target:
        return edges
    numerator = 2 * edges * target - source
    return torch.clamp(-((-numerator) // (2 * source)), 0, target)


def token_world_points(
    world: Tensor, valid: Tensor, footprints: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Mean world point of the valid depth pixels inside each token's footprint.

    Exact box sums through summed-area tables (accumulated in float64); no loop over tokens.

    Args:
        world: [S, Hd, Wd, 3] float world points (metres) at the depth resolution.
        valid: [S, Hd, Wd] bool; invalid pixels are ignored (their values may be NaN).
        footprints: [h, w, 4] or [S, h, w, 4] int pixel boxes (x0, y0, x1, y1), half-open, in the COLOUR
            image of size image_size. When (Hd, Wd) differs, the boxes are rescaled to the depth resolution
            (a depth pixel counts when its centre is inside the box; colour and depth are assumed to cover
            the same field of view, as V3D assumes).
        image_size: (H, W) of the colour image, pixels.
    Returns:
        points: [S, h, w, 3] mean world point per token, dtype of world; NaN for tokens without valid pixels.
        valid: [S, h, w] bool, True when the token has at least one valid pixel.
    """
    _check_points("world", world)
    if world.ndim != 4:
        raise ValueError(f"world: expected shape [S, Hd, Wd, 3], got {list(world.shape)}")
    frames, depth_h, depth_w = world.shape[:3]
    if valid.shape != world.shape[:3] or valid.dtype != torch.bool:
        raise ValueError(f"valid: expected a bool tensor of shape {list(world.shape[:3])}, got "
                         f"{valid.dtype} {list(valid.shape)}")
    x0, y0, x1, y1 = (torch.from_numpy(e).to(world.device)
                      for e in _depth_boxes(footprints, frames, image_size, (depth_h, depth_w)))

    # Summed-area table [S, Hd+1, Wd+1, 4] of (x, y, z, 1) over valid pixels, zero first row and column.
    table = torch.zeros(frames, depth_h + 1, depth_w + 1, 4, dtype=torch.float64, device=world.device)
    table[:, 1:, 1:, :3] = torch.where(valid[..., None], world, torch.zeros((), dtype=world.dtype))
    table[:, 1:, 1:, 3] = valid
    table.cumsum_(1).cumsum_(2)
    frame = torch.arange(frames, device=world.device).view(frames, 1, 1)
    sums = table[frame, y1, x1] - table[frame, y0, x1] - table[frame, y1, x0] + table[frame, y0, x0]
    count = sums[..., 3]
    token_valid = count > 0.5
    mean = sums[..., :3] / count.clamp(min=1.0)[..., None]
    mean = torch.where(token_valid[..., None], mean, torch.full_like(mean, float("nan")))
    return mean.to(world.dtype), token_valid


def depth_token_points(
    depth: Tensor, K: Tensor, cam_to_world: Tensor, footprints: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Mean world point of the valid depth pixels in each token's footprint, straight from the depth maps.

    The same result as ``token_world_points(*depth_to_world(depth, K, cam_to_world), footprints, image_size)``
    (equal up to float64 rounding) without building the [S, Hd, Wd, 3] world map: the mean of a rigid transform
    is the transform of the mean, and the mean camera point of a box follows from the box sums of z, u z, v z and
    the valid count, which are read at the boxes' corners from a summed-area table over the distinct box edges
    only (float64).

    Args:
        depth: [S, Hd, Wd] float metres; 0 or non-finite = invalid.
        K: [3, 3] or [S, 3, 3] float intrinsics of the depth image.
        cam_to_world: [S, 4, 4] float rigid camera-to-world poses (last row 0 0 0 1), finite.
        footprints: [h, w, 4] or [S, h, w, 4] int pixel boxes (x0, y0, x1, y1), half-open, in the COLOUR image
            of size image_size (rescaled to the depth resolution as in `token_world_points`).
        image_size: (H, W) of the colour image, pixels.
    Returns:
        points: [S, h, w, 3] float64 world points (metres); NaN for tokens without valid pixels.
        valid: [S, h, w] bool, True when the token has at least one valid pixel.
    """
    if depth.ndim != 3 or not depth.is_floating_point():
        raise ValueError(f"depth: expected float metres of shape [S, Hd, Wd], got {depth.dtype} {list(depth.shape)}")
    frames, depth_h, depth_w = depth.shape
    _check_intrinsics(K)
    if K.ndim not in (2, 3) or (K.ndim == 3 and K.shape[0] != frames):
        raise ValueError(f"K: expected shape [{frames}, 3, 3] or [3, 3], got {list(K.shape)}")
    _check_matrix("cam_to_world", cam_to_world, 4)
    if cam_to_world.shape != (frames, 4, 4) or not bool(torch.isfinite(cam_to_world).all()):
        raise ValueError(f"cam_to_world: expected finite poses [{frames}, 4, 4], got {list(cam_to_world.shape)}")
    if not bool((cam_to_world[:, 3] == cam_to_world.new_tensor([0.0, 0.0, 0.0, 1.0])).all()):
        raise ValueError("cam_to_world: expected rigid poses with last row 0 0 0 1")
    x0, y0, x1, y1 = _depth_boxes(footprints, frames, image_size, (depth_h, depth_w))
    d = depth.detach().cpu().numpy()
    valid = (d > 0) & np.isfinite(d)
    u = np.arange(depth_w, dtype=np.float64)
    v = np.arange(depth_h, dtype=np.float64)[:, None]
    sums = np.empty((frames, *x0.shape[1:], 4))  # per token: sum z, sum u z, sum v z, valid count
    for s in range(frames):
        xs = np.unique(np.concatenate([x0[s].ravel(), x1[s].ravel(), [0, depth_w]]))
        ys = np.unique(np.concatenate([y0[s].ravel(), y1[s].ravel(), [0, depth_h]]))
        z = np.where(valid[s], d[s], 0).astype(np.float64)
        rows = [np.add.reduceat(x, ys[:-1], axis=0, dtype=np.float64) for x in (z, z * v, valid[s])]  # [ny, Wd]
        cells = np.stack([np.add.reduceat(x, xs[:-1], axis=1) for x in (rows[0], rows[0] * u, rows[1], rows[2])],
                         axis=-1)  # [ny, nx, 4] sums of z, u z, v z, valid per cell of the edge grid
        table = np.zeros((len(ys), len(xs), 4))  # summed-area table at the edge grid, zero first row/column
        table[1:, 1:] = cells.cumsum(0).cumsum(1)
        c0, c1 = np.searchsorted(xs, x0[s]), np.searchsorted(xs, x1[s])
        r0, r1 = np.searchsorted(ys, y0[s]), np.searchsorted(ys, y1[s])
        sums[s] = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    sums_t = torch.from_numpy(sums)
    count = sums_t[..., 3]
    token_valid = count > 0.5
    Kd = K.detach().cpu().double().expand(frames, 3, 3)
    shape = (frames,) + (1,) * (sums_t.ndim - 2)
    fx, fy = Kd[:, 0, 0].view(shape), Kd[:, 1, 1].view(shape)
    cx, cy = Kd[:, 0, 2].view(shape), Kd[:, 1, 2].view(shape)
    sz, suz, svz = sums_t[..., 0], sums_t[..., 1], sums_t[..., 2]
    camera = torch.stack([(suz - cx * sz) / fx, (svz - cy * sz) / fy, sz], dim=-1) / count.clamp(min=1.0)[..., None]
    pose = cam_to_world.detach().cpu().double()
    world = torch.einsum("sij,s...j->s...i", pose[:, :3, :3], camera) + pose[:, :3, 3].view(*shape, 3)
    world = torch.where(token_valid[..., None], world, torch.full_like(world, float("nan")))
    return world, token_valid


def _depth_boxes(footprints: Tensor, frames: int, image_size: tuple[int, int],
                 depth_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Validated colour-pixel footprints rescaled to the depth image: (x0, y0, x1, y1), each [S, h, w] int64."""
    if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image_size: expected (H, W) positive integers, got {image_size}")
    height, width = int(image_size[0]), int(image_size[1])
    if footprints.ndim not in (3, 4) or footprints.shape[-1] != 4:
        raise ValueError(f"footprints: expected shape [h, w, 4] or [S, h, w, 4], got {list(footprints.shape)}")
    if footprints.is_floating_point() or footprints.dtype == torch.bool:
        raise ValueError(f"footprints: expected an integer tensor, got {footprints.dtype}")
    if footprints.ndim == 4 and footprints.shape[0] != frames:
        raise ValueError(f"footprints: {footprints.shape[0]} frames but the depth (world) has {frames}")
    boxes = footprints.detach().cpu().to(torch.int64)
    boxes = boxes.expand(frames, *boxes.shape) if boxes.ndim == 3 else boxes
    x0, y0, x1, y1 = boxes.unbind(-1)
    if bool((x0 < 0).any() | (y0 < 0).any() | (x1 > width).any() | (y1 > height).any()
            | (x1 < x0).any() | (y1 < y0).any()):
        raise ValueError(f"footprints: boxes outside the {height}x{width} image or with x1 < x0 / y1 < y0")
    depth_h, depth_w = depth_size
    return (_rescale_edges(x0, width, depth_w).numpy(), _rescale_edges(y0, height, depth_h).numpy(),
            _rescale_edges(x1, width, depth_w).numpy(), _rescale_edges(y1, height, depth_h).numpy())


def voxel_indices(points: Tensor, voxel_size: float) -> Tensor:
    """Integer voxel index floor(p / voxel_size) per axis.

    Computed in float64. A point on a boundary belongs to the voxel above it; note that decimal boundaries
    are subject to float rounding (0.3 / 0.1 = 2.999... in binary, so 0.3 m falls in voxel 2 at 0.1 m).

    Args:
        points: [..., 3] float, metres, all finite. voxel_size: metres, > 0.
    Returns:
        [..., 3] int64.
    """
    _check_points("points", points)
    if not (float(voxel_size) > 0 and float(voxel_size) < float("inf")):
        raise ValueError(f"voxel_size: must be positive and finite, got {voxel_size}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points: non-finite coordinates cannot be voxelised (mask invalid points first)")
    return torch.floor(points.to(torch.float64) / float(voxel_size)).to(torch.int64)


def voxel_keys(points: Tensor, voxel_size: float) -> Tensor:
    """One int64 key per voxel: the three voxel indices packed into 21 bits each.

    Supported range: every index in [-2**20, 2**20), i.e. |coordinate| below about 2**20 * voxel_size
    (104.8 km at 0.1 m); outside it a ValueError is raised. Keys are non-negative and sort in (x, y, z)
    lexicographic order of the indices.

    Args:
        points: [..., 3] float, metres. voxel_size: metres, > 0.
    Returns:
        [...] int64 keys.
    """
    index = voxel_indices(points, voxel_size)
    if bool(((index < -_VOXEL_OFFSET) | (index >= _VOXEL_OFFSET)).any()):
        raise ValueError(
            f"points: voxel index outside the supported range [-2**20, 2**20) per axis "
            f"(|coordinate| < {_VOXEL_OFFSET * voxel_size:g} m at voxel_size={voxel_size})"
        )
    shifted = index + _VOXEL_OFFSET
    bits = VOXEL_INDEX_BITS
    return (shifted[..., 0] << (2 * bits)) | (shifted[..., 1] << bits) | shifted[..., 2]
