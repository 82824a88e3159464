"""The ScanNet posed-image reader on hand-made scenes: records, invalid poses, alignment, objects, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from threedrs.data.instances import SceneDataError, read_ply_vertices
from threedrs.data.scene import Scene, split_scene_ids
from threedrs.geometry import depth_to_world, grid_footprints, token_world_points
from scene_files import write_matrix, write_ply, write_scene


def test_reader_returns_typed_records_and_drops_invalid_poses(tmp_path):
    write_scene(tmp_path)
    scene = Scene(tmp_path, "scene0000_00")
    assert scene.frame_ids == ["00000", "00020"]
    assert scene.invalid_frame_ids == ["00010"]
    frame = scene.load_frame("00020")
    assert frame.color.dtype == np.uint8 and frame.color.shape == (6, 8, 3)
    assert frame.depth.dtype == np.float32 and np.allclose(frame.depth, 2.0)
    assert frame.pose.shape == (4, 4) and frame.pose[0, 3] == 0.5
    np.testing.assert_array_equal(scene.color_K, [[10, 0, 4], [0, 10, 3], [0, 0, 1]])
    batch = scene.load_frames(scene.frame_ids)
    assert batch.images.shape == (2, 3, 6, 8) and float(batch.images.max()) <= 1.0
    assert batch.depth.shape == (2, 6, 8) and batch.poses.shape == (2, 4, 4)
    assert split_scene_ids(tmp_path, "val") == ["scene0000_00"]


def test_zero_first_element_pose_counts_as_invalid(tmp_path):
    bad = np.eye(4)
    bad[0, 0] = 0.0
    write_scene(tmp_path, poses=[np.eye(4), bad])
    assert Scene(tmp_path, "scene0000_00").invalid_frame_ids == ["00010"]


def test_poses_and_boxes_are_axis_aligned(tmp_path):
    A = np.eye(4)
    A[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about z
    A[:3, 3] = [1.0, 2.0, 0.5]
    write_scene(tmp_path, axis_align=A)
    scene = Scene(tmp_path, "scene0000_00")
    raw = np.eye(4)
    raw[0, 3] = 0.5
    np.testing.assert_allclose(scene.pose("00020"), A @ raw)
    objs = scene.objects
    assert [(o.object_id, o.label) for o in objs] == [(0, "chair"), (1, "table")]
    # object 1 spans x in [2,3], y in [0,1], z in [0,2]; rotated: x' = -y + 1, y' = x + 2, z' = z + 0.5
    np.testing.assert_allclose(objs[1].box, [0.5, 4.5, 1.5, 1.0, 1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(objs[0].box, [0.5, 2.5, 1.0, 1.0, 1.0, 1.0], atol=1e-6)


def test_ascii_ply_is_read(tmp_path):
    path = tmp_path / "m.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                    "property float z\nproperty uchar red\nend_header\n1 2 3 4\n5 6 7 8\n")
    np.testing.assert_array_equal(read_ply_vertices(path), [[1, 2, 3], [5, 6, 7]])


def test_missing_scene_folder_is_named(tmp_path):
    with pytest.raises(SceneDataError, match="scene0042_00: scene folder not found"):
        Scene(tmp_path, "scene0042_00")


def test_corrupt_colour_image_is_named(tmp_path):
    frame_dir = write_scene(tmp_path)
    (frame_dir / "00020.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SceneDataError, match=r"00020\.jpg: corrupt"):
        Scene(tmp_path, "scene0000_00").load_frame("00020")


def test_eight_bit_depth_is_refused(tmp_path):
    frame_dir = write_scene(tmp_path)
    Image.fromarray(np.full((6, 8), 20, dtype=np.uint8)).save(frame_dir / "00000.png")
    with pytest.raises(SceneDataError, match=r"00000\.png: depth must be a 16-bit"):
        Scene(tmp_path, "scene0000_00").load_frame("00000")


def test_missing_depth_is_named(tmp_path):
    frame_dir = write_scene(tmp_path)
    (frame_dir / "00000.png").unlink()
    with pytest.raises(SceneDataError, match=r"00000\.png: depth image not found"):
        Scene(tmp_path, "scene0000_00").load_frame("00000")


def test_non_finite_intrinsics_are_refused(tmp_path):
    frame_dir = write_scene(tmp_path)
    K = np.eye(4)
    K[0, 0] = np.nan
    write_matrix(frame_dir / "depth_intrinsic.txt", K)
    with pytest.raises(SceneDataError, match="depth_intrinsic.txt: non-finite intrinsics"):
        Scene(tmp_path, "scene0000_00")


def test_truncated_pose_file_is_named(tmp_path):
    frame_dir = write_scene(tmp_path)
    (frame_dir / "00000.txt").write_text("1 0 0 0\n0 1 0 0\n")
    with pytest.raises(SceneDataError, match=r"00000\.txt: expected 16 numbers, found 8"):
        _ = Scene(tmp_path, "scene0000_00").frame_ids


def test_all_invalid_poses_and_empty_frame_list(tmp_path):
    write_scene(tmp_path, poses=[np.full((4, 4), -np.inf)])
    with pytest.raises(SceneDataError, match="no usable frames .1 frames, all with invalid poses"):
        _ = Scene(tmp_path, "scene0000_00").frame_ids
    write_scene(tmp_path, scene_id="scene0001_00")
    with pytest.raises(SceneDataError, match="empty frame list"):
        Scene(tmp_path, "scene0001_00").load_frames([])


def test_truncated_mesh_and_bad_aggregation(tmp_path):
    write_scene(tmp_path)
    scan = tmp_path / "scannet" / "scans" / "scene0000_00"
    ply = scan / "scene0000_00_vh_clean_2.ply"
    ply.write_bytes(ply.read_bytes()[:-20])
    with pytest.raises(SceneDataError, match="truncated PLY"):
        _ = Scene(tmp_path, "scene0000_00").objects
    write_ply(ply, np.zeros((6, 3), dtype=np.float32))
    (scan / "scene0000_00.aggregation.json").write_text("{broken")
    with pytest.raises(SceneDataError, match="aggregation.json: not valid JSON"):
        _ = Scene(tmp_path, "scene0000_00").objects


def test_missing_split_list(tmp_path):
    with pytest.raises(SceneDataError, match="scannetv2_train.txt: split list not found"):
        split_scene_ids(tmp_path, "train")


def test_missing_axis_alignment_is_an_error_unless_identity_is_chosen(tmp_path):
    write_scene(tmp_path)
    meta = tmp_path / "scannet" / "scans" / "scene0000_00" / "scene0000_00.txt"
    meta.write_text("colorWidth = 8\ncolorHeight = 6\n")
    with pytest.raises(SceneDataError, match=r"scene0000_00\.txt: no axisAlignment line .*axis_alignment=identity"):
        Scene(tmp_path, "scene0000_00")
    np.testing.assert_array_equal(Scene(tmp_path, "scene0000_00", "identity").axis_align, np.eye(4))
    meta.unlink()
    with pytest.raises(SceneDataError, match=r"scene0000_00\.txt: scan metadata with axisAlignment not found"):
        Scene(tmp_path, "scene0000_00")
    np.testing.assert_array_equal(Scene(tmp_path, "scene0000_00", "identity").axis_align, np.eye(4))


def test_test_scans_are_found_under_scans_test(tmp_path):
    write_scene(tmp_path, scene_id="scene0707_00")
    scans = tmp_path / "scannet" / "scans"
    (tmp_path / "scannet" / "scans_test").mkdir()
    (scans / "scene0707_00").rename(tmp_path / "scannet" / "scans_test" / "scene0707_00")
    scene = Scene(tmp_path, "scene0707_00")
    assert scene.scan_dir.parent.name == "scans_test" and scene.frame_ids == ["00000", "00020"]


def test_principal_point_outside_the_image_is_named(tmp_path):
    frame_dir = write_scene(tmp_path)  # 6 x 8 colour and depth
    write_matrix(frame_dir / "depth_intrinsic.txt", np.array([[10.0, 0, 40, 0], [0, 10, 3, 0], [0, 0, 1, 0],
                                                               [0, 0, 0, 1]]))
    scene = Scene(tmp_path, "scene0000_00")
    with pytest.raises(SceneDataError, match=r"depth_intrinsic\.txt: principal point \(40, 3\) lies outside the "
                                             r"8x6 image 00000\.png"):
        scene.check_intrinsics("00000")
    with pytest.raises(SceneDataError, match=r"depth_intrinsic\.txt: principal point"):
        scene.load_frames(["00000"])


def test_a_single_pose_is_read_without_the_whole_scan(tmp_path):
    frame_dir = write_scene(tmp_path)
    (frame_dir / "00000.txt").write_text("broken")  # never read: only frame 00020 is asked for
    scene = Scene(tmp_path, "scene0000_00")
    assert scene.pose("00020")[0, 3] == 0.5
    with pytest.raises(SceneDataError, match=r"00010\.txt: frame 00010 of scene0000_00 has an invalid pose"):
        scene.pose("00010")
    with pytest.raises(SceneDataError, match=r"no frame '00030'"):
        scene.pose("00030")


def test_repeated_seg_groups_keep_the_first_occurrence(tmp_path):
    """ScanNet issue #51: scene0217_00 lists every segGroup twice, the copies with new objectIds."""
    import json

    write_scene(tmp_path, scene_id="scene0217_00")
    agg = tmp_path / "scannet" / "scans" / "scene0217_00" / "scene0217_00.aggregation.json"
    data = json.loads(agg.read_text())
    copies = [dict(g, id=g["id"] + 2, objectId=g["objectId"] + 2) for g in data["segGroups"]]
    data["segGroups"] += copies
    agg.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"scene0217_00: 2 segGroup\(s\) of scene0217_00.aggregation.json repeat an "
                                         r"earlier group \(objectIds 2..3\); kept the first occurrence"):
        objs = Scene(tmp_path, "scene0217_00").objects
    assert [(o.object_id, o.label) for o in objs] == [(0, "chair"), (1, "table")]
    np.testing.assert_allclose(objs[1].box, [2.5, 0.5, 1.0, 1.0, 1.0, 2.0], atol=1e-6)


def test_token_points_of_a_frame_batch_equal_the_world_map_route(synthrooms_tiny):
    """`FrameBatch.token_points` (the dataset's and both probes' route) gives the mean world point of the full
    [S, Hd, Wd, 3] world map, on a SynthRooms scan whose depth is half the colour size (as ScanNet's)."""
    scene_id = split_scene_ids(synthrooms_tiny, "train")[0]
    scene = Scene(synthrooms_tiny, scene_id)
    batch = scene.load_frames(scene.frame_ids)
    height, width = batch.images.shape[-2:]
    footprints = grid_footprints(height, width, 4, 5)
    world, valid = depth_to_world(batch.depth.double(), batch.depth_K, batch.poses)
    expected, expected_valid = token_world_points(world, valid, footprints, (height, width))
    points, token_valid = batch.token_points(footprints)
    assert points.dtype == torch.float64 and torch.equal(token_valid, expected_valid) and bool(token_valid.any())
    torch.testing.assert_close(points[token_valid], expected[token_valid], rtol=0, atol=1e-9)
    assert bool(points[~token_valid].isnan().all())


def test_a_repeated_frame_is_decoded_once(tmp_path, monkeypatch):
    """Uniform sampling pads a short scan with repeats: each distinct frame is read once, then copied."""
    from threedrs.data import scene as scene_module

    write_scene(tmp_path)
    reads = []
    for name in ("read_color", "read_depth"):
        real = getattr(scene_module, name)
        monkeypatch.setattr(scene_module, name, lambda path, real=real: reads.append(path.name) or real(path))
    batch = Scene(tmp_path, "scene0000_00").load_frames(["00000", "00000", "00020", "00020", "00020"])
    assert sorted(reads) == ["00000.jpg", "00000.png", "00020.jpg", "00020.png"]
    assert batch.frame_ids == ["00000", "00000", "00020", "00020", "00020"] and batch.images.shape[0] == 5
    assert torch.equal(batch.images[0], batch.images[1]) and torch.equal(batch.depth[2], batch.depth[4])
    assert torch.equal(batch.poses[3], batch.poses[4]) and not torch.equal(batch.poses[0], batch.poses[2])
