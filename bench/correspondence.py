"""Benchmark: the linear-time 3D-awareness score against the straightforward pairwise implementation.

Paper-size sample: 32 frames x 14x14 tokens x 2048 channels (N = 6272 tokens), float32 features, world
points spread over a few hundred 0.1 m voxels (so many tokens share voxels), 10% invalid tokens.

- ours: `threedrs.metrics.correspondence.correspondence_score` (float64 group sums, no pair matrix).
- brute force: what people usually write: normalise, the full [N, N] float32 cosine matrix, [N, N] masks
  (same voxel, different frame, both valid, upper triangle), mean of the selected entries.

Time: median wall time, and median process CPU time (all threads; less sensitive to other processes on a
shared machine), over --repeats runs after one warm-up run of each, same inputs, same process.
Peak memory: Linux peak resident set size, measured after all timings in one more run of each. Before the
run the kernel's high-water mark is reset by writing "5" to /proc/self/clear_refs; the number is VmHWM after
the run minus VmRSS before it, i.e. the extra memory the call touched at its peak (inputs excluded). For this
phase glibc is told (mallopt M_MMAP_THRESHOLD = 128 KiB, which also stops its adaptive threshold) to serve
every block >= 128 KiB with mmap and unmap it on free, so no run reuses pages another left resident. "n/a"
where /proc/self/clear_refs or glibc's mallopt is unavailable.

Threads: 1 by default (both methods single-threaded, like for like, and steadier on a shared machine);
--threads 0 keeps torch's default. Small per-block kernels suffer more than one big matmul when other
processes compete for the cores, so multi-threaded numbers on a busy machine understate our speed-up.

Run: .venv/bin/python bench/correspondence.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from threedrs.metrics.correspondence import correspondence_score

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


def brute_force_score(features: torch.Tensor, points: torch.Tensor, valid: torch.Tensor, voxel_size: float) -> float:
    """Mean cosine over pairs of valid tokens of different frames in the same voxel, via [N, N] matrices."""
    frames, rows, cols, channels = features.shape
    unit = F.normalize(features.reshape(-1, channels).float(), dim=1)
    sim = unit @ unit.T
    voxel = torch.floor(points.reshape(-1, 3) / voxel_size).long()
    frame = torch.arange(frames).repeat_interleave(rows * cols)
    ok = valid.reshape(-1)
    mask = (voxel[:, None, :] == voxel[None, :, :]).all(dim=-1)
    mask &= frame[:, None] != frame[None, :]
    mask &= ok[:, None] & ok[None, :]
    mask = torch.triu(mask, diagonal=1)
    return float(sim[mask].mean())


def make_sample(frames: int, rows: int, cols: int, channels: int, voxels: int, seed: int, voxel_size: float):
    """Features with a per-voxel component plus noise; points jittered inside `voxels` random voxels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randint(-30, 30, (voxels, 3), generator=gen).double()
    which = torch.randint(0, voxels, (frames, rows, cols), generator=gen)
    jitter = 0.1 + 0.8 * torch.rand(frames, rows, cols, 3, generator=gen, dtype=torch.float64)
    points = ((centres[which] + jitter) * voxel_size).float()
    per_voxel = torch.randn(voxels, channels, generator=gen)
    features = per_voxel[which] + 1.5 * torch.randn(frames, rows, cols, channels, generator=gen)
    valid = torch.rand(frames, rows, cols, generator=gen) > 0.1
    points[~valid] = float("nan")
    return features, points, valid


def _memory_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{_STATUS}: no {field} line")


def _malloc_blocks_to_mmap() -> bool:
    """Make glibc serve blocks >= 128 KiB with mmap and unmap them on free; False if not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
    except (OSError, AttributeError, TypeError):
        return False


def time_runs(fn: Callable[[], float], repeats: int) -> tuple[float, float, float]:
    """(score, median wall s, median process CPU s) of fn over `repeats` calls after one warm-up call."""
    score = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return score, statistics.median(wall), statistics.median(cpu)


def peak_extra_mib(fn: Callable[[], float]) -> float | None:
    """Peak resident memory (MiB) one call of fn adds to the process; None where it cannot be measured."""
    try:
        _CLEAR_REFS.write_text("5")
        before = _memory_kib("VmRSS")
        fn()
        return (_memory_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rows", type=int, default=14)
    parser.add_argument("--cols", type=int, default=14)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--voxels", type=int, default=300, help="distinct occupied voxels")
    parser.add_argument("--voxel-size", type=float, default=0.1, help="metres")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave the default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    features, points, valid = make_sample(
        args.frames, args.rows, args.cols, args.channels, args.voxels, args.seed, args.voxel_size
    )
    result = correspondence_score(features, points, valid, voxel_size=args.voxel_size)
    methods = {
        "ours (voxel group sums, float64)":
            lambda: correspondence_score(features, points, valid, voxel_size=args.voxel_size).score,
        "brute force ([N,N] float32 matrix)": lambda: brute_force_score(features, points, valid, args.voxel_size),
    }
    timings = {name: time_runs(fn, args.repeats) for name, fn in methods.items()}
    pinned = _malloc_blocks_to_mmap()
    peaks = {name: peak_extra_mib(fn) if pinned else None for name, fn in methods.items()}
    ours, brute = timings.values()

    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    tokens = args.frames * args.rows * args.cols
    print(f"sample: {args.frames} frames x {args.rows}x{args.cols} tokens x {args.channels} channels "
          f"(N={tokens}), {args.voxels} voxels, {result.tokens} valid tokens, {result.pairs} pairs, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats\n")
    print("| method | median wall time (ms) | median CPU time (ms) | peak extra memory (MiB) | score |")
    print("|---|---|---|---|---|")
    for name, (score, wall, cpu) in timings.items():
        print(f"| {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {mib(peaks[name])} | {score:.8f} |")
    print(f"\nspeed-up: {brute[1] / ours[1]:.1f}x wall, {brute[2] / ours[2]:.1f}x CPU; "
          f"|score difference|: {abs(ours[0] - brute[0]):.2e}")


if __name__ == "__main__":
    main()
