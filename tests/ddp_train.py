"""Run by tests/test_train.py under torchrun: train the tiny config (rank 0 writes the loss log).

Arguments: root, output_dir, batch size per process, cache dir, then optionally "stop" (every process stops
right after the step-2 checkpoint, as a job killed there) or "resume" (continue the run in output_dir)."""

import sys
from pathlib import Path

from threedrs import train as train_module
from threedrs.config import load_config
from threedrs.train import train

root, out, batch = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
mode = sys.argv[5] if len(sys.argv) > 5 else ""
cfg = load_config(None, [
    f"data.root={root}", "data.frames=4", f"output_dir={out}", f"teacher.cache_dir={sys.argv[4]}",
    "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
    "train.steps=3", f"train.batch_size={batch}", "train.log_every=1", f"train.save_every={2 if mode else 3}",
    "train.lr_llm=1e-3", "train.lr_heads=1e-3", "train.warmup_ratio=0.25"])
if mode == "stop":
    real_save = train_module.save_checkpoint

    def save_then_stop(*args):
        path = real_save(*args)
        if args[-1] == 2:
            raise SystemExit(3)
        return path

    train_module.save_checkpoint = save_then_stop
train(cfg, resume=mode == "resume", progress=False)
