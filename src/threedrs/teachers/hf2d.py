"""2D teachers through Hugging Face transformers, loaded from a LOCAL model folder (never downloaded).

Registered names and the ``config.json`` model types each accepts (the family is read from ``model_type``):

| name         | transformers class         | model_type                            | special tokens dropped    |
|--------------|----------------------------|---------------------------------------|---------------------------|
| ``dinov2``     | Dinov2Model                | dinov2                                | CLS                       |
| ``dinov2_reg`` | Dinov2WithRegistersModel   | dinov2_with_registers                 | CLS + registers           |
| ``siglip``     | SiglipVisionModel          | siglip (full model), siglip_vision_model | none (SigLIP has no CLS) |
| ``siglip2``    | Siglip2VisionModel (NaFlex) | siglip2, siglip2_vision_model        | none                      |
| ``mae``        | ViTMAEModel, mask_ratio 0  | vit_mae                               | CLS                       |

SigLIP2's fixed-resolution checkpoints are stored as ``siglip`` models: use ``siglip`` for them. ``siglip2`` is the
NaFlex variant: each frame is resized, keeping its aspect ratio, to the largest grid of at most
``max_num_patches`` patches (preprocessor_config.json), patchified in torch and passed with
``pixel_attention_mask`` (all ones: frames of one call share a size, so there is no padding) and ``spatial_shapes``.
ViT-MAE runs with ``mask_ratio = 0`` and ascending ``noise``, so no token is dropped and none is shuffled.

Preprocessing is done in torch from ``preprocessor_config.json``: the WHOLE frame is resized (no centre crop, so
tokens cover the field of view the student sees) to the model's input size (``crop_size`` when the processor
centre-crops, else ``size``), with the processor's resampling filter (antialiased), then normalised with its
image_mean / image_std. Output: the patch tokens of block ``layer`` as [S, h, w, C]; the last block
(``layer = -1``) is ``last_hidden_state`` (after the model's final norm), earlier blocks are the raw
``hidden_states`` entries.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from threedrs.data.scene import FrameBatch
from threedrs.json_files import read_json_file
from threedrs.provenance import file_sha256
from threedrs.teachers.base import Teacher, register_teacher

__all__ = ["HFVisionTeacher", "ModelFolderError", "Preprocessing", "naflex_grid", "read_preprocessing"]

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL filter codes; others are approximated by bicubic
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ModelFolderError(ValueError):
    """A model folder holds another model type, or its configuration cannot be used."""


@dataclass(frozen=True)
class Preprocessing:
    """How frames become model input. size: fixed (H, W) in pixels, or None for NaFlex (``max_patches`` set)."""

    size: tuple[int, int] | None
    max_patches: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str


def read_preprocessing(directory: Path) -> Preprocessing:
    """Read ``<directory>/preprocessor_config.json``; FileNotFoundError / ModelFolderError name the file."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the teacher takes its input size and normalisation from it)")
    proc = read_json_file(path, ModelFolderError, expect=dict)
    if proc.get("do_normalize", True):
        mean, std = proc.get("image_mean"), proc.get("image_std")
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
            raise ModelFolderError(f"{path}: image_mean and image_std must be lists of 3 numbers")
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    resample = proc.get("resample", 3)
    mode = _RESAMPLE.get(resample, "bicubic")
    if "max_num_patches" in proc:
        return Preprocessing(None, int(proc["max_num_patches"]), tuple(mean), tuple(std), mode)
    crop, size = proc.get("crop_size"), proc.get("size")
    if proc.get("do_center_crop") and isinstance(crop, dict) and {"height", "width"} <= set(crop):
        hw = (int(crop["height"]), int(crop["width"]))
    elif isinstance(size, dict) and {"height", "width"} <= set(size):
        hw = (int(size["height"]), int(size["width"]))
    elif isinstance(size, dict) and "shortest_edge" in size:
        hw = (int(size["shortest_edge"]),) * 2
    elif isinstance(size, int):
        hw = (size, size)
    else:
        raise ModelFolderError(f"{path}: no input size (crop_size, size or max_num_patches)")
    return Preprocessing(hw, None, tuple(mean), tuple(std), mode)


def naflex_grid(height: int, width: int, patch: int, max_patches: int) -> tuple[int, int]:
    """(rows, cols) of the largest aspect-preserving patch grid with rows * cols <= max_patches.

    A frame scaled by s gets ceil(H s / p) x ceil(W s / p) patches (at least 1 x 1); s is the largest scale
    (found by bisection) whose grid fits, as SigLIP2's NaFlex processor does.
    """
    def grid(scale: float) -> tuple[int, int]:
        return max(1, math.ceil(height * scale / patch)), max(1, math.ceil(width * scale / patch))

    low, high = 1e-6, 100.0
    for _ in range(64):
        mid = (low + high) / 2
        rows, cols = grid(mid)
        if rows * cols <= max_patches:
            low = mid
        else:
            high = mid
    return grid(low)


class HFVisionTeacher(Teacher):
    """A transformers vision backbone as a frozen teacher (see the module docstring).

    Args:
        checkpoint: local model folder (config.json, weights, preprocessor_config.json); required.
        layer: block whose patch tokens are exported; negative values count from the end (-1: last block).
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    hf_class: ClassVar[str] = ""
    fixed_positions: ClassVar[bool] = True  # position embeddings only fit the configured image size

    def __init__(self, checkpoint: str | Path | None = None, layer: int = -1) -> None:
        super().__init__()
        if checkpoint is None:
            raise ValueError(f"teacher {self.name!r} needs teacher.checkpoint: a local Hugging Face model folder")
        self.directory = Path(checkpoint)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: model folder not found")
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not found ({self.directory} is not a Hugging Face model folder)")
        model_type = read_json_file(config_path, ModelFolderError, expect=dict).get("model_type")
        if model_type not in self.model_types:
            raise ModelFolderError(f"{self.directory} holds a {model_type!r} model (config.json model_type); teacher "
                                   f"{self.name!r} needs one of: {', '.join(self.model_types)}")
        self.preprocessing = read_preprocessing(self.directory)
        self.model = self._load_model()
        config = self.model.config
        depth = int(config.num_hidden_layers)
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is out of range for {self.directory} with {depth} blocks "
                             f"(valid: {-depth}..{depth - 1})")
        self.layer, self.depth = layer % depth, depth
        size = self.preprocessing.size
        patch = int(config.patch_size)
        if size is not None and (size[0] % patch or size[1] % patch):
            raise ModelFolderError(f"{self.directory}: input size {size} is not a multiple of the patch size {patch}")
        image_size = getattr(config, "image_size", None)
        if self.fixed_positions and size is not None and size != (image_size, image_size):
            raise ModelFolderError(f"{self.directory}: preprocessor input size {size} differs from the model's "
                                   f"image_size {image_size}, which its position embeddings are made for")
        self.register_buffer("mean", torch.tensor(self.preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.preprocessing.std).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def _load_model(self) -> nn.Module:
        import transformers

        cls = getattr(transformers, self.hf_class)
        try:
            model, info = cls.from_pretrained(self.directory, local_files_only=True, dtype=torch.float32,
                                              output_loading_info=True, **self._load_options())
        except Exception as exc:  # transformers / safetensors raise many types for missing or damaged files
            raise ModelFolderError(f"{self.directory}: cannot load {self.hf_class} ({exc})") from exc
        if info["missing_keys"] or info["mismatched_keys"]:
            missing = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
            raise ModelFolderError(f"{self.directory}: {len(missing)} weights missing or of the wrong shape for "
                                   f"{self.hf_class}: {', '.join(missing[:8])}")
        return model

    def _load_options(self) -> dict[str, object]:
        """Config overrides given to from_pretrained."""
        return {}

    def special_tokens(self) -> int:
        """Number of non-patch tokens at the start of the sequence."""
        return 1

    @property
    def channels(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        size = self.preprocessing.size
        if size is None:
            return naflex_grid(height, width, self.patch_size, int(self.preprocessing.max_patches))
        return size[0] // self.patch_size, size[1] // self.patch_size

    @cached_property
    def weights_checksum(self) -> str:
        """sha256 over the folder's weight files (name and sha256 of each, sorted by name)."""
        return self.checksum_for(str(self.directory))

    @classmethod
    def weight_files(cls, checkpoint: str | None) -> list[Path]:
        """The weight files of the model folder ``checkpoint``, sorted by name ([] when it is not here)."""
        if checkpoint is None or not Path(checkpoint).is_dir():
            return []
        return sorted(p for p in Path(checkpoint).iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())

    @classmethod
    def checksum_for(cls, checkpoint: str | None) -> str | None:
        """The weights checksum of the model folder ``checkpoint``; None when the folder is not here."""
        if checkpoint is None or not Path(checkpoint).is_dir():
            return None
        digest = hashlib.sha256()
        for path in cls.weight_files(checkpoint):
            digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
        return digest.hexdigest()

    def describe(self) -> str:
        """One line for reports."""
        return (f"{self.name}: {self.hf_class} from {self.directory}, block {self.layer} of {self.depth}, "
                f"{self.channels} channels, {self.patch_size}-px patches")

    def _encode(self, images: Tensor, frames: FrameBatch | None = None) -> Tensor:
        """Patch tokens [S, h, w, C] of images [S, 3, H, W] in [0, 1]; ``frames`` is not used."""
        rows, cols = self.grid_for(images.shape[-2], images.shape[-1])
        x = images.to(device=self.mean.device, dtype=torch.float32)
        size = (rows * self.patch_size, cols * self.patch_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode=self.preprocessing.mode,
                              antialias=self.preprocessing.mode != "nearest").clamp(0.0, 1.0)
        x = (x - self.mean) / self.std
        output = self._forward(x, rows, cols)
        hidden = output.last_hidden_state if self.layer == self.depth - 1 else output.hidden_states[self.layer + 1]
        tokens = hidden[:, self.special_tokens():]
        if tokens.shape[1] != rows * cols:
            raise RuntimeError(f"{self.hf_class} returned {tokens.shape[1]} patch tokens, expected {rows}x{cols}")
        return tokens.reshape(x.shape[0], rows, cols, -1)

    def _forward(self, pixels: Tensor, rows: int, cols: int) -> object:
        """Run the model on normalised pixels [S, 3, rows * p, cols * p]; returns its output object."""
        return self.model(pixel_values=pixels, output_hidden_states=self.layer != self.depth - 1)


@register_teacher("dinov2")
class DinoV2Teacher(HFVisionTeacher):
    """DINOv2 patch tokens (CLS dropped); DINOv2 interpolates its position embeddings to any size."""

    model_types = ("dinov2",)
    hf_class = "Dinov2Model"
    fixed_positions = False


@register_teacher("dinov2_reg")
class DinoV2RegistersTeacher(HFVisionTeacher):
    """DINOv2-with-registers patch tokens (CLS and register tokens dropped)."""

    model_types = ("dinov2_with_registers",)
    hf_class = "Dinov2WithRegistersModel"
    fixed_positions = False

    def special_tokens(self) -> int:
        return 1 + int(self.model.config.num_register_tokens)


@register_teacher("siglip")
class SiglipTeacher(HFVisionTeacher):
    """SigLIP (and fixed-resolution SigLIP2) vision tower tokens; SigLIP has no CLS token."""

    model_types = ("siglip", "siglip_vision_model")
    hf_class = "SiglipVisionModel"

    def special_tokens(self) -> int:
        return 0


@register_teacher("siglip2")
class Siglip2Teacher(HFVisionTeacher):
    """SigLIP2 NaFlex vision tower tokens: aspect-preserving patch grid of at most ``max_num_patches``."""

    model_types = ("siglip2", "siglip2_vision_model")
    hf_class = "Siglip2VisionModel"
    fixed_positions = False

    def __init__(self, checkpoint: str | Path | None = None, layer: int = -1) -> None:
        super().__init__(checkpoint, layer)
        if self.preprocessing.max_patches is None:
            raise ModelFolderError(f"{self.directory}/preprocessor_config.json: a SigLIP2 NaFlex model needs "
                                   f"max_num_patches (fixed-resolution SigLIP2 checkpoints load as teacher 'siglip')")

    def special_tokens(self) -> int:
        return 0

    def _forward(self, pixels: Tensor, rows: int, cols: int) -> object:
        frames, p = pixels.shape[0], self.patch_size
        # patch (i, j) flattened as (row within patch, column within patch, channel), row-major over patches
        patches = pixels.reshape(frames, 3, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(frames, rows * cols, p * p * 3)
        mask = torch.ones(frames, rows * cols, dtype=torch.long, device=pixels.device)
        shapes = torch.tensor([[rows, cols]] * frames, dtype=torch.long, device=pixels.device)
        return self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                          output_hidden_states=self.layer != self.depth - 1)


@register_teacher("mae")
class MAETeacher(HFVisionTeacher):
    """ViT-MAE encoder tokens (CLS dropped) with masking off: mask_ratio 0 and ascending noise keep every
    patch in raster order."""

    model_types = ("vit_mae",)
    hf_class = "ViTMAEModel"

    def _load_options(self) -> dict[str, object]:
        return {"mask_ratio": 0.0}

    def _forward(self, pixels: Tensor, rows: int, cols: int) -> object:
        noise = torch.arange(rows * cols, dtype=torch.float32, device=pixels.device).expand(pixels.shape[0], -1)
        return self.model(pixel_values=pixels, noise=noise, output_hidden_states=self.layer != self.depth - 1)
