"""threedrs's own trained modules saved beside an exported Hugging Face folder (`threedrs export`).

Plain transformers loads the exported folder as the family's model; what it cannot hold sits beside it:
- `threedrs_heads.safetensors`: the AlignTask tensors that are not the model's, i.e. the alignment heads
  (`heads.<layer>.net.{0,2}.{weight,bias}`, Linear D -> 2D -> C) and the grounding head
  (`grounding.{query_mlp,object_mlp}.*`, `grounding.no_target` [D]), in the exported dtype;
- `threedrs_heads.json`, what they are and how they were trained:
  `{"format": "threedrs-heads/1", "family", "hidden_size": D, "teacher_dim": C or null, "align": {"loss", "layers",
  "posenc", "grounding_temperature"}, "tokens": {"<ground>": id, "<coord>": id}, "image_size": [h, w], "native"
  or null, "newline", "lora_merged": bool, "dtype", "source": {"run", "checkpoint", "step", "sha256", "base_model"}}`.
`threedrs eval model.path=OUT` reads both (evaluate.load_task) and checks that the run's settings the heads depend on
match the config before building anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from threedrs.config import ConfigError, ExperimentConfig
from threedrs.data.tasks import COORD_TOKEN, GROUND_TOKEN

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
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file(head_state(task), str(folder / HEADS_FILE), metadata={"format": "pt"})
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1) + "\n")


def is_exported(path: str | Path | None) -> bool:
    """Whether `path` is a folder written by `threedrs export` (it holds threedrs_heads.json)."""
    return path is not None and (Path(path) / META_FILE).is_file()


def read_heads(folder: str | Path) -> SavedHeads:
    """The heads of an exported folder; one-line errors naming the file for a missing or malformed part."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_file, heads_file = folder / META_FILE, folder / HEADS_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta_file}: not found ({folder} was not written by threedrs export)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_file}: not valid JSON ({exc})") from None
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
                      "grounding_temperature": cfg.align.grounding_temperature},
            "tokens": {GROUND_TOKEN: int(task.ground_id), COORD_TOKEN: int(task.coord_id)},
            "image_size": _image_size(cfg), "newline": cfg.model.newline}


def _image_size(cfg: ExperimentConfig) -> list[int] | str | None:
    """model.image_size as JSON: [h, w], "native" or None."""
    size = cfg.model.image_size
    return size if size is None or isinstance(size, str) else list(size)


def check_export_settings(meta: dict, cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the key when `cfg` differs from the exported run in a setting the heads or the
    predictions depend on (family, supervised layers, position encoding, grounding temperature, frame size, LLaVA
    newline layout)."""
    align = meta["align"]
    pairs = {"model.family": (meta["family"], cfg.model.family),
             "align.layers": (align["layers"], list(cfg.align.layers)),
             "align.posenc": (align["posenc"], cfg.align.posenc),
             "align.grounding_temperature": (align["grounding_temperature"], cfg.align.grounding_temperature),
             "model.image_size": (meta.get("image_size"), _image_size(cfg)),
             "model.newline": (meta.get("newline", "auto"), cfg.model.newline)}
    for key, (exported, configured) in pairs.items():
        if exported != configured:
            raise ConfigError(f"{key}: model.path={cfg.model.path} was exported from a run with {key}={exported}, the "
                              f"config says {configured}; evaluate with the run's own config (its config.yaml)")
