"""Test setup: offline Hugging Face, the tests folder importable (shared file writers), deterministic torch."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthrooms_tiny(tmp_path_factory):
    """A tiny SynthRooms set (6 rooms x 6 frames, 64x48 colour with 32x24 depth: half the colour size, as ScanNet's
    640x480 depth beside 1296x968 colour), generated once per test session."""
    from threedrs.config import SynthConfig
    from threedrs.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthrooms") / "rooms"
    generate(SynthConfig(scenes=6, frames=6, width=64, height=48, depth_width=32, depth_height=24, seed=3,
                         invalid_pose_frames=1), root, progress=False)
    return root


@pytest.fixture(scope="session")
def release_checkpoint(tmp_path_factory):
    """Factory `release_checkpoint(family, variant=None, width="small", layers=2) -> Path`: a folder shaped like the
    family's released checkpoint (release_checkpoints.py), written once per session per argument set. Shared by
    all tests: copy it before changing any file in it."""
    from release_checkpoints import write_release_checkpoint

    cache = {}

    def make(family, variant=None, width="small", layers=2):
        key = (family, variant, width, layers)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"release_{family}") / "checkpoint"
            cache[key] = write_release_checkpoint(family, folder, variant=variant, width=width, layers=layers)
        return cache[key]

    return make
