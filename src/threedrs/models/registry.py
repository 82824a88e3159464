"""Build the adapter a config names: a local checkpoint, or a tiny random model when no path is given."""

from __future__ import annotations

from threedrs.config import ModelConfig
from threedrs.models.base import MLLMAdapter


def build_adapter(cfg: ModelConfig) -> MLLMAdapter:
    """The adapter of `cfg.family`, loaded from `cfg.path` (local folder) or built tiny and random (path None)."""
    if cfg.family in ("qwen2_vl", "qwen2_5_vl"):
        from threedrs.models.qwen2_vl import Qwen2VLAdapter

        if cfg.path:
            return Qwen2VLAdapter.from_pretrained(cfg.path, family=cfg.family, image_size=cfg.image_size)
        return Qwen2VLAdapter.tiny(cfg.family, seed=cfg.tiny_seed, image_size=cfg.image_size or (42, 56))
    if cfg.family == "llava_onevision":
        from threedrs.models.llava_onevision import LlavaOnevisionAdapter as cls
    elif cfg.family == "llava_next_video":
        from threedrs.models.llava_next_video import LlavaNextVideoAdapter as cls
    elif cfg.family == "internvl":
        from threedrs.models.internvl import InternVLAdapter as cls
    else:
        raise ValueError(f"model.family: unknown family {cfg.family!r}")
    if cfg.path:
        return cls.from_pretrained(cfg.path)
    if cfg.image_size is not None:
        if cfg.image_size[0] != cfg.image_size[1]:
            raise ValueError(f"model.image_size: {cfg.family} takes square frames, got {cfg.image_size}")
        return cls.tiny(seed=cfg.tiny_seed, image_size=cfg.image_size[0])
    return cls.tiny(seed=cfg.tiny_seed)
