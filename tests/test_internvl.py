"""InternVL adapter on a tiny random model (CPU): one tile per frame, pixel shuffle, `<img>...</img>` per frame."""

import pytest
import torch
from adapter_checks import (ANSWERS, PROMPTS, FamilySpec, check_bad_inputs, check_batch_equals_singles,
                            check_footprints_tile, check_generate, check_gradients_and_parts, check_hidden_matches_hf,
                            check_last_layer_is_normed, check_layout, check_loss_is_answer_ce, check_offsets,
                            check_pixels_match_processor, check_region_routing, check_round_trip,
                            check_tiny_deterministic, check_vision_path, frames, real_size_grid, shared, shuffle_2x2)
from transformers import InternVLConfig

from threedrs.models.internvl import InternVLAdapter
from threedrs.models.placeholder import tiny_text_config


def _grid(adapter) -> tuple[int, int]:
    vision = adapter.model.config.vision_config
    n = vision.image_size[0] // vision.patch_size[0]
    return n // 2, n // 2


def _visual_text(adapter, s: int) -> str:
    """What transformers' InternVLProcessor.replace_video_token writes for s frames of one tile each."""
    h, w = _grid(adapter)
    return "\n".join(f"Frame{i + 1}: <img>" + "<IMG_CONTEXT>" * (h * w) + "</img>" for i in range(s))


def _positions(adapter, ids: torch.Tensor, s: int) -> list[int]:
    """Context-token positions between each `<img>` and its `</img>`, frame by frame."""
    tid = adapter.tokenizer.convert_tokens_to_ids
    starts = (ids == tid("<img>")).nonzero().flatten().tolist()
    ends = (ids == tid("</img>")).nonzero().flatten().tolist()
    assert len(starts) == len(ends) == s
    positions = []
    for a, b in zip(starts, ends):
        assert b - a - 1 == _grid(adapter)[0] * _grid(adapter)[1]
        assert (ids[a + 1:b] == tid("<IMG_CONTEXT>")).all()
        positions += range(a + 1, b)
    assert int((ids == tid("<IMG_CONTEXT>")).sum()) == len(positions)
    return positions


def _manual(adapter, pixels: torch.Tensor) -> torch.Tensor:
    config = adapter.model.config
    assert config.vision_feature_layer == -1 and config.vision_feature_select_strategy == "default"
    b, s = pixels.shape[:2]
    n = 2 * _grid(adapter)[0]
    states = adapter.model.model.vision_tower(pixels.flatten(0, 1)).last_hidden_state[:, 1:]  # drop CLS
    shuffled = torch.stack([shuffle_2x2(f.reshape(n, n, -1)) for f in states])
    projected = adapter.model.model.multi_modal_projector(shuffled)
    return projected.reshape(b, s, *projected.shape[1:])


SPEC = FamilySpec(make=InternVLAdapter.tiny, hf_pixels=lambda adapter, pixels: {"pixel_values": pixels.flatten(0, 1)},
                  visual_text=_visual_text, grid_positions=_positions, manual_grid=_manual, grid=_grid)


def test_layout_matches_processor_string_and_positions():
    check_layout(SPEC)


def test_visual_hidden_states_match_transformers_own_forward():
    check_hidden_matches_hf(SPEC)


def test_last_layer_is_after_final_norm():
    check_last_layer_is_normed(SPEC)


def test_llm_inputs_equal_tower_pixel_shuffle_projector():
    check_vision_path(SPEC)


def test_region_content_routes_to_its_cell():
    check_region_routing(SPEC)


def test_lm_loss_is_answer_cross_entropy():
    check_loss_is_answer_ce(SPEC)


def test_gradients_reach_llm_projector_vision():
    check_gradients_and_parts(SPEC)


def test_offsets_added_at_grid_tokens_only():
    check_offsets(SPEC)


def test_batch_of_two_equals_two_batches_of_one():
    check_batch_equals_singles(SPEC)


def test_generate_greedy_deterministic_and_batch_independent():
    check_generate(SPEC)


def test_save_and_load_round_trip(tmp_path):
    check_round_trip(SPEC, tmp_path)


def test_tiny_is_deterministic_per_seed():
    check_tiny_deterministic(SPEC)


def test_pixels_match_pil_processor(tmp_path):
    check_pixels_match_processor(shared(SPEC), tmp_path)


def test_bad_inputs_raise_clear_errors(tmp_path):
    check_bad_inputs(SPEC, tmp_path)


@pytest.mark.parametrize("size", [(30, 44), (37, 53), (968, 1296), (4, 200)])
def test_footprints_tile_non_square_frames(size):
    check_footprints_tile(shared(SPEC), *size)


def test_footprints_by_hand():
    # 8 x 8 patches of 7 pixels, 2 x 2 per token: bands of a quarter of the frame.
    boxes = shared(SPEC).footprints(20, 30)
    assert boxes[:, 0, 1].tolist() == [0, 5, 10, 15] and boxes[:, 0, 3].tolist() == [5, 10, 15, 20]
    assert boxes[0, :, 0].tolist() == [0, 7, 15, 22] and boxes[0, :, 2].tolist() == [7, 15, 22, 30]


def test_separators_are_not_grid_tokens():
    adapter = shared(SPEC)
    out = adapter(frames(), PROMPTS, ANSWERS)
    tid = adapter.tokenizer.convert_tokens_to_ids
    grid_ids = out.input_ids[0, out.extras["visual_index"][0]]
    assert (grid_ids == tid("<IMG_CONTEXT>")).all()
    assert adapter.tokenizer.decode(out.input_ids[0]).count("Frame") == 2


def test_real_size_token_grid():
    tiny = shared(SPEC)
    tok = tiny.tokenizer
    # transformers' default InternVL vision config is InternViT-300M at 448 / 14 with downsample ratio 0.5.
    config = InternVLConfig(text_config=tiny_text_config(len(tok)), image_token_id=tok.convert_tokens_to_ids(
        "<IMG_CONTEXT>"))
    assert real_size_grid(InternVLAdapter, config, tok, tiny.image_processor) == ((16, 16), (16, 16), 0, 448)


def test_tokenizer_config_mismatch_is_refused():
    adapter = InternVLAdapter.tiny()
    adapter.model.config.image_token_id = adapter.model.config.image_token_id + 1
    with pytest.raises(ValueError, match="image_token_id"):
        InternVLAdapter(adapter.model, adapter.tokenizer, adapter.image_processor)
