"""Frame sampling: uniform linspace semantics, greedy maximum coverage, one persisted list per scene."""

from __future__ import annotations

import numpy as np
import pytest

from threedrs.data.instances import SceneDataError
from threedrs.data.sampling import FrameLists, greedy_coverage, select_frames, uniform_indices
from threedrs.data.scene import Scene
from scene_files import write_scene


def test_uniform_matches_v3d_linspace():
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(100, 32) == np.linspace(0, 99, 32, dtype=int).tolist()
    assert uniform_indices(3, 5) == [0, 0, 1, 1, 2]  # duplicates when fewer frames than asked
    assert uniform_indices(1, 1) == [0]
    with pytest.raises(ValueError, match="n: need at least one frame"):
        uniform_indices(0, 4)
    with pytest.raises(ValueError, match="k: need to sample at least one frame"):
        uniform_indices(5, 0)


def test_greedy_coverage_picks_largest_new_sets_and_stops():
    sets = [np.array([1, 2, 3]), np.array([3, 4]), np.array([1, 2, 3, 4, 5]), np.array([6])]
    assert greedy_coverage(sets, 2) == [2, 3]
    assert greedy_coverage(sets, 4) == [2, 3]  # nothing new after {1..6}


def _turning_scene(tmp_path):
    """Five frames at the origin looking along +z, then turned 80, 170, 260 degrees, then +z again (a repeat).

    (Exactly 90 degrees would write a pose whose first entry is 0.000000, which ScanNet treats as invalid.)
    """
    poses = []
    for angle in (0, 80, 170, 260, 0):
        a = np.deg2rad(angle)
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        poses.append(pose)
    write_scene(tmp_path, poses=poses, size=(24, 32))
    return Scene(tmp_path, "scene0000_00")


def test_max_coverage_skips_the_repeated_view(tmp_path):
    scene = _turning_scene(tmp_path)
    chosen = select_frames(scene, "max_coverage", 4)
    assert chosen == ["00000", "00010", "00020", "00030"]  # the repeat (00040) adds no voxel
    assert select_frames(scene, "uniform", 2) == ["00000", "00040"]
    assert len(select_frames(scene, "max_coverage", 5)) == 5


def test_frame_lists_are_computed_once_and_persisted(tmp_path):
    scene = _turning_scene(tmp_path)
    path = tmp_path / "lists" / "frames.json"
    lists = FrameLists(path, tmp_path, "uniform", 3)
    first = lists(scene)
    assert first == ["00000", "00020", "00040"]
    again = FrameLists(path, tmp_path, "uniform", 3)
    assert again("scene0000_00") == first and again._lists == lists._lists
    with pytest.raises(SceneDataError, match="made for rule=uniform, frames=3"):
        FrameLists(path, tmp_path, "uniform", 4)
    with pytest.raises(ValueError, match="unknown frame sampling rule 'random'"):
        FrameLists(path, tmp_path, "random", 3)


def test_first_views_marks_repeats():
    from threedrs.data.sampling import first_views

    assert first_views(["00000", "00000", "00010", "00020", "00020"]).tolist() == [True, False, True, True, False]


def test_loops_over_scenes_save_the_frame_lists_once(synthrooms_tiny, tmp_path, monkeypatch):
    """Preflight and the dataset make the lists of all their scenes and write the file once (a save per new scene
    rewrites the whole file each time); a block that fails still keeps what it computed."""
    from threedrs.data.dataset import SceneSampleDataset
    from threedrs.data.preflight import check_scenes
    from threedrs.data.scene import split_scene_ids
    from threedrs.data.tasks import Sample

    scenes = split_scene_ids(synthrooms_tiny, "train")
    assert len(scenes) > 2
    saves = []
    real = FrameLists._save
    monkeypatch.setattr(FrameLists, "_save", lambda self: saves.append(len(self._lists)) or real(self))
    lists = FrameLists(tmp_path / "a.json", synthrooms_tiny, "uniform", 4)
    check_scenes(synthrooms_tiny, scenes, "required", lists)
    assert saves == [len(scenes)]
    assert FrameLists(tmp_path / "a.json", synthrooms_tiny, "uniform", 4)._lists == lists._lists
    check_scenes(synthrooms_tiny, scenes, "required", lists)  # nothing new: nothing written
    assert saves == [len(scenes)]
    samples = [Sample(f"q{i}", "scanqa", scene, "Q?", "A") for i, scene in enumerate(scenes)]
    other = FrameLists(tmp_path / "b.json", synthrooms_tiny, "uniform", 4)
    SceneSampleDataset(samples, synthrooms_tiny, other, lambda h, w: None, {}, {})
    assert saves == [len(scenes)] * 2
    third = FrameLists(tmp_path / "c.json", synthrooms_tiny, "uniform", 4)
    with pytest.raises(SceneDataError), third.save_once():
        third(scenes[0])
        third("scene9999_99")  # no such scene
    assert list(FrameLists(tmp_path / "c.json", synthrooms_tiny, "uniform", 4)._lists) == [scenes[0]]
