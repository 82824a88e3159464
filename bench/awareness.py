"""Benchmark: what the background, contrast and recall cost beside the paper's 3D-awareness score.

Paper-size sample (the sample of bench/correspondence.py): 32 frames x 14x14 tokens x 2048 channels (N = 6272
tokens), float32 features, points in 300 voxels, 10% invalid tokens.

- score alone: `correspondence_score(..., background=False)`, the paper's number only.
- score + background + contrast: `correspondence_score(...)` (the default), for both variants. Target: at most
  1.5x the time of the score alone. The calls are interleaved (alone, full, alone, full, ...) so that both see
  the same machine load; medians of wall and process CPU time.
- recall: `correspondence_score(..., recall=True)`: median wall time over fewer repeats and the peak extra
  resident memory of one call (measured as in bench/correspondence.py) for two settings of
  `recall_memory_mb`; on a GPU (when CUDA is present) also the time and `torch.cuda.max_memory_allocated`.

Run: .venv/bin/python bench/awareness.py [--repeats 15] [--recall-repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from correspondence import _malloc_blocks_to_mmap, make_sample, peak_extra_mib

from threedrs.metrics.correspondence import correspondence_score


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (median wall s, median CPU s) over ``repeats`` rounds that call every fn once, after a warm-up."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def gpu_recall(features, points, valid, memory_mb: float, repeats: int) -> tuple[float, float, float]:
    """(median s, peak allocated MiB beyond the inputs, recall) of the recall on CUDA."""
    feats = features.cuda()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    times, result = [], None
    for k in range(repeats + 1):
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = correspondence_score(feats, points, valid, recall=True, recall_memory_mb=memory_mb)
        torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak, result.recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rows", type=int, default=14)
    parser.add_argument("--cols", type=int, default=14)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--voxels", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--recall-repeats", type=int, default=3)
    parser.add_argument("--memory", type=float, nargs="+", default=[256.0, 32.0], help="recall_memory_mb values")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    features, points, valid = make_sample(args.frames, args.rows, args.cols, args.channels, args.voxels, 0, 0.1)
    first = correspondence_score(features, points, valid)
    print(f"sample: {args.frames} frames x {args.rows}x{args.cols} tokens x {args.channels} channels, "
          f"{first.tokens} valid tokens, {first.pairs} pairs, {first.background_pairs} background pairs, "
          f"torch threads {torch.get_num_threads()}\n")

    print("| variant | score alone: wall ms | CPU ms | score + background + contrast: wall ms | CPU ms "
          "| ratio (wall) | ratio (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for variant in ("pairs", "voxel_mean"):
        timings = interleaved({
            "alone": lambda v=variant: correspondence_score(features, points, valid, variant=v, background=False),
            "full": lambda v=variant: correspondence_score(features, points, valid, variant=v)}, args.repeats)
        (aw, ac), (fw, fc) = timings["alone"], timings["full"]
        print(f"| {variant} | {aw * 1e3:.1f} | {ac * 1e3:.1f} | {fw * 1e3:.1f} | {fc * 1e3:.1f} | {fw / aw:.2f} "
              f"| {fc / ac:.2f} |")

    print("\n| recall on | recall_memory_mb | median wall s | peak extra memory (MiB) | recall | chance | queries |")
    print("|---|---|---|---|---|---|---|")
    pinned = _malloc_blocks_to_mmap()
    for memory in args.memory:
        def call(m=memory):
            return correspondence_score(features, points, valid, recall=True, recall_memory_mb=m)
        wall = interleaved({"recall": call}, args.recall_repeats)["recall"][0]
        result = call()
        peak = peak_extra_mib(call) if pinned else None
        print(f"| CPU | {memory:g} | {wall:.2f} | {'n/a' if peak is None else f'{peak:.1f}'} | {result.recall:.4f} "
              f"| {result.recall_chance:.4f} | {result.recall_queries} |")
    if torch.cuda.is_available():
        for memory in args.memory:
            seconds, peak, recall = gpu_recall(features, points, valid, memory, args.recall_repeats)
            print(f"| GPU ({torch.cuda.get_device_name()}) | {memory:g} | {seconds:.3f} | {peak:.1f} (allocated) "
                  f"| {recall:.4f} | | |")
    else:
        print("\nGPU: skipped: no CUDA device")


if __name__ == "__main__":
    main()
