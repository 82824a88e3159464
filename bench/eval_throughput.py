"""Evaluation throughput of `threedrs eval` on a tiny model: samples per second per benchmark.

Runs the untrained tiny Qwen2-VL of the demo (eval.checkpoint=none, the demo's frame and token settings) on the
val split of a SynthRooms set, each benchmark timed on its own from a fresh predictions folder; grounding is one
forward pass per batch, the others greedy generation of eval.max_new_tokens tokens plus the probe forward.

    .venv/bin/python bench/eval_throughput.py --root demo_out/synthrooms [--limit 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from threedrs.config import load_config
    from threedrs.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="demo_out/synthrooms", help="SynthRooms root (run `make demo` first)")
    parser.add_argument("--limit", type=int, default=40, help="samples per benchmark")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bench in ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d"):
            cfg = load_config(None, [
                f"data.root={args.root}", "data.frames=12", "model.image_size=[112,112]", "align.posenc=false",
                f"teacher.cache_dir={tmp}/cache", f"output_dir={tmp}/run", "eval.checkpoint=none",
                f"eval.benchmarks=[{bench}]", f"eval.limit={args.limit}", "eval.batch_size=16",
                "eval.max_new_tokens=8", "eval.probe=true", "eval.meteor=false"])
            start = time.perf_counter()
            evaluate(cfg, run_dir=Path(tmp) / bench, progress=False)
            seconds = time.perf_counter() - start
            rows.append((bench, args.limit, seconds, args.limit / seconds))
    print(f"| benchmark | samples | seconds (incl. model build and scoring) | samples/s |")
    print("|---|---|---|---|")
    for bench, n, seconds, rate in rows:
        print(f"| {bench} | {n} | {seconds:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
