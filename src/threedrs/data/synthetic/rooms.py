"""The scene graph of one SynthRooms room: the room box with a window, its furniture, the scan and the alignment.

Geometry lives in the ALIGNED room frame: the room spans [0, Lx] x [0, Ly] x [0, H] metres, floor at z = 0,
+z up, walls parallel to x and y. Shell surfaces are indexed 0: wall x = 0, 1: wall x = Lx, 2: wall y = 0,
3: wall y = Ly, 4: floor, 5: ceiling. Furniture objects carry objectId 0..K-1; the shell surfaces get the
instance ids that follow (floor K, walls K+1..K+4, ceiling K+5), as the aggregation file writes them.

A room is a pure function of (master seed, scene index, frame count, image size): every random draw comes from
`scene_rng(seed, index, stream)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threedrs.config import SynthConfig
from threedrs.data.synthetic.camera import Intrinsics, file_roundtrip, invalid_frames, scan_trajectory
from threedrs.data.synthetic.catalog import COLOURS, ROLE_ACCENT
from threedrs.data.synthetic.layout import Placed, furnish
from threedrs.data.synthetic.textures import MaterialBuilder, MaterialTable, Window

STREAM_LAYOUT, STREAM_CAMERA, STREAM_MESH, STREAM_PROPOSALS, STREAM_LANGUAGE, STREAM_SPLIT = range(6)
"""Independent random streams of one scene (STREAM_SPLIT is the master split draw)."""

SHELL_LABELS = ("wall", "wall", "wall", "wall", "floor", "ceiling")
"""Raw label of each shell surface index."""

_ACCENTS = {"metal": (0.22, 0.22, 0.24), "steel": (0.6, 0.6, 0.62), "wood": (0.45, 0.3, 0.17)}
_POT, _PILLOW = (0.62, 0.34, 0.21), (0.93, 0.93, 0.9)
_FLOORS = ((0.78, 0.72, 0.62), (0.6, 0.6, 0.6), (0.62, 0.42, 0.26), (0.72, 0.55, 0.38), (0.5, 0.45, 0.42))
_WALLS = ((0.9, 0.87, 0.78), (0.74, 0.82, 0.9), (0.78, 0.86, 0.76), (0.82, 0.82, 0.82), (0.9, 0.8, 0.8))


def scene_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random generator of one (scene, stream); any integer master seed is accepted."""
    return np.random.default_rng([seed % 2**64, index, stream])


def scene_name(index: int) -> str:
    """ScanNet-style scene id of room `index`: scene0000_00, scene0001_00, ..."""
    return f"scene{index:04d}_00"


@dataclass
class SceneObject:
    """One furniture instance.

    parts: [P, 6] float64 part boxes `lo_xyz, hi_xyz` in the aligned frame (metres); part_material: [P] int64
    material indices; front: [2] unit xy vector the object faces; support: objectId it stands on (None = floor);
    colour / size / texture: the words the annotations use.
    """

    object_id: int
    category: str
    colour: str
    size: str
    texture: str
    parts: np.ndarray
    part_material: np.ndarray
    front: np.ndarray
    support: int | None

    @property
    def lo(self) -> np.ndarray:
        return self.parts[:, :3].min(axis=0)

    @property
    def hi(self) -> np.ndarray:
        return self.parts[:, 3:].max(axis=0)

    @property
    def centre(self) -> np.ndarray:
        """[3] centre of the axis-aligned bounding box (metres)."""
        return (self.lo + self.hi) / 2

    @property
    def dims(self) -> np.ndarray:
        """[3] size of the axis-aligned bounding box (metres)."""
        return self.hi - self.lo

    @property
    def volume(self) -> float:
        return float(np.prod(self.dims))


@dataclass
class Room:
    """A generated room with its scan.

    size: [3] (Lx, Ly, H) metres. shell_material: [6] material index per shell surface. alignment: [4, 4] the
    axis alignment A as written (p_aligned = A · p_scan). poses: [F, 4, 4] aligned camera-to-world poses the frames
    are rendered with (= A · poses_scan); poses_scan: [F, 4, 4] unaligned poses as written ("%f") for valid
    frames; invalid: [F] bool frames whose pose file is all -inf. light_dir: [3] unit direction towards the light.
    """

    scene_id: str
    index: int
    size: np.ndarray
    window: Window
    objects: list[SceneObject]
    materials: MaterialTable
    shell_material: np.ndarray
    light_dir: np.ndarray
    alignment: np.ndarray
    intrinsics: Intrinsics
    poses: np.ndarray
    poses_scan: np.ndarray
    invalid: np.ndarray
    scene_type: str

    @property
    def shell_ids(self) -> np.ndarray:
        """[6] instance id per shell surface index (walls K+1..K+4, floor K, ceiling K+5)."""
        k = len(self.objects)
        return np.array([k + 1, k + 2, k + 3, k + 4, k, k + 5], dtype=np.int64)

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All furniture parts: (boxes [B, 6] float64 lo/hi, objectId [B] int64, material [B] int64)."""
        boxes = np.concatenate([o.parts for o in self.objects])
        ids = np.concatenate([np.full(len(o.parts), o.object_id) for o in self.objects]).astype(np.int64)
        mats = np.concatenate([o.part_material for o in self.objects]).astype(np.int64)
        return boxes, ids, mats


def _sample_window(size: np.ndarray, rng: np.random.Generator) -> Window:
    surface = int(rng.integers(4))
    length = size[1] if surface < 2 else size[0]
    width = rng.uniform(1.0, 1.6)
    centre = rng.uniform(0.6 + width / 2, length - 0.6 - width / 2)
    sill = rng.uniform(0.8, 1.0)
    top = min(sill + rng.uniform(1.0, 1.3), size[2] - 0.2)
    return Window(surface, float(centre - width / 2), float(centre + width / 2), float(sill), float(top))


def _object_materials(builder: MaterialBuilder, placed: Placed, rng: np.random.Generator) -> np.ndarray:
    """Add the main and accent materials of one object; returns the material index of each part."""
    base = np.asarray(COLOURS[placed.colour], dtype=np.float64) / 255.0
    base = np.clip(base * rng.uniform(0.88, 1.08) + rng.normal(0.0, 0.02, 3), 0, 1)
    luminance = float(base @ [0.3, 0.59, 0.11])
    if placed.texture == "plain":
        second = base * 0.92
    elif luminance < 0.25:
        second = base + (1 - base) * rng.uniform(0.3, 0.4)
    else:
        second = base * rng.uniform(0.5, 0.65)
    freq = {"plain": 1.0, "striped": rng.uniform(5, 10), "checkered": rng.uniform(4, 8),
            "speckled": rng.uniform(10, 18)}[placed.texture]
    seed = int(rng.integers(2**20))
    main = builder.add(base, second, placed.texture, freq, axis=int(rng.integers(2)), seed=seed)
    if placed.category == "plant":
        accent_rgb = np.asarray(_POT)
    elif placed.category == "bed":
        accent_rgb = np.asarray(_PILLOW)
    elif placed.category in ("bookshelf", "cabinet", "nightstand", "trash can"):
        accent_rgb = base * 0.75
    else:
        accent_rgb = np.asarray(_ACCENTS[("metal", "steel", "wood")[int(rng.integers(3))]])
    accent = builder.add(accent_rgb, accent_rgb * 0.9, "plain", 1.0, seed=seed + 1)
    return np.where(placed.roles == ROLE_ACCENT, accent, main).astype(np.int64)


def _shell_materials(builder: MaterialBuilder, rng: np.random.Generator) -> np.ndarray:
    """Materials of walls 0-3 (shared wallpaper), floor (tiles or planks) and ceiling; [6] indices."""
    floor_base = np.asarray(_FLOORS[int(rng.integers(len(_FLOORS)))])
    seed = int(rng.integers(2**20))
    # shell textures have enough contrast and detail that a patch of wall or floor looks different from
    # another patch of it: appearance alone must not make multi-view correspondence trivial
    if rng.random() < 0.5:
        floor = builder.add(floor_base, floor_base * 0.5, "checkered", rng.uniform(3.0, 5.0), grout=0.06, seed=seed)
    else:
        floor = builder.add(floor_base, floor_base * 0.55, "striped", rng.uniform(6, 10), axis=int(rng.integers(2)),
                            seed=seed)
    wall_base = np.asarray(_WALLS[int(rng.integers(len(_WALLS)))])
    if rng.random() < 0.5:
        wall = builder.add(wall_base, wall_base * 0.55, "striped", rng.uniform(4, 8), axis=0, seed=seed + 1)
    else:
        wall = builder.add(wall_base, wall_base * 0.55, "speckled", rng.uniform(6, 10), seed=seed + 1)
    ceiling = builder.add(np.array([0.95, 0.95, 0.93]), np.array([0.9, 0.9, 0.88]), "plain", 1.0, seed=seed + 2)
    return np.array([wall, wall, wall, wall, floor, ceiling], dtype=np.int64)


def _alignment(rng: np.random.Generator) -> np.ndarray:
    """A random ScanNet-like axis alignment: rotation about z plus a translation (aligned = A · scan)."""
    theta = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0, rng.uniform(-4, 4)], [s, c, 0, rng.uniform(-4, 4)],
                     [0, 0, 1, rng.uniform(-0.1, 0.1)], [0, 0, 0, 1]])


def _alignment_exact(alignment: np.ndarray) -> np.ndarray:
    """The rigid transform closest to a rounded alignment (re-orthonormalised rotation, same translation)."""
    u, _, vt = np.linalg.svd(alignment[:3, :3])
    out = alignment.copy()
    out[:3, :3] = u @ vt
    return out


def _scene_type(categories: set[str]) -> str:
    if "bed" in categories:
        return "Bedroom / Hotel"
    if categories & {"desk", "monitor"}:
        return "Office"
    if categories & {"sofa", "tv"}:
        return "Living room / Lounge"
    return "Misc."


def build_room(cfg: SynthConfig, index: int) -> Room:
    """Generate room `index` of the SynthRooms set described by `cfg` (deterministic)."""
    rng = scene_rng(cfg.seed, index, STREAM_LAYOUT)
    cam_rng = scene_rng(cfg.seed, index, STREAM_CAMERA)
    size = np.round(np.array([rng.uniform(4.0, 8.0), rng.uniform(3.5, 7.0), rng.uniform(2.6, 3.0)]), 2)
    window = _sample_window(size, rng)
    trajectory = scan_trajectory(size, cfg.frames, cam_rng)
    placed = furnish(size, window, trajectory.path_xy, rng)
    order = rng.permutation(len(placed))  # objectIds are not grouped by placement stage
    new_id = {int(old): new for new, old in enumerate(order)}
    builder = MaterialBuilder()
    shell_material = _shell_materials(builder, rng)
    objects = []
    for new, old in enumerate(order):
        p = placed[old]
        objects.append(SceneObject(
            object_id=new, category=p.category, colour=p.colour, size=p.size, texture=p.texture, parts=p.parts,
            part_material=_object_materials(builder, p, rng), front=p.front,
            support=None if p.support is None else new_id[p.support]))
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])
    alignment = file_roundtrip(_alignment(rng))
    aimed = trajectory.poses(np.array([o.centre for o in objects]))
    poses_scan = file_roundtrip(np.linalg.inv(_alignment_exact(alignment)) @ aimed)
    return Room(
        scene_id=scene_name(index), index=index, size=size, window=window, objects=objects,
        materials=builder.build(), shell_material=shell_material, light_dir=light / np.linalg.norm(light),
        alignment=alignment, intrinsics=Intrinsics.sample(cfg.width, cfg.height, cam_rng),
        poses=alignment @ poses_scan, poses_scan=poses_scan,
        invalid=invalid_frames(cfg.frames, cfg.invalid_pose_frames, cam_rng),
        scene_type=_scene_type({o.category for o in objects}))

