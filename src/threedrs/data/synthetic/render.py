"""Vectorised ray caster for SynthRooms: colour, exact z-depth and instance ids of a room seen by a pinhole camera.

Every pixel (u, v) casts the ray o + t · R · ((u - cx) / fx, (v - cy) / fy, 1) in the aligned room frame. With
this unnormalised direction the ray parameter t of a hit IS its z-depth along the optical axis. The room shell
(floor, four walls, ceiling) is the inside of one box, so each ray's exit distance gives the background; then each
furniture part box is slab-tested, but only on the pixels inside its projected screen rectangle, and the nearest
hit wins. Shading: procedural albedo (textures.py) under an ambient term, a directional light and a ceiling lamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threedrs.data.synthetic.camera import Intrinsics
from threedrs.data.synthetic.rooms import Room
from threedrs.data.synthetic.textures import MaterialTable, Window, albedo, paint_window

_NEAR = 1e-4  # metres: box corners closer than this to the camera plane make the box cover the whole image


@dataclass(frozen=True)
class RenderScene:
    """The geometry a frame is rendered from (float32 arrays, aligned frame, metres).

    size: [3] room (Lx, Ly, H); box_lo / box_hi: [B, 3] furniture part boxes; box_instance / box_material: [B]
    int64; shell_instance / shell_material: [6] int64 per shell surface (walls 0-3, floor 4, ceiling 5);
    light_dir: [3] unit vector towards the directional light.
    """

    size: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    box_instance: np.ndarray
    box_material: np.ndarray
    shell_instance: np.ndarray
    shell_material: np.ndarray
    materials: MaterialTable
    window: Window
    light_dir: np.ndarray

    @classmethod
    def from_room(cls, room: Room) -> "RenderScene":
        boxes, ids, mats = room.parts()
        return cls(size=room.size.astype(np.float32), box_lo=boxes[:, :3].astype(np.float32),
                   box_hi=boxes[:, 3:].astype(np.float32), box_instance=ids, box_material=mats,
                   shell_instance=room.shell_ids, shell_material=room.shell_material, materials=room.materials,
                   window=room.window, light_dir=room.light_dir.astype(np.float32))


@dataclass(frozen=True)
class RenderedFrame:
    """rgb: [H, W, 3] uint8; depth: [H, W] float32 z-depth in metres (every pixel hits the room shell);
    instance: [H, W] int64 objectId of the surface seen (shell surfaces use Room.shell_ids)."""

    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray


class Renderer:
    """Renders one room at one image size; `render(pose)` per frame."""

    def __init__(self, scene: RenderScene, intrinsics: Intrinsics):
        self.scene = scene
        self.k = intrinsics
        self.grid = intrinsics.ray_grid()
        lo, hi = scene.box_lo, scene.box_hi
        sel = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)  # [8, 3] hi-or-lo
        self.corners = np.where(sel[None], hi[:, None, :], lo[:, None, :])  # [B, 8, 3]

    def _rects(self, rotation: np.ndarray, origin: np.ndarray) -> list[tuple[int, int, int, int] | None]:
        """Pixel rectangle (r0, r1, c0, c1) that may see each box, or None when the box is behind the camera."""
        k, h, w = self.k, self.k.height, self.k.width
        cam = (self.corners - origin) @ rotation  # [B, 8, 3] camera-frame corners
        z = cam[..., 2]
        safe = np.maximum(z, _NEAR)
        u = k.fx * cam[..., 0] / safe + k.cx
        v = k.fy * cam[..., 1] / safe + k.cy
        rects: list[tuple[int, int, int, int] | None] = []
        for b in range(cam.shape[0]):
            if z[b].max() <= _NEAR:
                rects.append(None)
            elif z[b].min() <= _NEAR:
                rects.append((0, h, 0, w))
            else:
                c0, c1 = max(int(np.floor(u[b].min())) - 1, 0), min(int(np.ceil(u[b].max())) + 2, w)
                r0, r1 = max(int(np.floor(v[b].min())) - 1, 0), min(int(np.ceil(v[b].max())) + 2, h)
                rects.append((r0, r1, c0, c1) if c0 < c1 and r0 < r1 else None)
        return rects

    def render(self, pose: np.ndarray) -> RenderedFrame:
        """Render the frame seen from `pose` ([4, 4] float64 aligned camera-to-world, OpenCV camera)."""
        sc = self.scene
        rotation = pose[:3, :3].astype(np.float32)
        origin = pose[:3, 3].astype(np.float32)
        gx, gy = self.grid[..., 0], self.grid[..., 1]
        d = [rotation[a, 0] * gx + rotation[a, 1] * gy + rotation[a, 2] for a in range(3)]  # [H, W] each
        d = [np.where(np.abs(c) < 1e-9, np.float32(1e-9), c) for c in d]
        inv = [np.float32(1.0) / c for c in d]
        # the room shell: the nearest exit through the three slab pairs
        t = [(np.where(d[a] > 0, sc.size[a], np.float32(0)) - origin[a]) * inv[a] for a in range(3)]
        depth = np.minimum(np.minimum(t[0], t[1]), t[2])
        axis = np.where(t[0] == depth, 0, np.where(t[1] == depth, 1, 2))
        positive = np.where(axis == 0, d[0] > 0, np.where(axis == 1, d[1] > 0, d[2] > 0))
        surface = 2 * axis + positive
        instance = sc.shell_instance[surface]
        material = sc.shell_material[surface]
        for b, rect in enumerate(self._rects(rotation, origin)):
            if rect is None:
                continue
            view = (slice(rect[0], rect[1]), slice(rect[2], rect[3]))
            t_in, t_out = [], []
            for a in range(3):
                t1 = (sc.box_lo[b, a] - origin[a]) * inv[a][view]
                t2 = (sc.box_hi[b, a] - origin[a]) * inv[a][view]
                t_in.append(np.minimum(t1, t2))
                t_out.append(np.maximum(t1, t2))
            near = np.maximum(np.maximum(t_in[0], t_in[1]), t_in[2])
            far = np.minimum(np.minimum(t_out[0], t_out[1]), t_out[2])
            depth_view = depth[view]
            hit = (near <= far) & (near > 0) & (near < depth_view)
            if not hit.any():
                continue
            nh = near[hit]
            depth_view[hit] = nh
            instance[view][hit] = sc.box_instance[b]
            material[view][hit] = sc.box_material[b]
            axis[view][hit] = np.where(t_in[0][hit] == nh, 0, np.where(t_in[1][hit] == nh, 1, 2))
        rgb = self._shade(origin, d, depth, axis, material, instance)
        return RenderedFrame(rgb=rgb, depth=depth, instance=instance)

    def _shade(self, origin: np.ndarray, d: list[np.ndarray], depth: np.ndarray, axis: np.ndarray,
               material: np.ndarray, instance: np.ndarray) -> np.ndarray:
        sc = self.scene
        h, w = depth.shape
        points = np.stack([(origin[a] + depth * d[a]).reshape(-1) for a in range(3)], axis=1)
        axis_f = axis.reshape(-1)
        colour = albedo(points, axis_f, material.reshape(-1), sc.materials)
        on_wall = instance.reshape(-1) == sc.shell_instance[sc.window.surface]
        glass = paint_window(points, colour, on_wall, sc.window)
        d_axis = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2])).reshape(-1)
        sign = np.where(d_axis > 0, np.float32(-1), np.float32(1))  # the face normal opposes the ray
        n_dot_l = sign * sc.light_dir[axis_f]
        lamp = np.array([sc.size[0] / 2, sc.size[1] / 2, sc.size[2] - 0.05], dtype=np.float32) - points
        lamp_axis = np.take_along_axis(lamp, axis_f[:, None], axis=1)[:, 0]
        n_dot_lamp = sign * lamp_axis / np.sqrt(np.einsum("ij,ij->i", lamp, lamp)).clip(1e-3)
        shade = (0.45 + 0.4 * np.maximum(n_dot_l, 0) + 0.3 * np.maximum(n_dot_lamp, 0)
                 + 0.08 * np.maximum(-n_dot_l, 0))
        shade[glass] = 1.0
        rgb = np.clip(colour * shade[:, None] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return rgb.reshape(h, w, 3)
