"""Checks the pickle files that FSDP and DeepSpeed put into a checkpoint, before those libraries load them.

threedrs itself writes no pickle: its checkpoint files are safetensors and JSON (`threedrs.checkpoint`). Under
FSDP and DeepSpeed the model and optimizer shards are written by the library (accelerate's ``save_state``), and
the library reads them back with its own loader: PyTorch distributed checkpointing (DCP) reads its
``.metadata`` file with plain ``pickle.load``; DeepSpeed reads its ``*.pt`` files with
``torch.load(weights_only=False)``. A planted payload in such a file would run when the library loads it.

`check_pickles` opens every such file first with a loader that can only build allowed objects, so that the
library's later full load of the same bytes can only build those objects too:
- torch zip files (``torch.save``): ``torch.load(weights_only=True, mmap=True)``, PyTorch's restricted loader
  (tensors, containers, numbers), plus the DeepSpeed classes its ZeRO files are known to hold (ZeroStageEnum,
  LossScaler, DynamicLossScaler, fragment_address) when DeepSpeed is installed;
- DCP ``.metadata``: a `pickle.Unpickler` that resolves only DCP's metadata dataclasses, ``torch.Size``, torch
  dtypes and layouts, and ``pathlib`` paths;
- DCP ``.distcp`` data files are skipped: DCP reads them as raw tensor bytes or with
  ``torch.load(weights_only=True)``;
- any other file that is a pickle (a ``.pkl`` name, or a file starting with the pickle protocol byte) is refused.
Anything else is refused with an `UntrustedCheckpointError` naming the file and what it asked for.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

__all__ = ["UntrustedCheckpointError", "check_pickles"]

_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata",
                                              "TensorProperties", "BytesStorageMetadata", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "Path"},
}
_DEEPSPEED_CLASSES = (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                      ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                      ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                      ("deepspeed.utils.tensor_fragment", "fragment_address"))


class UntrustedCheckpointError(ValueError):
    """A checkpoint file could run code or was not written by threedrs; the checkpoint is refused."""


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals a DCP ``.metadata`` file needs; anything else raises."""

    def find_class(self, module: str, name: str) -> object:
        if name in _DCP_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                        torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def _deepspeed_globals() -> list:
    import importlib

    found = []
    for module, name in _DEEPSPEED_CLASSES:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found


def check_pickles(folder: Path, files: list[str]) -> None:
    """Refuse (UntrustedCheckpointError) unless every pickle among ``files`` (paths relative to ``folder``)
    builds only allowed objects; other files are left to their own readers."""
    extra = None
    for name in files:
        path = folder / name
        if path.suffix == ".distcp":  # DCP data: raw tensor bytes and torch.load(weights_only=True) entries
            continue
        if zipfile.is_zipfile(path):
            extra = _deepspeed_globals() if extra is None else extra
            try:
                with torch.serialization.safe_globals(extra):
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # the restricted loader raises UnpicklingError and friends
                raise UntrustedCheckpointError(f"{path}: refused, it holds objects beyond tensors and plain data "
                                               f"({str(exc).splitlines()[0]})") from None
        elif path.name == ".metadata":
            try:
                with open(path, "rb") as handle:
                    _MetadataUnpickler(handle).load()
            except Exception as exc:
                raise UntrustedCheckpointError(f"{path}: refused, not a plain distributed-checkpoint metadata "
                                               f"file ({exc})") from None
        elif path.suffix == ".pkl" or _first_byte(path) == b"\x80":
            raise UntrustedCheckpointError(f"{path}: refused, a pickle file that threedrs neither writes nor "
                                           f"reads (it could run code when loaded)")


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(1)
