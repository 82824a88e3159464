"""The weight-free teachers: geometry oracle (view-invariant, scores near 1) and the 2D appearance baseline."""

import math

import numpy as np
import pytest
import torch
from scene_files import write_scene

from threedrs.data.scene import Scene
from threedrs.geometry import depth_to_world, grid_footprints, token_world_points
from threedrs.metrics.correspondence import correspondence_score
from threedrs.teachers.base import build_teacher
from threedrs.teachers.appearance import patch_statistics
from threedrs.teachers.geometry import fourier_encoding, pixel_normals

# write_scene's intrinsics: fx = fy = 10, so at the constant 2 m depth one pixel spans 0.2 m and a 14-px token
# 2.8 m. Frame k is shifted by 2.8 k + 0.01 + 0.02 k metres along x: token j of frame k sees (nearly) the place
# token j + k of frame 0 sees, 2-6 cm away and inside the same 0.1 m voxel.
SIZE = (28, 56)


def shifted_poses(count, step):
    poses = []
    for k in range(count):
        pose = np.eye(4)
        pose[0, 3] = step * k + (0.01 + 0.02 * k if step else 0.0)
        poses.append(pose)
    return poses


def _shift(x):
    """A 4x4 matrix that is zero except for an x translation of x metres."""
    m = np.zeros((4, 4))
    m[0, 3] = x
    return m


def load(root, poses, depth_mm=None):
    write_scene(root, poses=poses, size=SIZE, depth_mm=depth_mm)
    scene = Scene(root, "scene0000_00")
    return scene.load_frames(scene.frame_ids)


def score(features, valid, batch):
    height, width = batch.images.shape[-2:]
    world, depth_valid = depth_to_world(batch.depth.double(), batch.depth_K, batch.poses)
    points, point_valid = token_world_points(world, depth_valid, grid_footprints(height, width, *features.shape[1:3]),
                                             (height, width))
    return correspondence_score(features, points, point_valid & valid)


def test_geometry_oracle_scores_near_one_and_appearance_lower(tmp_path):
    batch = load(tmp_path, shifted_poses(3, 2.8))
    geometry = build_teacher("geometry", channels=64)
    appearance = build_teacher("appearance", channels=64)
    tokens, valid = geometry.encode_with_validity(batch.images, batch)
    assert tokens.shape == (3, 2, 4, 64) and valid.all()
    oracle = score(tokens, valid, batch)
    baseline = score(*appearance.encode_with_validity(batch.images, batch), batch)
    assert oracle.pairs == baseline.pairs > 0
    assert oracle.score > 0.95 and baseline.score < oracle.score - 0.3


def test_same_place_from_two_views_gets_the_same_features(tmp_path):
    batch = load(tmp_path, [np.eye(4), np.eye(4) + _shift(2.8)])
    tokens = build_teacher("geometry", channels=32, normals=True).encode(batch.images, batch)
    # frame 1 is shifted by exactly one token width: its token j sees what token j + 1 of frame 0 sees
    torch.testing.assert_close(tokens[1, :, :3], tokens[0, :, 1:], rtol=0, atol=1e-6)
    assert not torch.allclose(tokens[0, :, 0], tokens[0, :, 1])


def test_encoding_is_a_gaussian_kernel_of_distance():
    """cos(enc(p), enc(q)) ~ mean over length scales of exp(-d^2 / (2 l^2)), with many frequencies."""
    teacher = build_teacher("geometry", channels=8, frequencies=4000, length_scales=(0.25, 1.0))
    p = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    for d in (0.05, 0.2, 0.5, 1.5):
        q = p + torch.tensor([[d, 0.0, 0.0]], dtype=torch.float64)
        cos = (fourier_encoding(p, teacher.position_freq) * fourier_encoding(q, teacher.position_freq)).sum().item()
        expected = (math.exp(-d * d / (2 * 0.25**2)) + math.exp(-d * d / 2)) / 2
        assert cos == pytest.approx(expected, abs=0.04)


def test_tokens_keep_unit_norm_and_mark_tokens_without_depth(tmp_path):
    depth = np.full(SIZE, 2000, dtype=np.uint16)
    depth[:14, :14] = 0  # the first token of every frame has no valid depth
    batch = load(tmp_path, shifted_poses(2, 2.8), depth_mm=depth)
    teacher = build_teacher("geometry", channels=160, frequencies=64)  # 128 <= 160: orthonormal rows, exact norms
    tokens, valid = teacher.encode_with_validity(batch.images, batch)
    assert not valid[:, 0, 0].any() and valid.sum() == 2 * 8 - 2
    assert tokens[:, 0, 0].abs().sum() == 0
    torch.testing.assert_close(tokens[valid].norm(dim=-1), torch.ones(int(valid.sum())), rtol=0, atol=1e-5)
    assert torch.equal(teacher.encode(batch.images, batch), tokens)


def test_normals_of_a_plane_face_the_camera():
    # plane z = 2 seen by an identity camera: normal (0, 0, -1) everywhere except the last row and column
    u, v = torch.meshgrid(torch.arange(5.0), torch.arange(4.0), indexing="xy")
    world = torch.stack([u * 0.1, v * 0.1, torch.full_like(u, 2.0)], dim=-1)[None].double()
    valid = torch.ones(1, 4, 5, dtype=torch.bool)
    normals, ok = pixel_normals(world, valid, torch.zeros(1, 3, dtype=torch.float64))
    assert ok[0, :3, :4].all() and not ok[0, 3].any() and not ok[0, :, 4].any()
    torch.testing.assert_close(normals[0, :3, :4], torch.tensor([0.0, 0, -1]).double().expand(3, 4, 3))
    flipped, _ = pixel_normals(world, valid, torch.tensor([[0.0, 0, 4.0]], dtype=torch.float64))  # camera behind
    torch.testing.assert_close(flipped[0, 0, 0], torch.tensor([0.0, 0, 1]).double())


def test_oracle_is_weight_free_frozen_and_named_honestly():
    teacher = build_teacher("geometry")
    assert teacher.weights_checksum == "none" and "ORACLE" in teacher.describe()
    assert "not a learned model" in teacher.describe() and "ORACLE" in type(teacher).__doc__
    teacher.train()
    assert not teacher.training and list(teacher.parameters()) == []
    assert teacher.grid_for(392, 518) == (28, 37)
    assert build_teacher("appearance").weights_checksum == "none"


def test_bad_inputs(tmp_path):
    batch = load(tmp_path, shifted_poses(2, 2.8))
    teacher = build_teacher("geometry", channels=16)
    with pytest.raises(ValueError, match="needs the frames' depth"):
        teacher.encode(batch.images)
    with pytest.raises(ValueError, match="2 depth maps and 2 poses for 1 images"):
        teacher.encode(batch.images[:1], batch)
    with pytest.raises(ValueError, match="smaller than one 14x14 px patch"):
        teacher.encode(batch.images[..., :10, :], batch)
    with pytest.raises(ValueError, match="smaller than one 14x14 px patch"):
        build_teacher("appearance").encode(torch.rand(1, 3, 10, 30))
    with pytest.raises(ValueError, match="images must hold values in"):
        teacher.encode(batch.images * 2, batch)
    with pytest.raises(ValueError, match="length_scales must be > 0"):
        build_teacher("geometry", length_scales=(0.0, 1.0))
    with pytest.raises(ValueError, match="at least one frequency per length scale"):
        build_teacher("geometry", frequencies=2, length_scales=(0.1, 0.2, 0.3))


def test_appearance_values_by_hand():
    images = torch.zeros(1, 3, 14, 28)
    images[:, 0, :, :14] = 1.0  # token 0: pure red
    images[:, 2, :, 14:21] = 1.0  # token 1: left half blue, right half black
    stats = patch_statistics(images, (1, 2))
    assert stats.shape == (1, 1, 2, 54)
    red = torch.tensor([0.5, -0.5, -0.5])
    torch.testing.assert_close(stats[0, 0, 0], torch.cat([red.repeat(16), red, torch.zeros(3)]))
    blue, black = torch.tensor([-0.5, -0.5, 0.5]), torch.tensor([-0.5, -0.5, -0.5])
    cell_row = torch.cat([blue, blue, black, black])  # 4 sub-cells per row: columns 14-17, 17-20 blue
    expected = torch.cat([cell_row.repeat(4), torch.tensor([-0.5, -0.5, 0.0]), torch.tensor([0.0, 0.0, 0.5])])
    torch.testing.assert_close(stats[0, 0, 1], expected)
    teacher = build_teacher("appearance", channels=8, seed=3)
    projection = torch.randn(54, 8, generator=torch.Generator().manual_seed(3)) / math.sqrt(54)
    torch.testing.assert_close(teacher.encode(images), stats @ projection)
