"""Pinhole intrinsics and the hand-held scan trajectory of a SynthRooms room.

Conventions: the room's aligned frame has the floor at z = 0 and +z up (metres). Cameras follow OpenCV: +x right,
+y down, +z forward; a pose is the 4x4 camera-to-world matrix `T_wc` (p_world = T_wc · p_cam).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FOCAL_PER_WIDTH = 0.9
"""fx ~ fy ~ 0.9 W, as ScanNet (1170 px at 1296 px colour, 577 px at 640 px depth)."""
ATTENTION = np.deg2rad(40.0)  # objects within this bearing of the heading draw the camera towards them
ATTENTION_TURN = np.deg2rad(30.0)  # the most they turn it


def file_roundtrip(values: np.ndarray) -> np.ndarray:
    """The values a reader gets back after writing them with "%f" (six decimals): float64, same shape."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return np.array([float("%f" % v) for v in flat], dtype=np.float64).reshape(np.shape(values))


@dataclass(frozen=True)
class Intrinsics:
    """Pixel intrinsics of an image of `width` x `height` pixels (fx, fy, cx, cy in pixels).

    A pixel at column u, row v (integers, pixel centres) sees the camera ray ((u - cx) / fx, (v - cy) / fy, 1).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def sample(cls, width: int, height: int, rng: np.random.Generator) -> "Intrinsics":
        """ScanNet-like intrinsics with a small per-scan jitter, already rounded as they are written ("%f")."""
        fx = FOCAL_PER_WIDTH * width * (1 + rng.uniform(-0.01, 0.01))
        fy = fx * (1 + rng.uniform(-0.003, 0.003))
        cx = width / 2 + rng.uniform(-0.004, 0.004) * width
        cy = height / 2 + rng.uniform(-0.004, 0.004) * height
        fx, fy, cx, cy = file_roundtrip(np.array([fx, fy, cx, cy]))
        return cls(float(fx), float(fy), float(cx), float(cy), width, height)

    def resized(self, width: int, height: int) -> "Intrinsics":
        """The intrinsics of the same camera at another image size (fx, cx scale with the width, fy, cy with the
        height: ScanNet's and V3D's convention), rounded as they are written."""
        sx, sy = width / self.width, height / self.height
        fx, fy, cx, cy = file_roundtrip(np.array([self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy]))
        return Intrinsics(float(fx), float(fy), float(cx), float(cy), width, height)

    def matrix(self) -> np.ndarray:
        """The 4x4 matrix of ScanNet's `intrinsic.txt` (float64)."""
        return np.array([[self.fx, 0, self.cx, 0], [0, self.fy, self.cy, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                        dtype=np.float64)

    def ray_grid(self) -> np.ndarray:
        """[H, W, 3] float32 camera-frame ray directions with z = 1 (so the ray parameter is the z-depth)."""
        u = (np.arange(self.width, dtype=np.float64) - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float64) - self.cy) / self.fy
        grid = np.empty((self.height, self.width, 3), dtype=np.float32)
        grid[..., 0] = u[None, :]
        grid[..., 1] = v[:, None]
        grid[..., 2] = 1.0
        return grid


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """[3, 3] camera-to-world rotation of an OpenCV camera looking along heading `yaw` (radians from +x towards
    +y), tilted up by `pitch` (negative = looking down) and rolled by `roll` about its optical axis."""
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


@dataclass(frozen=True)
class Trajectory:
    """A scan before it is aimed: per frame the camera position [F, 3], heading yaw / pitch / roll [F] (radians)
    and hand-held jitter [F, 6] (unit normal draws), plus the dense path [M, 2] (xy, metres) the camera sweeps,
    which furniture placement keeps clear."""

    position: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    shake: np.ndarray
    path_xy: np.ndarray

    def poses(self, targets: np.ndarray) -> np.ndarray:
        """[F, 4, 4] aligned camera-to-world poses. The heading is drawn towards the objects: each frame turns by
        the distance-weighted mean bearing of the `targets` ([K, 3] centres) within ATTENTION of its heading
        (at most ATTENTION_TURN, smoothed over neighbouring frames); then the jitter is applied."""
        frames = len(self.yaw)
        offset = np.zeros(frames)
        for i in range(frames):
            rel = targets[:, :2] - self.position[i, :2]
            dist = np.linalg.norm(rel, axis=1)
            bearing = np.angle(np.exp(1j * (np.arctan2(rel[:, 1], rel[:, 0]) - self.yaw[i])))
            near = (np.abs(bearing) < ATTENTION) & (dist > 0.5)
            if near.any():
                w = 1.0 / dist[near]
                offset[i] = np.clip((w * bearing[near]).sum() / w.sum(), -ATTENTION_TURN, ATTENTION_TURN)
        if frames > 2:
            offset = np.convolve(np.pad(offset, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
        jitter = np.deg2rad(0.6)
        poses = np.zeros((frames, 4, 4))
        for i in range(frames):
            sh = self.shake[i]
            tilt = float(np.clip(self.pitch[i] + jitter * sh[4], np.deg2rad(-35), np.deg2rad(5)))
            poses[i, :3, :3] = camera_rotation(self.yaw[i] + offset[i] + jitter * sh[3], tilt,
                                               self.roll[i] + jitter * sh[5])
            poses[i, :3, 3] = self.position[i] + 0.01 * sh[:3]
            poses[i, 2, 3] = np.clip(poses[i, 2, 3], 1.2, 1.7)
            poses[i, 3, 3] = 1.0
        return poses


def _wave(rng: np.random.Generator, cycles: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random wave w(s) in [-1, 1] for s in [0, 1]: two sines of random frequency and phase."""
    f1, f2 = rng.uniform(*cycles, size=2)
    p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
    return lambda s: 0.65 * np.sin(2 * np.pi * f1 * s + p1) + 0.35 * np.sin(2 * np.pi * f2 * s + p2)


def scan_trajectory(room_size: np.ndarray, frames: int, rng: np.random.Generator) -> Trajectory:
    """A hand-held scan around the room: the camera walks a wobbly loop around the room centre (height 1.2-1.7 m)
    and looks across the room, its heading sweeping most of a full turn, pitch -35..+5 degrees, small roll.

    room_size: [3] (Lx, Ly, H) metres; frames: F >= 1.
    """
    lx, ly, _ = room_size
    room_centre = np.array([lx / 2, ly / 2])
    slack = room_centre - 1.0
    semi = rng.uniform(0.15, 0.5) * slack
    centre = room_centre + rng.uniform(-0.3, 0.3, size=2) * (slack - semi)
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.75, 1.0) * 2 * np.pi
    phase0 = rng.uniform(0, 2 * np.pi)
    height0, look0 = rng.uniform(1.3, 1.6), rng.uniform(-0.5, 0.5)
    pitch0 = np.deg2rad(rng.uniform(-24.0, -8.0))
    wobble, height, look, pitch_wave, roll_wave = (_wave(rng, c) for c in
                                                   ((1.0, 3.0), (0.5, 2.0), (0.5, 2.0), (0.5, 2.0), (0.5, 2.0)))

    def path(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        phi = phase0 + turn * s
        radius = 1.0 + 0.12 * wobble(s)
        return centre + semi * radius[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1), phi

    s = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    xy, phi = path(s)
    dense_xy, _ = path(np.linspace(0.0, 1.0, 256))
    z = height0 + 0.08 * height(s)
    look_angle = phi + np.pi + look0 + 0.35 * look(s)
    target = room_centre + 0.85 * room_centre * np.stack([np.cos(look_angle), np.sin(look_angle)], 1)
    yaw = np.arctan2(target[:, 1] - xy[:, 1], target[:, 0] - xy[:, 0])
    pitch = pitch0 + np.deg2rad(9.0) * pitch_wave(s)
    roll = np.deg2rad(2.5) * roll_wave(s)
    position = np.concatenate([xy, z[:, None]], axis=1)
    return Trajectory(position=position, yaw=yaw, pitch=pitch, roll=roll, shake=rng.normal(0.0, 1.0, (frames, 6)),
                      path_xy=dense_xy)


def invalid_frames(frames: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """[F] bool: `count` frames (never the first) whose pose is written as all -inf."""
    invalid = np.zeros(frames, dtype=bool)
    if count:
        invalid[rng.choice(np.arange(1, frames), size=count, replace=False)] = True
    return invalid
