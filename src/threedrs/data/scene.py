"""Reader of scenes in the ScanNet posed-image layout (real ScanNet as exported for Video-3D LLM, or SynthRooms).

Layout under a dataset root (FORMATS.md §1.3b, §1.6, §2.1):
```
<root>/scannet/posed_images/<scene_id>/NNNNN.jpg  .png (uint16 depth, mm)  .txt (4x4 camera-to-world)
<root>/scannet/posed_images/<scene_id>/intrinsic.txt  depth_intrinsic.txt   (4x4 each)
<root>/scannet/scans/<scene_id>/<scene_id>.txt   (axisAlignment; required unless data.axis_alignment=identity)
<root>/scannet/scans/<scene_id>/<scene_id>_vh_clean_2.ply, ...segs.json, .aggregation.json  (objects; optional)
<root>/scannet/scans_test/<scene_id>/...          (ScanNet's hidden-test scans: no annotation, no axisAlignment)
<root>/metadata/scannetv2_<split>.txt             (scene ids of a split)
```
Poses are returned in the AXIS-ALIGNED frame (`A · T_wc`), the frame every box of the benchmarks lives in.
Frames whose pose has a non-finite entry or a zero first element (ScanNet's own invalid-pose test) are dropped
and counted, as EmbodiedScan's frame lists do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from threedrs.data.instances import ObjectBox, SceneDataError, read_instances
from threedrs.geometry import depth_token_points

DEPTH_SHIFT = 1000.0  # depth PNG units per metre (millimetres)


@dataclass(frozen=True)
class Frame:
    """One posed RGB-D frame.

    color: [H, W, 3] uint8 RGB.  depth: [Hd, Wd] float32 metres, 0 = no measurement.
    pose: [4, 4] float64 camera-to-world (OpenCV camera: x right, y down, z forward) in the axis-aligned frame.
    """

    frame_id: str
    color: np.ndarray
    depth: np.ndarray
    pose: np.ndarray


@dataclass(frozen=True)
class FrameBatch:
    """S frames of one scene as tensors, ready for a teacher, a student or the geometry.

    images: [S, 3, H, W] float32 in [0, 1].  depth: [S, Hd, Wd] float32 metres (0 = invalid).
    poses: [S, 4, 4] float64 aligned camera-to-world.  color_K / depth_K: [3, 3] float64 pixel intrinsics of the
    colour and depth images.
    """

    scene_id: str
    frame_ids: list[str]
    images: torch.Tensor
    depth: torch.Tensor
    poses: torch.Tensor
    color_K: torch.Tensor
    depth_K: torch.Tensor

    def token_points(self, footprints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean world point of the valid depth pixels inside each token's footprint (`geometry.depth_token_points`).

        The one route from frames to token points: the training/evaluation dataset and both probes use it.

        Args:
            footprints: [h, w, 4] or [S, h, w, 4] int pixel boxes (x0, y0, x1, y1), half-open, in the colour image.
        Returns:
            points: [S, h, w, 3] float64 world points, metres (aligned frame); NaN for tokens without valid depth.
            valid: [S, h, w] bool, True when the token has at least one valid depth pixel.
        """
        height, width = self.images.shape[-2:]
        return depth_token_points(self.depth, self.depth_K, self.poses, footprints, (height, width))


def read_matrix(path: Path, rows: int = 4) -> np.ndarray:
    """A whitespace-separated text matrix (`rows` x 4) as float64; '-inf' entries are kept."""
    if not path.is_file():
        raise SceneDataError(f"{path}: file not found")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        raise SceneDataError(f"{path}: not a text matrix of numbers") from None
    if values.size != rows * 4:
        raise SceneDataError(f"{path}: expected {rows * 4} numbers, found {values.size}")
    return values.reshape(rows, 4)


def read_intrinsics(path: Path) -> np.ndarray:
    """The [3, 3] pixel intrinsics from a 4x4 ScanNet intrinsic file; refuses non-finite or non-positive focals."""
    K = read_matrix(path)[:3, :3]
    if not np.isfinite(K).all():
        raise SceneDataError(f"{path}: non-finite intrinsics")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise SceneDataError(f"{path}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


AXIS_ALIGNMENT_POLICIES = ("required", "identity")


def read_axis_alignment(meta_path: Path, policy: str = "required") -> np.ndarray:
    """The 4x4 `axisAlignment` of a scan's `<scene_id>.txt`.

    Every box of the benchmarks is in the aligned frame, so a missing file or line is an error naming the file,
    unless `policy` is "identity" (chosen on purpose, e.g. for ScanNet's test scans, which carry none).
    """
    if policy not in AXIS_ALIGNMENT_POLICIES:
        raise ValueError(f"policy: {policy!r} is not one of {AXIS_ALIGNMENT_POLICIES}")
    hint = ("boxes and proposals are in the axis-aligned frame; set data.axis_alignment=identity to use the "
            "unaligned frame on purpose")
    if not meta_path.is_file():
        if policy == "identity":
            return np.eye(4)
        raise SceneDataError(f"{meta_path}: scan metadata with axisAlignment not found ({hint})")
    for line in meta_path.read_text().splitlines():
        if line.strip().startswith("axisAlignment"):
            try:
                values = np.array(line.split("=", 1)[1].split(), dtype=np.float64)
            except (IndexError, ValueError):
                raise SceneDataError(f"{meta_path}: malformed axisAlignment line") from None
            if values.size != 16 or not np.isfinite(values).all():
                raise SceneDataError(f"{meta_path}: axisAlignment needs 16 finite numbers, found {values.size}")
            return values.reshape(4, 4)
    if policy == "identity":
        return np.eye(4)
    raise SceneDataError(f"{meta_path}: no axisAlignment line ({hint})")


def is_valid_pose(pose: np.ndarray) -> bool:
    """ScanNet's invalid-pose test: all entries finite and the first one non-zero."""
    return bool(np.isfinite(pose).all() and pose[0, 0] != 0)


def read_color(path: Path) -> np.ndarray:
    """A colour image as [H, W, 3] uint8 RGB."""
    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except FileNotFoundError:
        raise SceneDataError(f"{path}: colour image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SceneDataError(f"{path}: corrupt or unreadable colour image ({exc})") from None


def read_depth(path: Path) -> np.ndarray:
    """A 16-bit depth PNG in millimetres as [H, W] float32 metres (0 stays 0 = invalid)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise SceneDataError(f"{path}: depth must be a 16-bit single-channel PNG in mm, got mode {img.mode}")
            raw = np.asarray(img)
    except FileNotFoundError:
        raise SceneDataError(f"{path}: depth image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SceneDataError(f"{path}: corrupt or unreadable depth image ({exc})") from None
    if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
        raise SceneDataError(f"{path}: depth values outside the 16-bit range")
    return raw.astype(np.float32) / DEPTH_SHIFT


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header alone."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise SceneDataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SceneDataError(f"{path}: corrupt or unreadable image ({exc})") from None


def check_principal_point(K: np.ndarray, size: tuple[int, int], path: Path, image: Path) -> None:
    """Refuse intrinsics whose principal point lies outside the image they describe (e.g. colour intrinsics
    given for the depth image): path names the intrinsics file, image the image of size (H, W)."""
    cx, cy = K[0, 2], K[1, 2]
    if not (0 <= cx <= size[1] and 0 <= cy <= size[0]):
        raise SceneDataError(f"{path}: principal point ({cx:g}, {cy:g}) lies outside the {size[1]}x{size[0]} "
                             f"image {image.name}; are these the intrinsics of another image?")


class Scene:
    """One scan: its valid frames, intrinsics, axis alignment and (when annotated) its objects.

    Opening a scene reads only the intrinsics and the alignment. The full frame list (`frame_ids`, which reads
    every pose file to drop invalid poses) is read on first use; `pose()` of a single frame reads only that
    frame's file when the full list has not been read, so a sample of a few frames never reads the whole scan.
    axis_alignment: "required" (a scan without axisAlignment is an error) or "identity" (then the identity).
    Scans are looked up in `scannet/scans/`, then `scannet/scans_test/` (ScanNet's hidden-test scans).
    """

    def __init__(self, root: str | Path, scene_id: str, axis_alignment: str = "required"):
        self.root = Path(root)
        self.scene_id = scene_id
        self.frame_dir = self.root / "scannet" / "posed_images" / scene_id
        self.scan_dir = self.root / "scannet" / "scans" / scene_id
        test_dir = self.root / "scannet" / "scans_test" / scene_id
        if not self.scan_dir.is_dir() and test_dir.is_dir():
            self.scan_dir = test_dir
        if not self.frame_dir.is_dir():
            raise SceneDataError(f"{self.frame_dir}: scene folder not found")
        self.color_K = read_intrinsics(self.frame_dir / "intrinsic.txt")
        self.depth_K = read_intrinsics(self.frame_dir / "depth_intrinsic.txt")
        self.axis_align = read_axis_alignment(self.scan_dir / f"{scene_id}.txt", axis_alignment)
        self._poses: dict[str, np.ndarray] = {}  # aligned poses read so far (all of them once frame_ids is read)

    def __repr__(self) -> str:
        return f"Scene({self.scene_id!r}, frames={len(self.frame_ids)}, invalid={len(self.invalid_frame_ids)})"

    @cached_property
    def _frame_table(self) -> tuple[list[str], list[str]]:
        """(valid, invalid) frame ids of the export in temporal order; reads every pose file once."""
        names = sorted(p.stem for p in self.frame_dir.glob("*.jpg") if p.stem.isdigit())
        valid, invalid = [], []
        for name in names:
            pose = read_matrix(self.frame_dir / f"{name}.txt")
            if is_valid_pose(pose):
                self._poses[name] = self.axis_align @ pose
                valid.append(name)
            else:
                invalid.append(name)
        if not valid:
            found = f"{len(names)} frames, all with invalid poses" if names else "no NNNNN.jpg frames"
            raise SceneDataError(f"{self.frame_dir}: no usable frames ({found})")
        return valid, invalid

    @property
    def frame_ids(self) -> list[str]:
        """The valid frames of the export, in temporal order."""
        return self._frame_table[0]

    @property
    def invalid_frame_ids(self) -> list[str]:
        """Exported frames whose pose is invalid (ScanNet's test: a non-finite entry or a zero first element)."""
        return self._frame_table[1]

    def pose(self, frame_id: str) -> np.ndarray:
        """[4, 4] float64 aligned camera-to-world of a valid frame (its file is read on first request)."""
        if frame_id not in self._poses:
            path = self.frame_dir / f"{frame_id}.txt"
            if not (self.frame_dir / f"{frame_id}.jpg").is_file() or not path.is_file():
                raise SceneDataError(f"{self.scene_id}: no frame {frame_id!r} in {self.frame_dir}")
            pose = read_matrix(path)
            if not is_valid_pose(pose):
                raise SceneDataError(f"{path}: frame {frame_id} of {self.scene_id} has an invalid pose")
            self._poses[frame_id] = self.axis_align @ pose
        return self._poses[frame_id]

    def check_frame(self, frame_id: str) -> None:
        """The frame's colour, depth and pose files exist and its pose is valid (else an error naming them)."""
        for suffix, what in ((".jpg", "colour image"), (".png", "depth image")):
            if not (self.frame_dir / f"{frame_id}{suffix}").is_file():
                raise SceneDataError(f"{self.frame_dir / (frame_id + suffix)}: {what} not found")
        self.pose(frame_id)

    def check_intrinsics(self, frame_id: str, color_size: tuple[int, int] | None = None,
                         depth_size: tuple[int, int] | None = None) -> None:
        """Both principal points inside their images: frame `frame_id`'s colour and depth images, of the (H, W)
        sizes given (read from the images' headers when not given)."""
        for name, K, image, size in (("intrinsic.txt", self.color_K, f"{frame_id}.jpg", color_size),
                                     ("depth_intrinsic.txt", self.depth_K, f"{frame_id}.png", depth_size)):
            check_principal_point(K, size or image_size(self.frame_dir / image), self.frame_dir / name,
                                  self.frame_dir / image)

    def load_frame(self, frame_id: str) -> Frame:
        """Read one valid frame's colour, depth and pose."""
        pose = self.pose(frame_id)
        return Frame(frame_id, read_color(self.frame_dir / f"{frame_id}.jpg"),
                     read_depth(self.frame_dir / f"{frame_id}.png"), pose)

    def load_frames(self, frame_ids: list[str]) -> FrameBatch:
        """Read S frames (all of one size) into a FrameBatch; an empty list is an error. A frame the list repeats
        (uniform sampling pads short scans with repeats) is decoded once and copied."""
        if not frame_ids:
            raise SceneDataError(f"{self.scene_id}: empty frame list")
        decoded = {f: self.load_frame(f) for f in dict.fromkeys(frame_ids)}
        frames = [decoded[f] for f in frame_ids]
        if len({f.color.shape for f in frames}) != 1 or len({f.depth.shape for f in frames}) != 1:
            raise SceneDataError(f"{self.frame_dir}: frames of different sizes cannot be batched")
        self.check_intrinsics(frame_ids[0], frames[0].color.shape[:2], frames[0].depth.shape)
        images = np.empty((len(frames), *frames[0].color.shape), dtype=np.float32)  # [S, H, W, 3]
        for image, frame in zip(images, frames):  # uint8 -> float32 straight into place (no uint8 stack)
            np.copyto(image, frame.color, casting="unsafe")
        return FrameBatch(
            scene_id=self.scene_id,
            frame_ids=list(frame_ids),
            images=torch.from_numpy(images).div_(255.0).permute(0, 3, 1, 2),  # channels-last strides
            depth=torch.from_numpy(np.stack([f.depth for f in frames])),
            poses=torch.from_numpy(np.stack([f.pose for f in frames])),
            color_K=torch.from_numpy(self.color_K.copy()),
            depth_K=torch.from_numpy(self.depth_K.copy()),
        )

    def source_files(self, frame_ids: list[str], objects: bool = False) -> list[Path]:
        """The files that reading these frames depends on: both intrinsics, the axis alignment (when present) and
        each frame's colour, depth and pose; with ``objects`` also the instance files the object boxes come from.
        What a feature cache or an evaluation fingerprints (`threedrs.provenance.fingerprint_files`)."""
        files = [self.frame_dir / "intrinsic.txt", self.frame_dir / "depth_intrinsic.txt"]
        extra = [self.scan_dir / f"{self.scene_id}.txt"]
        if objects:
            extra += [self.scan_dir / f"{self.scene_id}{suffix}" for suffix in
                      ("_vh_clean_2.ply", "_vh_clean_2.0.010000.segs.json", ".aggregation.json")]
        files += [p for p in extra if p.is_file()]
        for frame_id in dict.fromkeys(frame_ids):
            files += [self.frame_dir / f"{frame_id}{ext}" for ext in (".jpg", ".png", ".txt")]
        return files

    @cached_property
    def objects(self) -> list[ObjectBox]:
        """Annotated objects with aligned boxes, from the scan's mesh/segments/aggregation files."""
        return read_instances(self.scan_dir, self.scene_id, self.axis_align)


def split_scene_ids(root: str | Path, split: str) -> list[str]:
    """Scene ids listed in `<root>/metadata/scannetv2_<split>.txt` (one per line)."""
    path = Path(root) / "metadata" / f"scannetv2_{split}.txt"
    if not path.is_file():
        raise SceneDataError(f"{path}: split list not found (is {root} a dataset root?)")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise SceneDataError(f"{path}: split list is empty")
    return ids
