"""What a training run's saved config says about its tokens, for probing one of its checkpoints.

`threedrs train` writes the whole resolved config to ``<run>/config.yaml`` and checkpoints to
``<run>/checkpoints/step_NNNNNN``. The visual tokens of a checkpoint depend on more than its weights: the model
(family, image size, resizing, tiny seed, LoRA), the heads it holds and the points of its position encoding
(align.*), whether that encoding was added (align.posenc), and which frames were seen and how they were placed
(data.* but data.root and data.split: frame rule, frame source, axis alignment; the frame-list file under
teacher.cache_dir). Probing with other values measures another model: a run trained WITHOUT the
position encoding, probed with it, scores its tokens plus an encoding it never learnt to use.

`settings_from_run` therefore takes these settings from the run's config, except those the user set
explicitly (in the YAML file or as ``key=value``), which win; both are reported in lines to print. The probed
layers default to the run's ``eval.probe_layers``, so a probe reproduces the run's own ``eval --probe``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from threedrs.checkpoint import newest_checkpoint
from threedrs.config import AlignConfig, DataConfig, ExperimentConfig, ModelConfig, from_dict, load_config, to_dict, validate

__all__ = ["checkpoint_and_run", "non_default_keys", "settings_from_run"]


_DATA_OF_THE_PROBE = ("root", "split")  # which scenes to probe: the user's, never the run's


def _pairs() -> list[tuple[str, str]]:
    """(key in the probe's config, key in the run's config) of every setting that shapes a checkpoint's tokens:
    model.* and align.*, data.* but the scenes (the frame rule, frame source, axis alignment, ...), the frame-list
    file under teacher.cache_dir, the position encoding and the probed layers."""
    sections = [(f"{section}.{f.name}", f"{section}.{f.name}")
                for section, cls in (("model", ModelConfig), ("align", AlignConfig), ("data", DataConfig))
                for f in dataclasses.fields(cls) if not (section == "data" and f.name in _DATA_OF_THE_PROBE)]
    return sections + [("probe.posenc", "align.posenc"), ("teacher.cache_dir", "teacher.cache_dir"),
                       ("probe.layers", "eval.probe_layers")]


def checkpoint_and_run(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint folder, run folder) of ``probe.checkpoint``: a checkpoint ``<run>/checkpoints/step_N`` or a run
    folder (its newest complete checkpoint). FileNotFoundError naming probe.checkpoint otherwise."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path, path.parent.parent
    newest = newest_checkpoint(path) if path.is_dir() else None
    if newest is not None and (newest / "model.safetensors").is_file():
        return newest, path
    raise FileNotFoundError(f"probe.checkpoint: {path} is not a training checkpoint (no model.safetensors) nor a "
                            "run folder with one under checkpoints/")


def _get(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[last] = value


def non_default_keys(cfg: ExperimentConfig) -> set[str]:
    """Dotted keys whose value differs from the default: the explicit settings when only a config is at hand."""
    default = to_dict(ExperimentConfig())

    def walk(node: dict[str, Any], base: dict[str, Any], prefix: str) -> set[str]:
        out = set()
        for key, value in node.items():
            if isinstance(value, dict):
                out |= walk(value, base[key], f"{prefix}{key}.")
            elif value != base[key]:
                out.add(f"{prefix}{key}")
        return out

    return walk(to_dict(cfg), default, "")


def settings_from_run(cfg: ExperimentConfig, run: Path, explicit: set[str]) -> tuple[ExperimentConfig, list[str]]:
    """``cfg`` with the token-shaping settings of the run's ``config.yaml`` wherever ``cfg`` does not set them
    explicitly, and the lines that say what was taken and which explicit values won.

    Args:
        cfg: the probe's config. run: the run folder. explicit: dotted keys the user set (`config.explicit_keys`).
    Returns:
        (the config to probe with, lines to print); without ``<run>/config.yaml``, cfg unchanged and a warning.
    """
    saved = run / "config.yaml"
    if not saved.is_file():
        return cfg, [f"note: {saved} not found; probing with the given settings, which must be those the run "
                     "trained with (model.*, align.*, frames)"]
    trained = to_dict(load_config(saved))
    values = to_dict(cfg)
    taken, kept = [], []
    for key, run_key in _pairs():
        ours, theirs = _get(values, key), _get(trained, run_key)
        if ours == theirs:
            continue
        if key in explicit:
            kept.append(f"{key}={ours!r} (the run has {run_key}={theirs!r})")
        else:
            _set(values, key, theirs)
            taken.append(f"{key}={theirs!r}" + (f" (from {run_key})" if run_key != key else ""))
    lines = [f"probe.checkpoint: settings that shaped the run's tokens come from {saved}"
             + (": " + ", ".join(taken) if taken else " (all equal to the given ones)")]
    if kept:
        lines.append("explicit override kept: " + ", ".join(kept))
    resolved = from_dict(ExperimentConfig, values)
    validate(resolved)
    return resolved, lines
