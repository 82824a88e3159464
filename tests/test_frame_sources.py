"""Candidate frames from EmbodiedScan's image lists and Video-3D LLM's max-coverage file, in their real shapes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_files import embodiedscan_images, select_frames_record, write_json
from scene_files import write_scene
from threedrs.config import ConfigError, load_config
from threedrs.data.frame_sources import FrameSource, read_embodiedscan_images, read_select_frames
from threedrs.data.instances import SceneDataError
from threedrs.data.sampling import FrameLists, frame_lists_from_config


def scan(tmp_path, frames: int = 12):
    """A scene of `frames` valid frames 00000, 00010, ... (poses moving along x)."""
    poses = []
    for i in range(frames):
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        poses.append(pose)
    write_scene(tmp_path, poses=poses)
    return tmp_path


def test_embodiedscan_lists_are_sampled_as_video_3d_llm(tmp_path):
    root = scan(tmp_path)
    listed = ["00010", "00020", "00030", "00050", "00070", "00080", "00090", "00110"]  # EmbodiedScan's own subset
    path = write_json(tmp_path / "metadata" / "embodiedscan_images.json", embodiedscan_images("scene0000_00", listed))
    assert read_embodiedscan_images(path) == {"scene0000_00": listed}  # the 3RScan entry is ignored
    lists = FrameLists(tmp_path / "lists.json", root, "uniform", 4, source=FrameSource("embodiedscan", path))
    expected = [listed[i] for i in np.linspace(0, len(listed) - 1, 4, dtype=int)]  # V3D: linspace over the list
    assert lists("scene0000_00") == expected
    with pytest.raises(SceneDataError, match=r"made for rule=uniform, frames=4, voxel=0.1, source=embodiedscan, "
                                             r"source_sha256=[0-9a-f]{64}, .*not .*source=all"):
        FrameLists(tmp_path / "lists.json", root, "uniform", 4)


def test_select_frames_takes_the_selection_in_temporal_order(tmp_path):
    root = scan(tmp_path)
    record = select_frames_record("scene0000_00", ["00050", "00000", "00110", "00030", "00080"], [50, 20, 15, 10, 5],
                                  100)
    path = write_json(tmp_path / "metadata" / "scannet_select_frames.json", [record])
    selection = read_select_frames(path)["scene0000_00"]
    assert selection.pick(3) == ["00000", "00050", "00110"]  # first k, sorted by frame number
    assert selection.pick(5, ratio=0.8) == ["00000", "00050", "00110"]  # 50 + 20 + 15 = 85 >= 80: stop there
    assert selection.pick(5, ratio=0.7) == ["00000", "00050"]
    lists = FrameLists(tmp_path / "l.json", root, "max_coverage", 4, source=FrameSource("select_frames", path, 1.0))
    assert lists("scene0000_00") == ["00000", "00030", "00050", "00110"]
    # another coverage ratio or another selection file: the stored lists are not theirs
    with pytest.raises(SceneDataError, match=r"made for .*coverage_ratio=1.0, not .*coverage_ratio=0.8"):
        FrameLists(tmp_path / "l.json", root, "max_coverage", 4, source=FrameSource("select_frames", path, 0.8))
    write_json(path, [select_frames_record("scene0000_00", ["00000", "00110"], [50, 20], 100)])
    with pytest.raises(SceneDataError, match=r"made for .*source_sha256=[0-9a-f]{64}.*not .*source_sha256=[0-9a-f]"):
        FrameLists(tmp_path / "l.json", root, "max_coverage", 4, source=FrameSource("select_frames", path, 1.0))


def test_frame_source_config(tmp_path):
    root = scan(tmp_path)
    write_json(tmp_path / "metadata" / "scannet_select_frames.json",
               [select_frames_record("scene0000_00", ["00020", "00000"], [3, 1], 4)])
    with pytest.raises(ConfigError, match="data.frame_source: select_frames is Video-3D LLM's max-coverage"):
        load_config(None, ["data.frame_source=select_frames"])
    with pytest.raises(ConfigError, match=r"data.coverage_ratio: must lie in \(0, 1\]"):
        load_config(None, ["data.coverage_ratio=0"])
    cfg = load_config(None, [f"data.root={root}", "data.frame_source=select_frames", "data.sampling=max_coverage",
                             "data.frames=8"])
    # two selected frames for data.frames=8: repeated as uniform sampling repeats a short scan's frames
    assert frame_lists_from_config(cfg.data, tmp_path / "f.json")("scene0000_00") == ["00000"] * 7 + ["00020"]


@pytest.mark.parametrize(("data", "match"), [
    ({"data_list": [{"sample_idx": "scannet/scene0000_00"}]}, r"data_list\[0\]: needs a sample_idx and an images"),
    ({"data_list": [{"sample_idx": "scannet/scene0000_00", "images": [{"img_path": "a/b/frame.png"}]}]},
     r"data_list\[0\].images\[0\]: expected a .jpg image path"),
    ([1, 2], r"expected \{\"data_list\": \[...\]\}"),
])
def test_bad_embodiedscan_lists(tmp_path, data, match):
    with pytest.raises(SceneDataError, match=match):
        read_embodiedscan_images(write_json(tmp_path / "images.json", data))


def test_bad_select_frames_files(tmp_path):
    bad = select_frames_record("scene0000_00", ["00020", "00000"], [3], 4)
    with pytest.raises(SceneDataError, match=r"record 0: frame_files must be a non-empty list with one voxel_nums"):
        read_select_frames(write_json(tmp_path / "s.json", [bad]))
    root = scan(tmp_path)
    path = write_json(tmp_path / "t.json", [select_frames_record("scene0001_00", ["00020"], [3], 4)])
    lists = FrameLists(tmp_path / "l.json", root, "max_coverage", 4, source=FrameSource("select_frames", path))
    with pytest.raises(SceneDataError, match=r"t.json: no entry for scene scene0000_00"):
        lists("scene0000_00")
