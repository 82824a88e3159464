"""Benchmark: peak host memory (RSS) of each process when two CPU processes load a release-shaped Qwen2-VL-2B
(2 layers, the release's widths and 151,936-token vocabulary, bfloat16 safetensors) for training, before and after
low-memory loading.

Each process joins a 2-process gloo group, then does what `threedrs train` does before `accelerator.prepare`:
`training_load_device` (models/loading.py) picks where this rank loads, `training_placement` gives float32 master
weights, `build_adapter` loads the checkpoint and `AlignTask` adds the heads (VGGT's 2048 channels). Peak RSS is the
process's resident-set high-water mark (`VmHWM`) after the load; "before load" is the same counter after the
imports and the process group, so the difference is what loading cost that process.
- before: every rank reads the whole checkpoint into host memory (DDP on the CPU, or any launcher without
  low-memory loading): float32 master weights materialised twice on the node;
- after: the FSDP `fsdp_cpu_ram_efficient_loading` rule of configs/accelerate/fsdp_8gpu.yaml: rank 0 reads, rank 1
  builds the model on the meta device and would receive its shard from rank 0 when FSDP shards it. accelerate runs
  FSDP on GPUs only, so this measures the loading step of that path on CPU processes; the sharding is not run.
(GPU ranks of DDP / ZeRO-2 runs stream the weights straight onto their GPU: no host copy; not measurable here.)

Run (one torch thread per process):
  OMP_NUM_THREADS=1 .venv/bin/python bench/load_memory.py
  OMP_NUM_THREADS=1 .venv/bin/python bench/load_memory.py --checkpoint PATH   # an existing Qwen2-VL folder
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"before": ("MULTI_CPU", False), "after": ("FSDP", True)}  # accelerate distributed type, ram_efficient


def peak_mib() -> float:
    """This process's resident-set high-water mark (VmHWM) in MiB. Unlike getrusage's ru_maxrss, it starts afresh
    at exec: the worker does not inherit the peak of the parent that wrote the checkpoint."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line (Linux only)")


def worker(args: argparse.Namespace) -> None:
    """One rank: join the group, load as `args.mode` says, print one JSON line."""
    import torch
    import torch.distributed as dist

    from threedrs.align.task import AlignTask
    from threedrs.config import load_config
    from threedrs.models.loading import training_load_device, training_placement
    from threedrs.models.registry import build_adapter

    dist.init_process_group("gloo", rank=args.rank, world_size=2)
    distributed, ram_efficient = MODES[args.mode]
    cfg = load_config(None, ["model.family=qwen2_vl", f"model.path={args.checkpoint}"])
    cpu = torch.device("cpu")
    device = training_load_device(cpu, distributed, args.rank, ram_efficient=ram_efficient)
    before = peak_mib()
    task = AlignTask(build_adapter(cfg.model, training_placement(cfg.model, "bf16", cpu, device)), 2048)
    dist.barrier()
    params = sum(p.numel() for p in task.parameters())
    print(json.dumps({"mode": args.mode, "rank": args.rank, "device": device, "params": params,
                      "before_mib": before, "peak_mib": peak_mib()}), flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(mode: str, checkpoint: Path) -> list[dict]:
    """Start both ranks of `mode` together and collect their JSON lines."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--mode", mode, "--rank", str(rank),
                               "--checkpoint", str(checkpoint)], env=env, stdout=subprocess.PIPE, text=True)
             for rank in range(2)]
    lines = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode}: a rank failed with exit code {proc.returncode}")
        lines.append(json.loads(out.strip().splitlines()[-1]))
    return sorted(lines, key=lambda r: r["rank"])


def write_checkpoint(folder: Path) -> Path:
    """The release-shaped Qwen2-VL-2B folder of the tests (release widths, 2 layers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from release_checkpoints import write_release_checkpoint

    return write_release_checkpoint("qwen2_vl", folder, variant="2b", width="release", layers=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="Qwen2-VL folder (default: write the release-shaped "
                                                                 "2B one with 2 layers to a temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or write_checkpoint(Path(tmp) / "qwen2_vl_2b")
        size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 2**20
        rows = [r for mode in MODES for r in run_mode(mode, checkpoint)]
    print(f"\nQwen2-VL-2B-shaped checkpoint, 2 layers: {rows[0]['params'] / 1e6:.0f}M parameters with the heads, "
          f"{size:.0f} MiB of bfloat16 safetensors; float32 master weights; two CPU processes per row pair\n")
    print("| loading | rank | weights | peak RSS (MiB) | before load (MiB) | load cost (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['rank']} | {r['device']} | {r['peak_mib']:.0f} | {r['before_mib']:.0f} | "
              f"{r['peak_mib'] - r['before_mib']:.0f} |")
    total = {mode: sum(r["peak_mib"] for r in rows if r["mode"] == mode) for mode in MODES}
    print(f"\nSum of the two peaks: before {total['before']:.0f} MiB, after {total['after']:.0f} MiB "
          f"(ratio {total['after'] / total['before']:.2f}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
