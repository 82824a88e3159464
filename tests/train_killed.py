"""Run by tests/test_checkpoint.py: train with the given `key=value` overrides and kill -9 this process halfway
through writing the step-4 checkpoint's model.safetensors (a power cut or an OOM kill at the worst moment)."""

import os
import signal
import sys

import threedrs.checkpoint as checkpoint
from threedrs.config import load_config
from threedrs.train import train

real_save_file = checkpoint.save_file


def save_then_die(tensors, filename, metadata=None):
    real_save_file(tensors, filename, metadata=metadata)
    if "step_000004.tmp" in str(filename):
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


checkpoint.save_file = save_then_die
train(load_config(None, sys.argv[1:]), progress=False)
