"""VGGT teacher: the aggregator of VGGT-1B ("VGGT: Visual Geometry Grounded Transformer", Wang et al. 2025).

The aggregator turns S frames of a scene into, per block i, the concatenation of the frame-attention and
global-attention outputs (2 x 1024 = 2048 channels per token). 3DRS distils the patch tokens of the last
block. Architecture (as in the official release, facebookresearch/vggt):

- input RGB in [0, 1] is normalised with the ImageNet mean/std;
- a DINOv2-L/14 with 4 registers embeds each frame; its final-norm patch tokens are kept;
- per frame, 1 camera token and 4 register tokens are prepended (one set of parameters for the first frame,
  another for all other frames), so each frame has P = 5 + h * w tokens;
- 24 rounds of a frame-attention block (attention within each frame) then a global-attention block
  (attention over the tokens of all S frames); both use q/k LayerNorm, LayerScale and 2D RoPE (base 100)
  on frame-local (row + 1, column + 1) patch positions, with the special tokens at position (0, 0).

The checkpoint of the full official model (``.pt``/``.pth`` state dict or ``.safetensors``) loads by its
parameter names (prefix ``aggregator.``); head weights (camera, depth, point, track heads) are ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from threedrs.provenance import file_sha256
from threedrs.teachers.base import Teacher, register_teacher
from threedrs.teachers.vggt_layers import Block, DinoV2Encoder, RotaryTables

if TYPE_CHECKING:
    from threedrs.data.scene import FrameBatch

__all__ = [
    "CheckpointError",
    "VGGTAggregator",
    "VGGTConfig",
    "VGGTTeacher",
    "load_aggregator_checkpoint",
    "preprocess_frames",
    "resized_size",
]

AGGREGATOR_PREFIX = "aggregator."
# DINOv2's mask token (used only for masked-image pre-training) is stored in the checkpoint but never used.
UNUSED_AGGREGATOR_KEYS = frozenset({"patch_embed.mask_token"})
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not hold the expected VGGT aggregator weights."""


@dataclass(frozen=True)
class VGGTConfig:
    """Sizes of the VGGT aggregator; the defaults are VGGT-1B."""

    img_size: int = 518  # frames are resized to this width (px); also the square size the DINOv2 pos-embed was made for
    patch_size: int = 14  # patch side in pixels
    embed_dim: int = 1024  # token channels C (the DINOv2 encoder has the same width); block outputs have 2C
    depth: int = 24  # number of frame-attention blocks (= number of global-attention blocks)
    num_heads: int = 16  # attention heads of the frame/global blocks
    mlp_ratio: float = 4.0  # MLP hidden width / C, frame/global blocks and DINOv2 blocks
    num_register_tokens: int = 4  # register tokens per frame in the aggregator, and in the DINOv2 encoder
    patch_embed_depth: int = 24  # DINOv2 encoder blocks
    patch_embed_num_heads: int = 16  # DINOv2 encoder attention heads
    rope_freq: float = 100.0  # base frequency of the 2D rotary position embedding
    qk_norm: bool = True  # LayerNorm on queries and keys in the frame/global blocks
    init_values: float = 0.01  # LayerScale initial value of the frame/global blocks (random init only)
    patch_embed_init_values: float = 1.0  # LayerScale initial value of the DINOv2 blocks (random init only)

    def __post_init__(self) -> None:
        for field in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_register_tokens",
                      "patch_embed_depth", "patch_embed_num_heads"):
            if getattr(self, field) < 1:
                raise ValueError(f"VGGTConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.img_size % self.patch_size:
            raise ValueError(f"VGGTConfig.img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for field in ("num_heads", "patch_embed_num_heads"):
            if self.embed_dim % getattr(self, field):
                raise ValueError(f"VGGTConfig.embed_dim {self.embed_dim} is not divisible by {field}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f"VGGTConfig: head dim {self.embed_dim // self.num_heads} must be a multiple of 4 "
                             "(2D RoPE)")
        if self.rope_freq <= 0 or self.mlp_ratio <= 0:
            raise ValueError("VGGTConfig.rope_freq and VGGTConfig.mlp_ratio must be > 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> VGGTConfig:
        """Build from a plain mapping (e.g. a YAML section); unknown keys raise ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VGGTConfig keys: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)  # type: ignore[arg-type]


def resized_size(height: int, width: int, target_width: int, patch_size: int) -> tuple[int, int]:
    """Size (height, width) in pixels a frame is resized to before the centre crop (official "crop" mode).

    The width becomes ``target_width``; the height keeps the aspect ratio, rounded (Python ``round``, half to
    even) to a multiple of ``patch_size``: ``round(height * (target_width / width) / patch_size) * patch_size``.
    Raises ValueError for frames smaller than one patch or so flat that the height rounds to zero.
    """
    if height < patch_size or width < patch_size:
        raise ValueError(f"frame of {height}x{width} px is smaller than one {patch_size}x{patch_size} px patch")
    new_height = round(height * (target_width / width) / patch_size) * patch_size
    if new_height == 0:
        raise ValueError(f"frame of {height}x{width} px is too flat: at width {target_width} its height rounds "
                         "to 0 patches")
    return new_height, target_width


def preprocess_frames(images: Tensor, target_width: int, patch_size: int) -> Tensor:
    """VGGT's "crop" preprocessing for tensors: [S, 3, H, W] in [0, 1] -> [S, 3, H', W'] in [0, 1].

    Resize to ``resized_size`` with antialiased bicubic interpolation (the kernel of PIL's BICUBIC resize that
    the official loader uses; the official loader additionally rounds to 8 bits), clamp to [0, 1], then crop
    the central ``target_width`` rows if the resized height is larger (W' = target_width, H' <= W').
    """
    height, width = images.shape[-2:]
    new_height, new_width = resized_size(height, width, target_width, patch_size)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(images, size=(new_height, new_width), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0.0, 1.0)
    if new_height > target_width:
        top = (new_height - target_width) // 2
        images = images[:, :, top : top + target_width]
    return images


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


class VGGTAggregator(nn.Module):
    """The VGGT aggregator (alternating frame / global attention), randomly initialised.

    Parameter names match the official checkpoint's ``aggregator.*`` keys with the prefix removed.
    """

    def __init__(self, config: VGGTConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.patch_embed = DinoV2Encoder(cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.patch_embed_depth,
                                         cfg.patch_embed_num_heads, cfg.mlp_ratio, cfg.num_register_tokens,
                                         cfg.patch_embed_init_values)
        self.frame_blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, cfg.init_values, norm_eps=1e-5)
            for _ in range(cfg.depth)
        )
        self.global_blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm, cfg.init_values, norm_eps=1e-5)
            for _ in range(cfg.depth)
        )
        # index 0 of dim 1: the first frame's tokens; index 1: the tokens of every other frame
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, cfg.embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, cfg.embed_dim))
        self.patch_start_idx = 1 + cfg.num_register_tokens
        self.register_buffer("_resnet_mean", torch.tensor(_IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(_IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

        self.apply(_init_linear)
        nn.init.trunc_normal_(self.patch_embed.pos_embed, std=0.02)
        for token in (self.patch_embed.cls_token, self.patch_embed.register_tokens, self.camera_token,
                      self.register_token):
            nn.init.normal_(token, std=1e-6)

    def layer_index(self, layer: int) -> int:
        """Non-negative index of block ``layer`` (negative values count from the end); ValueError if out of range."""
        depth = self.config.depth
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is out of range for a VGGT aggregator of depth {depth} "
                             f"(valid: {-depth}..{depth - 1})")
        return layer % depth

    def _rotary_tables(
        self, grid_h: int, grid_w: int, frames: int, device: torch.device
    ) -> tuple[RotaryTables, RotaryTables]:
        """RoPE tables for one frame's P tokens and for the S * P tokens of all frames."""
        rows, cols = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device),
                                    indexing="ij")
        patches = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=patches.dtype, device=device)
        positions = torch.cat([special, patches])  # [P, 2] (row, column)
        head_dim = self.config.embed_dim // self.config.num_heads
        return (RotaryTables(positions, head_dim, self.config.rope_freq),
                RotaryTables(positions.repeat(frames, 1), head_dim, self.config.rope_freq))

    def forward(self, images: Tensor, layers: Sequence[int] | None = None) -> list[Tensor]:
        """Aggregated tokens of the requested blocks.

        Args:
            images: [B, S, 3, H, W] RGB in [0, 1], H and W multiples of the patch size (already preprocessed).
            layers: block indices to return (negative ones count from the end); None returns all blocks.
                Blocks after the largest requested one are not computed.

        Returns:
            One tensor [B, S, P, 2C] per requested layer, in the order asked: the frame-attention output and the
            global-attention output of that block concatenated on channels; P = patch_start_idx + h * w with
            the camera token then the register tokens first, then the patch tokens in row-major order.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must have shape [B, S, 3, H, W], got {tuple(images.shape)}")
        batch, frames, _, height, width = images.shape
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} px is not a multiple of the patch size {patch}")
        wanted = [self.layer_index(layer) for layer in (range(self.config.depth) if layers is None else layers)]
        if not wanted:
            raise ValueError("layers must name at least one aggregator block")

        images = (images - self._resnet_mean) / self._resnet_std
        patch_tokens = self.patch_embed(images.reshape(batch * frames, 3, height, width))
        special = torch.cat([self.camera_token, self.register_token], dim=2)  # [1, 2, 1 + R, C]
        which = torch.tensor([0] + [1] * (frames - 1), device=special.device)
        special = special[:, which].expand(batch, -1, -1, -1).reshape(batch * frames, self.patch_start_idx, -1)
        tokens = torch.cat([special, patch_tokens], dim=1)  # [B * S, P, C]
        _, n_tokens, channels = tokens.shape
        frame_rope, global_rope = self._rotary_tables(height // patch, width // patch, frames, images.device)

        outputs: dict[int, Tensor] = {}
        for index in range(max(wanted) + 1):
            tokens = self.frame_blocks[index](tokens.reshape(batch * frames, n_tokens, channels), frame_rope)
            frame_out = tokens.reshape(batch, frames, n_tokens, channels)
            tokens = self.global_blocks[index](tokens.reshape(batch, frames * n_tokens, channels), global_rope)
            if index in wanted:
                outputs[index] = torch.cat([frame_out, tokens.reshape(batch, frames, n_tokens, channels)], dim=-1)
        return [outputs[index] for index in wanted]


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} ... and {len(names) - limit} more"


def _checkpoint_entries(path: Path) -> Mapping[object, object]:
    """Entries of a checkpoint file; unreadable files raise CheckpointError naming the file.

    ``.safetensors`` files are read lazily: only ``aggregator.*`` tensors are loaded, other names map to None.
    Anything else goes through ``torch.load`` (weights only, memory-mapped); weights nested under a "model" or
    "state_dict" key (training checkpoints) are unwrapped.
    """
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) if key.startswith(AGGREGATOR_PREFIX) else None
                        for key in handle.keys()}
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # the libraries raise many types for damaged files; report them all the same way
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): {error}") from error
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    for wrapper in ("model", "state_dict"):
        if not any(str(key).startswith(AGGREGATOR_PREFIX) for key in state) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return state


def load_aggregator_checkpoint(aggregator: VGGTAggregator, path: Path) -> None:
    """Copy the ``aggregator.*`` weights of an official VGGT checkpoint into ``aggregator``.

    Every aggregator weight must be present with the right shape, and the checkpoint may hold no aggregator
    weight the module does not know (it would mean the VGGTConfig does not describe the checkpoint);
    otherwise CheckpointError lists the offending names. Keys outside ``aggregator.`` (the heads) are ignored.
    """
    if not path.is_file():
        raise FileNotFoundError(f"VGGT checkpoint not found: {path}")
    state = _checkpoint_entries(path)
    weights = {key[len(AGGREGATOR_PREFIX):]: value for key, value in state.items()
               if isinstance(key, str) and key.startswith(AGGREGATOR_PREFIX) and isinstance(value, Tensor)}
    if not weights:
        names = [str(key) for key in state]
        raise CheckpointError(f"{path} is not a VGGT checkpoint: no weight named 'aggregator.*' "
                              f"({len(names)} entries, e.g. {_name_list(names, limit=3) or 'none'})")
    expected = aggregator.state_dict()
    missing = [AGGREGATOR_PREFIX + key for key in expected if key not in weights]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} aggregator weights missing: {_name_list(missing)}")
    unexpected = [AGGREGATOR_PREFIX + key for key in weights
                  if key not in expected and key not in UNUSED_AGGREGATOR_KEYS]
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} aggregator weights not in the model (does VGGTConfig "
                              f"match the checkpoint?): {_name_list(unexpected)}")
    wrong = [f"{AGGREGATOR_PREFIX}{key} {tuple(weights[key].shape)} vs {tuple(value.shape)}"
             for key, value in expected.items() if weights[key].shape != value.shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} aggregator weights have the wrong shape (checkpoint vs "
                              f"model): {_name_list(wrong)}")
    aggregator.load_state_dict({key: weights[key] for key in expected}, strict=True)


@register_teacher("vggt")
class VGGTTeacher(Teacher):
    """VGGT aggregator tokens of one block, patch tokens only: [S, h, w, 2C] (2048 channels for VGGT-1B).

    Args:
        checkpoint: local ``.pt``/``.pth``/``.safetensors`` file of the full official VGGT model; None keeps
            the random initialisation (tests, speed benchmarks).
        layer: aggregator block to export; negative values count from the end (-1: the last block, as in 3DRS).
        config: VGGTConfig or a mapping of its fields; None means VGGT-1B.

    Frames go through ``preprocess_frames`` (width ``img_size``, height rounded to whole patches, centre crop
    to at most ``img_size`` rows). Mixed precision is the caller's choice (wrap ``encode`` in autocast).
    """

    multi_view = True  # global attention mixes all frames: extract every frame of a scene in one call

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        layer: int = -1,
        config: VGGTConfig | Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        self.config = config if isinstance(config, VGGTConfig) else VGGTConfig.from_mapping(config or {})
        self.aggregator = VGGTAggregator(self.config)
        self.layer = self.aggregator.layer_index(layer)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        if self.checkpoint is not None:
            load_aggregator_checkpoint(self.aggregator, self.checkpoint)
        self.freeze()

    @property
    def channels(self) -> int:
        return 2 * self.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        target, patch = self.config.img_size, self.config.patch_size
        new_height, new_width = resized_size(height, width, target, patch)
        return min(new_height, target) // patch, new_width // patch

    @cached_property
    def weights_checksum(self) -> str:
        """sha256 of the checkpoint file; for a random initialisation, "random-init:" + sha256 of the weights."""
        if self.checkpoint is not None:
            return file_sha256(self.checkpoint)
        digest = hashlib.sha256()
        for key, value in self.aggregator.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return "random-init:" + digest.hexdigest()

    @classmethod
    def weight_files(cls, checkpoint: str | None) -> list[Path]:
        """The checkpoint file, when it is on this machine."""
        return [Path(checkpoint)] if checkpoint is not None and Path(checkpoint).is_file() else []

    @classmethod
    def checksum_for(cls, checkpoint: str | None) -> str | None:
        """The checkpoint file's sha256; None for a random initialisation or a file not on this machine (training
        reads only the feature cache, so it may run where the weights are not)."""
        files = cls.weight_files(checkpoint)
        return file_sha256(files[0]) if files else None

    def describe(self) -> str:
        source = f"checkpoint {self.checkpoint.name}" if self.checkpoint is not None else "RANDOM INIT (no checkpoint)"
        return (f"vggt: VGGT aggregator block {self.layer} of {self.config.depth}, frame- and global-attention "
                f"outputs concatenated ({self.channels} channels), {self.config.img_size}-px-wide input, {source}")

    def _encode(self, images: Tensor, frames: FrameBatch | None = None) -> Tensor:
        """Patch tokens of block ``layer``; ``frames`` (geometry) is not used."""
        weight = self.aggregator.camera_token
        frames = preprocess_frames(images.to(device=weight.device, dtype=torch.float32), self.config.img_size,
                                   self.config.patch_size)
        tokens = self.aggregator(frames.to(weight.dtype)[None], layers=[self.layer])[0][0]  # [S, P, 2C]
        grid_h, grid_w = (size // self.config.patch_size for size in frames.shape[-2:])
        return tokens[:, self.aggregator.patch_start_idx :].reshape(frames.shape[0], grid_h, grid_w, -1)
