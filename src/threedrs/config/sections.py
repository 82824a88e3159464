"""The configuration's sections: one dataclass per part of the package, each field with its default and a one-line
comment, and each section's `validate()` (one-line ConfigError naming the key). `ExperimentConfig` is the root.

Sections grow with the package (data, synth, probe, teacher, ...); loading.py reads YAML and overrides into them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key."""


def _finite(value: float) -> bool:
    """True for a finite number (NaN and infinities pass comparisons like ``x >= 0`` or fail them silently)."""
    return math.isfinite(value)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class SynthConfig:
    """SynthRooms: the procedural benchmark written in the ScanNet posed-image layout."""

    scenes: int = 40  # number of rooms to generate
    frames: int = 16  # frames rendered per room (the scan's full frame list)
    width: int = 224  # colour and depth width in pixels
    height: int = 224  # colour and depth height in pixels
    seed: int = 0  # master seed: the same seed gives byte-identical files
    val_fraction: float = 0.25  # fraction of rooms in the val split (at least one)
    invalid_pose_frames: int = 1  # frames per room written with an all -inf pose, as real ScanNet has
    depth_width: int | None = None  # depth PNG width (ScanNet: 640 with 1296 colour); None = colour width
    depth_height: int | None = None  # depth PNG height (ScanNet: 480 with 968 colour); None = colour height

    def validate(self) -> None:
        _check(self.scenes >= 2, "synth.scenes", "needs at least 2 rooms (one train, one val)")
        _check(0 <= self.seed < 2**32, "synth.seed", "must lie in [0, 2**32)")
        _check(self.frames >= 1, "synth.frames", "must be at least 1")
        _check(self.width >= 16, "synth.width", "images must be at least 16x16")
        _check(self.height >= 16, "synth.height", "images must be at least 16x16")
        _check(_finite(self.val_fraction) and 0.0 < self.val_fraction < 1.0, "synth.val_fraction", "must lie in (0, 1)")
        _check((self.depth_width is None) == (self.depth_height is None), "synth.depth_width/depth_height",
               "set both or neither")
        _check(self.depth_width is None or (self.depth_width >= 16 and self.depth_height >= 16),
               "synth.depth_width/depth_height", "depth images must be at least 16x16")
        _check(0 <= self.invalid_pose_frames < self.frames, "synth.invalid_pose_frames",
               "must be >= 0 and smaller than synth.frames")


@dataclass
class DataConfig:
    """Where the scenes are and which frames of each scene a model sees."""

    root: str = "demo_out/synthrooms"  # dataset root in the V3D layout (scannet/posed_images, metadata, ...)
    frames: int = 16  # frames sampled per scene (paper: 32)
    sampling: Literal["uniform", "max_coverage"] = "uniform"  # frame rule shared by teacher and student
    coverage_voxel: float = 0.1  # voxel size in metres for max_coverage sampling
    split: Literal["train", "val"] = "val"  # split used by probe / eval commands
    # where a scene's candidate frames come from: all = every exported frame with a valid pose; embodiedscan =
    # EmbodiedScan's image list of the scene (data.embodiedscan_images); select_frames = Video-3D LLM's
    # max-coverage selection (data.select_frames, needs data.sampling=max_coverage)
    frame_source: Literal["all", "embodiedscan", "select_frames"] = "all"
    embodiedscan_images: str = "metadata/embodiedscan_images.json"  # EmbodiedScan image lists as JSON (README)
    select_frames: str = "metadata/scannet_select_frames.json"  # Video-3D LLM's max-coverage frame file
    coverage_ratio: float = 1.0  # select_frames: keep frames until this share of voxels is covered (V3D: 0.9/0.95)
    label_map: str = "scannet/scannetv2-labels.combined.tsv"  # ScanNet label table for ScanRefer unique/multiple
    axis_alignment: Literal["required", "identity"] = "required"  # a scan without axisAlignment: error / identity
    # prompt texts: threedrs (data/tasks.py) or video3dllm (their processed files' text after <image>, and their
    # spatial instruction prepended in training only; data/prompt_style.py)
    prompts: Literal["threedrs", "video3dllm"] = "threedrs"

    def validate(self) -> None:
        _check(self.frames >= 1, "data.frames", "must be at least 1")
        _check(_finite(self.coverage_voxel) and self.coverage_voxel > 0, "data.coverage_voxel",
               "must be a positive number of metres")
        _check(_finite(self.coverage_ratio) and 0 < self.coverage_ratio <= 1, "data.coverage_ratio",
               "must lie in (0, 1]")
        _check(self.frame_source != "select_frames" or self.sampling == "max_coverage", "data.frame_source",
               "select_frames is Video-3D LLM's max-coverage selection: set data.sampling=max_coverage too")


@dataclass
class CorrespondenceConfig:
    """The multi-view correspondence (3D-awareness) score of METHOD.md."""

    voxel: float = 0.1  # voxel size in metres
    variant: Literal["pairs", "voxel_mean"] = "pairs"  # paper: mean over pairs; authors' code: per-voxel mean
    same_frame: bool = False  # also count pairs of tokens from the same frame (authors' code does)
    recall: bool = False  # also compute correspondence recall (retrieval across frames; time ~ tokens^2 x C)
    recall_radius: float | None = None  # recall's match: null = the same voxel; else points within this many metres
    recall_memory_mb: float = 256.0  # bound on recall's working memory for its blocked similarity products, MiB

    def validate(self) -> None:
        _check(_finite(self.voxel) and self.voxel > 0, "correspondence.voxel", "must be a positive number of metres")
        _check(self.recall_radius is None or (_finite(self.recall_radius) and self.recall_radius > 0),
               "correspondence.recall_radius", "must be a positive number of metres, or null for the same voxel")
        _check(_finite(self.recall_memory_mb) and self.recall_memory_mb > 0, "correspondence.recall_memory_mb",
               "must be a positive number (MiB)")

    def score_options(self) -> dict[str, Any]:
        """These settings as keyword arguments of `threedrs.metrics.correspondence.correspondence_score`."""
        return {"voxel_size": self.voxel, "variant": self.variant, "same_frame": self.same_frame,
                "recall": self.recall, "recall_radius": self.recall_radius, "recall_memory_mb": self.recall_memory_mb}


@dataclass
class TeacherConfig:
    """The frozen teacher whose features supervise the student, and its feature cache (`threedrs extract`)."""

    name: str = "geometry"  # registered teacher: vggt | dinov2 | siglip | mae | geometry | appearance
    checkpoint: str | None = None  # local weights: a VGGT .pt/.safetensors file or a Hugging Face model folder
    layer: int = -1  # block whose output is exported (negative counts from the end; VGGT default: last)
    channels: int = 256  # output channels of the weight-free teachers (geometry, appearance)
    grid: tuple[int, int] | None = None  # student token grid (rows, cols) to pool to; None = from the student
    batch_frames: int = 32  # frames per teacher forward pass (VGGT sees all frames of a scene at once)
    cache_dir: str = "runs/cache"  # where per-scene feature files and the manifest are written
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast: auto = bf16 on GPU, fp32 on CPU

    def validate(self) -> None:
        _check(self.batch_frames >= 1, "teacher.batch_frames", "must be at least 1")
        _check(self.channels >= 1, "teacher.channels", "must be at least 1")
        if self.grid is not None:
            _check(self.grid[0] >= 1 and self.grid[1] >= 1, "teacher.grid", "rows and cols must be >= 1")


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video", "internvl")
TASK_NAMES = ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")


@dataclass
class ModelConfig:
    """The student MLLM."""

    family: Literal["qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video", "internvl"] = "qwen2_vl"
    path: str | None = None  # local Hugging Face model folder; None = a tiny random model (tests, demo)
    image_size: Literal["native"] | tuple[int, int] | None = None  # (height, width); native: Qwen's processor size
    newline: Literal["auto", "grid", "video", "none"] = "auto"  # LLaVA newline per frame row / per video / none
    tiny_seed: int = 0  # seed of the tiny random model when path is None
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    lora_rank: int = 0  # LoRA rank on the LLM's linear layers through PEFT; 0 = full fine-tuning
    lora_alpha: int = 16  # LoRA scaling numerator
    lora_dropout: float = 0.05  # LoRA dropout
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # modules
    # parameter dtype; auto = float32 master weights for training, the checkpoint's own dtype for eval/probe on a GPU
    # and float32 on the CPU (models/loading.py); training refuses bfloat16/float16 (no float32 master copy)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # attention kernel (from_pretrained)
    # frame resize to the LLaVA vision input: torch bicubic with antialiasing on the float frame, or PIL
    # bicubic on the 8-bit frame (what Video-3D LLM / 3DRS feed SigLIP: PIL Image.resize, then /255)
    resize: Literal["antialias", "pil_bicubic"] = "antialias"

    def validate(self) -> None:
        _check(self.lora_rank >= 0, "model.lora_rank", "must be >= 0 (0 = off)")
        _check(self.lora_alpha > 0, "model.lora_alpha", "must be > 0")
        _check(_finite(self.lora_dropout) and 0 <= self.lora_dropout < 1, "model.lora_dropout", "must lie in [0, 1)")
        _check(0 <= self.tiny_seed < 2**32, "model.tiny_seed", "must lie in [0, 2**32)")
        if self.image_size == "native":
            _check(self.family in ("qwen2_vl", "qwen2_5_vl"), "model.image_size",
                   f"native resolution is for qwen2_vl / qwen2_5_vl; {self.family} resizes to its tower's input")
        elif self.image_size is not None:
            _check(min(self.image_size) >= 1, "model.image_size", "height and width must be positive")
        _check(self.newline == "auto" or self.family in ("llava_onevision", "llava_next_video"), "model.newline",
               f"only the LLaVA families (llava_onevision, llava_next_video) have newline embeddings, not "
               f"{self.family}")
        _check(self.resize == "antialias" or self.family in ("llava_onevision", "llava_next_video"), "model.resize",
               f"pil_bicubic is for the LLaVA families (llava_onevision, llava_next_video), not {self.family}")


@dataclass
class AlignConfig:
    """3D representation supervision: which layers, which loss, how strong."""

    loss: Literal["l2norm", "cosine", "cosine+l2norm", "infonce", "correspondence", "none"] = "l2norm"  # none = baseline
    weight: float = 1.0  # weight of the alignment loss in the total loss (paper: 1.0)
    layers: list[int] = field(default_factory=lambda: [-1])  # LLM layers supervised (-1 = last, after the norm)
    infonce_temperature: float = 0.1  # temperature of the infonce loss
    posenc: bool = True  # add the Video-3D LLM 3D position encoding to the visual embeddings
    grounding_temperature: float = 0.07  # temperature of the grounding head's InfoNCE and scores
    # each visual token's point for the position encoding: footprint = mean of the valid depth pixels of its
    # footprint; pixel_blocks = Video-3D LLM's (the depth-resolution world map resized nearest to the vision input,
    # each pooled token's block of it averaged, invalid depth at the camera centre; pixel_blocks.py)
    posenc_points: Literal["footprint", "pixel_blocks"] = "footprint"
    # grounding candidates: point_in_box = mean input embedding of the tokens whose point is in the box (+ the box
    # centre's encoding); pixel_share = Video-3D LLM / 3DRS's (patch features with >= 50 % of their pixels in the
    # box + centre encoding, averaged with the last-layer token states with >= 12.5 %; align/grounding.py)
    object_features: Literal["point_in_box", "pixel_share"] = "point_in_box"

    def validate(self) -> None:
        _check(_finite(self.weight) and self.weight >= 0, "align.weight", "must be a number >= 0")
        _check(len(self.layers) >= 1, "align.layers", "name at least one layer")
        _check(_finite(self.infonce_temperature) and self.infonce_temperature > 0, "align.infonce_temperature",
               "must be a number > 0")
        _check(_finite(self.grounding_temperature) and self.grounding_temperature > 0, "align.grounding_temperature",
               "must be a number > 0")


@dataclass
class TrainConfig:
    """The optimisation loop (`threedrs train`, through accelerate)."""

    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))  # benchmarks mixed into training
    steps: int = 200  # optimizer steps
    batch_size: int = 2  # samples per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr_llm: float = 1e-5  # learning rate of the LLM (paper: 1e-5)
    lr_vision: float = 2e-6  # learning rate of the vision tower (paper: 2e-6)
    lr_projector: float = 1e-5  # learning rate of the projector / merger
    lr_heads: float = 1e-4  # learning rate of the alignment and grounding heads
    freeze: list[str] = field(default_factory=list)  # parts kept frozen: any of vision, projector, llm
    warmup_ratio: float = 0.03  # fraction of steps of linear warm-up before the cosine decay
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate mixed precision (bf16 on GPUs)
    num_workers: int = 0  # data-loader worker processes
    log_every: int = 10  # steps between log lines (JSONL and progress bar)
    save_every: int = 100  # steps between checkpoints (and one at the end)

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        _check(not unknown and len(self.tasks) >= 1, "train.tasks", f"choose from {', '.join(TASK_NAMES)}")
        for key in ("steps", "batch_size", "grad_accum", "log_every", "save_every"):
            _check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        bad = [p for p in self.freeze if p not in ("vision", "projector", "llm")]
        _check(not bad, "train.freeze", f"unknown parts {bad}; choose from vision, projector, llm")
        _check(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must lie in [0, 1)")
        for part in ("llm", "vision", "projector", "heads"):
            rate = getattr(self, f"lr_{part}")
            _check(_finite(rate) and rate >= 0, f"train.lr_{part}", f"must be a number >= 0, got {rate}")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0, "train.weight_decay", "must be a number >= 0")
        _check(_finite(self.max_grad_norm) and self.max_grad_norm >= 0, "train.max_grad_norm",
               "must be a number >= 0 (0 = no clipping)")
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0 (0 = load in the main process)")


@dataclass
class EvalConfig:
    """`threedrs eval`: which benchmarks, which weights, how to generate, whether to probe."""

    benchmarks: list[str] = field(default_factory=lambda: list(TASK_NAMES))  # benchmarks to evaluate
    split: Literal["train", "val", "test"] = "val"  # annotation split (SQA3D's paper split is test)
    # training checkpoint folder; None = newest under output_dir (for an exported model.path: the folder itself
    # unless output_dir holds a run trained from it); "none" = the model as configured, untrained
    checkpoint: str | None = None
    proposals: str = "metadata/scannet_val_pred_box.json"  # detector boxes, relative to data.root (V3D table)
    batch_size: int = 4  # samples per forward / generate call
    max_new_tokens: int = 24  # greedy decoding length for Scan2Cap, ScanQA and SQA3D
    probe: bool = False  # also record each sample's 3D-awareness score (the correlation study)
    probe_layers: list[int] = field(default_factory=lambda: [-1])  # LLM layers probed
    limit: int | None = None  # evaluate only the first N samples of each benchmark (quick checks)
    meteor: bool = True  # METEOR needs Java and ~11 s to start

    def validate(self) -> None:
        unknown = [b for b in self.benchmarks if b not in TASK_NAMES]
        _check(not unknown and len(self.benchmarks) >= 1, "eval.benchmarks", f"choose from {', '.join(TASK_NAMES)}")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        _check(self.limit is None or self.limit >= 1, "eval.limit", "must be >= 1 (or null for all)")
        _check(len(self.probe_layers) >= 1, "eval.probe_layers", "name at least one layer")


@dataclass
class ProbeConfig:
    """`threedrs probe`: the 3D-awareness score of a teacher or of the MLLM, without running a benchmark."""

    target: Literal["teacher", "model"] = "teacher"  # teacher: teacher.* features; model: the MLLM of model.*
    layers: list[int] = field(default_factory=lambda: [-1])  # LLM hidden-state indices (0 = input embeddings)
    posenc: bool = True  # add the 3D position encoding to the visual embeddings while probing
    checkpoint: str | None = None  # training checkpoint folder; None = the model as configured (model.path or tiny)
    prompt: str = "Describe the scene."  # text after the frames (causal LLM: visual states see only what precedes)

    def validate(self) -> None:
        _check(len(self.layers) >= 1, "probe.layers", "name at least one layer")
        _check(len(set(self.layers)) == len(self.layers), "probe.layers", f"list each layer once, got {self.layers}")


@dataclass
class ExperimentConfig:
    """Root of the configuration tree."""

    name: str = "experiment"  # run name, used in reports
    output_dir: str = "runs/experiment"  # where a command writes its outputs
    seed: int = 0  # global random seed
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    correspondence: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def validate(self) -> None:
        _check(0 <= self.seed < 2**32, "seed", "must lie in [0, 2**32) (numpy's seed range)")
        _check(bool(self.output_dir.strip()), "output_dir", "must name a folder")
        for key, value, default in (("align.posenc_points", self.align.posenc_points, "footprint"),
                                    ("align.object_features", self.align.object_features, "point_in_box")):
            _check(value == default or self.model.family == "llava_onevision", key,
                   f"{value} follows the pixels of LLaVA-OneVision's SigLIP patches and pooled tokens (the Video-3D "
                   f"LLM / 3DRS model); model.family is {self.model.family}")
