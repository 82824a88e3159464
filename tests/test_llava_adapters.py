"""LLaVA-OneVision and LLaVA-NeXT-Video adapters on tiny random models (CPU)."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
from adapter_checks import (ANSWERS, PROMPTS, FamilySpec, avg_pool_2x2, bilinear_half, check_bad_inputs,
                            check_batch_equals_singles, check_footprints_tile, check_generate,
                            check_gradients_and_parts, check_hidden_matches_hf, check_last_layer_is_normed,
                            check_layout, check_loss_is_answer_ce, check_offsets, check_pixels_match_processor,
                            check_region_routing, check_round_trip, check_tiny_deterministic, check_vision_path,
                            frames, llm_inputs, real_size_grid, shared)
from transformers import LlavaNextVideoConfig, LlavaOnevisionConfig

from threedrs.models.prompt import ChatTemplate, PromptBuilder
from threedrs.models.llava_next_video import LlavaNextVideoAdapter
from threedrs.models.llava_onevision import LlavaOnevisionAdapter
from threedrs.models.placeholder import tiny_text_config


def _patches(adapter) -> int:
    vision = adapter.model.config.vision_config
    return vision.image_size // vision.patch_size


def _video_positions(adapter, ids: torch.Tensor, count: int) -> list[int]:
    """Positions of the `<video>` run (must be `count` long and contiguous)."""
    pos = (ids == adapter.tokenizer.convert_tokens_to_ids("<video>")).nonzero().flatten().tolist()
    assert len(pos) == count and pos == list(range(pos[0], pos[0] + count))
    return pos


# ------------------------------------------------------------------ LLaVA-OneVision: bilinear + one newline
def _ov_grid(adapter) -> tuple[int, int]:
    m = math.ceil(_patches(adapter) / 2)
    return m, m


def _ov_manual(adapter, pixels: torch.Tensor) -> torch.Tensor:
    config = adapter.model.config
    assert config.vision_feature_select_strategy == "full"
    b, s = pixels.shape[:2]
    n = _patches(adapter)
    states = adapter.model.model.vision_tower(pixels.flatten(0, 1), output_hidden_states=True).hidden_states
    projected = adapter.model.model.multi_modal_projector(states[config.vision_feature_layer])
    pooled = [bilinear_half(f.reshape(n, n, -1)) for f in projected]
    return torch.stack(pooled).reshape(b, s, *pooled[0].shape)


OV = FamilySpec(
    make=LlavaOnevisionAdapter.tiny,
    hf_pixels=lambda adapter, pixels: {"pixel_values_videos": pixels},
    visual_text=lambda adapter, s: "<video>" * (s * math.prod(_ov_grid(adapter)) + 1),
    grid_positions=lambda adapter, ids, s: _video_positions(adapter, ids, s * math.prod(_ov_grid(adapter)) + 1)[:-1],
    manual_grid=_ov_manual,
    grid=_ov_grid,
)


# ------------------------------------------------------------------ LLaVA-NeXT-Video: 2x2 average pooling
def _next_grid(adapter) -> tuple[int, int]:
    return _patches(adapter) // 2, _patches(adapter) // 2


def _next_manual(adapter, pixels: torch.Tensor) -> torch.Tensor:
    config = adapter.model.config
    assert config.vision_feature_select_strategy == "default" and config.spatial_pool_mode == "average"
    b, s = pixels.shape[:2]
    n = _patches(adapter)
    states = adapter.model.model.vision_tower(pixels.flatten(0, 1), output_hidden_states=True).hidden_states
    patches = states[config.vision_feature_layer][:, 1:]  # drop CLS
    pooled = torch.stack([avg_pool_2x2(f.reshape(n, n, -1)) for f in patches])
    projected = adapter.model.model.multi_modal_projector(pooled)
    return projected.reshape(b, s, *projected.shape[1:])


NEXT = FamilySpec(
    make=LlavaNextVideoAdapter.tiny,
    hf_pixels=lambda adapter, pixels: {"pixel_values_videos": pixels},
    visual_text=lambda adapter, s: "<video>" * (s * math.prod(_next_grid(adapter))),
    grid_positions=lambda adapter, ids, s: _video_positions(adapter, ids, s * math.prod(_next_grid(adapter))),
    manual_grid=_next_manual,
    grid=_next_grid,
)

FAMILIES = pytest.mark.parametrize("spec", [OV, NEXT], ids=["onevision", "next_video"])


@FAMILIES
def test_layout_matches_processor_string_and_positions(spec):
    check_layout(spec)


@FAMILIES
def test_visual_hidden_states_match_transformers_own_forward(spec):
    check_hidden_matches_hf(spec)


@FAMILIES
def test_last_layer_is_after_final_norm(spec):
    check_last_layer_is_normed(spec)


@FAMILIES
def test_llm_inputs_equal_tower_projector_pooling(spec):
    check_vision_path(spec)


@FAMILIES
def test_region_content_routes_to_its_cell(spec):
    check_region_routing(spec)


@FAMILIES
def test_lm_loss_is_answer_cross_entropy(spec):
    check_loss_is_answer_ce(spec)


@FAMILIES
def test_gradients_reach_llm_projector_vision(spec):
    check_gradients_and_parts(spec)


@FAMILIES
def test_offsets_added_at_grid_tokens_only(spec):
    check_offsets(spec)


@FAMILIES
def test_batch_of_two_equals_two_batches_of_one(spec):
    check_batch_equals_singles(spec)


@FAMILIES
def test_generate_greedy_deterministic_and_batch_independent(spec):
    check_generate(spec)


@FAMILIES
def test_save_and_load_round_trip(spec, tmp_path):
    check_round_trip(spec, tmp_path)


@FAMILIES
def test_tiny_is_deterministic_per_seed(spec):
    check_tiny_deterministic(spec)


@FAMILIES
def test_pixels_match_pil_processor(spec, tmp_path):
    check_pixels_match_processor(shared(spec), tmp_path)


@FAMILIES
def test_bad_inputs_raise_clear_errors(spec, tmp_path):
    check_bad_inputs(spec, tmp_path)


@functools.cache
def _odd_next_video() -> LlavaNextVideoAdapter:
    """NeXT-Video with 9 x 9 patches: 2x2 pooling drops the last patch row and column."""
    return LlavaNextVideoAdapter.tiny(image_size=63)


@pytest.mark.parametrize("size", [(30, 44), (37, 53), (968, 1296), (5, 5)])
def test_footprints_tile_non_square_frames(size):
    check_footprints_tile(shared(OV), *size)
    check_footprints_tile(shared(NEXT), *size)
    check_footprints_tile(_odd_next_video(), *size)


def test_footprints_by_hand():
    # OneVision 9x9 patches -> 5x5 tokens: bands of a fifth of the frame.
    boxes = shared(OV).footprints(10, 15)
    assert boxes[:, 0, 1].tolist() == [0, 2, 4, 6, 8] and boxes[:, 0, 3].tolist() == [2, 4, 6, 8, 10]
    assert boxes[0, :, 0].tolist() == [0, 3, 6, 9, 12] and boxes[0, :, 2].tolist() == [3, 6, 9, 12, 15]
    # NeXT-Video 9x9 patches, 2x2 average pooling drops the 9th patch row / column: the last box takes it.
    odd = _odd_next_video()
    assert odd.token_grid(90, 90) == (4, 4)
    assert odd.footprints(90, 180)[:, 0, 1].tolist() == [0, 20, 40, 60]
    assert odd.footprints(90, 180)[0, :, 2].tolist() == [40, 80, 120, 180]


def test_onevision_newline_follows_last_frame_and_gets_no_offset():
    adapter = shared(OV)
    h, w = _ov_grid(adapter)
    offsets = torch.ones(2, 2, h, w, adapter.hidden_size)
    with llm_inputs(adapter) as seen:
        out = adapter(frames(), PROMPTS, ANSWERS, visual_offsets=offsets)
    video = adapter.tokenizer.convert_tokens_to_ids("<video>")
    for i in range(2):
        newline = int((out.input_ids[i] == video).nonzero().max())
        assert newline not in out.extras["visual_index"][i].tolist()
        assert newline == int(out.extras["visual_index"][i].max()) + 1
        torch.testing.assert_close(seen[0][i, newline], adapter.model.model.image_newline.detach())


def test_real_size_token_grids():
    tiny = LlavaOnevisionAdapter.tiny()
    tok = tiny.tokenizer
    ids = dict(text_config=tiny_text_config(len(tok)), image_token_index=tok.convert_tokens_to_ids("<image>"),
               video_token_index=tok.convert_tokens_to_ids("<video>"))
    # transformers' defaults are the real towers: SigLIP-so400m 384/14 (OneVision), CLIP-L 336/14 (NeXT-Video).
    assert real_size_grid(LlavaOnevisionAdapter, LlavaOnevisionConfig(**ids), tok, tiny.image_processor) == (
        (14, 14), (14, 14), 1, 384)
    nxt = LlavaNextVideoAdapter.tiny()
    assert real_size_grid(LlavaNextVideoAdapter, LlavaNextVideoConfig(**ids), tok, nxt.image_processor) == (
        (12, 12), (12, 12), 0, 336)


def test_tokenizer_config_mismatch_is_refused():
    adapter = LlavaOnevisionAdapter.tiny()
    adapter.model.config.video_token_id = adapter.model.config.video_token_id + 1
    with pytest.raises(ValueError, match="video_token_id"):
        LlavaOnevisionAdapter(adapter.model, adapter.tokenizer, adapter.image_processor)


def test_answers_tokens_are_the_only_labels():
    """NeXT-Video's default (Vicuna) template: ` {answer}` then, as it writes no end marker, the eos."""
    adapter = shared(NEXT)
    assert (adapter.prompt.answer_lead, adapter.prompt.end) == (" ", adapter.tokenizer.eos_token)
    out = adapter(frames(), PROMPTS, ANSWERS)
    for i in range(2):
        labels = out.extras["labels"][i]
        answer = adapter.tokenizer(" " + ANSWERS[i] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert labels[labels != -100].tolist() == answer
    assert adapter(frames(), PROMPTS).lm_loss is None


def test_custom_chat_template_is_used_verbatim():
    """A template whose generation prompt ends in a space: the answer's first word would merge with it in a
    whole-string tokenisation, so the prompt keeps the ids generation sees and the answer is tokenised on its own."""
    base = shared(NEXT)
    template = ChatTemplate("{%- for m in messages -%}{{- m['role'] ~ '> ' -}}{%- for c in m['content'] -%}"
                            "{{- '<video>' if c['type'] == 'video' else c['text'] -}}{%- endfor -%}"
                            "{{- '<|endoftext|>' -}}{%- endfor -%}"
                            "{%- if add_generation_prompt -%}{{- 'assistant> ' -}}{%- endif -%}", "test")
    builder = LlavaNextVideoAdapter.checked_prompt(base.tokenizer, base.model.config, template, "tokenizer")
    adapter = LlavaNextVideoAdapter(base.model, base.tokenizer, base.image_processor, builder)
    out = adapter(frames(b=1), PROMPTS[:1], ANSWERS[:1])
    prompt = adapter.tokenizer("user> " + NEXT.visual_text(adapter, 2) + PROMPTS[0] + "<|endoftext|>assistant> ")
    answer = adapter.tokenizer(ANSWERS[0] + "<|endoftext|>")["input_ids"]
    assert out.input_ids[0].tolist() == prompt["input_ids"] + answer
    labels = out.extras["labels"][0]
    assert labels[labels != -100].tolist() == answer
    whole = adapter.tokenizer("assistant> " + ANSWERS[0])["input_ids"]
    assert whole[:len(adapter.tokenizer("assistant> ")["input_ids"])] != adapter.tokenizer("assistant> ")["input_ids"]
    other = LlavaNextVideoAdapter.tiny().tokenizer
    with pytest.raises(ValueError, match="prompt: built for another tokenizer than the adapter's"):
        LlavaNextVideoAdapter(base.model, other, base.image_processor, builder)


def test_sequence_building_errors():
    adapter = shared(NEXT)
    with pytest.raises(ValueError, match="padding_side"):
        adapter.prompt.batch(adapter._visual_layout(2), PROMPTS, None, padding_side="middle")
    with pytest.raises(ValueError, match="prompts: every entry must be a string"):
        adapter(frames(), ["a", 3])
    no_pad = SimpleNamespace(pad_token_id=None, eos_token_id=None)
    with pytest.raises(ValueError, match="tokenizer: has neither a pad nor an eos token"):
        PromptBuilder.pad_id(SimpleNamespace(tokenizer=no_pad))


def test_patch_features_are_asked_for_per_call_and_kept_by_no_one():
    """align.object_features=pixel_share needs the projector's features before pooling: the task asks the adapter's
    forward for them (AlignTask.adapter_options); building the task changes nothing in the adapter, and nothing
    holds the features (and their graph) once the caller drops the output."""
    import gc
    import weakref

    from adapter_checks import frames

    from threedrs.align.task import AlignTask
    from threedrs.models.internvl import InternVLAdapter

    adapter = LlavaOnevisionAdapter.tiny()
    task = AlignTask(adapter, None, loss="none", object_features="pixel_share")
    fr = frames()
    assert "patch_features" not in adapter(fr, PROMPTS, ANSWERS).extras
    seen = []
    hook = adapter.model.model.multi_modal_projector.register_forward_hook(lambda m, a, out: seen.append(out))
    out = adapter(fr, PROMPTS, ANSWERS, **task.adapter_options)
    hook.remove()
    n = adapter._patches
    patches = out.extras["patch_features"]
    assert task.adapter_options == {"patch_features": True} and patches.shape == (2, 2, n, n, adapter.hidden_size)
    assert torch.equal(patches.reshape(4, n * n, -1), seen[0]) and patches.requires_grad
    gone = weakref.ref(patches)
    del out, patches, seen
    gc.collect()
    assert gone() is None
    with pytest.raises(ValueError, match="patch_features: the internvl adapter has no patch features"):
        InternVLAdapter.tiny()(fr, PROMPTS, patch_features=True)
