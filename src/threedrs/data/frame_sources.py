"""Where a scene's candidate frames come from (`data.frame_source`), so a run can use the authors' exact frames.

- `all`: every exported frame with a valid pose (`Scene.frame_ids`); the sampling rule picks from them.
- `embodiedscan`: EmbodiedScan's image list of the scene, which Video-3D LLM and 3DRS sample their 32 frames
  from (`numpy.linspace` over it). EmbodiedScan ships the lists inside pickles (`embodiedscan_infos_<split>.pkl`)
  that threedrs does not unpickle; the file read here is the same structure as JSON, which the README shows how
  to write once from the pickles:
  `{"data_list": [{"sample_idx": "scannet/<scene>", "images": [{"img_path": "scannet/posed_images/<scene>/NNNNN.jpg",
  ...}, ...]}, ...]}` (entries of other datasets are ignored, as V3D does).
- `select_frames`: Video-3D LLM's max-coverage selection `scannet_select_frames.json`, a list of
  `{"video_id": "scannet/<scene>", "frame_files": ["data/scannet/posed_images/<scene>/NNNNN.jpg", ...] (selection
  order), "voxel_nums": [new voxels per frame], "num_all_voxels": int, "num_select_voxels": int}`. A run takes the
  first `k` files, keeps them while the running voxel count stays below `ratio * num_all_voxels` (the one that
  reaches it included; ratio 1 keeps all `k`), and sorts them by frame number, as V3D's "mc" strategies do.

A listed frame that the export lacks (or whose pose is invalid) is an error naming the list file and the record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from threedrs.data.instances import SceneDataError
from threedrs.data.scene import Scene
from threedrs.json_files import read_json_file

SOURCES = ("all", "embodiedscan", "select_frames")


def frame_id_of(image_path: object, where: str) -> str:
    """"…/<scene>/NNNNN.jpg" -> "NNNNN" (the frame id of an export file)."""
    if not isinstance(image_path, str) or not image_path.endswith(".jpg"):
        raise SceneDataError(f"{where}: expected a .jpg image path, got {image_path!r}")
    stem = PurePosixPath(image_path).stem
    if not stem.isdigit():
        raise SceneDataError(f"{where}: image {image_path!r} is not a NNNNN.jpg frame of a posed-image export")
    return stem


def _scene_of(video: object, where: str) -> str | None:
    """"scannet/<scene>" -> "<scene>"; None for other datasets (3RScan, Matterport3D)."""
    if not isinstance(video, str):
        raise SceneDataError(f"{where}: expected a 'scannet/<scene_id>' string, got {video!r}")
    return video.split("/", 1)[1] if video.startswith("scannet/") else None


def read_embodiedscan_images(path: Path) -> dict[str, list[str]]:
    """EmbodiedScan image lists (module docstring) -> {scene_id: [frame ids in list order]}."""
    data = read_json_file(path, SceneDataError, what="EmbodiedScan image list file")
    if not isinstance(data, dict) or not isinstance(data.get("data_list"), list):
        raise SceneDataError(f"{path}: expected {{\"data_list\": [...]}} (EmbodiedScan's info structure)")
    out = {}
    for i, entry in enumerate(data["data_list"]):
        where = f"{path}: data_list[{i}]"
        if not isinstance(entry, dict) or "sample_idx" not in entry or not isinstance(entry.get("images"), list):
            raise SceneDataError(f"{where}: needs a sample_idx and an images list")
        scene_id = _scene_of(entry["sample_idx"], where)
        if scene_id is None:
            continue
        frames = []
        for j, image in enumerate(entry["images"]):
            if not isinstance(image, dict) or "img_path" not in image:
                raise SceneDataError(f"{where}.images[{j}]: no img_path")
            frames.append(frame_id_of(image["img_path"], f"{where}.images[{j}]"))
        if not frames:
            raise SceneDataError(f"{where}: scene {scene_id} has an empty image list")
        out[scene_id] = frames
    return out


@dataclass(frozen=True)
class CoverageSelection:
    """One scene of `scannet_select_frames.json`: frames in selection order and the voxels each newly covers."""

    record: str
    frame_ids: list[str]
    voxel_nums: list[int]
    num_all_voxels: int

    def pick(self, k: int, ratio: float = 1.0) -> list[str]:
        """The first `k` frames, cut at `ratio` of the coverable voxels, in temporal order (V3D's "mc" rule)."""
        chosen, covered = [], 0
        for frame_id, gained in zip(self.frame_ids[:k], self.voxel_nums[:k]):
            chosen.append(frame_id)
            covered += gained
            if ratio < 1.0 and covered >= ratio * self.num_all_voxels:
                break
        return sorted(chosen, key=int)


def read_select_frames(path: Path) -> dict[str, CoverageSelection]:
    """`scannet_select_frames.json` (module docstring) -> {scene_id: CoverageSelection}."""
    data = read_json_file(path, SceneDataError, expect=list, what="frame selection file",
                          shape="a JSON list of per-scene selections")
    out = {}
    for i, entry in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(entry, dict) or not {"video_id", "frame_files", "voxel_nums", "num_all_voxels"} <= set(entry):
            raise SceneDataError(f"{where}: needs video_id, frame_files, voxel_nums and num_all_voxels")
        scene_id = _scene_of(entry["video_id"], where)
        files, nums = entry["frame_files"], entry["voxel_nums"]
        if not isinstance(files, list) or not files or not isinstance(nums, list) or len(nums) != len(files):
            raise SceneDataError(f"{where}: frame_files must be a non-empty list with one voxel_nums entry each")
        if scene_id is not None:
            frames = [frame_id_of(f, f"{where}.frame_files[{j}]") for j, f in enumerate(files)]
            out[scene_id] = CoverageSelection(where, frames, [int(n) for n in nums], int(entry["num_all_voxels"]))
    return out


class FrameSource:
    """The candidate frames of each scene for one `data.frame_source` (the list file is read on first use).

    kind: one of SOURCES; path: the list file (unused for "all"); ratio: the select_frames coverage ratio.
    """

    def __init__(self, kind: str = "all", path: str | Path | None = None, ratio: float = 1.0):
        if kind not in SOURCES:
            raise ValueError(f"kind: unknown frame source {kind!r}; known: {', '.join(SOURCES)}")
        if kind != "all" and path is None:
            raise ValueError(f"path: frame source {kind!r} needs its list file")
        self.kind, self.path, self.ratio = kind, None if path is None else Path(path), ratio
        self._lists: dict | None = None

    @property
    def identity(self) -> dict:
        """What decides the frames besides the sampling rule: the kind, the list file's sha256 and (select_frames)
        the coverage ratio; recorded with stored frame lists so that another list file or ratio is noticed."""
        digest = None if self.path is None else hashlib.sha256(self.path.read_bytes()).hexdigest()
        return {"source": self.kind, "source_sha256": digest,
                "coverage_ratio": self.ratio if self.kind == "select_frames" else None}

    def _entries(self) -> dict:
        if self._lists is None:
            read = read_embodiedscan_images if self.kind == "embodiedscan" else read_select_frames
            self._lists = read(self.path)
        return self._lists

    def candidates(self, scene: Scene) -> list[str]:
        """The frames the sampling rule chooses from ("all" and "embodiedscan"), each checked to exist."""
        if self.kind == "all":
            return scene.frame_ids
        return self._checked(scene, self._entry(scene), f"the image list of {scene.scene_id}")

    def selection(self, scene: Scene, k: int) -> list[str]:
        """The select_frames choice of at most `k` frames (module docstring), each checked to exist."""
        entry = self._entry(scene)
        return self._checked(scene, entry.pick(k, self.ratio), entry.record)

    def _entry(self, scene: Scene):
        entries = self._entries()
        if scene.scene_id not in entries:
            raise SceneDataError(f"{self.path}: no entry for scene {scene.scene_id}")
        return entries[scene.scene_id]

    def _checked(self, scene: Scene, frame_ids: list[str], record: str) -> list[str]:
        for frame_id in frame_ids:
            try:
                scene.check_frame(frame_id)
            except SceneDataError as error:
                raise SceneDataError(f"{self.path}: {record.removeprefix(f'{self.path}: ')} names frame {frame_id} "
                                     f"of {scene.scene_id}, which the export cannot use ({error})") from None
        return frame_ids
