"""`threedrs convert-official SRC OUT`: the authors' Video-3D LLM / 3DRS checkpoint as a threedrs model folder.

OUT is what `threedrs export` writes (export.py), so eval, probe and training read it the same way:
- the Hugging Face LLaVA-OneVision model (`config.json`, safetensors shards + index) that
  `LlavaOnevisionForConditionalGeneration.from_pretrained(OUT)` loads: their Qwen2 LLM, their SigLIP tower as they
  run it (the 26 layers they keep, features of the last one, no post-layernorm: `vision_feature_layer: -1`), the
  2-layer GELU projector and the learned newline; weights in their dtype, unchanged. Every source tensor is
  mapped or listed as dropped (official_checkpoint.py); their vocabulary (config `vocab_size`, 151649 for 3DRS) is
  kept row for row, and the `<image>` / `<video>` placeholders this layout needs are appended when the tokenizer
  lacks them (zero rows, never read: their positions receive the visual features);
- the tokenizer (their `<ground>` / `<coord>` at their ids) with a `chat_template.jinja` that writes their prompt
  (`VIDEO3DLLM_TEMPLATE`, models/templates.py), and `preprocessor_config.json` (SigLIP: 384 x 384, mean = std = 0.5);
- threedrs's heads (align/saved_heads.py): their grounding head and 3DRS's alignment head `proj_3d`, with
  `threedrs_heads.json` recording the settings of their inference path (`OFFICIAL_SETTINGS`) and the source files'
  sha256. `threedrs eval configs/official_3drs.yaml model.path=OUT` checks the config against them.
Everything is checked before anything is written; OUT is written under a temporary name in the same folder and
renamed at the end, so an error leaves no OUT. The same SRC gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from threedrs.align.saved_heads import write_head_tensors
from threedrs.data.tasks import COORD_TOKEN, GROUND_TOKEN
from threedrs.models.templates import VIDEO3DLLM_TEMPLATE
from threedrs.official_checkpoint import (SIGLIP, OfficialCheckpoint, OfficialCheckpointError, dropped_reason,
                                          map_key, read_checkpoint)
from threedrs.provenance import file_sha256

SHARD_BYTES = 4 * 2**30  # output shard size limit
PLACEHOLDERS = ("<image>", "<video>")  # LLaVA-OneVision's visual placeholders (their code used id -200 instead)

# The settings of their inference path that the folder records (align/saved_heads.py `recorded_settings`).
OFFICIAL_SETTINGS = {"image_size": None, "newline": "grid", "resize": "pil_bicubic", "prompts": "video3dllm"}
OFFICIAL_ALIGN = {"layers": [-1], "posenc": True, "posenc_points": "pixel_blocks", "object_features": "pixel_share"}


@dataclass
class ConvertResult:
    """Where the folder went, what it was converted from and what was left out."""

    out: Path
    kind: str
    tensors: int
    dropped: dict[str, str]
    placeholders: dict[str, int]


def _tokenizer(src: Path, config: dict):
    """Their tokenizer with the placeholders added; checks `<ground>` / `<coord>` against their config."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers warns that config.json's model_type llava_qwen is not its own
    try:
        with warnings.catch_warnings():  # ... and that its rope_scaling key is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise OfficialCheckpointError(f"{src}: no readable tokenizer files ({str(exc).splitlines()[0]})") from None
    finally:
        logging.set_verbosity(verbosity)
    for token, key in ((GROUND_TOKEN, "ground_token_ids"), (COORD_TOKEN, "coord_token_ids")):
        found = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if found != config[key][0]:
            raise OfficialCheckpointError(f"{src / 'config.json'}: {key} is {config[key]}, but the tokenizer has "
                                          f"{token} at {found}")
    missing = [t for t in PLACEHOLDERS if t not in tokenizer.get_vocab()]
    tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = VIDEO3DLLM_TEMPLATE
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in missing}


def _vision_config(checkpoint: OfficialCheckpoint) -> dict:
    """Their SigLIP tower: fixed architecture (official_checkpoint.SIGLIP), widths and depth from the tensors."""
    t = checkpoint.tensors
    prefix = "model.vision_tower.vision_tower.vision_model."
    embed = t.get(prefix + "embeddings.patch_embedding.weight")
    fc1 = t.get(prefix + "encoder.layers.0.mlp.fc1.weight")
    depth = [int(name[len(prefix):].split(".")[2]) for name in t if name.startswith(prefix + "encoder.layers.")]
    if embed is None or fc1 is None or not depth:
        raise OfficialCheckpointError(f"{checkpoint.folder}: no SigLIP vision tower weights ({prefix}...); the "
                                      f"tower must be in the checkpoint (their mm_tunable_parts train it)")
    return dict(model_type="siglip_vision_model", hidden_size=embed.shape[0], intermediate_size=fc1.shape[0],
                num_hidden_layers=1 + max(depth), vision_use_head=False, **SIGLIP)


def hf_config(checkpoint: OfficialCheckpoint, rows: int, image_id: int, video_id: int):
    """The transformers LlavaOnevisionConfig of the converted model (`rows` embedding rows)."""
    from transformers import LlavaOnevisionConfig

    c = checkpoint.config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "rms_norm_eps", "max_position_embeddings", "vocab_size")
    missing = [k for k in keys if k not in c]
    if missing:
        raise OfficialCheckpointError(f"{checkpoint.folder / 'config.json'}: no {missing[0]}")
    text = dict(model_type="qwen2", **{k: c[k] for k in keys if k != "vocab_size"}, vocab_size=rows,
                rope_theta=c.get("rope_theta", 10000.0),  # absent: Qwen2Config's default in their transformers
                hidden_act=c.get("hidden_act", "silu"),
                sliding_window=c.get("sliding_window"), use_sliding_window=c.get("use_sliding_window", False),
                max_window_layers=c.get("max_window_layers", c["num_hidden_layers"]),
                bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"), tie_word_embeddings=False)
    vision = _vision_config(checkpoint)
    if vision["hidden_size"] != c.get("mm_hidden_size"):
        raise OfficialCheckpointError(f"{checkpoint.folder / 'config.json'}: mm_hidden_size is "
                                      f"{c.get('mm_hidden_size')}, the vision tower's tensors are "
                                      f"{vision['hidden_size']} wide")
    return LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                                video_token_index=video_id, vision_feature_layer=-1,
                                vision_feature_select_strategy="full", projector_hidden_act="gelu",
                                tie_word_embeddings=False, dtype=c.get("torch_dtype", "bfloat16"))


def _expected_model_shapes(config) -> dict[str, tuple[int, ...]]:
    from accelerate import init_empty_weights
    from transformers import LlavaOnevisionForConditionalGeneration

    with init_empty_weights():
        model = LlavaOnevisionForConditionalGeneration._from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _expected_head_shapes(hidden: int, teacher: int | None) -> dict[str, tuple[int, ...]]:
    """AlignTask name -> shape of the heads the folder holds: the grounding head, and the alignment head of the
    supervised layer when the checkpoint has one (`teacher` channels); built on the meta device (nothing allocated)."""
    from threedrs.align.grounding import GroundingHead
    from threedrs.align.head import AlignmentHead

    with torch.device("meta"):
        heads = {"grounding": GroundingHead(hidden)}
        if teacher is not None:
            heads |= {f"heads.{layer}": AlignmentHead(hidden, teacher) for layer in OFFICIAL_ALIGN["layers"]}
    return {f"{prefix}.{k}": tuple(v.shape) for prefix, module in heads.items() for k, v in module.state_dict().items()}


def plan(checkpoint: OfficialCheckpoint, config, source_rows: int) -> tuple[dict[str, str], dict[str, str]]:
    """(target -> source name) of the model and of the heads, every shape checked against the config; one-line
    errors naming the file and tensor for a wrong shape and naming the tensor for a missing one."""
    model_shapes = _expected_model_shapes(config)
    hidden = config.text_config.hidden_size
    proj = checkpoint.tensors.get("model.proj_3d.2.weight")
    head_shapes = _expected_head_shapes(hidden, proj.shape[0] if proj is not None else None)
    model, heads = {}, {}
    for name, source in sorted(checkpoint.tensors.items()):
        mapped = map_key(name)
        if mapped is None:
            continue
        target, where = mapped
        expected = (model_shapes if where == "model" else head_shapes).get(target)
        if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            expected = (source_rows, hidden)
        if expected is None:
            raise OfficialCheckpointError(f"{checkpoint.folder / source.file}: {name} has no place in a model of "
                                          f"this config (layer beyond num_hidden_layers?)")
        if tuple(source.shape) != tuple(expected):
            raise OfficialCheckpointError(f"{checkpoint.folder / source.file}: {name} has shape {list(source.shape)}, "
                                          f"its config gives {list(expected)}")
        (model if where == "model" else heads)[target] = name
    for shapes, got in ((model_shapes, model), (head_shapes, heads)):
        missing = sorted(set(shapes) - set(got))
        if missing:
            raise OfficialCheckpointError(f"{checkpoint.folder}: no tensor for {missing[0]} (the checkpoint lacks "
                                          f"it{f', and {len(missing) - 1} more' if len(missing) > 1 else ''})")
    return model, heads


def _padded(tensor: Tensor, rows: int) -> Tensor:
    """An embedding / lm_head matrix with zero rows appended up to `rows`."""
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], tensor.shape[1])])


class _Reader:
    """Source tensors by name, read one at a time when asked: each safetensors file is opened once and its handle
    kept until `close` (only the header is read on opening), each .bin file is memory-mapped once
    (`torch.load(mmap=True)`, official_checkpoint.py). Use as a context manager."""

    def __init__(self, checkpoint: OfficialCheckpoint):
        self.checkpoint = checkpoint
        self.files: dict[str, object] = {}  # file name -> safe_open handle, or the .bin's memory-mapped state dict
        self._handles = ExitStack()

    def __call__(self, name: str) -> Tensor:
        file = self.checkpoint.tensors[name].file
        if file not in self.files:
            self.files[file] = self._open(file)
        source = self.files[file]
        return source[name] if isinstance(source, dict) else source.get_tensor(name)

    def _open(self, file: str):
        path = self.checkpoint.folder / file
        if path.suffix != ".safetensors":
            return self.checkpoint.load(file)
        from safetensors import SafetensorError, safe_open

        try:
            return self._handles.enter_context(safe_open(str(path), "pt"))
        except (SafetensorError, OSError) as exc:
            raise OfficialCheckpointError(f"{path}: not a readable safetensors file ({exc})") from None

    def close(self) -> None:
        self._handles.close()
        self.files.clear()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_weights(folder: Path, targets: dict[str, str], read: _Reader, rows: int) -> None:
    """Safetensors shards of at most SHARD_BYTES (targets in name order) and their index."""
    from safetensors.torch import save_file

    padded = ("model.language_model.embed_tokens.weight", "lm_head.weight")
    shards: list[list[str]] = [[]]
    size = total = 0
    for target, source in sorted(targets.items()):
        info = read.checkpoint.tensors[source]
        shape = (rows, *info.shape[1:]) if target in padded else info.shape
        nbytes = torch.Size(shape).numel() * info.dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(target)
        size, total = size + nbytes, total + nbytes
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in tqdm(list(zip(names, shards)), desc="convert", unit="shard"):
        tensors = {k: _padded(read(targets[k]), rows) if k in padded else read(targets[k]).contiguous() for k in keys}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {k: n for n, keys in zip(names, shards) for k in keys}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def convert_official(src: str | Path, out: str | Path) -> ConvertResult:
    """Convert the authors' checkpoint folder `src` into the new folder `out` (module docstring)."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new folder")
    checkpoint = read_checkpoint(src)
    tokenizer, placeholders = _tokenizer(src, checkpoint.config)
    source_rows = int(checkpoint.config["vocab_size"])
    rows = max(source_rows, len(tokenizer))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS}
    config = hf_config(checkpoint, rows, ids["<image>"], ids["<video>"])
    model_map, head_map = plan(checkpoint, config, source_rows)
    from threedrs.models.prompt import ChatTemplate, PromptBuilder

    PromptBuilder(tokenizer, ChatTemplate(VIDEO3DLLM_TEMPLATE, "their prompt"), "<video>", "video")
    proj = checkpoint.tensors.get("model.proj_3d.2.weight")
    dropped = {name: dropped_reason(name) for name in sorted(checkpoint.tensors) if map_key(name) is None}
    meta = {"family": "llava_onevision", "hidden_size": int(config.text_config.hidden_size),
            "teacher_dim": None if proj is None else int(proj.shape[0]),
            "align": {"loss": "l2norm" if proj is not None else "none", **OFFICIAL_ALIGN,
                      "grounding_temperature": float(checkpoint.config.get("ground_head_temperature", 0.07))},
            "tokens": {GROUND_TOKEN: checkpoint.config["ground_token_ids"][0],
                       COORD_TOKEN: checkpoint.config["coord_token_ids"][0]},
            **OFFICIAL_SETTINGS, "lora_merged": False,
            "dtype": str(checkpoint.tensors[model_map["lm_head.weight"]].dtype).removeprefix("torch."),
            "source": {"official": checkpoint.kind, "path": str(src), "vocab_size": source_rows,
                       "placeholders": placeholders, "dropped": dropped,
                       "files": {name: file_sha256(src / name) for name in ["config.json", *checkpoint.files]}}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_folder(tmp, checkpoint, tokenizer, config, model_map, head_map, rows, meta)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(out, checkpoint.kind, len(model_map) + len(head_map), dropped, placeholders)


def _write_folder(folder: Path, checkpoint: OfficialCheckpoint, tokenizer, config, model_map: dict[str, str],
                  head_map: dict[str, str], rows: int, meta: dict) -> None:
    from transformers import GenerationConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    config.save_pretrained(folder)
    c = checkpoint.config
    GenerationConfig(bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"), do_sample=False,
                     num_beams=1, max_new_tokens=512).save_pretrained(folder)  # their eval's greedy decoding
    side = SIGLIP["image_size"]
    LlavaOnevisionImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"height": side, "width": side},
                                    do_pad=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with _Reader(checkpoint) as read:
        _write_weights(folder, model_map, read, rows)
        write_head_tensors({target: read(source).contiguous() for target, source in head_map.items()}, folder, meta)


def main_convert(args: argparse.Namespace) -> None:
    """`threedrs convert-official SRC OUT` (fields: src, out)."""
    result = convert_official(args.src, args.out)
    print(f"converted the {result.kind} checkpoint {args.src} to {result.out}: {result.tensors} tensors, "
          f"{len(result.dropped)} dead ones left out" +
          (f", placeholders added {result.placeholders}" if result.placeholders else "") +
          f"; evaluate with: threedrs eval configs/official_3drs.yaml model.path={result.out} data.root=...")
