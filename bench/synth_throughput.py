"""SynthRooms generation throughput: frames per second (render + every file written) at 224x224 and 640x480, and
the wall time of the default set (40 scenes x 16 frames at 224x224). Prints a markdown table.

    .venv/bin/python bench/synth_throughput.py [--repeats 3] [--scenes 4] [--skip-default]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from threedrs.config import SynthConfig
from threedrs.data.synthetic import generate


def timed(cfg: SynthConfig, repeats: int) -> float:
    """Median wall seconds of `repeats` generations of `cfg` into fresh temporary folders."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(cfg, Path(tmp) / "synth", progress=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per small setting (median reported)")
    parser.add_argument("--scenes", type=int, default=4, help="scenes per small setting")
    parser.add_argument("--skip-default", action="store_true", help="skip the 40x16@224 default set")
    args = parser.parse_args()
    rows = []
    for width, height in ((224, 224), (640, 480)):
        cfg = SynthConfig(scenes=args.scenes, frames=16, width=width, height=height)
        seconds = timed(cfg, args.repeats)
        name = f"{args.scenes} x 16 @ {width}x{height}"
        rows.append((name, args.repeats, seconds, cfg.scenes * cfg.frames / seconds))
    if not args.skip_default:
        cfg = SynthConfig()
        seconds = timed(cfg, 1)
        rows.append((f"default {cfg.scenes} x {cfg.frames} @ {cfg.width}x{cfg.height}", 1, seconds,
                     cfg.scenes * cfg.frames / seconds))
    print("| setting (scenes x frames @ size) | runs | wall s (median) | frames/s |")
    print("|---|---|---|---|")
    for name, runs, seconds, fps in rows:
        print(f"| {name} | {runs} | {seconds:.2f} | {fps:.1f} |")


if __name__ == "__main__":
    main()
