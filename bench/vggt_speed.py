"""Speed of the VGGT teacher on one scene: seconds per scene and peak GPU memory, random-init weights.

VGGT-1B (float32 weights) encodes S frames of 392x518 px (ScanNet after VGGT's preprocessing) and returns the
last block's patch tokens; on CUDA under bf16 autocast, on CPU in float32. Prints a markdown table.

    .venv/bin/python bench/vggt_speed.py                                 # VGGT-1B, 32 frames, CUDA
    .venv/bin/python bench/vggt_speed.py --device cpu --frames 2 --tiny  # quick CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from threedrs.teachers.vggt import VGGTConfig, VGGTTeacher

TINY = VGGTConfig(embed_dim=64, depth=2, num_heads=4, patch_embed_depth=1, patch_embed_num_heads=4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device to run on (default: cuda)")
    parser.add_argument("--frames", type=int, default=32, help="frames per scene")
    parser.add_argument("--height", type=int, default=392, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=518, help="frame width in pixels")
    parser.add_argument("--layer", type=int, default=-1, help="aggregator block to export")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--tiny", action="store_true", help="a tiny random VGGT instead of VGGT-1B")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    teacher = VGGTTeacher(layer=args.layer, config=TINY if args.tiny else VGGTConfig()).to(device)
    frames = torch.rand(args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    frames = frames.to(device)

    def encode_scene() -> torch.Size:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            tokens = teacher.encode(frames)
        if on_cuda:
            torch.cuda.synchronize(device)
        return tokens.shape

    for _ in range(args.warmup):
        encode_scene()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.runs):
        start = time.perf_counter()
        shape = encode_scene()
        seconds.append(time.perf_counter() - start)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if on_cuda else "n/a"
    params = sum(param.numel() for param in teacher.parameters()) / 1e6
    name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    print(f"| model | device | precision | frames | input (HxW) | tokens | s/scene (median of {args.runs}) "
          "| peak GPU memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| VGGT {'tiny' if args.tiny else '1B'} aggregator ({params:.2f}M params), layer {teacher.layer} "
          f"| {name} | {'bf16 autocast' if on_cuda else 'fp32'} | {args.frames} | {args.height}x{args.width} "
          f"| {list(shape)} | {statistics.median(seconds):.3f} | {peak} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
