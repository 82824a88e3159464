"""Benchmark: data-loader resident memory while reading 50 vs 500 cached scenes with 2 workers.

Scenes: 500 cache files of 2 frames x 14 x 14 tokens x 2048 channels float16 (1.6 MB each, 0.8 GB in all; fewer
frames than the paper's 32 keep the disk use and the run short, the per-scene pattern is the same).
Two datasets read one scene per item:
- ours: `FeatureCache.load` per item (safetensors mapped, copied out, closed): nothing is kept between items;
- naive: the same reads, kept in a per-worker dict (what the authors' release does), so each worker's memory
  grows with the scenes it has seen.
Each item reports its worker's pid and VmRSS (from /proc/self/status). After one pass over the first N scenes
(batch size 1, 2 workers) the table gives the workers' growth (sum over the 2 workers of the RSS at their last
item minus at their first item: what reading the scenes added) and the total RSS (main + the 2 workers' last
RSS; forked workers share pages with the main process, which this sum counts twice, so it carries a baseline
of several hundred MB). Page-cache pages are not counted: a file's pages leave a process's RSS when unmapped.

Run: .venv/bin/python bench/cache_loader_memory.py [--scenes 50,500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from threedrs.teachers.cache import CacheSpec, FeatureCache
from threedrs.teachers.cache_writer import CacheWriter

FRAMES, GRID, CHANNELS = 2, (14, 14), 2048


def rss_mb() -> float:
    """This process's resident set size in MB (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


class CachedScenes(Dataset):
    """One scene per item straight from the cache; returns (tokens [S, h, w, C] float16, worker pid, RSS MB)."""

    def __init__(self, directory: Path, scene_ids: list[str]):
        self.cache, self.scene_ids = FeatureCache(directory), scene_ids

    def __len__(self) -> int:
        return len(self.scene_ids)

    def read(self, scene_id: str) -> torch.Tensor:
        return self.cache.load(scene_id).tokens

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float]:
        return self.read(self.scene_ids[index]), os.getpid(), rss_mb()


class DictCachedScenes(CachedScenes):
    """The naive variant: every scene read is kept in this worker's dict."""

    def __init__(self, directory: Path, scene_ids: list[str]):
        super().__init__(directory, scene_ids)
        self.store: dict[str, torch.Tensor] = {}

    def read(self, scene_id: str) -> torch.Tensor:
        if scene_id not in self.store:
            self.store[scene_id] = super().read(scene_id)
        return self.store[scene_id]


def measure(dataset: CachedScenes) -> tuple[float, float, float]:
    """(workers' RSS growth MB, main + workers RSS MB after one pass, seconds)."""
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=None, num_workers=2, shuffle=False)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for _, pid, worker_rss in loader:
        first.setdefault(int(pid), float(worker_rss))
        last[int(pid)] = float(worker_rss)
    seconds = time.perf_counter() - start
    growth = sum(last[pid] - first[pid] for pid in last)
    return growth, rss_mb() + sum(last.values()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", default="50,500", help="comma-separated scene counts (default 50,500)")
    args = parser.parse_args()
    counts = [int(c) for c in args.scenes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        spec = CacheSpec(teacher="vggt", weights_checksum="bench", layer=-1, sampling="uniform", frames=FRAMES,
                         coverage_voxel=None, grid=GRID, channels=CHANNELS)
        writer = CacheWriter(directory, spec, source_grid=(28, 37))
        gen = torch.Generator().manual_seed(0)
        scene_ids = [f"scene{i:04d}_00" for i in range(max(counts))]
        valid = torch.ones(FRAMES, *GRID, dtype=torch.bool)
        for scene_id in scene_ids:
            tokens = torch.randn(FRAMES, *GRID, CHANNELS, generator=gen)
            writer.write(scene_id, tokens, valid, [f"{i:05d}" for i in range(FRAMES)], (28, 37))
        size_mb = writer.path(scene_ids[0]).stat().st_size / 1e6
        print(f"Data-loader RSS (main + 2 workers), {FRAMES} frames x {GRID[0]}x{GRID[1]} x {CHANNELS} float16 "
              f"= {size_mb:.2f} MB per scene\n")
        print("| dataset | scenes read | workers' RSS growth MB | total RSS MB (main + 2 workers) | seconds |")
        print("|---|---|---|---|---|")
        for name, cls in (("ours: FeatureCache per item", CachedScenes),
                          ("naive: per-worker dict", DictCachedScenes)):
            for count in counts:
                growth, total, seconds = measure(cls(directory, scene_ids[:count]))
                print(f"| {name} | {count} | {growth:.0f} | {total:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
