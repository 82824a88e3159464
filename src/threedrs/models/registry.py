"""Build the adapter a config names: a local checkpoint, or a tiny random model when no path is given."""

from __future__ import annotations

import json
from pathlib import Path

from threedrs.config import ModelConfig
from threedrs.models.base import MLLMAdapter


def check_checkpoint_family(cfg: ModelConfig) -> None:
    """Refuse, before anything loads, a `model.path` whose config.json names another family than `model.family`."""
    config = Path(cfg.path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model.path: no config.json in {cfg.path}")
    try:
        found = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{config}: not a JSON object with a model_type") from None
    if found != cfg.family:
        raise ValueError(f"{config}: model_type is {found!r}, but model.family is {cfg.family!r}")


def build_adapter(cfg: ModelConfig) -> MLLMAdapter:
    """The adapter of `cfg.family`, loaded from `cfg.path` (local folder) or built tiny and random (path None)."""
    if cfg.path:
        check_checkpoint_family(cfg)
    if cfg.family in ("qwen2_vl", "qwen2_5_vl"):
        from threedrs.models.qwen2_vl import Qwen2VLAdapter

        if cfg.path:
            return Qwen2VLAdapter.from_pretrained(cfg.path, family=cfg.family, image_size=cfg.image_size)
        return Qwen2VLAdapter.tiny(cfg.family, seed=cfg.tiny_seed, image_size=cfg.image_size or (42, 56))
    newline = {} if cfg.newline == "auto" else {"newline": cfg.newline}
    if cfg.family == "llava_onevision":
        from threedrs.models.llava_onevision import LlavaOnevisionAdapter as cls
    elif cfg.family == "llava_next_video":
        from threedrs.models.llava_next_video import LlavaNextVideoAdapter as cls
    elif cfg.family == "internvl":
        from threedrs.models.internvl import InternVLAdapter as cls
    else:
        raise ValueError(f"model.family: unknown family {cfg.family!r}")
    if cfg.path:
        return cls.from_pretrained(cfg.path, **newline)
    if cfg.image_size is not None:
        if cfg.image_size[0] != cfg.image_size[1]:
            raise ValueError(f"model.image_size: {cfg.family} takes square frames, got {cfg.image_size}")
        return cls.tiny(seed=cfg.tiny_seed, image_size=cfg.image_size[0], **newline)
    return cls.tiny(seed=cfg.tiny_seed, **newline)
