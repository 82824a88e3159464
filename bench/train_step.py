"""Benchmark: training step time WITH the 3DRS alignment loss over step time WITHOUT it, same model, same batch;
or (--compare precision) float32 master weights with bf16 autocast over plain float32.

One run builds ONE adapter and two `AlignTask`s around it (only "align" with --compare precision): "align" (l2norm
loss against the cached geometry-teacher features, one head on the last layer) and "baseline" (align.loss none). Both share one AdamW optimizer (the
parameters a step leaves without gradient are skipped by AdamW, so the baseline never pays for the head). After
--warmup steps of each, --steps steps of each are timed INTERLEAVED (align, baseline, baseline, align, ...) on the
same prepared batch (already collated and on the device); a timed step is forward + backward + optimizer step +
zero_grad of AlignTask only: data loading is excluded from it and timed separately below. Reported: medians, and
the fastest step of each variant (less sensitive to other processes on a shared machine). Both tasks ask the model
for the same hidden states (AlignTask always requests layer 0, the input embeddings, for grounding), so that cost
is in both variants and not in the ratio.

Data loading: the time to build one collated batch (`dataset[i]` for each sample: frame decoding, depth
unprojection to token world points, boxes; plus the memory-mapped teacher features when cached) with the teacher
cache and without it, over --load-batches batches, interleaved, medians.

Breakdown: the alignment head (Linear D -> 2D, GELU, Linear 2D -> C) and the l2norm loss alone, forward + backward,
on hidden states of the batch's shape [B, S, h, w, D]: the part of the alignment cost that is not in the model.

--compare precision: ONE task (with alignment), float32 parameters, timed interleaved with and without
`torch.autocast(device, bfloat16)` around the forward (what `threedrs train` does with train.mixed_precision=bf16:
float32 master weights, bfloat16 compute); the optimizer step is float32 in both. Data loading and the head
breakdown are not repeated.

Settings (a fresh SynthRooms set and geometry-teacher cache are written to a temporary folder):
- default (CPU): tiny random Qwen2-VL (hidden 64, 2 layers), 16 frames of 224x224, model.image_size 112x112
  (8x8 tokens per frame), teacher channels 256, batch 2, fp32, ONE torch thread (--threads; with 2 threads on a
  shared 2-core machine every small kernel waits for the busy core and timings become noise).
- --size 2b: a Qwen2-VL-2B-size model at random init (LLM hidden 1536, 28 layers, vision depth 32, embed 1280),
  bf16 parameters, frames resized to 392x392 (14x14 tokens per frame), teacher channels 2048 (VGGT's), batch 1,
  gradient checkpointing on by default; also reports tokens/s and peak memory on CUDA.

Run:
  .venv/bin/python bench/train_step.py
  .venv/bin/python bench/train_step.py --device cuda --family qwen2_vl --size 2b --frames 32
  .venv/bin/python bench/train_step.py --compare precision
  (--device cuda without a CUDA device prints "skipped: no CUDA device" and exits 0)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from threedrs.align.task import AlignTask
from threedrs.config import SynthConfig, load_config
from threedrs.data.batch import Batch
from threedrs.data.synthetic import generate
from threedrs.extract import extract
from threedrs.models.qwen2_vl import QWEN_SPECIAL_TOKENS, Qwen2VLAdapter
from threedrs.models.tiny import offline_tokenizer
from threedrs.training_data import TrainingData, build_training_data

# per size: frame side in pixels after resizing, teacher channels, batch, parameter dtype (2b: the depths of
# Qwen2-VL-2B, overridable with --llm-layers / --vision-depth for a quick check)
SIZES = {
    "tiny": dict(image=112, channels=256, batch=2, dtype=torch.float32),
    "2b": dict(image=392, channels=2048, batch=1, dtype=torch.bfloat16, llm_layers=28, vision_depth=32),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compare", choices=["alignment", "precision"], default="alignment",
                   help="alignment: with vs without the alignment loss; precision: float32 master weights + bf16 "
                        "autocast vs plain float32")
    p.add_argument("--family", choices=["qwen2_vl"], default="qwen2_vl", help="model family (Qwen2-VL)")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny random model or Qwen2-VL-2B size")
    p.add_argument("--frames", type=int, default=16, help="frames per sample (default 16)")
    p.add_argument("--frame-size", type=int, default=224, help="SynthRooms frame width and height in pixels")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default: 2 tiny, 1 for 2b)")
    p.add_argument("--teacher-channels", type=int, default=None,
                   help="teacher feature channels C, the head's output (default: 256 tiny, 2048 = VGGT's for 2b)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    p.add_argument("--load-batches", type=int, default=8, help="batches timed for data loading (default 8)")
    p.add_argument("--llm-layers", type=int, default=None, help="2b only: LLM depth (default 28)")
    p.add_argument("--vision-depth", type=int, default=None, help="2b only: vision depth (default 32)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine, 2-thread kernels wait for a busy core "
                        "and small ops slow down tenfold; 0 = torch's default)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward (default: on for 2b, off for tiny)")
    args = p.parse_args(argv)
    for name in ("frames", "steps", "load_batches", "batch", "teacher_channels", "llm_layers", "vision_depth"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads < 0:
        p.error("--threads must be >= 0 (0 = torch's default)")
    return args


def qwen2_vl_2b(llm_layers: int, vision_depth: int, image_size: int, dtype: torch.dtype,
                device: torch.device) -> Qwen2VLAdapter:
    """A Qwen2-VL-2B-size model at random init (offline tokenizer; the 2B vocabulary size), built on `device`."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = offline_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tid = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=llm_layers,
                num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                bos_token_id=None, eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>"))
    vision = dict(depth=vision_depth, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                           image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
                           vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2VLAdapter(model, tokenizer, processor, image_size=(image_size, image_size))


@dataclass
class Setup:
    """Everything one benchmark run times: the two tasks around one adapter, their optimizer, one batch."""

    align: AlignTask
    baseline: AlignTask | None  # None for --compare precision, which times the align task only
    optimizer: torch.optim.Optimizer
    batch: Batch
    cached: TrainingData
    uncached: TrainingData | None  # None for --compare precision (no data-loading comparison)
    tokens: int  # sequence tokens (attention mask ones) per batch


def build(args: argparse.Namespace, work: Path, device: torch.device) -> Setup:
    """SynthRooms + geometry-teacher cache under `work`, the adapter, both tasks, their optimizer and the batch."""
    size = SIZES[args.size]
    root = work / "rooms"
    # one frame per room gets an invalid pose (as in ScanNet), so render one more than the frames sampled
    generate(SynthConfig(scenes=4, frames=args.frames + 1, width=args.frame_size, height=args.frame_size, seed=0,
                         invalid_pose_frames=1), root, progress=False)
    if args.size == "2b":
        adapter = qwen2_vl_2b(args.llm_layers or size["llm_layers"], args.vision_depth or size["vision_depth"],
                              size["image"], size["dtype"], device)
    else:
        adapter = Qwen2VLAdapter.tiny(args.family, seed=0, image_size=(size["image"], size["image"]))
    rows, cols = adapter.token_grid(args.frame_size, args.frame_size)
    cfg = load_config(None, [
        f"data.root={root}", f"data.frames={args.frames}", f"teacher.cache_dir={work / 'cache'}",
        f"teacher.grid=[{rows},{cols}]", f"teacher.channels={args.teacher_channels or size['channels']}",
        f"teacher.batch_frames={args.frames}", f"model.image_size=[{size['image']},{size['image']}]"])
    extract(cfg)
    precision = args.compare == "precision"
    cached = build_training_data(cfg, adapter)
    uncached = None if precision else build_training_data(replace(cfg, align=replace(cfg.align, loss="none")), adapter)
    torch.manual_seed(0)
    align = AlignTask(adapter, cached.teacher_channels, loss="l2norm")
    baseline = None if precision else AlignTask(adapter, None, loss="none")
    tasks = [align] if precision else [align, baseline]
    dtype = torch.float32 if precision else size["dtype"]  # master weights are float32
    for task in tasks:
        task.to(device=device, dtype=dtype).train()
    checkpointing = args.gradient_checkpointing if args.gradient_checkpointing is not None else args.size == "2b"
    if checkpointing:
        adapter.model.activation_checkpointing_enable()
    params = {id(p): p for task in tasks for p in task.parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-6)
    picks = sample_batches(cached, args.batch or size["batch"], 1)[0]
    batch = cached.collate([cached.dataset[i] for i in picks]).to(device)
    inputs, _, _ = adapter.build_inputs(batch.frames, batch.prompts, batch.answers, "right")
    return Setup(align, baseline, optimizer, batch, cached, uncached, int(inputs.attention_mask.sum()))


def sample_batches(data: TrainingData, batch: int, count: int) -> list[list[int]]:
    """`count` batches of `batch` sample indices spread over the benchmarks (task-sorted order, evenly spaced), so
    a batch mixes grounding and text samples."""
    order = sorted(range(len(data.dataset)), key=lambda i: (data.dataset.samples[i].task, i))
    need = batch * count
    if len(order) < need:
        raise ValueError(f"--batch/--load-batches: {need} samples needed, the benchmark set has {len(order)}")
    picks = [order[round(k * (len(order) - 1) / max(need - 1, 1))] for k in range(need)]
    return [picks[k::count] for k in range(count)]


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_steps(s: Setup, args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Interleaved step times (seconds) and, on CUDA, peak memory (GiB) of both variants; medians.

    Variants: "align" / "baseline" (--compare alignment) or "bf16" / "fp32" (--compare precision), each a task and
    the autocast dtype of its forward (None = none)."""
    sync = synchronizer(device)
    if args.compare == "precision":
        variants = {"bf16": (s.align, torch.bfloat16), "fp32": (s.align, None)}
    else:
        variants = {"align": (s.align, None), "baseline": (s.baseline, None)}
    first, second = variants
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float] = {name: 0.0 for name in variants}
    for i in range(args.warmup + args.steps):
        for name in ((first, second) if i % 2 == 0 else (second, first)):
            task, autocast = variants[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                losses = task(s.batch)
            losses["loss"].backward()
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**30)
            if not torch.isfinite(losses["loss"]):
                raise RuntimeError(f"{name}: non-finite loss at step {i}")
    return {name: {"median": statistics.median(t), "fastest": min(t), "peak_gib": peaks[name]}
            for name, t in times.items()}


def time_loading(s: Setup, batches: list[list[int]]) -> dict[str, float]:
    """Median seconds to build one collated batch with and without the teacher cache (interleaved, warmed)."""
    sources = {"with cache": s.cached, "without cache": s.uncached}
    times: dict[str, list[float]] = {name: [] for name in sources}
    for picks in batches[:1]:  # warm the page cache and the decoders
        for data in sources.values():
            data.collate([data.dataset[i] for i in picks])
    for k, picks in enumerate(batches):
        for name in (list(sources) if k % 2 == 0 else list(sources)[::-1]):
            data = sources[name]
            start = time.perf_counter()
            data.collate([data.dataset[i] for i in picks])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def time_head_and_loss(s: Setup, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median forward + backward seconds of the alignment head, and of the l2norm loss, on the batch's shape."""
    sync = synchronizer(device)
    head = s.align.heads["-1"]
    dtype = next(head.parameters()).dtype
    teacher, mask = s.batch.teacher.to(dtype), s.batch.teacher_valid
    hidden = torch.randn(*teacher.shape[:-1], s.align.adapter.hidden_size, device=device, dtype=dtype)
    times: dict[str, list[float]] = {"head": [], "loss": []}
    for i in range(args.warmup + args.steps):
        x = hidden.clone().requires_grad_(True)
        sync()
        start = time.perf_counter()
        student = head(x)
        student.sum().backward()
        sync()
        middle = time.perf_counter()
        y = student.detach().requires_grad_(True)
        s.align.distill(y, teacher, mask).sum().backward()
        sync()
        if i >= args.warmup:
            times["head"].append(middle - start)
            times["loss"].append(time.perf_counter() - middle)
    head.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    precision = args.compare == "precision"
    with tempfile.TemporaryDirectory() as tmp:
        s = build(args, Path(tmp), device)
        steps = time_steps(s, args, device)
        if not precision:
            loading = time_loading(s, sample_batches(s.cached, args.batch or SIZES[args.size]["batch"],
                                                     args.load_batches))
            parts = time_head_and_loss(s, args, device)
    b = s.batch
    h, w = b.token_valid.shape[-2:]
    print(f"\n{args.family} {args.size}, device {args.device}, batch {b.frames.shape[0]} x {b.frames.shape[1]} "
          f"frames of {b.frames.shape[-1]}x{b.frames.shape[-2]} px, {h}x{w} tokens per frame, {s.tokens} sequence "
          f"tokens per batch, {torch.get_num_threads()} CPU threads; medians of {args.steps} interleaved steps after "
          f"{args.warmup} warm-up steps each\n")
    cuda = device.type == "cuda"
    print("| variant | step time (s) | fastest step (s) | tokens/s |" + (" peak memory (GiB) |" if cuda else ""))
    print("|---|---|---|---|" + ("---|" if cuda else ""))
    if precision:
        labels = {"bf16": "float32 master weights + bf16 autocast", "fp32": "plain float32"}
    else:
        labels = {"align": "with alignment (l2norm, cached teacher)", "baseline": "without (align.loss none)"}
    for name, label in labels.items():
        r = steps[name]
        print(f"| {label} | {r['median']:.4f} | {r['fastest']:.4f} | {s.tokens / r['median']:.0f} |"
              + (f" {r['peak_gib']:.2f} |" if cuda else ""))
    first, second = labels
    ratio = {k: steps[first][k] / steps[second][k] for k in ("median", "fastest")}
    print(f"| **ratio {'bf16 / fp32' if precision else 'with / without'}** | **{ratio['median']:.3f}** | "
          f"{ratio['fastest']:.3f} | |" + (" |" if cuda else ""))
    if precision:
        return 0
    print("\n| data loading per batch (excluded from the step times) | time (s) |\n|---|---|")
    for name, value in loading.items():
        print(f"| {name} | {value:.4f} |")
    print("\n| alignment pieces alone, forward + backward | time (s) | share of the baseline step |\n|---|---|---|")
    for name, label in (("head", "head (D -> 2D -> C)"), ("loss", "l2norm loss")):
        print(f"| {label} | {parts[name]:.5f} | {parts[name] / steps['baseline']['median']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
