"""Build the adapter a config names: a local checkpoint, or a tiny random model when no path is given."""

from __future__ import annotations

from threedrs.config import ModelConfig
from threedrs.models.base import MLLMAdapter
from threedrs.models.loading import Placement, checkpoint_model_type, place_built


def build_adapter(cfg: ModelConfig, placement: Placement | None = None) -> MLLMAdapter:
    """The adapter of `cfg.family`, loaded from `cfg.path` (local folder) or built tiny and random (path None).

    placement: dtype, device and attention kernel of the weights (models/loading.py: `training_placement`,
    `inference_placement`); None = float32 on the CPU with `cfg.attn_implementation`.
    """
    placement = placement or Placement(attn_implementation=cfg.attn_implementation)
    if cfg.path:  # the folder's family before anything loads, in the words of the config
        checkpoint_model_type(cfg.path, (cfg.family,), f"but model.family is {cfg.family!r}")
    adapter = _build(cfg, placement)
    if cfg.path is None:
        place_built(adapter.model, placement)
    if placement.device != "meta":
        adapter.to(placement.device)  # the adapter's own buffers (pixel mean / std) follow the model
    return adapter


def _build(cfg: ModelConfig, placement: Placement) -> MLLMAdapter:
    if cfg.family in ("qwen2_vl", "qwen2_5_vl"):
        from threedrs.models.qwen2_vl import Qwen2VLAdapter

        if cfg.path:
            return Qwen2VLAdapter.from_pretrained(cfg.path, family=cfg.family, placement=placement,
                                                  image_size=cfg.image_size)
        return Qwen2VLAdapter.tiny(cfg.family, seed=cfg.tiny_seed, image_size=cfg.image_size or (42, 56))
    options = {} if cfg.newline == "auto" else {"newline": cfg.newline}  # the LLaVA families' newline and resize
    if cfg.family in ("llava_onevision", "llava_next_video"):
        options["resize"] = cfg.resize
    if cfg.family == "llava_onevision":
        from threedrs.models.llava_onevision import LlavaOnevisionAdapter as cls
    elif cfg.family == "llava_next_video":
        from threedrs.models.llava_next_video import LlavaNextVideoAdapter as cls
    elif cfg.family == "internvl":
        from threedrs.models.internvl import InternVLAdapter as cls
    else:
        raise ValueError(f"model.family: unknown family {cfg.family!r}")
    if cfg.path:
        return cls.from_pretrained(cfg.path, placement=placement, **options)
    if cfg.image_size is not None:
        if cfg.image_size[0] != cfg.image_size[1]:
            raise ValueError(f"model.image_size: {cfg.family} takes square frames, got {cfg.image_size}")
        return cls.tiny(seed=cfg.tiny_seed, image_size=cfg.image_size[0], **options)
    return cls.tiny(seed=cfg.tiny_seed, **options)
