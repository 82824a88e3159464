"""Simulated instance-segmentation proposals (the role Mask3D plays for Video-3D LLM's val scenes, FORMATS §2.4).

Proposals are built as VERTEX MASKS over the annotation mesh, so the proposal box table is exactly the min/max of
the aligned vertices under each mask, as V3D's `extract_pred_box.py` computes it. For each furniture object: a
jittered copy of its box selects vertices (most of the object's own, some of its neighbours' and the floor's); a
few objects are missed, a few get a duplicate, a few proposals are poor, and some spurious blobs are added.
"""

from __future__ import annotations

import numpy as np

from threedrs.data.synthetic.mesh import SceneMesh

MAX_PROPOSALS = 50  # V3D and LEO keep the first 50 rows
MISS_RATE, DUPLICATE_RATE, POOR_RATE = 0.08, 0.1, 0.12
MIN_VERTICES = 4


def mask_boxes(aligned: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[P, 6] `[cx, cy, cz, dx, dy, dz]` boxes of the aligned vertices [N, 3] under each mask of masks [P, N]."""
    out = np.zeros((masks.shape[0], 6))
    for i, mask in enumerate(masks):
        pts = aligned[mask]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        out[i] = np.concatenate([(lo + hi) / 2, hi - lo])
    return out


def _jittered_mask(mesh: SceneMesh, object_id: int, poor: bool, rng: np.random.Generator) -> np.ndarray:
    own = mesh.instance == object_id
    pts = mesh.aligned[own]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = np.maximum(hi - lo, 0.02)
    centre = (lo + hi) / 2 + rng.normal(0.0, 0.22 if poor else 0.06, 3) * size
    size = size * np.exp(rng.normal(0.0, 0.3 if poor else 0.1, 3))
    inside = np.all(np.abs(mesh.aligned - centre) <= size / 2 + 1e-3, axis=1)
    keep = rng.random(len(own)) > rng.uniform(0.1, 0.25)
    mask = inside & own & keep
    mask |= inside & ~own & (rng.random(len(own)) < 0.6)
    if (mask & own).sum() < MIN_VERTICES:  # the jitter missed the object: fall back to a random half of it
        mask = own & (rng.random(len(own)) < 0.5)
        mask[np.flatnonzero(own)[:MIN_VERTICES]] = True
    return mask


def _spurious_mask(mesh: SceneMesh, rng: np.random.Generator) -> np.ndarray | None:
    centre = mesh.aligned[int(rng.integers(len(mesh.aligned)))]
    mask = np.linalg.norm(mesh.aligned - centre, axis=1) <= rng.uniform(0.15, 0.45)
    return mask if mask.sum() >= MIN_VERTICES else None


def detector_proposals(mesh: SceneMesh, num_objects: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Proposals for furniture objects 0..num_objects-1 of `mesh`, shuffled, at most MAX_PROPOSALS.

    Returns (masks [P, N] bool over the mesh vertices, boxes [P, 6] aligned `[cx, cy, cz, dx, dy, dz]`).
    """
    masks = []
    for k in range(num_objects):
        if rng.random() < MISS_RATE:
            continue
        masks.append(_jittered_mask(mesh, k, rng.random() < POOR_RATE, rng))
        if rng.random() < DUPLICATE_RATE:
            masks.append(_jittered_mask(mesh, k, False, rng))
    for _ in range(int(rng.integers(1, 4))):
        spurious = _spurious_mask(mesh, rng)
        if spurious is not None:
            masks.append(spurious)
    masks = [masks[i] for i in rng.permutation(len(masks))][:MAX_PROPOSALS]
    stacked = np.stack(masks) if masks else np.zeros((0, len(mesh.aligned)), dtype=bool)
    return stacked, mask_boxes(mesh.aligned, stacked)
