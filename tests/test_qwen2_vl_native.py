"""Qwen2-VL / Qwen2.5-VL `model.image_size: native`: each frame is sized as the checkpoint's own image processor
sizes it (its min_pixels / max_pixels, sides multiples of 28); the token grid, the prompt's image tokens, the
footprints and the teacher grid of training follow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from threedrs.config import ConfigError, ModelConfig, load_config
from threedrs.training_data import build_training_data
from threedrs.data.instances import SceneDataError
from threedrs.extract import extract
from threedrs.models.qwen2_vl import Qwen2VLAdapter
from threedrs.models.qwen2_vl_pixels import patchify, resize_frames
from threedrs.models.registry import build_adapter
from threedrs.train import train


def smooth_image(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0), 40 + 0.5 * (xx + yy) % 200], -1)
    return img.astype(np.uint8)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def native(request, release_checkpoint):
    folder = release_checkpoint(request.param)
    adapter = build_adapter(ModelConfig(family=request.param, path=str(folder), image_size="native"))
    return adapter, Qwen2VLImageProcessorPil.from_pretrained(folder)


@pytest.mark.parametrize("size", [(224, 224), (97, 131), (968, 1296), (480, 640)])
def test_native_grid_is_the_released_processors(native, size):
    adapter, processor = native
    thw = processor(images=[Image.fromarray(smooth_image(*size))], return_tensors="pt")["image_grid_thw"][0]
    assert adapter.token_grid(*size) == (int(thw[1]) // 2, int(thw[2]) // 2)


def test_native_grids_of_known_frame_sizes(native):
    adapter, _ = native
    assert adapter.token_grid(224, 224) == (8, 8)  # 64 tokens, where the fixed 392x392 default gives 196
    assert adapter.token_grid(968, 1296) == (35, 46)  # ScanNet colour frames: 1610 tokens per frame


def test_native_pixels_match_the_released_processor(native):
    adapter, processor = native
    img = smooth_image(97, 131)
    frame = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None]
    mine, grid = patchify(resize_frames(frame, adapter.pixels), adapter.pixels)
    ref = processor(images=[Image.fromarray(img)], return_tensors="pt")
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    # torch bicubic on floats vs PIL bicubic on uint8 (upscaled frame): interpolation rounding only
    assert (mine - ref["pixel_values"]).abs().max() < 3.0 / 255 / min(adapter.pixels.std)


def test_native_forward_uses_the_frame_grid(native):
    adapter, _ = native
    frames = torch.rand(2, 2, 3, 97, 131, generator=torch.Generator().manual_seed(0))
    h, w = adapter.token_grid(97, 131)
    out = adapter(frames, ["what is here", "where is the chair"], ["a lamp", "left"])
    assert out.visual.hidden[-1].shape == (2, 2, h, w, adapter.hidden_size)
    assert int((out.input_ids[0] == adapter.image_pad).sum()) == 2 * h * w
    assert out.visual.footprint.shape == (2, h, w, 4)
    assert out.visual.footprint[0, -1, -1].tolist()[2:] == [131, 97]  # the boxes reach the frame's corner
    offsets = torch.zeros(2, 2, h, w, adapter.hidden_size)
    torch.testing.assert_close(adapter(frames, ["a", "b"], visual_offsets=offsets).visual.hidden[-1],
                               adapter(frames, ["a", "b"]).visual.hidden[-1], rtol=0, atol=0)


def test_native_is_refused_outside_qwen_and_bad_sizes_name_the_key():
    with pytest.raises(ConfigError, match="model.image_size: native resolution is for qwen2_vl / qwen2_5_vl"):
        load_config(None, ["model.family=llava_onevision", "model.image_size=native"])
    with pytest.raises(ConfigError, match="model.image_size"):
        load_config(None, ["model.image_size=full"])
    assert load_config(None, ["model.image_size=native"]).model.image_size == "native"
    assert load_config(None, ["model.image_size=[392,392]"]).model.image_size == (392, 392)


def test_teacher_grid_follows_the_native_grid(synthrooms_tiny, tmp_path):
    """SynthRooms' 64x48 frames through the tiny processor (patch 7, merge 2, min 56*56 pixels) -> 56x70 pixels,
    a 4x5 grid: features must be extracted for that grid and a training step runs on it."""
    adapter = Qwen2VLAdapter.tiny("qwen2_vl", image_size="native")
    assert adapter.token_grid(48, 64) == (4, 5)

    def config(*extra):
        return load_config(None, [
            f"data.root={synthrooms_tiny}", "data.frames=4", f"output_dir={tmp_path / 'run'}",
            f"teacher.cache_dir={tmp_path / 'cache'}", "teacher.channels=32", "teacher.batch_frames=4",
            "model.image_size=native", "train.steps=1", "train.batch_size=2", *extra])

    with pytest.raises(SceneDataError, match=r"teacher.grid \[3, 4\] does not match the student's token grid \[4, 5"):
        build_training_data(config("teacher.grid=[3,4]"), adapter)
    extract(config("teacher.grid=[4,5]"))
    result = train(config("teacher.grid=[4,5]"), progress=False)
    assert result.steps == 1 and result.last_losses["align_loss"] > 0
