"""Benchmark: time to load one scene's teacher features from a warm page cache, at the paper's setting.

- ours: `FeatureCache.load` (header and size check, metadata check, safetensors memory map) of a 32 x 14 x 14 x
  2048 float16 file (25.7 MB), alone (the tensors are views of the mapped file: pages are read when used) and
  followed by ``tokens.clone()`` (every byte read, what a consumer pays); --scenes files, each read once to warm
  the page cache, then --repeats timed passes.
- authors: ``numpy.load`` of a ``np.savez_compressed`` float32 file of 32 x 1041 x 2048 (VGGT's full token set,
  their format), decompressing the array; one file, warmed, --authors-repeats timed loads.
Times are medians; single process, torch threads as default.

Run: .venv/bin/python bench/cache_load_time.py [--scenes 8] [--repeats 5] [--authors-repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from threedrs.teachers.cache import CacheSpec, FeatureCache
from threedrs.teachers.cache_writer import CacheWriter

FRAMES, GRID, CHANNELS, AUTHORS_TOKENS = 32, (14, 14), 2048, 1041


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--authors-repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        spec = CacheSpec(teacher="vggt", weights_checksum="bench", layer=-1, sampling="uniform", frames=FRAMES,
                         coverage_voxel=None, grid=GRID, channels=CHANNELS)
        writer = CacheWriter(directory / "ours", spec, source_grid=(28, 37))
        gen = torch.Generator().manual_seed(0)
        scene_ids = [f"scene{i:04d}_00" for i in range(args.scenes)]
        valid = torch.ones(FRAMES, *GRID, dtype=torch.bool)
        for scene_id in scene_ids:
            writer.write(scene_id, torch.randn(FRAMES, *GRID, CHANNELS, generator=gen), valid,
                         [f"{10 * i:05d}" for i in range(FRAMES)], (28, 37))
        cache = FeatureCache(directory / "ours", expected=spec)
        for scene_id in scene_ids:  # warm the page cache
            cache.load(scene_id)
        lazy, touched = [], []
        for _ in range(args.repeats):
            for scene_id in scene_ids:
                start = time.perf_counter()
                tokens = cache.load(scene_id).tokens
                lazy.append(time.perf_counter() - start)
                start = time.perf_counter()
                tokens.clone()
                touched.append(lazy[-1] + time.perf_counter() - start)

        authors_path = directory / "vggt.npz"
        rng = np.random.default_rng(0)
        np.savez_compressed(authors_path, feature=rng.standard_normal((FRAMES, AUTHORS_TOKENS, CHANNELS),
                                                                      dtype=np.float32))
        np.load(authors_path)["feature"]  # warm
        authors = []
        for _ in range(args.authors_repeats):
            start = time.perf_counter()
            np.load(authors_path)["feature"]
            authors.append(time.perf_counter() - start)

    lazy_ms, ours_ms = statistics.median(lazy) * 1e3, statistics.median(touched) * 1e3
    authors_ms = statistics.median(authors) * 1e3
    print(f"Load time per scene from a warm page cache ({FRAMES} frames, {CHANNELS} channels)\n")
    print("| format | array | loads timed | median ms per scene |")
    print("|---|---|---|---|")
    print(f"| ours: FeatureCache.load (memory-mapped, pages not yet read) | float16 {FRAMES}x14x14x{CHANNELS} | "
          f"{len(lazy)} | {lazy_ms:.2f} |")
    print(f"| ours: FeatureCache.load + tokens.clone() (every byte read) | float16 {FRAMES}x14x14x{CHANNELS} | "
          f"{len(touched)} | {ours_ms:.1f} |")
    print(f"| authors: np.load of savez_compressed | float32 {FRAMES}x{AUTHORS_TOKENS}x{CHANNELS} | "
          f"{len(authors)} | {authors_ms:.0f} |")
    print(f"\nWith every byte read, ours is {authors_ms / ours_ms:.0f}x faster per scene.")


if __name__ == "__main__":
    main()
