"""Tests of threedrs.geometry against hand-computed float64 values and brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch

from threedrs.aabb import box_iou_3d, boxes_from_points
from threedrs.geometry import (
    depth_to_world,
    depth_token_points,
    grid_footprints,
    scale_intrinsics,
    token_world_points,
    transform_points,
    unproject_depth,
    voxel_indices,
    voxel_keys,
)

F64 = torch.float64
NAN = float("nan")
INF = float("inf")


def _k(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=F64)


def _pose_rot_z90(t: tuple[float, float, float]) -> torch.Tensor:
    pose = torch.eye(4, dtype=F64)
    pose[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    pose[:3, 3] = torch.tensor(t, dtype=F64)
    return pose


# ---------------------------------------------------------------- unprojection and transforms


def test_unproject_depth_hand_values() -> None:
    depth = torch.tensor([[1.0, 2.0], [0.0, 4.0]], dtype=F64)
    camera = unproject_depth(depth, _k(2.0, 4.0, 0.5, 0.5))
    expected = torch.tensor(
        [[[-0.25, -0.125, 1.0], [0.5, -0.25, 2.0]], [[0.0, 0.0, 0.0], [1.0, 0.5, 4.0]]], dtype=F64
    )
    torch.testing.assert_close(camera, expected, rtol=0, atol=1e-15)


def test_unproject_depth_broadcasts_k_over_frames() -> None:
    depth = torch.full((2, 1, 1), 2.0, dtype=F64)
    K = torch.stack([_k(1.0, 1.0, -1.0, 0.0), _k(1.0, 1.0, 0.0, -3.0)])
    camera = unproject_depth(depth, K)
    torch.testing.assert_close(camera[:, 0, 0], torch.tensor([[2.0, 0.0, 2.0], [0.0, 6.0, 2.0]], dtype=F64))


def test_depth_to_world_two_frames() -> None:
    depth = torch.tensor([[[1.0, 2.0], [0.0, 4.0]], [[NAN, 1.0], [INF, 1.0]]], dtype=F64)
    pose = torch.stack([_pose_rot_z90((10.0, 20.0, 30.0)), torch.eye(4, dtype=F64)])
    world, valid = depth_to_world(depth, _k(2.0, 4.0, 0.5, 0.5), pose)
    assert valid.tolist() == [[[True, True], [False, True]], [[False, True], [False, True]]]
    # frame 0: R (x, y, z) = (-y, x, z), plus t
    torch.testing.assert_close(world[0, 0, 0], torch.tensor([10.125, 19.75, 31.0], dtype=F64))
    torch.testing.assert_close(world[0, 0, 1], torch.tensor([10.25, 20.5, 32.0], dtype=F64))
    torch.testing.assert_close(world[0, 1, 1], torch.tensor([9.5, 21.0, 34.0], dtype=F64))
    torch.testing.assert_close(world[1, 0, 1], torch.tensor([0.25, -0.125, 1.0], dtype=F64))
    torch.testing.assert_close(world[1, 1, 1], torch.tensor([0.25, 0.125, 1.0], dtype=F64))
    assert torch.isnan(world[~valid]).all()


def test_depth_to_world_invalid_pose_frame_is_invalid() -> None:
    depth = torch.ones(2, 2, 2, dtype=F64)
    pose = torch.stack([torch.eye(4, dtype=F64), torch.full((4, 4), -INF, dtype=F64)])
    _, valid = depth_to_world(depth, _k(1.0, 1.0, 0.0, 0.0), pose)
    assert valid[0].all() and not valid[1].any()


def test_transform_points_matches_per_point_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    T = torch.randn(3, 4, 4, generator=gen, dtype=F64)
    T[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)
    points = torch.randn(3, 2, 5, 3, generator=gen, dtype=F64)
    out = transform_points(T, points)
    for s in range(3):
        for i in range(2):
            for j in range(5):
                expected = T[s, :3, :3] @ points[s, i, j] + T[s, :3, 3]
                torch.testing.assert_close(out[s, i, j], expected)
    single = transform_points(T[0], points[0].reshape(-1, 3))
    torch.testing.assert_close(single, out[0].reshape(-1, 3))


def test_transform_points_divides_by_w() -> None:
    T = torch.eye(4, dtype=F64)
    T[3, 3] = 2.0
    out = transform_points(T, torch.tensor([[2.0, 4.0, 6.0]], dtype=F64))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0]], dtype=F64))


def test_scale_intrinsics_hand_values() -> None:
    out = scale_intrinsics(_k(500.0, 400.0, 320.0, 240.0), 0.5, 0.25)
    torch.testing.assert_close(out, _k(250.0, 100.0, 160.0, 60.0))


# ---------------------------------------------------------------- footprints and token points


def test_grid_footprints_non_divisible_cover_every_pixel_once() -> None:
    boxes = grid_footprints(10, 13, 3, 4)
    assert boxes.shape == (3, 4, 4) and boxes.dtype == torch.int64
    assert boxes[0, 0].tolist() == [0, 0, 3, 3]  # floor(13/4) = 3, floor(10/3) = 3
    assert boxes[1, 2].tolist() == [6, 3, 9, 6]  # floor(26/4) = 6, floor(39/4) = 9, floor(20/3) = 6
    assert boxes[2, 3].tolist() == [9, 6, 13, 10]
    cover = torch.zeros(10, 13, dtype=torch.int64)
    for x0, y0, x1, y1 in boxes.reshape(-1, 4).tolist():
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()


def test_token_world_points_hand_average() -> None:
    v, u = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(4, dtype=F64), indexing="ij")
    world = torch.stack([u, v, u * v], dim=-1)[None]  # pixel (u, v) -> (u, v, u v)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 1, 2] = False
    world[0, 1, 2] = NAN  # invalid pixels must not leak
    boxes = torch.tensor([[[1, 0, 3, 2], [2, 1, 3, 2], [0, 0, 0, 4]]])  # [h=1, w=3, 4]
    points, token_valid = token_world_points(world, valid, boxes, (4, 4))
    # box 0: pixels (1,0) (2,0) (1,1); (2,1) is invalid
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([4 / 3, 1 / 3, 1 / 3], dtype=F64))
    assert token_valid.tolist() == [[[True, False, False]]]
    assert torch.isnan(points[0, 0, 1:]).all()


def test_token_world_points_rescales_colour_boxes_to_depth() -> None:
    v, u = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(4, dtype=F64), indexing="ij")
    world = torch.stack([u, v, u * v], dim=-1)[None]
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    # colour box (2, 0, 6, 4) in an 8x8 image holds the depth pixels whose centres (2u+1, 2v+1) lie inside:
    # u in {1, 2}, v in {0, 1}
    points, _ = token_world_points(world, valid, torch.tensor([[[2, 0, 6, 4]]]), (8, 8))
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([1.5, 0.5, 0.75], dtype=F64))


def _brute_token_points(world, valid, boxes, image_size):
    """Per-token loop: depth pixels whose centre, mapped to the colour image, lies inside the box."""
    frames, depth_h, depth_w = valid.shape
    height, width = image_size
    rows, cols = boxes.shape[-3:-1]
    out = torch.full((frames, rows, cols, 3), NAN, dtype=F64)
    ok = torch.zeros(frames, rows, cols, dtype=torch.bool)
    for s in range(frames):
        for i in range(rows):
            for j in range(cols):
                x0, y0, x1, y1 = boxes[s, i, j].tolist() if boxes.ndim == 4 else boxes[i, j].tolist()
                acc, n = torch.zeros(3, dtype=F64), 0
                for vv in range(depth_h):
                    for uu in range(depth_w):
                        cu, cv = (uu + 0.5) * width / depth_w, (vv + 0.5) * height / depth_h
                        if x0 <= cu < x1 and y0 <= cv < y1 and valid[s, vv, uu]:
                            acc += world[s, vv, uu]
                            n += 1
                if n:
                    out[s, i, j], ok[s, i, j] = acc / n, True
    return out, ok


@pytest.mark.parametrize("depth_size", [(7, 9), (5, 6)])
def test_token_world_points_matches_brute_force(depth_size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    frames, (depth_h, depth_w), image_size = 2, depth_size, (7, 9)
    world = torch.randn(frames, depth_h, depth_w, 3, generator=gen, dtype=F64)
    valid = torch.rand(frames, depth_h, depth_w, generator=gen) > 0.3
    boxes = grid_footprints(*image_size, 3, 4)
    points, ok = token_world_points(world, valid, boxes, image_size)
    expected, expected_ok = _brute_token_points(world, valid, boxes, image_size)
    assert torch.equal(ok, expected_ok)
    torch.testing.assert_close(points[ok], expected[ok], rtol=0, atol=1e-12)
    per_frame = torch.stack([boxes, boxes.flip(0)])
    points, ok = token_world_points(world, valid, per_frame, image_size)
    expected, expected_ok = _brute_token_points(world, valid, per_frame, image_size)
    assert torch.equal(ok, expected_ok)
    torch.testing.assert_close(points[ok], expected[ok], rtol=0, atol=1e-12)


def test_token_world_points_rescaled_grid_still_partitions_depth() -> None:
    # frame k has only depth pixel k valid: exactly one token of a non-divisible grid must see it
    depth_h, depth_w, image_size = 12, 16, (97, 130)
    pixels = depth_h * depth_w
    valid = torch.eye(pixels, dtype=torch.bool).reshape(pixels, depth_h, depth_w)
    world = torch.zeros(pixels, depth_h, depth_w, 3, dtype=F64)
    _, ok = token_world_points(world, valid, grid_footprints(*image_size, 5, 7), image_size)
    assert (ok.sum(dim=(1, 2)) == 1).all()


# ---------------------------------------------------------------- voxels


def test_voxel_indices_boundaries_and_negatives() -> None:
    points = torch.tensor(
        [[0.0, 0.5, -0.5], [0.49, -0.25, -1e-12], [1.0, -1.0, 0.75]], dtype=F64
    )
    assert voxel_indices(points, 0.5).tolist() == [[0, 1, -1], [0, -1, -1], [2, -2, 1]]


def test_voxel_keys_pack_indices() -> None:
    offset = 1 << 20
    points = torch.tensor([[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5], [0.1, 0.2, 0.3], [0.4, 0.49, 0.0]], dtype=F64)
    keys = voxel_keys(points, 0.5)
    assert keys[0].item() == (offset << 42) | (offset << 21) | offset
    assert keys[1].item() == ((offset - 1) << 42) | (offset << 21) | (offset + 1)
    assert keys[2].item() == keys[3].item() == keys[0].item()


def test_voxel_keys_are_unique_per_voxel_and_ordered() -> None:
    index = torch.cartesian_prod(*(torch.tensor([-(1 << 20), -1, 0, 1, (1 << 20) - 1]),) * 3)
    keys = voxel_keys(index.to(F64) + 0.5, 1.0)
    assert keys.unique().numel() == index.shape[0]
    assert torch.equal(keys.argsort(), torch.arange(index.shape[0]))  # cartesian_prod is lexicographic


# ---------------------------------------------------------------- boxes


def _box(c: float, s: float) -> list[float]:
    return [c, 0.0, 0.0, s, s, s]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (_box(0.0, 1.0), _box(0.0, 1.0), 1.0 / (1.0 + 1e-8)),  # identical
        (_box(0.0, 1.0), _box(5.0, 1.0), 0.0),  # disjoint
        (_box(0.0, 1.0), _box(1.0, 1.0), 0.0),  # touching faces
        (_box(0.0, 2.0), _box(0.5, 1.0), 1.0 / (8.0 + 1.0 - 1.0 + 1e-8)),  # nested
        (_box(0.0, 1.0), _box(0.5, 1.0), 0.5 / (1.5 + 1e-8)),  # half overlap
    ],
)
def test_box_iou_3d_cases(a: list[float], b: list[float], expected: float) -> None:
    iou = box_iou_3d(torch.tensor([a], dtype=F64), torch.tensor([b], dtype=F64))
    assert iou.shape == (1, 1)
    assert math.isclose(iou.item(), expected, rel_tol=1e-15, abs_tol=1e-15)


def test_box_iou_3d_all_pairs_and_batch() -> None:
    a = torch.tensor([_box(0.0, 1.0), _box(0.0, 2.0)], dtype=F64)
    b = torch.tensor([_box(0.5, 1.0), _box(5.0, 1.0), _box(0.0, 1.0)], dtype=F64)
    iou = box_iou_3d(a, b)
    expected = torch.tensor([[0.5 / 1.5, 0.0, 1.0], [1 / 8, 0.0, 1 / 8]], dtype=F64)
    torch.testing.assert_close(iou, expected, rtol=0, atol=1e-8)
    batched = box_iou_3d(torch.stack([a, a]), torch.stack([b, b]))
    assert batched.shape == (2, 2, 3)
    torch.testing.assert_close(batched[1], iou)


def test_boxes_from_points() -> None:
    points = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, -1.0], [1.0, 3.0, 1.0]], dtype=F64)
    torch.testing.assert_close(boxes_from_points(points), torch.tensor([1.0, 1.5, 0.0, 2.0, 3.0, 2.0], dtype=F64))


# ---------------------------------------------------------------- bad input


def test_bad_intrinsics() -> None:
    depth = torch.ones(1, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"K: expected shape"):
        unproject_depth(depth, torch.eye(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"K: non-finite intrinsics"):
        unproject_depth(depth, _k(NAN, 1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"K: zero focal length"):
        unproject_depth(depth, _k(0.0, 1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"K: expected shape \[1, 3, 3\]"):
        depth_to_world(depth, torch.stack([_k(1, 1, 0, 0)] * 2), torch.eye(4, dtype=F64)[None])
    with pytest.raises(ValueError, match=r"K: non-finite intrinsics"):
        scale_intrinsics(_k(1.0, INF, 0.0, 0.0), 1.0, 1.0)


def test_bad_depth_and_pose() -> None:
    K = _k(1.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"depth: expected shape \[S, H, W\]"):
        depth_to_world(torch.ones(2, 2, dtype=F64), K, torch.eye(4, dtype=F64)[None])
    with pytest.raises(ValueError, match=r"cam_to_world: expected shape \[2, 4, 4\]"):
        depth_to_world(torch.ones(2, 2, 2, dtype=F64), K, torch.eye(4, dtype=F64)[None])
    with pytest.raises(ValueError, match=r"depth: expected shape \[\.\.\., H, W\]"):
        unproject_depth(torch.ones(3, dtype=F64), K)
    with pytest.raises(ValueError, match=r"depth: expected float metres, got torch.int32"):
        unproject_depth(torch.ones(2, 2, dtype=torch.int32), K)


def test_bad_transform_input() -> None:
    with pytest.raises(ValueError, match=r"T: expected shape \[\.\.\., 4, 4\]"):
        transform_points(torch.eye(3, dtype=F64), torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"points: expected shape \[\.\.\., 3\]"):
        transform_points(torch.eye(4, dtype=F64), torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"T: batch dims"):
        transform_points(torch.eye(4, dtype=F64).expand(3, 4, 4), torch.zeros(2, 5, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"points: shape"):
        transform_points(torch.eye(4, dtype=F64).expand(3, 2, 4, 4), torch.zeros(3, dtype=F64))


def test_bad_scale_and_grid() -> None:
    with pytest.raises(ValueError, match=r"sx: scale factor"):
        scale_intrinsics(_k(1.0, 1.0, 0.0, 0.0), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"sy: scale factor"):
        scale_intrinsics(_k(1.0, 1.0, 0.0, 0.0), 1.0, NAN)
    with pytest.raises(ValueError, match=r"rows: 5 token rows exceed"):
        grid_footprints(4, 4, 5, 2)
    with pytest.raises(ValueError, match=r"cols: 5 token columns exceed"):
        grid_footprints(4, 4, 2, 5)
    with pytest.raises(ValueError, match=r"width: must be a positive integer"):
        grid_footprints(4, 0, 1, 1)


def test_bad_token_world_points_input() -> None:
    world = torch.zeros(2, 4, 4, 3, dtype=F64)
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    boxes = grid_footprints(4, 4, 2, 2)
    with pytest.raises(ValueError, match=r"footprints: boxes outside the 4x4 image"):
        token_world_points(world, valid, boxes + 1, (4, 4))
    with pytest.raises(ValueError, match=r"footprints: 3 frames but the depth \(world\) has 2"):
        token_world_points(world, valid, boxes.expand(3, 2, 2, 4), (4, 4))
    with pytest.raises(ValueError, match=r"footprints: expected an integer tensor"):
        token_world_points(world, valid, boxes.double(), (4, 4))
    with pytest.raises(ValueError, match=r"footprints: expected shape"):
        token_world_points(world, valid, boxes[..., :3], (4, 4))
    with pytest.raises(ValueError, match=r"valid: expected a bool tensor of shape \[2, 4, 4\]"):
        token_world_points(world, valid[:1], boxes, (4, 4))
    with pytest.raises(ValueError, match=r"world: expected shape \[S, Hd, Wd, 3\]"):
        token_world_points(world[0], valid, boxes, (4, 4))
    with pytest.raises(ValueError, match=r"image_size: expected \(H, W\)"):
        token_world_points(world, valid, boxes, (4, 0))


def test_bad_voxel_input() -> None:
    with pytest.raises(ValueError, match=r"voxel_size: must be positive"):
        voxel_indices(torch.zeros(1, 3, dtype=F64), 0.0)
    with pytest.raises(ValueError, match=r"points: non-finite coordinates"):
        voxel_keys(torch.tensor([[NAN, 0.0, 0.0]], dtype=F64), 0.1)
    with pytest.raises(ValueError, match=r"points: voxel index outside the supported range"):
        voxel_keys(torch.tensor([[0.0, float(1 << 20), 0.0]], dtype=F64), 1.0)
    with pytest.raises(ValueError, match=r"points: voxel index outside the supported range"):
        voxel_keys(torch.tensor([[0.0, 0.0, -float(1 << 20) - 0.5]], dtype=F64), 1.0)


def test_bad_box_input() -> None:
    good = torch.tensor([_box(0.0, 1.0)], dtype=F64)
    with pytest.raises(ValueError, match=r"a: expected shape \[\.\.\., N, 6\]"):
        box_iou_3d(good[:, :5], good)
    with pytest.raises(ValueError, match=r"b: negative box size"):
        box_iou_3d(good, torch.tensor([_box(0.0, -1.0)], dtype=F64))
    with pytest.raises(ValueError, match=r"points: expected shape \[\.\.\., N, 3\] with N >= 1"):
        boxes_from_points(torch.zeros(0, 3, dtype=F64))


def test_depth_token_points_equal_the_world_map_route() -> None:
    """The direct box sums give the mean world point of the full [S, Hd, Wd, 3] route, for depth at another size
    than colour (ScanNet), invalid pixels, tokens without any valid pixel and irregular, overlapping boxes."""
    generator = torch.Generator().manual_seed(3)
    frames, height, width, depth_h, depth_w = 3, 97, 130, 48, 64
    depth = torch.rand(frames, depth_h, depth_w, generator=generator) * 4 + 0.3
    depth[torch.rand(frames, depth_h, depth_w, generator=generator) < 0.2] = 0.0  # no measurement
    depth[0, :20, :30] = 0.0  # a region without any valid pixel
    depth[1, 5, 5] = float("nan")
    K = torch.tensor([[57.7, 0.0, 31.9], [0.0, 57.9, 24.3], [0.0, 0.0, 1.0]], dtype=F64)
    poses = torch.eye(4, dtype=F64).repeat(frames, 1, 1)
    for s in range(frames):
        angle = 0.4 * s + 0.1
        poses[s, :3, :3] = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0],
                                         [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]], dtype=F64)
        poses[s, :3, 3] = torch.tensor([1.5 * s, -0.5, 1.2], dtype=F64)
    grid = grid_footprints(height, width, 7, 9)
    x0 = torch.randint(0, width - 10, (frames, 4, 5), generator=generator)
    y0 = torch.randint(0, height - 10, (frames, 4, 5), generator=generator)
    spans = torch.randint(0, 40, (2, *x0.shape), generator=generator)
    irregular = torch.stack([x0, y0, x0 + spans[0].clamp(max=width - 1 - x0) + 1,
                             y0 + spans[1].clamp(max=height - 1 - y0) + 1], dim=-1)
    for footprints in (grid, irregular):
        world, valid = depth_to_world(depth.double(), K, poses)
        expected, expected_valid = token_world_points(world, valid, footprints, (height, width))
        points, token_valid = depth_token_points(depth, K, poses, footprints, (height, width))
        assert torch.equal(token_valid, expected_valid) and not bool(token_valid.all())
        torch.testing.assert_close(points[token_valid], expected[token_valid], rtol=0, atol=1e-9)
        assert bool(points[~token_valid].isnan().all())
    with pytest.raises(ValueError, match="cam_to_world: expected rigid poses"):
        bad = poses.clone()
        bad[0, 3, 3] = 2.0
        depth_token_points(depth, K, bad, grid, (height, width))
    with pytest.raises(ValueError, match=r"footprints: boxes outside the 97x130 image"):
        depth_token_points(depth, K, poses, grid + 1, (height, width))
