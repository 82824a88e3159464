"""The authors' checkpoints (Video-3D LLM, 3DRS) as their code saves them, read without their code.

A checkpoint folder holds `config.json` of their `LlavaQwenForCausalLM` (LLaVA-NeXT's fields plus their 3D fields),
the tokenizer their training saved (with `<ground>` and `<coord>` added), and the weights: `model.safetensors`,
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, or the same as `pytorch_model*.bin` (read with
`torch.load(weights_only=True)` only: a `.bin` that needs any other object is refused).

Every tensor name of the folder is mapped (`map_key`) to the Hugging Face LLaVA-OneVision model of transformers 5
("model": `model.language_model.*`, `model.vision_tower.*`, `model.multi_modal_projector.linear_{1,2}.*`,
`model.image_newline`, `lm_head.weight`), to threedrs's heads ("heads": their grounding head
`ground_head_{query,obj}.*` / `ground_head_zero_target` -> `grounding.{query,object}_mlp.*` / `grounding.no_target`,
3DRS's alignment head `model.proj_3d.*` -> `heads.-1.net.*`), or listed as dropped with the reason (`DROPPED`: the
modules 3DRS's Qwen2 model defines and no forward pass uses). Any other name is an error that names it.

Only the settings the paper's models were trained with are accepted (`REQUIRED`, from Video-3D LLM's
`scripts/3d/train/train_multi.sh`, which 3DRS keeps); anything else is a one-line error naming the key, since the
reproduced inference path (pixel_blocks.py, align/grounding.py) would not be theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from threedrs.json_files import read_json_file

CONFIG = "config.json"
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")

# config.json values the reproduced inference path assumes (key -> accepted value; None = absent or this value)
REQUIRED: dict[str, object] = {
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2, "mm_newline_position": "grid",
    "world_position_embedding_type": "avg-discrete-sin3d", "voxel_size": 0.1, "min_xyz_range": [-15, -15, -5],
    "max_xyz_range": [15, 15, 5], "object_feature_type": "patch14-pe", "ground_head_type": "infonce",
}
ABSENT_OR: dict[str, object] = {"add_faster_video": False, "mm_resampler_type": None, "rope_scaling": None,
                                "mm_use_im_start_end": False}
# the authors' SigLIP tower: SigLipVisionConfig() defaults of their siglip_encoder.py (so400m-patch14-384)
SIGLIP = {"image_size": 384, "patch_size": 14, "num_attention_heads": 16, "layer_norm_eps": 1e-6,
          "hidden_act": "gelu_pytorch_tanh"}

_VISION = "model.vision_tower.vision_tower.vision_model."
RULES: list[tuple[str, str, str]] = [  # (pattern, replacement, where: model | heads)
    (r"model\.embed_tokens\.weight", "model.language_model.embed_tokens.weight", "model"),
    (r"model\.layers\.(\d+)\.(.+)", r"model.language_model.layers.\1.\2", "model"),
    (r"model\.norm\.weight", "model.language_model.norm.weight", "model"),
    (r"lm_head\.weight", "lm_head.weight", "model"),
    (re.escape(_VISION) + r"(embeddings|encoder|post_layernorm)\.(.+)", r"model.vision_tower.\1.\2", "model"),
    (r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1", "model"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1", "model"),
    (r"model\.image_newline", "model.image_newline", "model"),
    (r"ground_head_query\.([023])\.(weight|bias)", r"grounding.query_mlp.\1.\2", "heads"),
    (r"ground_head_obj\.([023])\.(weight|bias)", r"grounding.object_mlp.\1.\2", "heads"),
    (r"ground_head_zero_target", "grounding.no_target", "heads"),
    (r"model\.proj_3d\.([02])\.(weight|bias)", r"heads.-1.net.\1.\2", "heads"),
]
DROPPED: list[tuple[str, str]] = [
    (r"model\.(corres_linear|linear_dc|geometric_linear)\.weight",
     "defined by 3DRS's Qwen2Model, used by no forward pass"),
    (re.escape(_VISION) + r"head\..+", "SigLIP's pooling head, replaced by Identity in their vision tower"),
]


class OfficialCheckpointError(ValueError):
    """The folder is not a Video-3D LLM / 3DRS checkpoint threedrs can convert; the message names file and key."""


def map_key(name: str) -> tuple[str, str] | None:
    """(target name, "model" | "heads") for a source tensor name; None when it is dropped (`dropped_reason`).

    Raises OfficialCheckpointError for a name that is neither mapped nor dropped."""
    for pattern, replacement, where in RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name), where
    if dropped_reason(name) is not None:
        return None
    raise OfficialCheckpointError(f"unknown tensor {name!r}: neither mapped nor a known dead module of Video-3D LLM "
                                  f"or 3DRS (official_checkpoint.py RULES / DROPPED)")


def dropped_reason(name: str) -> str | None:
    """Why a source tensor is left out of the converted folder, or None when it is not."""
    for pattern, reason in DROPPED:
        if re.fullmatch(pattern, name):
            return reason
    return None


@dataclass
class SourceTensor:
    """Where one source tensor is (file name in the folder), its shape and dtype (read from the file header)."""

    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class OfficialCheckpoint:
    """A checked source folder: its config, the tensors of each weight file (name -> SourceTensor) and its kind
    ("3DRS" with the alignment head `model.proj_3d`, else "Video-3D LLM")."""

    folder: Path
    config: dict
    tensors: dict[str, SourceTensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "3DRS" if any(name.startswith("model.proj_3d.") for name in self.tensors) else "Video-3D LLM"

    @property
    def files(self) -> list[str]:
        return sorted({t.file for t in self.tensors.values()})

    def load(self, file: str) -> dict[str, Tensor]:
        """All tensors of one weight file of the folder (safetensors, or a .bin through the restricted loader)."""
        return load_weight_file(self.folder / file)


def read_config(folder: Path) -> dict:
    """config.json of an authors' checkpoint, checked (`REQUIRED`, `ABSENT_OR`); one-line errors naming the key."""
    path = folder / CONFIG
    if not folder.is_dir():
        raise OfficialCheckpointError(f"{folder}: not a folder")
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: not found (not a Video-3D LLM / 3DRS checkpoint folder)")
    config = read_json_file(path, OfficialCheckpointError)
    if not isinstance(config, dict) or "LlavaQwenForCausalLM" not in (config.get("architectures") or []):
        found = config.get("architectures") if isinstance(config, dict) else config
        raise OfficialCheckpointError(f"{path}: architectures is {found!r}, not LlavaQwenForCausalLM (not a "
                                      f"Video-3D LLM / 3DRS checkpoint)")
    for key in ("world_position_embedding_type", "mm_vision_tower", "ground_token_ids", "coord_token_ids"):
        if key not in config:
            raise OfficialCheckpointError(f"{path}: no {key} (a LLaVA-NeXT checkpoint without Video-3D LLM's 3D "
                                          f"fields; not a Video-3D LLM / 3DRS checkpoint)")
    for key, value in REQUIRED.items():
        if config.get(key) != value:
            raise OfficialCheckpointError(f"{path}: {key} is {config.get(key)!r}; threedrs reproduces the paper's "
                                          f"setting {value!r} only")
    for key, value in ABSENT_OR.items():
        if config.get(key, value) not in (value, None):
            raise OfficialCheckpointError(f"{path}: {key} is {config[key]!r}; threedrs reproduces {value!r} only")
    for key in ("ground_token_ids", "coord_token_ids"):
        ids = config[key]
        if not (isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], int)):
            raise OfficialCheckpointError(f"{path}: {key} must list one token id, got {ids!r}")
    return config


def weight_files(folder: Path) -> dict[str, str]:
    """Tensor name -> file name from the folder's index (or its single weight file's own names)."""
    for index_name in INDEXES:
        index = folder / index_name
        if index.is_file():
            weight_map = read_json_file(index, OfficialCheckpointError, expect=dict,
                                        shape="a weight index (a JSON object with a weight_map)").get("weight_map")
            if not isinstance(weight_map, dict):
                raise OfficialCheckpointError(f"{index}: not a weight index (JSON with a weight_map)")
            missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
            if missing:
                raise OfficialCheckpointError(f"{folder / missing[0]}: shard listed in {index_name} is missing"
                                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            return dict(weight_map)
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return {key: name for key in load_weight_file(folder / name, header_only=True)}
    raise OfficialCheckpointError(f"{folder}: no weights (none of {', '.join(INDEXES + SINGLE_FILES)})")


def load_weight_file(path: Path, header_only: bool = False) -> dict[str, Tensor]:
    """Tensors of a .safetensors file, or of a .bin file through `torch.load(weights_only=True, mmap=True)`.

    header_only (safetensors): shapes without reading data, as meta tensors."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                if header_only:
                    return {k: _meta(handle.get_slice(k)) for k in handle.keys()}
                return {k: handle.get_tensor(k) for k in handle.keys()}
        except (SafetensorError, OSError) as exc:
            raise OfficialCheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the restricted unpickler raises UnpicklingError, RuntimeError, ...
        raise OfficialCheckpointError(f"{path}: refused, it needs pickle beyond tensors "
                                      f"({str(exc).strip().splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OfficialCheckpointError(f"{path}: not a state dict of tensors")
    return dict(state)


_SAFE_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8}


def _meta(view) -> Tensor:
    return torch.empty(view.get_shape(), dtype=_SAFE_DTYPES.get(view.get_dtype(), torch.float32), device="meta")


def read_checkpoint(folder: str | Path) -> OfficialCheckpoint:
    """The checked config and the list of tensors (names, files, shapes) of an authors' checkpoint folder; every
    name is mapped or dropped (`map_key`) and each file holds the names its index gives it."""
    folder = Path(folder)
    config = read_config(folder)
    where = weight_files(folder)
    checkpoint = OfficialCheckpoint(folder, config)
    for file in sorted(set(where.values())):
        path = folder / file
        header = load_weight_file(path, header_only=path.suffix == ".safetensors")
        listed = sorted(k for k, f in where.items() if f == file)
        absent = [k for k in listed if k not in header]
        if absent:
            raise OfficialCheckpointError(f"{path}: lacks {absent[0]!r}, which the index places in it")
        for name in sorted(header):
            if where.get(name, file) != file:
                continue  # the index names another file for it: that one is read
            try:
                map_key(name)
            except OfficialCheckpointError as exc:
                raise OfficialCheckpointError(f"{path}: {exc}") from None
            tensor = header[name]
            checkpoint.tensors[name] = SourceTensor(file, tuple(tensor.shape), tensor.dtype)
    return checkpoint
