"""Run by tests/test_train.py under torchrun: train the tiny config and print the loss log (rank 0)."""

import sys
from pathlib import Path

from threedrs.config import load_config
from threedrs.train import train

root, out, batch = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
cfg = load_config(None, [
    f"data.root={root}", "data.frames=4", f"output_dir={out}", f"teacher.cache_dir={sys.argv[4]}",
    "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
    "train.steps=3", f"train.batch_size={batch}", "train.log_every=1", "train.save_every=3", "train.lr_llm=1e-3",
    "train.lr_heads=1e-3", "train.warmup_ratio=0.25"])
train(cfg, progress=False)
