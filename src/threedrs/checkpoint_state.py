"""Training state as safetensors and JSON: the optimizer and the random generators (the scheduler and the loss
scaler are plain JSON of their state_dict, written by `threedrs.checkpoint`).

Nothing here pickles: tensors go to safetensors files, everything else to JSON, and reading back builds plain
dicts that the live objects' ``load_state_dict`` consumes. The formats:

- optimizer: ``optimizer.safetensors`` holds every tensor of ``optimizer.state_dict()["state"]`` under
  ``"<param index>/<name>"`` (AdamW: ``step`` [] float32, ``exp_avg`` and ``exp_avg_sq`` shaped like the
  parameter); ``optimizer.json`` holds ``{"param_groups": [...], "values": {index: {name: number}}}`` (the
  non-tensor state values). Tuples (AdamW's betas) are restored as tuples where the live optimizer has them.
- random generators of one process: ``rng_<rank>.safetensors`` with the torch CPU state ("torch", uint8) and one
  CUDA state per device ("cuda_<i>"); Python's and NumPy's Mersenne-Twister states as JSON in its metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from threedrs.json_files import read_json_file

__all__ = ["load_optimizer", "load_rng", "rng_file", "save_optimizer", "save_rng"]


def rng_file(rank: int) -> str:
    """File name of one process's random-generator state."""
    return f"rng_{rank}.safetensors"


def save_optimizer(state: dict, tensors_path: Path, json_path: Path) -> None:
    """Write ``optimizer.state_dict()`` as safetensors (tensors) + JSON (groups and other values)."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, object]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = _plain(value, f"optimizer state {index}.{name}")
    groups = [{k: _plain(v, f"optimizer param group {i} key {k}") for k, v in group.items()}
              for i, group in enumerate(state["param_groups"])]
    save_file(tensors, str(tensors_path))
    json_path.write_text(json.dumps({"param_groups": groups, "values": values}))


def load_optimizer(tensors_path: Path, json_path: Path, live_groups: list[dict]) -> dict:
    """The state dict written by `save_optimizer`, ready for ``optimizer.load_state_dict``.

    live_groups: the optimizer's current param_groups (tuples there are restored as tuples).
    """
    meta = read_json_file(json_path, ValueError, expect=dict)
    state: dict[int, dict[str, object]] = {}
    with safe_open(str(tensors_path), framework="pt") as handle:
        for key in handle.keys():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = handle.get_tensor(key)
    for index, entries in meta["values"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for group, live in zip(meta["param_groups"], live_groups):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) and isinstance(v, list) else v
                       for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def save_rng(path: Path) -> None:
    """This process's torch (CPU and every CUDA device), Python and NumPy random states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    metadata = {"python": json.dumps([version, list(internal), gauss]),
                "numpy": json.dumps([kind, keys.tolist(), int(pos), int(has_gauss), float(cached)])}
    save_file(tensors, str(path), metadata=metadata)


def load_rng(path: Path) -> None:
    """Restore the states written by `save_rng` (CUDA states only for the devices present)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        torch.set_rng_state(handle.get_tensor("torch"))
        cuda = sorted((k for k in handle.keys() if k.startswith("cuda_")), key=lambda k: int(k[5:]))
        if cuda and torch.cuda.is_available():
            states = [handle.get_tensor(k) for k in cuda][: torch.cuda.device_count()]
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _plain(value: object, where: str) -> object:
    """A JSON-ready copy of ``value`` (numbers, strings, None, lists); anything else is an error naming ``where``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in a checkpoint (JSON or safetensors only)")
