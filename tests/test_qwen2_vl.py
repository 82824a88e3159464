"""Qwen2-VL / Qwen2.5-VL adapter: token grid vs. the model's own mRoPE ids, footprints, hidden states, loss,
gradients, visual offsets, padding, generation, bad input and the local save/load round trip (tiny models, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from threedrs.models.qwen2_vl import Qwen2VLAdapter
from threedrs.models.qwen2_vl_pixels import patchify, resize_frames

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
PROMPTS = ["what colour is the chair", "where is the red table next to the window"]
ANSWERS = ["the chair is red and small", "left"]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request) -> Qwen2VLAdapter:
    return Qwen2VLAdapter.tiny(request.param, seed=0)


def frames_for(adapter: Qwen2VLAdapter, b: int = 2, s: int = 3, size: tuple[int, int] | None = None,
               seed: int = 0) -> torch.Tensor:
    height, width = size if size is not None else adapter.pixels.image_size  # the tiny models' fixed 42x56
    return torch.rand(b, s, 3, height, width, generator=torch.Generator().manual_seed(seed))


def image_pad_positions(input_ids: torch.Tensor, image_id: int) -> list[list[int]]:
    """Per sample, the sequence positions holding the image token, found by a plain loop."""
    return [[j for j in range(input_ids.shape[1]) if int(input_ids[i, j]) == image_id]
            for i in range(input_ids.shape[0])]


def hf_reference(adapter: Qwen2VLAdapter, frames: torch.Tensor, out):
    """Run the HF model on its own pixel path: pixels from the PIL image processor, the model's own scatter."""
    processor = adapter.image_processor
    images = [f.numpy() for f in frames.flatten(0, 1)]
    pix = processor(images=images, do_resize=False, do_rescale=False, return_tensors="pt")
    ids = out.input_ids
    mm = (ids == adapter.model.config.image_token_id).long()
    with torch.no_grad():
        ref = adapter.model(input_ids=ids, attention_mask=out.extras["attention_mask"], mm_token_type_ids=mm,
                            pixel_values=pix["pixel_values"], image_grid_thw=pix["image_grid_thw"],
                            output_hidden_states=True, use_cache=False)
    return ref


# ------------------------------------------------------------------------------------------------------- pixels
def test_patchify_equals_pil_processor(adapter):
    image = torch.rand(1, 3, *adapter.pixels.image_size, generator=torch.Generator().manual_seed(3))
    mine, grid = patchify(image, adapter.pixels)
    proc = Qwen2VLImageProcessorPil(patch_size=adapter.pixels.patch_size, merge_size=adapter.pixels.merge_size,
                                    temporal_patch_size=adapter.pixels.temporal_patch_size)
    ref = proc(images=[image[0].numpy()], do_resize=False, do_rescale=False, return_tensors="pt")
    torch.testing.assert_close(mine, ref["pixel_values"], atol=1e-6, rtol=0)
    assert grid.tolist() == ref["image_grid_thw"].tolist()


def test_patch_rows_follow_merged_tokens_row_major(adapter):
    spec = adapter.pixels
    h, w = spec.grid_for(*spec.image_size)
    t = spec.token_pixels
    image = torch.zeros(1, 3, *spec.image_size)
    for r in range(h):
        for c in range(w):
            image[0, :, r * t:(r + 1) * t, c * t:(c + 1) * t] = (r * w + c) / (h * w)
    pixel_values, _ = patchify(image, spec)
    std = torch.tensor(spec.std)[0]
    mean = torch.tensor(spec.mean)[0]
    first_channel = pixel_values[:, 0] * std + mean  # un-normalise channel 0 of each patch row
    per_token = spec.merge_size ** 2
    expected = torch.arange(h * w).repeat_interleave(per_token).float() / (h * w)
    torch.testing.assert_close(first_channel, expected, atol=1e-5, rtol=0)


def test_resize_keeps_range_and_size(adapter):
    frames = torch.rand(2, 3, 97, 131)
    resized = resize_frames(frames, adapter.pixels)
    assert resized.shape == (2, 3, *adapter.pixels.image_size)
    assert float(resized.min()) >= 0.0 and float(resized.max()) <= 1.0


# ------------------------------------------------------------------------------------------------ token grid
def test_token_grid_matches_mrope_position_ids(adapter):
    frames = frames_for(adapter)
    out = adapter(frames, PROMPTS, ANSWERS)
    h, w = adapter.token_grid(97, 131)
    b, s = frames.shape[:2]
    image_id = adapter.model.config.image_token_id
    grid_thw = torch.tensor([[1, 2 * h, 2 * w]] * (b * s))  # patch grid = merged grid * merge size 2
    mm = (out.input_ids == image_id).long()
    positions, _ = adapter.model.model.get_rope_index(out.input_ids, mm_token_type_ids=mm, image_grid_thw=grid_thw,
                                                      attention_mask=out.extras["attention_mask"])
    for i, pos_list in enumerate(image_pad_positions(out.input_ids, image_id)):
        assert len(pos_list) == s * h * w
        t_ids = positions[0, i, pos_list]
        frame_starts = sorted(set(t_ids.tolist()))
        assert len(frame_starts) == s  # one constant temporal id per frame, frames in increasing order
        for k, p in enumerate(pos_list):
            frame, rest = divmod(k, h * w)
            row, col = divmod(rest, w)
            start = int(positions[0, i, p])
            assert start == frame_starts[frame]
            assert int(positions[1, i, p]) - start == row
            assert int(positions[2, i, p]) - start == col


def test_visual_hidden_equal_independent_gather(adapter):
    frames = frames_for(adapter)
    out = adapter(frames, PROMPTS, ANSWERS, layers=(0, 1, -1))
    ref = hf_reference(adapter, frames, out)
    h, w = adapter.token_grid(*adapter.pixels.image_size)
    image_id = adapter.model.config.image_token_id
    ids = out.input_ids
    for i, pos_list in enumerate(image_pad_positions(ids, image_id)):
        for layer in (0, 1, -1):
            expected = ref.hidden_states[layer][i, pos_list].reshape(frames.shape[1], h, w, -1)
            torch.testing.assert_close(out.visual.hidden[layer][i].detach(), expected, atol=1e-5, rtol=1e-4)
        # vision_start / vision_end / text states are not in the grid
        others = [j for j in range(ids.shape[1]) if int(ids[i, j]) in adapter.placeholder_ids()[:2]]
        assert len(others) == 2 * frames.shape[1]
        grid = out.visual.hidden[-1][i].detach().reshape(-1, adapter.hidden_size)
        assert float(torch.cdist(ref.hidden_states[-1][i, others], grid).min()) > 1e-4
    # layer -1 is after the final norm: lm_head of it gives the model's logits
    torch.testing.assert_close(adapter.model.lm_head(out.last_hidden).detach(), ref.logits, atol=1e-5, rtol=1e-4)


def test_footprints_tile_original_frame(adapter):
    height, width = 97, 131
    boxes = adapter.footprints(height, width)
    h, w = adapter.token_grid(height, width)
    assert boxes.shape == (h, w, 4) and boxes.dtype == torch.int64
    cover = np.zeros((height, width), dtype=int)
    spec = adapter.pixels
    for r in range(h):
        for c in range(w):
            x0, y0, x1, y1 = boxes[r, c].tolist()
            assert x1 > x0 and y1 > y0
            cover[y0:y1, x0:x1] += 1
            # the token's centre in the resized frame maps back inside its box
            cy = (r + 0.5) * spec.token_pixels * height / spec.image_size[0]
            cx = (c + 0.5) * spec.token_pixels * width / spec.image_size[1]
            assert y0 <= cy < y1 and x0 <= cx < x1
    assert (cover == 1).all()
    out = adapter(frames_for(adapter, b=1, s=2, size=(height, width)), PROMPTS[:1])
    assert out.visual.footprint.shape == (2, h, w, 4)
    assert torch.equal(out.visual.footprint[1], boxes)


# ------------------------------------------------------------------------------------------------------ loss
def test_lm_loss_is_ce_over_answer_tokens_only(adapter):
    frames = frames_for(adapter)
    out = adapter(frames, PROMPTS, ANSWERS)
    ref = hf_reference(adapter, frames, out)
    tok = adapter.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    losses, count = [], 0
    for i, answer in enumerate(ANSWERS):
        target = tok(answer, add_special_tokens=False)["input_ids"] + [im_end]
        length = int(out.extras["attention_mask"][i].sum())
        assert out.input_ids[i, length - len(target):length].tolist() == target
        logits = ref.logits[i, length - len(target) - 1:length - 1]
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum"))
        count += len(target)
        labels = out.extras["labels"][i]
        assert (labels[:length - len(target)] == -100).all() and (labels[length:] == -100).all()
    torch.testing.assert_close(out.lm_loss.detach(), torch.stack(losses).sum() / count, atol=1e-5, rtol=1e-5)
    assert adapter(frames, PROMPTS).lm_loss is None


def test_gradients_reach_llm_and_merger(adapter):
    adapter.zero_grad(set_to_none=True)
    out = adapter(frames_for(adapter), PROMPTS, ANSWERS)
    (out.lm_loss + out.visual.hidden[-1].pow(2).mean()).backward()
    parts = adapter.parts()
    for name in ("llm", "projector", "vision"):
        grads = [p.grad for p in parts[name] if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name
    assert all(p.grad is not None for p in parts["projector"])
    all_params = {id(p) for p in adapter.model.parameters()}
    part_ids = [id(p) for ps in parts.values() for p in ps]
    assert len(part_ids) == len(set(part_ids)) and set(part_ids) == all_params
    adapter.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------------- offsets
def test_zero_offsets_change_nothing_and_nonzero_change_visuals(adapter):
    frames = frames_for(adapter)
    h, w = adapter.token_grid(*adapter.pixels.image_size)
    base = adapter(frames, PROMPTS, ANSWERS)
    zero = adapter(frames, PROMPTS, ANSWERS, visual_offsets=torch.zeros(2, 3, h, w, adapter.hidden_size))
    torch.testing.assert_close(zero.lm_loss, base.lm_loss, atol=0, rtol=0)
    torch.testing.assert_close(zero.visual.hidden[-1], base.visual.hidden[-1], atol=0, rtol=0)
    offsets = torch.randn(2, 3, h, w, adapter.hidden_size, requires_grad=True)
    moved = adapter(frames, PROMPTS, ANSWERS, visual_offsets=offsets)
    assert not torch.allclose(moved.visual.hidden[-1], base.visual.hidden[-1], atol=1e-4)
    assert abs(float(moved.lm_loss.detach() - base.lm_loss.detach())) > 1e-6
    moved.visual.hidden[-1].sum().backward()
    assert offsets.grad is not None and float(offsets.grad.abs().sum()) > 0
    adapter.zero_grad(set_to_none=True)


def test_offsets_land_exactly_on_visual_positions(adapter):
    captured = []

    def grab(module, args, kwargs):
        captured.append(kwargs["inputs_embeds"].detach().clone())

    frames = frames_for(adapter)
    h, w = adapter.token_grid(*adapter.pixels.image_size)
    offsets = torch.randn(2, 3, h, w, adapter.hidden_size)
    handle = adapter.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        base = adapter(frames, PROMPTS, ANSWERS)
        adapter(frames, PROMPTS, ANSWERS, visual_offsets=offsets)
    finally:
        handle.remove()
    diff = captured[1] - captured[0]
    image_id = adapter.model.config.image_token_id
    for i, pos_list in enumerate(image_pad_positions(base.input_ids, image_id)):
        torch.testing.assert_close(diff[i, pos_list], offsets[i].reshape(-1, adapter.hidden_size),
                                   atol=1e-5, rtol=1e-5)
        rest = [j for j in range(diff.shape[1]) if j not in set(pos_list)]
        assert float(diff[i, rest].abs().max()) == 0.0


# --------------------------------------------------------------------------------------------------- padding
def test_batch_equals_single_samples(adapter):
    frames = frames_for(adapter)
    batch = adapter(frames, PROMPTS, ANSWERS, layers=(1, -1))
    singles = [adapter(frames[i:i + 1], PROMPTS[i:i + 1], ANSWERS[i:i + 1], layers=(1, -1)) for i in range(2)]
    counts = [int((s.extras["labels"] != -100).sum()) for s in singles]
    weighted = sum(s.lm_loss * n for s, n in zip(singles, counts)) / sum(counts)
    torch.testing.assert_close(batch.lm_loss, weighted, atol=1e-5, rtol=1e-5)
    for i, single in enumerate(singles):
        length = single.input_ids.shape[1]
        assert torch.equal(batch.input_ids[i, :length], single.input_ids[0])
        assert (batch.extras["attention_mask"][i, length:] == 0).all()
        for layer in (1, -1):
            torch.testing.assert_close(batch.visual.hidden[layer][i], single.visual.hidden[layer][0],
                                       atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.last_hidden[i, :length], single.last_hidden[0], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ generation
def manual_greedy(adapter: Qwen2VLAdapter, frames, prompts, steps: int, offsets) -> list[str]:
    """Greedy decoding by full recomputation each step (no KV cache), through the model's forward."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    batch, pixel_values, grid = adapter.build_inputs(frames, prompts, None, "left")
    with torch.no_grad():
        feats = adapter.image_features(pixel_values, grid, frames.shape[:2],
                                       adapter.token_grid(*frames.shape[-2:]), offsets)
        ids, mask = batch.input_ids, batch.attention_mask
        suppressed = adapter.placeholder_ids()
        for _ in range(steps):
            mm = (ids == adapter.model.config.image_token_id).long()
            logits = adapter.model(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, image_grid_thw=grid,
                                   mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(feats,))},
                                   use_cache=False).logits[:, -1]
            logits[:, suppressed] = -float("inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    im_end = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = []
    for row in ids[:, batch.input_ids.shape[1]:].tolist():
        row = row[:row.index(im_end)] if im_end in row else row
        texts.append(adapter.tokenizer.decode(row, skip_special_tokens=True))
    return texts


def test_generate_is_greedy_deterministic_and_uses_offsets_in_prefill(adapter):
    frames = frames_for(adapter)
    h, w = adapter.token_grid(*adapter.pixels.image_size)
    offsets = torch.randn(2, 3, h, w, adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    first = adapter.generate(frames, PROMPTS, max_new_tokens=4)
    assert isinstance(first, list) and len(first) == 2 and all(isinstance(t, str) for t in first)
    assert adapter.generate(frames, PROMPTS, max_new_tokens=4) == first
    assert first == manual_greedy(adapter, frames, PROMPTS, 4, None)
    with_offsets = adapter.generate(frames, PROMPTS, max_new_tokens=4, visual_offsets=offsets * 5)
    assert with_offsets == manual_greedy(adapter, frames, PROMPTS, 4, offsets * 5)


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(adapter):
    frames = frames_for(adapter)
    h, w = adapter.token_grid(*adapter.pixels.image_size)
    with pytest.raises(ValueError, match="frames: expected"):
        adapter(frames[0], PROMPTS, ANSWERS)
    with pytest.raises(ValueError, match="prompts: expected 2 entries"):
        adapter(frames, PROMPTS[:1], ANSWERS)
    with pytest.raises(ValueError, match="prompts: expected a list of 2"):
        adapter(frames, "one prompt", ANSWERS)
    with pytest.raises(ValueError, match="answers: expected 2 entries"):
        adapter(frames, PROMPTS, ANSWERS + ["extra"])
    with pytest.raises(ValueError, match="visual_offsets: expected shape"):
        adapter(frames, PROMPTS, ANSWERS, visual_offsets=torch.zeros(2, 3, w, h, adapter.hidden_size))
    with pytest.raises(ValueError, match="layers: indices"):
        adapter(frames, PROMPTS, ANSWERS, layers=(5,))
    with pytest.raises(ValueError, match="prompts: the text must not contain the visual placeholder"):
        adapter(frames, ["look <|image_pad|>", "x"], ANSWERS)
    with pytest.raises(ValueError, match="prompts/answers: expected .* visual tokens .* in the prompt only"):
        adapter(frames, PROMPTS, ["<|image_pad|>", "x"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        adapter.generate(frames, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="smaller than"):
        adapter.footprints(2, 2)
    with pytest.raises(ValueError, match="image_size"):
        Qwen2VLAdapter.tiny(adapter.family, image_size=(40, 56))
    with pytest.raises(ValueError, match="family"):
        Qwen2VLAdapter.tiny("llava")


def test_from_pretrained_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        Qwen2VLAdapter.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen2VLAdapter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Qwen2VLAdapter.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="config.json: model_type is 'llama', not a Qwen2-VL checkpoint"):
        Qwen2VLAdapter.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ round trip
def test_save_and_load_round_trip(adapter, tmp_path):
    adapter.save_pretrained(tmp_path)
    loaded = Qwen2VLAdapter.from_pretrained(tmp_path, family=adapter.family, image_size=adapter.pixels.image_size)
    assert type(loaded.model) is type(adapter.model)
    assert loaded.placeholder_ids() == adapter.placeholder_ids() and loaded.pixels == adapter.pixels
    assert loaded.prompt.template.text == adapter.prompt.template.text
    frames = frames_for(adapter)
    a = adapter(frames, PROMPTS, ANSWERS)
    b = loaded(frames, PROMPTS, ANSWERS)
    assert torch.equal(a.input_ids, b.input_ids)
    torch.testing.assert_close(b.lm_loss, a.lm_loss, atol=0, rtol=0)
    torch.testing.assert_close(b.visual.hidden[-1], a.visual.hidden[-1], atol=0, rtol=0)
    other = "qwen2_5_vl" if adapter.family == "qwen2_vl" else "qwen2_vl"
    with pytest.raises(ValueError, match="does not match"):
        Qwen2VLAdapter.from_pretrained(tmp_path, family=other)


def test_tiny_is_deterministic_per_seed(adapter):
    again = Qwen2VLAdapter.tiny(adapter.family, seed=0)
    other = Qwen2VLAdapter.tiny(adapter.family, seed=1)
    first = dict(adapter.model.named_parameters())
    assert all(torch.equal(p, first[n]) for n, p in again.model.named_parameters())
    assert not all(torch.equal(p, first[n]) for n, p in other.model.named_parameters())


def test_added_special_token_is_one_id_in_prompt(adapter):
    fresh = Qwen2VLAdapter.tiny(adapter.family, seed=0)
    (ground,) = fresh.add_special_tokens(["<ground>"])
    out = fresh(frames_for(fresh, b=1, s=1), ["find the chair <ground>"], ["<ground>"])
    assert int((out.input_ids == ground).sum()) == 2
    assert torch.isfinite(out.lm_loss)
