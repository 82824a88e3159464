"""The Teacher contract shared by every feature teacher, and the registry that builds teachers by name.

A teacher turns the frames of one scene into a grid of feature tokens per frame:
``encode(images [S, 3, H, W] float in [0, 1], frames) -> tokens [S, h, w, C]``, where ``frames`` (the same
frames' depth, intrinsics and poses) is only needed by teachers that use geometry. Teachers are frozen (no
parameter requires grad, the module stays in eval mode) and always run under ``torch.no_grad()``; each
applies its own preprocessing (resize, normalisation), so callers hand over raw frames.

Teachers register themselves with ``@register_teacher("name")`` when their module is imported;
``build_teacher(name, **options)`` first imports every module of the ``threedrs.teachers`` package so that
all built-in teachers are known.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import torch
from torch import Tensor, nn

from threedrs.provenance import fingerprint_files

if TYPE_CHECKING:
    from threedrs.data.scene import FrameBatch

__all__ = [
    "Teacher",
    "build_teacher",
    "check_images",
    "expected_identity",
    "known_teachers",
    "register_teacher",
    "teacher_class",
    "weights_fingerprint",
]


def check_images(images: Tensor) -> None:
    """Raise ValueError unless ``images`` is a non-empty float tensor [S, 3, H, W] with values in [0, 1]."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor [S, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.numel() == 0:
        raise ValueError(f"images must have shape [S, 3, H, W] with S, H, W >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor with values in [0, 1], got dtype {images.dtype}")
    low, high = torch.aminmax(images.detach())
    if low.item() < 0.0 or high.item() > 1.0:
        raise ValueError(f"images must hold values in [0, 1], got range [{low.item():.4g}, {high.item():.4g}]")


class Teacher(nn.Module, ABC):
    """A frozen feature extractor: frames of one scene -> a token grid per frame.

    Subclasses set the class attribute ``name`` (the registry name), implement ``channels``,
    ``patch_size``, ``grid_for``, ``weights_checksum``, ``describe`` and ``_encode``, and call
    ``self.freeze()`` at the end of their ``__init__``. ``train()`` keeps the module in eval mode whatever it
    is asked, so a teacher held inside a model being trained never switches to training behaviour.
    """

    name: str = ""
    multi_view: bool = False  # True: a frame's tokens depend on the other frames of the call (VGGT)

    @property
    @abstractmethod
    def channels(self) -> int:
        """C, the number of feature channels of each token."""

    @property
    @abstractmethod
    def patch_size(self) -> int:
        """Side of one token's square footprint on the teacher's preprocessed input, in pixels."""

    @abstractmethod
    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): the token grid that ``encode`` returns for input frames of ``height`` x ``width`` pixels."""

    @property
    @abstractmethod
    def weights_checksum(self) -> str:
        """Identity of the weights for the cache manifest: sha256 of the weights file, "none" if weight-free."""

    @classmethod
    def weight_files(cls, checkpoint: str | None) -> list[Path]:
        """The files of ``teacher.checkpoint`` that `checksum_for` reads; [] when there are none (a weight-free
        teacher, or weights that are not on this machine)."""
        return []

    @classmethod
    def checksum_for(cls, checkpoint: str | None) -> str | None:
        """The ``weights_checksum`` this teacher built from ``teacher.checkpoint`` would have, found without building
        it (training compares its feature cache with it); None where that cannot be told: not compared."""
        return None

    @classmethod
    def channels_for(cls, channels: int) -> int | None:
        """C of this teacher built with ``teacher.channels``; None where the weights decide it: not compared."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """One line for reports saying what the teacher is (model, layer, weights; oracle or learned)."""

    @abstractmethod
    def _encode(self, images: Tensor, frames: FrameBatch | None = None) -> Tensor:
        """Compute tokens [S, h, w, C] from validated images [S, 3, H, W] in [0, 1]; called under no_grad."""

    def freeze(self) -> None:
        """Turn off gradients for every parameter and put the module in eval mode."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Teachers never train: stay in eval mode whatever ``mode`` is asked for."""
        return super().train(False)

    def encode(self, images: Tensor, frames: FrameBatch | None = None) -> Tensor:
        """Tokens of each frame.

        Args:
            images: [S, 3, H, W] float RGB in [0, 1], the S frames of one scene (frame order matters for
                multi-view teachers).
            frames: depth, intrinsics and poses of the same S frames, for teachers that need geometry.

        Returns:
            [S, h, w, C] with (h, w) = ``grid_for(H, W)`` and C = ``channels``, on the teacher's device; the
            dtype follows the computation (float32, or the dtype of the caller's autocast).
        """
        check_images(images)
        with torch.no_grad():
            return self._encode(images, frames)

    def encode_with_validity(self, images: Tensor, frames: FrameBatch | None = None) -> tuple[Tensor, Tensor]:
        """(tokens [S, h, w, C] as ``encode``, valid [S, h, w] bool): which tokens have a target.

        Every token is valid unless a teacher says otherwise (the geometry oracle has no target where a
        patch holds no valid depth).
        """
        tokens = self.encode(images, frames)
        return tokens, torch.ones(tokens.shape[:3], dtype=torch.bool, device=tokens.device)


class PatchTeacher(Teacher):
    """A weight-free teacher with one token per ``patch_size`` x ``patch_size`` px patch of the input frame.

    Subclasses set ``self._channels`` and ``self._patch`` in ``__init__`` and say in ``describe`` what they are.
    """

    _channels: int
    _patch: int

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def patch_size(self) -> int:
        return self._patch

    @property
    def weights_checksum(self) -> str:
        return "none"

    @classmethod
    def checksum_for(cls, checkpoint: str | None) -> str | None:
        return "none"

    @classmethod
    def channels_for(cls, channels: int) -> int | None:
        return channels

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        if height < self._patch or width < self._patch:
            raise ValueError(f"frame of {height}x{width} px is smaller than one {self._patch}x{self._patch} px patch "
                             f"of the {self.name} teacher (set its patch_size lower)")
        return height // self._patch, width // self._patch


TeacherT = TypeVar("TeacherT", bound=type[Teacher])

_REGISTRY: dict[str, Callable[..., Teacher]] = {}


def register_teacher(name: str) -> Callable[[TeacherT], TeacherT]:
    """Class decorator: make a Teacher subclass buildable as ``build_teacher(name, **options)``."""

    def decorate(cls: TeacherT) -> TeacherT:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"teacher name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _import_teacher_modules() -> None:
    """Import every module of the threedrs.teachers package so that its teachers are registered."""
    package = importlib.import_module(__package__ or "threedrs.teachers")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def known_teachers() -> list[str]:
    """Sorted names of all registered teachers (built-in ones included)."""
    _import_teacher_modules()
    return sorted(_REGISTRY)


def teacher_class(name: str) -> type[Teacher]:
    """The Teacher class registered as ``name`` (ValueError naming the known ones for an unknown name)."""
    names = known_teachers()
    if name not in _REGISTRY:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(names)}")
    return _REGISTRY[name]


def weights_fingerprint(name: str, checkpoint: str | None) -> dict[str, list]:
    """``{absolute path: [bytes, mtime_ns]}`` of the weight files of teacher ``name`` built from ``checkpoint``
    ({} when it has none here): what `threedrs extract` records in the cache manifest as "weights_files"."""
    return fingerprint_files([p.resolve() for p in teacher_class(name).weight_files(checkpoint)], None)


def expected_identity(name: str, checkpoint: str | None, channels: int,
                      recorded: Mapping[str, object] | None = None) -> tuple[str | None, int | None]:
    """(weights_checksum, channels) that teacher ``name`` built from ``teacher.checkpoint`` / ``teacher.channels``
    would have, found without building it; None where that cannot be told (not compared), e.g. VGGT's weights
    file is not on this machine (training never needs it).

    recorded: the feature cache's manifest. When the weight files still have the size and modification time
    recorded there ("weights_files", taken by `threedrs extract` before it hashed them; the rule scene files
    follow), its weights_checksum is returned without reading them again (VGGT-1B is 5 GB); otherwise they are
    hashed.
    """
    cls = teacher_class(name)
    recorded = recorded or {}
    checksum, known = recorded.get("weights_checksum"), recorded.get("weights_files")
    if not (isinstance(checksum, str) and known and known == weights_fingerprint(name, checkpoint)):
        checksum = cls.checksum_for(checkpoint)
    return checksum, cls.channels_for(channels)


def build_teacher(name: str, **options: object) -> Teacher:
    """Build the teacher registered as ``name`` with keyword ``options`` (see each teacher's __init__)."""
    return teacher_class(name)(**options)
