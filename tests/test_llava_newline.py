"""LLaVA `model.newline`: grid (one learned newline after each row of each frame: the layout LLaVA-Video-7B-Qwen2
is trained with by Video-3D LLM / 3DRS, `mm_newline_position: grid`), video (one after the video, transformers'
OneVision layout) and none. Newlines are not grid tokens, carry no 3D offset and are never supervised."""

from __future__ import annotations

import pytest
import torch
from adapter_checks import ANSWERS, PROMPTS, frames, llm_inputs

from threedrs.config import ConfigError, ModelConfig, load_config
from threedrs.models.llava_next_video import LlavaNextVideoAdapter
from threedrs.models.llava_onevision import LlavaOnevisionAdapter
from threedrs.models.registry import build_adapter


def authors_grid_layout(features: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """The token order of LLaVA-NeXT's `add_token_per_grid` (the authors' code), written independently: features
    [F, h*w, D] -> per frame, per row: the row's w features, then the newline -> [F*h*(w+1), D]."""
    frames, tokens, dim = features.shape
    side = int(tokens ** 0.5)
    rows = features.reshape(frames * side, side, dim)
    return torch.cat([rows, newline.expand(frames * side, 1, dim)], dim=1).reshape(-1, dim)


@pytest.fixture(scope="module")
def grid_adapter():
    return LlavaOnevisionAdapter.tiny(newline="grid")


def test_grid_layout_is_the_authors_token_order(grid_adapter):
    adapter = grid_adapter
    fr = frames()
    with llm_inputs(adapter) as seen:
        out = adapter(fr, PROMPTS, ANSWERS)
    h, w = adapter.token_grid(30, 44)
    video = adapter.tokenizer.convert_tokens_to_ids("<video>")
    features = adapter.model.model.get_video_features(pixel_values_videos=adapter.pixels(fr),
                                                      return_dict=True).pooler_output[:, :2 * h * w]
    for i in range(2):
        positions = (out.input_ids[i] == video).nonzero().flatten()
        assert len(positions) == 2 * h * (w + 1)  # 5 x 6 tokens per frame here (14 x 15 at 384 px)
        want = authors_grid_layout(features[i].reshape(2, h * w, -1), adapter.model.model.image_newline)
        torch.testing.assert_close(seen[0][i, positions], want.detach(), rtol=1e-5, atol=1e-6)
        grid = out.extras["visual_index"][i]
        newlines = sorted(set(positions.tolist()) - set(grid.tolist()))
        assert len(newlines) == 2 * h and all((p - int(positions[0]) + 1) % (w + 1) == 0 for p in newlines)
        assert (out.extras["labels"][i, positions] == -100).all()
    assert out.visual.hidden[-1].shape == (2, 2, h, w, adapter.hidden_size)


def test_grid_newlines_get_no_offset(grid_adapter):
    adapter = grid_adapter
    h, w = adapter.token_grid(30, 44)
    offsets = torch.randn(2, 2, h, w, adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    with llm_inputs(adapter) as seen:
        plain = adapter(frames(), PROMPTS)
        moved = adapter(frames(), PROMPTS, visual_offsets=offsets)
    delta = seen[1] - seen[0]
    for i in range(2):
        grid = plain.extras["visual_index"][i]
        torch.testing.assert_close(delta[i, grid].reshape(2, h, w, -1), offsets[i], rtol=1e-5, atol=1e-5)
        rest = torch.ones(delta.shape[1], dtype=torch.bool)
        rest[grid] = False
        assert delta[i, rest].abs().max() == 0
    assert not torch.allclose(moved.visual.hidden[-1], plain.visual.hidden[-1])


def test_newline_modes_token_counts_and_gradient():
    counts = {}
    for mode in ("grid", "video", "none"):
        for cls in (LlavaOnevisionAdapter, LlavaNextVideoAdapter):
            adapter = cls.tiny(newline=mode)
            h, w = adapter.token_grid(30, 44)
            out = adapter(frames(b=1), PROMPTS[:1], ANSWERS[:1])
            video = adapter.tokenizer.convert_tokens_to_ids("<video>")
            counts[cls.family, mode] = int((out.input_ids[0] == video).sum()) - 2 * h * w
            if mode != "none":  # the learned newline is trained through the LM loss
                out.lm_loss.backward()
                assert adapter.model.model.image_newline.grad.abs().sum() > 0
    assert counts == {("llava_onevision", "grid"): 2 * 5, ("llava_next_video", "grid"): 2 * 4,
                      ("llava_onevision", "video"): 1, ("llava_next_video", "video"): 1,
                      ("llava_onevision", "none"): 0, ("llava_next_video", "none"): 0}
    assert LlavaOnevisionAdapter.tiny().newline == "video" and LlavaNextVideoAdapter.tiny().newline == "none"


def test_release_shaped_llava_video_gets_14_by_15_tokens_per_frame(release_checkpoint):
    """A 384-px SigLIP checkpoint (LLaVA-Video-7B-Qwen2's tower, here the release-shaped OneVision folder):
    27x27 patches -> 14x14 tokens + a newline per row = 210 tokens per frame."""
    adapter = build_adapter(ModelConfig(family="llava_onevision", path=str(release_checkpoint("llava_onevision")),
                                        newline="grid"))
    layout = adapter._visual_layout(32)
    assert adapter.token_grid(968, 1296) == (14, 14)
    assert len(layout.grid_mask) == 32 * 14 * 15 and sum(layout.grid_mask) == 32 * 196
    assert layout.grid_mask[:15] == [True] * 14 + [False]


def test_newline_config_is_checked():
    assert build_adapter(ModelConfig(family="llava_next_video", newline="grid")).newline == "grid"
    with pytest.raises(ConfigError, match="model.newline: only the LLaVA families"):
        load_config(None, ["model.family=qwen2_vl", "model.newline=grid"])
    with pytest.raises(ConfigError, match="model.newline"):
        load_config(None, ["model.family=llava_onevision", "model.newline=row"])
    with pytest.raises(ValueError, match="newline: expected one of grid, video, none"):
        LlavaOnevisionAdapter.tiny(newline="row")


@pytest.mark.parametrize("cls", [LlavaOnevisionAdapter, LlavaNextVideoAdapter])
@pytest.mark.parametrize("newline", ["grid", "video", "none"])
def test_the_model_must_return_exactly_its_grid_and_own_newlines(cls, newline, monkeypatch):
    """transformers' get_video_features returns the frames' grid tokens then its own newlines (OneVision: one after
    the video, whatever layout the adapter writes; NeXT-Video: none); a count that differs is an error, not a
    silently cut tensor."""
    adapter = cls.tiny(newline=newline)
    fr = frames()
    h, w = adapter.token_grid(30, 44)
    inner = adapter.model.model
    returned = inner.get_video_features(pixel_values_videos=adapter.pixels(fr), return_dict=True).pooler_output
    assert returned.shape[1] == 2 * h * w + (1 if cls is LlavaOnevisionAdapter else 0)
    adapter(fr, PROMPTS, ANSWERS)  # the exact count passes
    real = inner.get_video_features

    def one_more(*args, **kwargs):
        out = real(*args, **kwargs)
        out.pooler_output = torch.cat([out.pooler_output, out.pooler_output[:, -1:]], dim=1)
        return out

    monkeypatch.setattr(inner, "get_video_features", one_more)
    with pytest.raises(RuntimeError, match=f"expected {2 * h * w} grid tokens .* the model returned "
                                           f"{returned.shape[1] + 1}"):
        adapter(fr, PROMPTS, ANSWERS)
