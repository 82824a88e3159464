"""Tests of the Teacher contract and the VGGT aggregator teacher, on tiny random models (CPU, fast).

The key names of the official checkpoint are written out by hand here, and the aggregator is checked against
an independent plain-tensor implementation of the architecture (explicit softmax attention, RoPE as complex
rotations, patch projection by unfold), so a naming or wiring mistake in the module makes these tests fail.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from threedrs.teachers.base import Teacher, build_teacher, register_teacher
from threedrs.teachers.vggt import (
    CheckpointError,
    VGGTAggregator,
    VGGTConfig,
    VGGTTeacher,
    preprocess_frames,
    resized_size,
)

TINY = VGGTConfig(img_size=56, embed_dim=32, depth=2, num_heads=2, patch_embed_depth=1, patch_embed_num_heads=2)
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


# --- the official checkpoint layout, by hand ---
def official_aggregator_shapes(cfg: VGGTConfig) -> dict[str, tuple[int, ...]]:
    """Names (without 'aggregator.') and shapes of the aggregator tensors in an official VGGT checkpoint."""
    c, r, p = cfg.embed_dim, cfg.num_register_tokens, cfg.patch_size
    grid = cfg.img_size // p
    hidden = int(c * cfg.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "camera_token": (1, 2, 1, c),
        "register_token": (1, 2, r, c),
        "patch_embed.cls_token": (1, 1, c),
        "patch_embed.pos_embed": (1, 1 + grid * grid, c),
        "patch_embed.register_tokens": (1, r, c),
        "patch_embed.mask_token": (1, c),
        "patch_embed.patch_embed.proj.weight": (c, 3, p, p),
        "patch_embed.patch_embed.proj.bias": (c,),
        "patch_embed.norm.weight": (c,),
        "patch_embed.norm.bias": (c,),
    }

    def block(prefix: str, heads: int | None) -> None:
        for norm in ("norm1", "norm2"):
            shapes[f"{prefix}.{norm}.weight"] = (c,)
            shapes[f"{prefix}.{norm}.bias"] = (c,)
        shapes[f"{prefix}.attn.qkv.weight"] = (3 * c, c)
        shapes[f"{prefix}.attn.qkv.bias"] = (3 * c,)
        shapes[f"{prefix}.attn.proj.weight"] = (c, c)
        shapes[f"{prefix}.attn.proj.bias"] = (c,)
        if heads is not None:
            for norm in ("q_norm", "k_norm"):
                shapes[f"{prefix}.attn.{norm}.weight"] = (c // heads,)
                shapes[f"{prefix}.attn.{norm}.bias"] = (c // heads,)
        shapes[f"{prefix}.ls1.gamma"] = (c,)
        shapes[f"{prefix}.ls2.gamma"] = (c,)
        shapes[f"{prefix}.mlp.fc1.weight"] = (hidden, c)
        shapes[f"{prefix}.mlp.fc1.bias"] = (hidden,)
        shapes[f"{prefix}.mlp.fc2.weight"] = (c, hidden)
        shapes[f"{prefix}.mlp.fc2.bias"] = (c,)

    for i in range(cfg.patch_embed_depth):
        block(f"patch_embed.blocks.{i}", None)
    for i in range(cfg.depth):
        block(f"frame_blocks.{i}", cfg.num_heads)
        block(f"global_blocks.{i}", cfg.num_heads)
    return shapes


def official_checkpoint(cfg: VGGTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-model state dict under the official names: random aggregator weights plus some head weights."""
    gen = torch.Generator().manual_seed(seed)
    state = {"aggregator." + name: 0.3 * torch.randn(shape, generator=gen)
             for name, shape in official_aggregator_shapes(cfg).items()}
    for name in ("camera_head.trunk.0.norm1.weight", "depth_head.norm.weight", "point_head.norm.weight",
                 "track_head.feature_extractor.norm.weight"):
        state[name] = torch.randn(2 * cfg.embed_dim, generator=gen)
    return state


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# --- an independent reference implementation (float64, loops over frames, explicit attention) ---
def ref_norm(x: torch.Tensor, w: dict, name: str, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]


def ref_rope(u: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """u [heads, L, D]: first half rotated by row, second half by column; pair (i, i + D/4) in each half."""
    m = u.shape[-1] // 2
    parts = []
    for axis, half in enumerate((u[..., :m], u[..., m:])):
        theta = pos[:, axis, None].double() * base ** (-2.0 * torch.arange(m // 2, dtype=torch.float64) / m)
        z = torch.complex(half[..., : m // 2], half[..., m // 2 :]) * torch.exp(1j * theta)
        parts += [z.real, z.imag]
    return torch.cat(parts, dim=-1)


def ref_block(x: torch.Tensor, w: dict, prefix: str, heads: int, eps: float, pos=None, base=100.0) -> torch.Tensor:
    """x [L, C] -> [L, C]."""
    length, c = x.shape
    h = ref_norm(x, w, prefix + "norm1", eps)
    qkv = (h @ w[prefix + "attn.qkv.weight"].T + w[prefix + "attn.qkv.bias"]).reshape(length, 3, heads, c // heads)
    q, k, v = (qkv[:, i].transpose(0, 1) for i in range(3))
    if pos is not None:
        q = ref_rope(ref_norm(q, w, prefix + "attn.q_norm", 1e-5), pos, base)
        k = ref_rope(ref_norm(k, w, prefix + "attn.k_norm", 1e-5), pos, base)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c // heads), dim=-1)
    out = (attn @ v).transpose(0, 1).reshape(length, c)
    x = x + (out @ w[prefix + "attn.proj.weight"].T + w[prefix + "attn.proj.bias"]) * w[prefix + "ls1.gamma"]
    h = ref_norm(x, w, prefix + "norm2", eps) @ w[prefix + "mlp.fc1.weight"].T + w[prefix + "mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + (h @ w[prefix + "mlp.fc2.weight"].T + w[prefix + "mlp.fc2.bias"]) * w[prefix + "ls2.gamma"]


def ref_aggregator(state: dict, cfg: VGGTConfig, images: torch.Tensor) -> list[torch.Tensor]:
    """Official-named weights (with 'aggregator.'), preprocessed images [S, 3, H, W] -> per block [S, P, 2C]."""
    w = {k[len("aggregator."):]: v.double() for k, v in state.items() if k.startswith("aggregator.")}
    frames, _, height, width = images.shape
    c, r, p = cfg.embed_dim, cfg.num_register_tokens, cfg.patch_size
    gh, gw, grid = height // p, width // p, cfg.img_size // p
    x = (images.double() - MEAN) / STD
    cols = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # [S, gh*gw, 3*p*p]
    tok = cols @ w["patch_embed.patch_embed.proj.weight"].reshape(c, -1).T + w["patch_embed.patch_embed.proj.bias"]
    table = w["patch_embed.pos_embed"][0]
    patch_pos = F.interpolate(table[1:].reshape(grid, grid, c).permute(2, 0, 1)[None], size=(gh, gw),
                              mode="bicubic", antialias=True, align_corners=False)
    tok = tok + patch_pos[0].permute(1, 2, 0).reshape(gh * gw, c)
    cls = (w["patch_embed.cls_token"][0] + table[:1]).expand(frames, 1, c)
    seq = torch.cat([cls, w["patch_embed.register_tokens"].expand(frames, r, c), tok], dim=1)
    for i in range(cfg.patch_embed_depth):
        seq = torch.stack([ref_block(s, w, f"patch_embed.blocks.{i}.", cfg.patch_embed_num_heads, 1e-6) for s in seq])
    patches = ref_norm(seq, w, "patch_embed.norm", 1e-6)[:, 1 + r :]
    special = [torch.cat([w["camera_token"][0, int(s > 0)], w["register_token"][0, int(s > 0)]]) for s in range(frames)]
    tokens = torch.cat([torch.stack(special), patches], dim=1)  # [S, P, C]
    pos = torch.tensor([(0, 0)] * (1 + r) + [(j // gw + 1, j % gw + 1) for j in range(gh * gw)])
    outputs = []
    for i in range(cfg.depth):
        tokens = torch.stack([ref_block(t, w, f"frame_blocks.{i}.", cfg.num_heads, 1e-5, pos) for t in tokens])
        frame_out = tokens
        flat = ref_block(tokens.reshape(-1, c), w, f"global_blocks.{i}.", cfg.num_heads, 1e-5, pos.repeat(frames, 1))
        tokens = flat.reshape(frames, -1, c)
        outputs.append(torch.cat([frame_out, tokens], dim=-1))
    return outputs


def random_frames(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return official_checkpoint(TINY)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, tiny_state) -> VGGTTeacher:
    path = save_checkpoint(tiny_state, tmp_path_factory.mktemp("ckpt") / "vggt.pt")
    return VGGTTeacher(checkpoint=path, config=TINY)


# --- architecture and checkpoint loading ---
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_official_checkpoint_matches_reference_implementation(tmp_path, tiny_state, suffix):
    path = save_checkpoint(tiny_state, tmp_path / f"model{suffix}")
    teacher = VGGTTeacher(checkpoint=path, config=TINY)
    frames = random_frames(3, 28, 42)  # a 2 x 3 patch grid: non-square, so pos-embed resizing and RoPE axes matter
    expected = ref_aggregator(tiny_state, TINY, frames)
    got = teacher.aggregator(frames[None])
    assert len(got) == TINY.depth
    for block, (ours, ref) in enumerate(zip(got, expected)):
        assert ours.shape == (1, 3, 5 + 6, 2 * TINY.embed_dim), block
        torch.testing.assert_close(ours[0].double(), ref, rtol=1e-4, atol=1e-4)


def test_saved_module_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(1)
    original = VGGTAggregator(TINY)
    with torch.no_grad():
        for param in original.parameters():
            param.normal_(0.0, 0.3)
    state = {"aggregator." + k: v for k, v in original.state_dict().items()}
    state["aggregator.patch_embed.mask_token"] = torch.zeros(1, TINY.embed_dim)
    state["depth_head.norm.weight"] = torch.ones(2 * TINY.embed_dim)
    frames = random_frames(2, 42, 56)
    with torch.no_grad():
        expected = original(frames[None])
    for suffix in (".pt", ".safetensors"):
        loaded = VGGTTeacher(checkpoint=save_checkpoint(state, tmp_path / f"m{suffix}"), config=TINY)
        got = loaded.aggregator(frames[None])
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def without(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.startswith(prefix)}


@pytest.mark.parametrize("edit, message", [
    (lambda s: without(s, "aggregator.global_blocks.1.attn.k_norm.bias"),
     r"partial\.pt: 1 aggregator weights missing: aggregator\.global_blocks\.1\.attn\.k_norm\.bias$"),
    (lambda s: without(s, "aggregator.global_blocks."),  # 2 blocks x 18 tensors
     r"36 aggregator weights missing: aggregator\.global_blocks\.0\.norm1\.weight, .* and 26 more$"),
    (lambda s: {**s, "aggregator.frame_blocks.2.norm1.weight": torch.ones(32)},  # a deeper model than the config
     r"1 aggregator weights not in the model \(does VGGTConfig .*\): aggregator\.frame_blocks\.2\.norm1\.weight$"),
    (lambda s: {**s, "aggregator.camera_token": torch.zeros(1, 2, 1, 48)},
     r"1 aggregator weights have the wrong shape .*: aggregator\.camera_token \(1, 2, 1, 48\) vs \(1, 2, 1, 32\)$"),
])
def test_bad_aggregator_weights_are_named(tmp_path, tiny_state, edit, message):
    path = save_checkpoint(edit(tiny_state), tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=message):
        VGGTTeacher(checkpoint=path, config=TINY)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_of_another_model_is_refused(tmp_path, suffix):
    path = save_checkpoint({"encoder.layer.0.weight": torch.ones(3)}, tmp_path / f"other{suffix}")
    message = r"other.* is not a VGGT checkpoint: no weight named 'aggregator\.\*' \(1 entries"
    with pytest.raises(CheckpointError, match=message):
        VGGTTeacher(checkpoint=path, config=TINY)


def test_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match=r"tensor\.pt holds a Tensor, not a state dict"):
        VGGTTeacher(checkpoint=path, config=TINY)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_checkpoint_is_refused_with_its_name(tmp_path, tiny_state, suffix):
    full = save_checkpoint(tiny_state, tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint .*cut\{suffix} \(truncated or corrupt\?\)"):
        VGGTTeacher(checkpoint=cut, config=TINY)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VGGT checkpoint not found: .*nowhere\.pt"):
        VGGTTeacher(checkpoint=tmp_path / "nowhere.pt", config=TINY)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_training_checkpoint_loads(tmp_path, tiny_state, tiny_teacher, wrapper):
    path = tmp_path / "train.pt"
    torch.save({wrapper: tiny_state, "epoch": 3}, path)
    teacher = VGGTTeacher(checkpoint=path, config=TINY)
    frames = random_frames(2, 28, 28)
    assert torch.equal(teacher.encode(frames), tiny_teacher.encode(frames))


def test_weights_checksum(tmp_path, tiny_state):
    path = save_checkpoint(tiny_state, tmp_path / "w.pt")
    assert VGGTTeacher(checkpoint=path, config=TINY).weights_checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.manual_seed(0)
    first = VGGTTeacher(config=TINY).weights_checksum
    torch.manual_seed(0)
    same = VGGTTeacher(config=TINY).weights_checksum
    torch.manual_seed(1)
    other = VGGTTeacher(config=TINY).weights_checksum
    assert first.startswith("random-init:") and first == same != other


def test_expected_identity_without_the_weights_file_compares_nothing(tmp_path, tiny_state):
    """Training needs only the feature cache: VGGT's weights may live on another machine."""
    from threedrs.teachers.base import expected_identity

    assert expected_identity("vggt", str(tmp_path / "absent.pt"), 256) == (None, None)
    assert expected_identity("vggt", None, 256) == (None, None)
    path = save_checkpoint(tiny_state, tmp_path / "w.pt")
    assert expected_identity("vggt", str(path), 256) == (hashlib.sha256(path.read_bytes()).hexdigest(), None)


# --- exported layer and token dropping ---
@pytest.mark.parametrize("layer, block", [(-1, 1), (1, 1), (0, 0), (-2, 0)])
def test_exported_layer_drops_special_tokens(tmp_path, tiny_state, layer, block):
    path = save_checkpoint(tiny_state, tmp_path / "m.pt")
    teacher = VGGTTeacher(checkpoint=path, layer=layer, config=TINY)
    frames = random_frames(3, 42, 56)  # already at the teacher's input width: preprocessing leaves it as is
    tokens = teacher.encode(frames)
    reference = ref_aggregator(tiny_state, TINY, frames)[block]  # [S, 5 + 3 * 4, 2C]
    assert tokens.shape == (3, 3, 4, 2 * TINY.embed_dim)
    torch.testing.assert_close(tokens.double(), reference[:, 5:].reshape(3, 3, 4, -1), rtol=1e-4, atol=1e-4)
    full = teacher.aggregator(frames[None])[block][0]
    assert torch.equal(tokens, full[:, 5:].reshape(3, 3, 4, -1))
    assert teacher.layer == block


@pytest.mark.parametrize("layer", [2, -3])
def test_layer_out_of_range(layer):
    with pytest.raises(ValueError, match=rf"layer {layer} is out of range .* depth 2 \(valid: -2\.\.1\)"):
        VGGTTeacher(layer=layer, config=TINY)


def test_aggregator_rejects_bad_shapes():
    aggregator = VGGTAggregator(TINY)
    with pytest.raises(ValueError, match=r"not a multiple of the patch size 14"):
        aggregator(torch.rand(1, 2, 3, 28, 30))
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        aggregator(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"at least one aggregator block"):
        aggregator(torch.rand(1, 2, 3, 28, 28), layers=[])


# --- preprocessing ---
def test_scannet_frames_give_a_28_by_37_grid():
    teacher = VGGTTeacher(config=VGGTConfig(embed_dim=16, depth=1, num_heads=1, patch_embed_depth=1,
                                            patch_embed_num_heads=1))
    assert teacher.grid_for(968, 1296) == (28, 37)
    assert teacher.grid_for(392, 518) == (28, 37)
    assert teacher.encode(random_frames(2, 968, 1296)).shape == (2, 28, 37, 32)
    assert teacher.encode(random_frames(1, 392, 518)).shape == (1, 28, 37, 32)


def test_resized_size_uses_python_rounding():
    assert resized_size(968, 1296, 518, 14) == (392, 518)  # 968 * 518 / 1296 / 14 = 27.64 -> 28 patches
    assert resized_size(21, 518, 518, 14) == (28, 518)  # 1.5 -> 2
    assert resized_size(35, 518, 518, 14) == (28, 518)  # 2.5 -> 2 (half to even, like the official loader)
    assert resized_size(1000, 500, 518, 14) == (1036, 518)


def test_preprocess_matches_pil_bicubic():
    frames = random_frames(1, 97, 130)
    out = preprocess_frames(frames, 56, 14)
    height = round(97 * (56 / 130) / 14) * 14
    assert out.shape == (1, 3, height, 56)
    for channel in range(3):
        pil = Image.fromarray(frames[0, channel].numpy(), mode="F").resize((56, height), Image.Resampling.BICUBIC)
        expected = np.clip(np.asarray(pil), 0.0, 1.0)
        np.testing.assert_allclose(out[0, channel].numpy(), expected, atol=1e-5)


def test_preprocess_keeps_ready_frames_and_crops_tall_ones():
    ready = random_frames(2, 392, 518)
    assert torch.equal(preprocess_frames(ready, 518, 14), ready)
    tall = random_frames(1, 1000, 500)
    resized = F.interpolate(tall, size=(1036, 518), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    assert torch.equal(preprocess_frames(tall, 518, 14), resized[:, :, 259:777])
    assert VGGTTeacher(config=TINY).grid_for(1000, 500) == (4, 4)


@pytest.mark.parametrize("height, width, message", [
    (10, 500, r"frame of 10x500 px is smaller than one 14x14 px patch"),
    (500, 13, r"frame of 500x13 px is smaller than one 14x14 px patch"),
    (20, 2000, r"frame of 20x2000 px is too flat"),
])
def test_too_small_frames_are_refused(height, width, message):
    teacher = VGGTTeacher(config=TINY)
    with pytest.raises(ValueError, match=message):
        teacher.grid_for(height, width)
    with pytest.raises(ValueError, match=message):
        teacher.encode(random_frames(1, height, width))


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), r"float tensor .* got dtype torch\.uint8"),
    (torch.full((1, 3, 28, 28), 255.0), r"values in \[0, 1\], got range \[255, 255\]"),
    (torch.rand(3, 28, 28), r"shape \[S, 3, H, W\]"),
    (torch.rand(0, 3, 28, 28), r"shape \[S, 3, H, W\]"),
])
def test_bad_images_are_refused(images, message):
    with pytest.raises(ValueError, match=message):
        VGGTTeacher(config=TINY).encode(images)


# --- frame attention vs global attention ---
def test_frames_after_the_first_are_permutation_equivariant(tiny_teacher):
    frames = random_frames(4, 28, 42)
    tokens = tiny_teacher.encode(frames)
    order = [0, 2, 3, 1]
    torch.testing.assert_close(tiny_teacher.encode(frames[order]), tokens[order], rtol=1e-5, atol=1e-5)
    swapped = tiny_teacher.encode(frames[[1, 0, 2, 3]])  # the first frame has its own camera/register tokens
    assert not torch.allclose(swapped, tokens[[1, 0, 2, 3]], atol=1e-3)


def test_frames_interact_only_through_global_attention(tmp_path, tiny_state):
    frames = random_frames(3, 28, 42)
    changed = frames.clone()
    changed[2] = random_frames(1, 28, 42, seed=5)[0]
    teacher = VGGTTeacher(checkpoint=save_checkpoint(tiny_state, tmp_path / "m.pt"), config=TINY)
    assert not torch.allclose(teacher.encode(frames)[1], teacher.encode(changed)[1], atol=1e-3)
    with torch.no_grad():
        for block in teacher.aggregator.global_blocks:  # zero residual branches: global blocks become identities
            block.ls1.gamma.zero_()
            block.ls2.gamma.zero_()
    assert torch.equal(teacher.encode(frames)[1], teacher.encode(changed)[1])
    assert not torch.allclose(teacher.encode(frames)[2], teacher.encode(changed)[2], atol=1e-3)


# --- the Teacher contract and the registry ---
def test_teacher_is_frozen(tiny_teacher):
    assert isinstance(tiny_teacher, Teacher)
    assert not any(param.requires_grad for param in tiny_teacher.parameters())
    assert not tiny_teacher.training and not tiny_teacher.aggregator.training
    tiny_teacher.train()
    assert not tiny_teacher.training and not tiny_teacher.aggregator.training
    grad_modes = []
    hook = tiny_teacher.aggregator.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    frames = random_frames(2, 28, 28).requires_grad_(True)
    tokens = tiny_teacher.encode(frames)
    hook.remove()
    assert grad_modes == [False] and not tokens.requires_grad
    assert (tiny_teacher.name, tiny_teacher.channels, tiny_teacher.patch_size) == ("vggt", 64, 14)


def test_registry_builds_by_name_and_refuses_unknown_names():
    teacher = build_teacher("vggt", config={"img_size": 28, "embed_dim": 16, "depth": 1, "num_heads": 1,
                                            "patch_embed_depth": 1, "patch_embed_num_heads": 1}, layer=0)
    assert isinstance(teacher, VGGTTeacher) and teacher.config.img_size == 28
    with pytest.raises(ValueError, match=r"unknown teacher 'vggt2'; known teachers: .*vggt"):
        build_teacher("vggt2")
    with pytest.raises(ValueError, match=r"already registered by VGGTTeacher"):
        register_teacher("vggt")(type("Other", (VGGTTeacher,), {}))


@pytest.mark.parametrize("values, message", [
    ({"depht": 3}, r"unknown VGGTConfig keys: depht"),
    ({"img_size": 500}, r"img_size 500 is not a multiple of patch_size 14"),
    ({"embed_dim": 18, "num_heads": 3, "patch_embed_num_heads": 3}, r"head dim 6 must be a multiple of 4"),
    ({"embed_dim": 30, "num_heads": 4}, r"embed_dim 30 is not divisible by num_heads"),
    ({"depth": 0}, r"depth must be >= 1"),
])
def test_bad_config_is_refused(values, message):
    with pytest.raises(ValueError, match=message):
        VGGTConfig.from_mapping(values)


def test_teacher_cast_to_bfloat16_runs(tiny_teacher):
    frames = random_frames(2, 42, 56)
    expected = tiny_teacher.encode(frames)
    half = VGGTTeacher(config=TINY)
    half.load_state_dict(tiny_teacher.state_dict())
    tokens = half.to(torch.bfloat16).encode(frames)
    assert tokens.dtype == torch.bfloat16
    torch.testing.assert_close(tokens.float(), expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_autocast_matches_cpu(tiny_teacher):
    frames = random_frames(3, 42, 56)
    expected = tiny_teacher.encode(frames)
    cuda_teacher = VGGTTeacher(config=TINY)
    cuda_teacher.load_state_dict(tiny_teacher.state_dict())
    cuda_teacher.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        tokens = cuda_teacher.encode(frames)
    assert tokens.is_cuda
    torch.testing.assert_close(tokens.float().cpu(), expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_describe_and_validity(tiny_teacher):
    assert tiny_teacher.describe().startswith("vggt: VGGT aggregator block 1 of 2")
    assert "RANDOM INIT" in VGGTTeacher(config=TINY).describe()
    tokens, valid = tiny_teacher.encode_with_validity(random_frames(2, 42, 56))
    assert tokens.shape == (2, 3, 4, 64) and valid.shape == (2, 3, 4) and bool(valid.all())
