"""threedrs's own trained modules saved beside an exported Hugging Face folder (`threedrs export`).

Plain transformers loads the exported folder as the family's model; what it cannot hold sits beside it:
- `threedrs_heads.safetensors`: the AlignTask tensors that are not the model's, i.e. the alignment heads
  (`heads.<layer>.net.{0,2}.{weight,bias}`, Linear D -> 2D -> C) and the grounding head
  (`grounding.{query_mlp,object_mlp}.*`, `grounding.no_target` [D]), in the exported dtype;
- `threedrs_heads.json`, what they are and how they were trained:
  `{"format": "threedrs-heads/1", "family", "hidden_size": D, "teacher_dim": C or null, "align": {"loss", "layers",
  "posenc", "grounding_temperature", "posenc_points", "object_features"}, "tokens": {"<ground>": id, "<coord>": id},
  "image_size": [h, w], "native" or null, "newline", "resize", "prompts", "lora_merged": bool, "dtype",
  "source": {...}}`; "source" is {"run", "checkpoint", "step", "sha256", "base_model"} for `threedrs export` and
  {"official", "path", "files", "dropped", ...} for `threedrs convert-official` (official_checkpoint.py).
`threedrs eval model.path=OUT` reads both (evaluate.load_task) and checks that the run's settings the heads depend on
match the config before building anything; `threedrs train model.path=OUT` starts from the saved heads
(`load_saved_heads`). Keys added after the first exports ("posenc_points", "object_features", "resize", "prompts")
read as threedrs's defaults when absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from threedrs.config import ConfigError, ExperimentConfig
from threedrs.data.tasks import COORD_TOKEN, GROUND_TOKEN
from threedrs.json_files import read_json_file

HEADS_FILE = "threedrs_heads.safetensors"
META_FILE = "threedrs_heads.json"
FORMAT = "threedrs-heads/1"
HEAD_PREFIXES = ("heads.", "grounding.")


@dataclass
class SavedHeads:
    """The heads of an exported folder: `meta` (threedrs_heads.json) and `state` (AlignTask key -> tensor)."""

    meta: dict
    state: dict[str, Tensor]


def head_state(task: nn.Module) -> dict[str, Tensor]:
    """The AlignTask tensors that are not the model's (alignment and grounding heads), detached, contiguous."""
    return {k: v.detach().contiguous() for k, v in task.state_dict().items() if k.startswith(HEAD_PREFIXES)}


def write_heads(task: nn.Module, folder: str | Path, meta: dict) -> None:
    """Write `threedrs_heads.safetensors` and `threedrs_heads.json` (with `"format"` added) into `folder`."""
    write_head_tensors(head_state(task), folder, meta)


def write_head_tensors(state: dict[str, Tensor], folder: str | Path, meta: dict) -> None:
    """`write_heads` for tensors already under AlignTask names (`heads.*`, `grounding.*`)."""
    from safetensors.torch import save_file

    stray = [k for k in state if not k.startswith(HEAD_PREFIXES)]
    if stray:
        raise ValueError(f"heads: unexpected tensors {stray[:5]} (only heads.* and grounding.*)")
    folder = Path(folder)
    save_file(state, str(folder / HEADS_FILE), metadata={"format": "pt"})
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1) + "\n")


def is_exported(path: str | Path | None) -> bool:
    """Whether `path` is a folder written by `threedrs export` (it holds threedrs_heads.json)."""
    return path is not None and (Path(path) / META_FILE).is_file()


def read_heads(folder: str | Path) -> SavedHeads:
    """The heads of an exported folder; one-line errors naming the file for a missing or malformed part."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_file, heads_file = folder / META_FILE, folder / HEADS_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: not found ({folder} was not written by threedrs export)")
    meta = read_json_file(meta_file, ValueError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                         f"expected {FORMAT!r}")
    missing = [k for k in ("family", "hidden_size", "teacher_dim", "align", "tokens") if k not in meta]
    if missing:
        raise ValueError(f"{meta_file}: missing keys {missing}")
    if not heads_file.is_file():
        raise FileNotFoundError(f"{heads_file}: not found (the export is incomplete; export the run again)")
    state = load_file(str(heads_file))
    stray = [k for k in state if not k.startswith(HEAD_PREFIXES)]
    if stray:
        raise ValueError(f"{heads_file}: unexpected tensors {stray[:5]} (only heads.* and grounding.*)")
    return SavedHeads(meta, state)


def export_meta(cfg: ExperimentConfig, task: nn.Module) -> dict:
    """The settings of `cfg` and `task` that the saved heads depend on (threedrs_heads.json without "source")."""
    first = next(iter(task.heads.values()), None)
    return {"family": cfg.model.family, "hidden_size": int(task.adapter.hidden_size),
            "teacher_dim": None if first is None else int(first.net[2].out_features),
            "align": {"loss": task.loss_name, "layers": list(cfg.align.layers), "posenc": cfg.align.posenc,
                      "grounding_temperature": cfg.align.grounding_temperature,
                      "posenc_points": cfg.align.posenc_points, "object_features": cfg.align.object_features},
            "tokens": {GROUND_TOKEN: int(task.ground_id), COORD_TOKEN: int(task.coord_id)},
            "image_size": _image_size(cfg), "newline": cfg.model.newline, "resize": cfg.model.resize,
            "prompts": cfg.data.prompts}


def _image_size(cfg: ExperimentConfig) -> list[int] | str | None:
    """model.image_size as JSON: [h, w], "native" or None."""
    size = cfg.model.image_size
    return size if size is None or isinstance(size, str) else list(size)


def recorded_settings(meta: dict) -> dict[str, object]:
    """The config values (dotted keys) a saved folder records and its heads or predictions depend on: family,
    supervised layers, position encoding and its points, grounding temperature and candidate features, frame size
    and resize, LLaVA newline layout, prompt texts."""
    align = meta["align"]
    return {"model.family": meta["family"], "align.layers": align["layers"], "align.posenc": align["posenc"],
            "align.grounding_temperature": align["grounding_temperature"],
            "align.posenc_points": align.get("posenc_points", "footprint"),
            "align.object_features": align.get("object_features", "point_in_box"),
            "model.image_size": meta.get("image_size"), "model.newline": meta.get("newline", "auto"),
            "model.resize": meta.get("resize", "antialias"), "data.prompts": meta.get("prompts", "threedrs")}


def configured_settings(cfg: ExperimentConfig) -> dict[str, object]:
    """`cfg`'s values of the keys of `recorded_settings`."""
    return {"model.family": cfg.model.family, "align.layers": list(cfg.align.layers), "align.posenc": cfg.align.posenc,
            "align.grounding_temperature": cfg.align.grounding_temperature,
            "align.posenc_points": cfg.align.posenc_points, "align.object_features": cfg.align.object_features,
            "model.image_size": _image_size(cfg), "model.newline": cfg.model.newline,
            "model.resize": cfg.model.resize, "data.prompts": cfg.data.prompts}


def check_export_settings(meta: dict, cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the key when `cfg` differs from the saved folder in a setting the heads or the
    predictions depend on (`recorded_settings`)."""
    configured = configured_settings(cfg)
    official = "official" in (meta.get("source") or {})
    for key, saved in recorded_settings(meta).items():
        if saved != configured[key]:
            what = "converted from the authors' checkpoint" if official else "exported from a run"
            fix = ("use the settings it records (configs/official_3drs.yaml)" if official
                   else "evaluate with the run's own config (its config.yaml)")
            raise ConfigError(f"{key}: model.path={cfg.model.path} was {what} with {key}={saved}, the config says "
                              f"{configured[key]}; {fix}")


def load_saved_heads(task: nn.Module, saved: SavedHeads, where: str | Path) -> list[str]:
    """Load a saved folder's heads into `task` (AlignTask) to start training from them; returns the saved tensors
    this task has no place for (an alignment head when align.loss is none or supervises other layers). ValueError
    naming `where` when a head's shape differs (another hidden size, or a teacher with another channel count)."""
    own = task.state_dict()
    for name, tensor in saved.state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{where}: saved head {name} has shape {list(tensor.shape)}, this task's is "
                             f"{list(own[name].shape)} (teacher channels or hidden size differ)")
    task.load_state_dict({k: v for k, v in saved.state.items() if k in own}, strict=False)
    return sorted(k for k in saved.state if k not in own)
