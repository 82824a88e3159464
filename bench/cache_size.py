"""Benchmark: bytes per scene of our teacher-feature cache against the authors' format, at the paper's setting.

- authors (3DRS release): VGGT features stored float32 with all 1041 tokens of each of 32 frames (5 special
  tokens + 28 x 37 patches) x 2048 channels, written with ``numpy.savez_compressed`` (what their extraction does).
- ours: one safetensors file per scene (`threedrs.teachers.cache_writer.CacheWriter`): float16, already pooled to the
  student grid (32 frames x 14 x 14 tokens x 2048 channels) plus a [32, 14, 14] bool validity mask and metadata.

Features are random normal (float32 mantissas of real transformer features compress about as badly, so
compression gains little in either format). Files are written to a temporary directory and removed.
Target: ours <= 1/10 of the authors' bytes.

Run: .venv/bin/python bench/cache_size.py [--frames 32] [--channels 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from threedrs.teachers.cache import CacheSpec
from threedrs.teachers.cache_writer import CacheWriter

AUTHORS_TOKENS = 5 + 28 * 37  # camera + 4 registers + patches per frame (1041)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--channels", type=int, default=2048)
    args = parser.parse_args()
    frames, channels = args.frames, args.channels
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        authors = rng.standard_normal((frames, AUTHORS_TOKENS, channels), dtype=np.float32)
        start = time.perf_counter()
        np.savez_compressed(tmp_path / "scene0000_00.npz", features=authors)
        authors_seconds = time.perf_counter() - start
        authors_bytes = (tmp_path / "scene0000_00.npz").stat().st_size
        del authors

        spec = CacheSpec(teacher="vggt", weights_checksum="bench", layer=-1, sampling="uniform", frames=frames,
                         coverage_voxel=None, grid=(14, 14), channels=channels)
        writer = CacheWriter(tmp_path / "ours", spec, source_grid=(28, 37))
        tokens = torch.from_numpy(rng.standard_normal((frames, 14, 14, channels), dtype=np.float32))
        valid = torch.ones(frames, 14, 14, dtype=torch.bool)
        frame_ids = [f"{10 * i:05d}" for i in range(frames)]
        start = time.perf_counter()
        path = writer.write("scene0000_00", tokens, valid, frame_ids, (28, 37))
        ours_seconds = time.perf_counter() - start
        ours_bytes = path.stat().st_size

    raw = frames * AUTHORS_TOKENS * channels * 4
    print(f"Cache bytes per scene, {frames} frames x {channels} channels (random normal features)\n")
    print("| format | dtype | tokens per frame | bytes per scene | MB | vs authors | write s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| authors, raw array | float32 | {AUTHORS_TOKENS} | {raw:,} | {raw / 1e6:.1f} | - | - |")
    print(f"| authors, np.savez_compressed | float32 | {AUTHORS_TOKENS} | {authors_bytes:,} | "
          f"{authors_bytes / 1e6:.1f} | 1.00 | {authors_seconds:.1f} |")
    print(f"| ours, safetensors | float16 | 14x14 = 196 | {ours_bytes:,} | {ours_bytes / 1e6:.1f} | "
          f"{ours_bytes / authors_bytes:.3f} (1/{authors_bytes / ours_bytes:.1f}) | {ours_seconds:.2f} |")
    print(f"\nTarget <= 1/10 of the authors' file: {'met' if ours_bytes * 10 <= authors_bytes else 'NOT met'}.")


if __name__ == "__main__":
    main()
