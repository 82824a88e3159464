"""How a model's weights are materialised: parameter dtype, device and attention kernel (`model.dtype`,
`model.attn_implementation`), and low-host-memory loading for multi-process runs.

Precision (DESIGN.md, "Released checkpoints"):
- training keeps float32 master weights whatever the checkpoint's dtype and computes in `train.mixed_precision`
  through autocast; `model.dtype=bfloat16|float16` is refused for training (at lr 1e-5 most AdamW updates fall below
  bfloat16's resolution of a weight, so they would be lost);
- evaluation and probing (`model.dtype=auto`) run in the checkpoint's own dtype (config.json `torch_dtype`, or
  `dtype` as transformers 5 writes it) on a GPU and in float32 on the CPU; the tiny random models are float32.
A dtype the device cannot run (bfloat16 on a GPU without it, float16 autocast on the CPU, which accelerate silently
turns into float32) and flash-attention 2 without the flash-attn package are one-line errors before any loading.

Where the weights go (`Placement.device`):
- "cpu": `from_pretrained` reads the memory-mapped safetensors into host memory (converted to the dtype);
- "cuda" / "cuda:N": streamed tensor by tensor from the memory-mapped file to that GPU; host memory holds no copy;
- "meta": shapes only, nothing is read. For FSDP with `fsdp_cpu_ram_efficient_loading`, every rank but the first of
  each node builds the model this way and receives its shard from rank 0 when accelerate shards it (transformers
  5.23 still reads the whole checkpoint on every rank under that flag). Non-persistent buffers (rotary frequencies)
  are computed for real, since accelerate keeps each rank's own copies.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from threedrs.config import ConfigError, ModelConfig
from threedrs.json_files import read_json_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train.mixed_precision -> autocast dtype


@dataclass(frozen=True)
class Placement:
    """How to materialise a model: parameter `dtype`, load `device` ("cpu", "cuda[:N]" or "meta", see the module
    docstring) and attention kernel (`attn_implementation`, transformers' name)."""

    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    attn_implementation: str = "sdpa"

    def describe(self) -> str:
        where = {"cpu": "read into host memory", "meta": "not read (shapes only; rank 0 sends the weights)"}
        dtype, kernel = str(self.dtype).removeprefix("torch."), self.attn_implementation
        return f"{dtype} weights {where.get(self.device, f'streamed to {self.device}')}, {kernel} attention"


def checkpoint_model_type(path: str | Path, accepted: Collection[str], refusal: str) -> str:
    """config.json's model_type of the LOCAL checkpoint folder `path`, checked before anything loads.

    accepted: the model types the caller loads; refusal: how the one-line ValueError ends when config.json names
    another ("<path>/config.json: model_type is '<found>', <refusal>"). FileNotFoundError for a missing folder or
    config.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"checkpoint has no config.json: {config_file}")
    found = read_json_file(config_file, ValueError, expect=dict).get("model_type")
    if found not in accepted:
        raise ValueError(f"{config_file}: model_type is {found!r}, {refusal}")
    return found


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The parameter dtype a checkpoint folder declares: config.json's `torch_dtype` (released checkpoints) or
    `dtype` (transformers 5), at the top level or in `text_config`; float32 when none is given."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model directory has no config.json: {config_file}")
    config = read_json_file(config_file, ValueError, expect=dict)
    for node in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            name = node.get(key)
            if name is None:
                continue
            if name not in DTYPES:
                raise ValueError(f"{config_file}: {key} {name!r} is not one of {', '.join(DTYPES)}")
            return DTYPES[name]
    return torch.float32


def check_mixed_precision(setting: str, device: torch.device) -> None:
    """Raise ConfigError naming train.mixed_precision when `device` cannot autocast to it."""
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU (on the CPU accelerate does not autocast to "
                          "float16 and the run would silently be float32); use bf16 or no")
    if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.mixed_precision=bf16: this GPU ({torch.cuda.get_device_name(device)}) cannot run "
                          "bfloat16; use fp16")


def check_dtype(dtype: torch.dtype, device: torch.device, key: str = "model.dtype") -> None:
    """Raise ConfigError naming `key` when `device` cannot run parameters of `dtype`."""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}: this GPU ({torch.cuda.get_device_name(device)}) cannot run bfloat16 (the "
                          "checkpoint's dtype with model.dtype=auto); set model.dtype=float16 or float32")


def check_attention(name: str, device: torch.device, compute_dtype: torch.dtype, fix: str) -> None:
    """Raise ConfigError naming model.attn_implementation when the kernel cannot run: flash-attention 2 needs the
    flash-attn package, a CUDA GPU and float16/bfloat16 compute (`fix` says which setting gives that)."""
    if name != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("model.attn_implementation=flash_attention_2: the flash-attn package is not installed "
                          "(pip install flash-attn on a CUDA machine); or use sdpa")
    if device.type != "cuda":
        raise ConfigError(f"model.attn_implementation=flash_attention_2 needs a CUDA GPU, the run is on {device}; "
                          "use sdpa")
    if compute_dtype == torch.float32:
        raise ConfigError(f"model.attn_implementation=flash_attention_2 computes in float16/bfloat16, this run in "
                          f"float32; {fix}, or use sdpa")


def training_placement(cfg: ModelConfig, mixed_precision: str, device: torch.device, load_device: str) -> Placement:
    """Float32 master weights on `load_device` (see `training_load_device`), after the checks of the module
    docstring; raises ConfigError for a half-precision model.dtype or a setting the device cannot run."""
    if cfg.dtype in ("bfloat16", "float16"):
        short = {"bfloat16": "bf16", "float16": "fp16"}[cfg.dtype]
        raise ConfigError(f"model.dtype={cfg.dtype}: training keeps float32 master weights (updates at lr 1e-5 fall "
                          f"below {cfg.dtype} resolution); set model.dtype=auto (or float32) and "
                          f"train.mixed_precision={short} to compute in {cfg.dtype}")
    check_mixed_precision(mixed_precision, device)
    check_attention(cfg.attn_implementation, device, AUTOCAST.get(mixed_precision, torch.float32),
                    "set train.mixed_precision=bf16")
    return Placement(torch.float32, load_device, cfg.attn_implementation)


def training_load_device(device: torch.device, distributed: str, local_rank: int, ram_efficient: bool = False,
                         zero_stage: int | None = None) -> str:
    """Where a training process loads the checkpoint (Placement.device).

    device: the process's compute device; distributed: accelerate's distributed type name ("NO", "MULTI_GPU",
    "MULTI_CPU", "FSDP", "DEEPSPEED"); local_rank: its rank on the node; ram_efficient: FSDP's
    `fsdp_cpu_ram_efficient_loading`; zero_stage: DeepSpeed's ZeRO stage. ZeRO-3 partitions at construction through
    transformers' own `zero.Init` path (rank 0 reads), so it loads on "cpu" without a device map.
    """
    if distributed == "FSDP" and ram_efficient:
        return "cpu" if local_rank == 0 else "meta"
    if distributed == "DEEPSPEED" and zero_stage == 3:
        return "cpu"
    return str(device) if device.type == "cuda" else "cpu"


def inference_placement(cfg: ModelConfig, device: torch.device) -> Placement:
    """Placement for evaluation and probing on `device` (loaded straight onto it), after the checks."""
    if cfg.dtype != "auto":
        dtype = DTYPES[cfg.dtype]
    elif device.type == "cuda" and cfg.path:
        dtype = checkpoint_dtype(cfg.path)
    else:
        dtype = torch.float32
    check_dtype(dtype, device)
    check_attention(cfg.attn_implementation, device, dtype, "set model.dtype=bfloat16 (or auto)")
    return Placement(dtype, str(device), cfg.attn_implementation)


def compute_device() -> torch.device:
    """The device evaluation and probing run on: the current CUDA device when there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_pretrained(model_class: type, path: str | Path, placement: Placement) -> nn.Module:
    """`model_class` from the LOCAL folder `path` as `placement` says (no downloads), in eval mode."""
    kwargs = {"dtype": placement.dtype, "attn_implementation": placement.attn_implementation}
    if placement.device == "meta":
        from accelerate import init_empty_weights

        config = model_class.config_class.from_pretrained(path, local_files_only=True)
        with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary tables) computed
            model = model_class._from_config(config, **kwargs)
        model.tie_weights()
        return model.eval()
    if placement.device != "cpu":
        kwargs["device_map"] = {"": placement.device}
    return model_class.from_pretrained(path, local_files_only=True, **kwargs).eval()


def place_built(model: nn.Module, placement: Placement) -> nn.Module:
    """A model built in memory (the tiny random ones) moved to `placement` (meta counts as the CPU: nothing is read)."""
    model.set_attn_implementation(placement.attn_implementation)
    device = "cpu" if placement.device == "meta" else placement.device
    return model.to(device=device, dtype=placement.dtype)
