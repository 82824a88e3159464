"""Each detail of Video-3D LLM / 3DRS's inference path that threedrs reproduces, against values computed by hand:
the position encoding of a known point, clamping and rounding, the nearest-resized pixel world map and the token
blocks, the 50 % / 12.5 % pixel shares on a hand-made box, the PIL resize, their prompt texts, and the config rules
that keep these settings to the model they belong to."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from threedrs.align.grounding import pixel_share_features
from threedrs.align.posenc import discretise, position_encoding
from threedrs.config import ConfigError, load_config
from threedrs.data.prompt_style import styled, video3dllm_prompt
from threedrs.data.tasks import SPATIAL_INSTRUCTION, Sample
from threedrs.pixel_blocks import PixelGrid, block_points, cell_counts, pixel_world

REAL = PixelGrid(side=384, patch=14, grid=14)


def test_the_real_grid_has_their_numbers():
    assert (REAL.patches, REAL.block, REAL.grid * REAL.block) == (27, 27, 378)  # 6 rows / columns of 384 unused


def test_position_encoding_of_a_known_point_is_their_sin_cos_of_integer_voxels():
    point = torch.tensor([[1.23, -0.47, 2.0]], dtype=torch.float64)
    # clamp, shift by the minimum (-15, -15, -5), / 0.1 m, round: 162.3 -> 162, 145.3 -> 145, 70 -> 70
    assert discretise(point).tolist() == [[162.0, 145.0, 70.0]]
    enc = position_encoding(point, torch.tensor([True]), 14, dtype=torch.float64)[0]
    # 14 channels: 14 // 3 = 4 per axis, frequencies 1 / 10000^(2 floor(i / 2) / 4) = 1, 1, 1/100, 1/100; 2 zero pads
    expected = []
    for v in (162, 145, 70):
        expected += [math.sin(v), math.cos(v), math.sin(v / 100), math.cos(v / 100)]
    torch.testing.assert_close(enc, torch.tensor(expected + [0.0, 0.0], dtype=torch.float64))


def test_clamp_and_rounding():
    points = torch.tensor([[20.0, -16.04, 5.3],     # outside: clamped to (15, -15, 5) -> (300, 0, 100)
                           [0.26, 0.24, -4.96]],    # 152.6 -> 153, 152.4 -> 152, 0.4 -> 0
                          dtype=torch.float64)
    assert discretise(points).tolist() == [[300.0, 0.0, 100.0], [153.0, 152.0, 0.0]]


def test_pixel_world_is_nearest_resized_and_puts_missing_depth_at_the_camera():
    depth = torch.arange(1, 25, dtype=torch.float64).reshape(1, 4, 6) / 10  # 4 x 6 depth image, all distinct
    depth[0, 1, 2] = 0.0                                                     # no depth
    K = torch.tensor([[2.0, 0, 3.0], [0, 2.0, 2.0], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)[None].clone()
    pose[0, :3, 3] = torch.tensor([10.0, 20.0, 30.0])
    world = pixel_world(depth, K, pose, side=3)
    # output pixel (y, x) reads depth pixel (floor(y * 4 / 3), floor(x * 6 / 3)): rows 0, 1, 2 and columns 0, 2, 4
    for y, row in enumerate((0, 1, 2)):
        for x, col in enumerate((0, 2, 4)):
            z = depth[0, row, col].item()
            expected = [10 + (col - 3.0) * z / 2, 20 + (row - 2.0) * z / 2, 30 + z]
            torch.testing.assert_close(world[0, y, x], torch.tensor(expected, dtype=torch.float64))
    assert world[0, 1, 1].tolist() == [10.0, 20.0, 30.0]  # depth pixel (1, 2) has no depth: the camera centre


def test_token_points_are_block_means_and_the_remainder_is_unused():
    grid = PixelGrid(side=10, patch=3, grid=2)  # 3 patches of 3 px, pooled to 2: blocks of 9 // 2 = 4 px
    assert (grid.patches, grid.block) == (3, 4)
    ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
    pixels = torch.stack([xs, ys, torch.full_like(xs, 7.0)], -1)[None]  # pixel (y, x) at world (x, y, 7)
    points = block_points(pixels, grid)[0]
    # block (i, j) averages rows 4i..4i+3 and columns 4j..4j+3; rows / columns 8 and 9 belong to no token
    assert points.tolist() == [[[1.5, 1.5, 7.0], [5.5, 1.5, 7.0]], [[1.5, 5.5, 7.0], [5.5, 5.5, 7.0]]]


def _unit_pixels() -> torch.Tensor:
    """A 384 x 384 pixel map with pixel (y, x) at world point (x, y, 0) metres."""
    ys, xs = torch.meshgrid(torch.arange(384.0), torch.arange(384.0), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)], -1)[None]


def _box(x0: float, x1: float, y0: float, y1: float) -> list[float]:
    return [(x0 + x1) / 2, (y0 + y1) / 2, 0.0, x1 - x0, y1 - y0, 1.0]


def test_fifty_and_twelve_and_a_half_percent_on_hand_made_boxes():
    pixels = _unit_pixels()
    # patch (0, 0) = pixels x, y in 0..13 (196). Columns 0..6 -> 98 = int(196 * 0.5): in; columns 0..5 -> 84: out
    boxes = torch.tensor([_box(-0.5, 6.5, -0.5, 13.5), _box(-0.5, 5.5, -0.5, 13.5)])
    patch = cell_counts(pixels, boxes, REAL.patch, REAL.patches)[:, 0]
    assert patch[:, 0, 0].tolist() == [98, 84] and patch[:, 0, 1].tolist() == [0, 0]
    assert ((patch >= int(14 * 14 * 0.5))[:, 0, 0]).tolist() == [True, False]
    # token (0, 0) = pixels 0..26 (729). 13 columns x 7 rows = 91 = int(729 * 0.125): in; 13 x 6 = 78: out
    boxes = torch.tensor([_box(-0.5, 12.5, -0.5, 6.5), _box(-0.5, 12.5, -0.5, 5.5)])
    token = cell_counts(pixels, boxes, REAL.block, REAL.grid)[:, 0]
    assert token[:, 0, 0].tolist() == [91, 78] and ((token >= 91)[:, 0, 0]).tolist() == [True, False]
    # pixels 378..383 belong to no token: a box there counts nothing
    far = cell_counts(pixels, torch.tensor([_box(377.5, 384, -0.5, 384)]), REAL.block, REAL.grid)
    assert int(far.sum()) == 0


def test_each_box_mask_is_built_once_for_both_grids(monkeypatch):
    import threedrs.pixel_blocks as pixel_blocks

    grid = PixelGrid(side=10, patch=3, grid=2)  # patch cells span 9 pixels, token blocks 8: other spans
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 10, 10, 3, generator=gen, dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.6, 0.6, 0.6], [0.3, 0.7, 0.5, 0.5, 0.5, 1.0],
                          [5.0, 5.0, 5.0, 0.1, 0.1, 0.1]], dtype=torch.float64)
    patches, tokens = pixel_blocks.cell_counts_per_grid(pixels, boxes, [(grid.patch, grid.patches),
                                                                        (grid.block, grid.grid)])
    assert torch.equal(patches, cell_counts(pixels, boxes, grid.patch, grid.patches))
    assert torch.equal(tokens, cell_counts(pixels, boxes, grid.block, grid.grid))
    assert patches.sum() > 0 and tokens.sum() > 0 and tokens.shape == (3, 2, 2, 2)
    built = []
    real = pixel_blocks.box_mask
    monkeypatch.setattr(pixel_blocks, "box_mask", lambda *args: built.append(1) or real(*args))
    pixel_share_features(torch.zeros(2, 3, 3, 4), torch.zeros(2, 2, 2, 4), pixels, boxes, grid)
    assert len(built) == len(boxes)


def test_pixel_share_features_average_patches_plus_centre_and_states():
    pixels = _unit_pixels()
    d = 6
    patches = torch.arange(27 * 27, dtype=torch.float64).reshape(1, 27, 27, 1).expand(1, 27, 27, d).clone()
    states = 1000 + torch.arange(14 * 14, dtype=torch.float64).reshape(1, 14, 14, 1).expand(1, 14, 14, d).clone()
    # box over pixels x 0..27, y 0..13: patches (0, 0) and (0, 1) fully in (196 each), patch (0, 2) has 0..27 -> x
    # 28 is out so 0 columns; token (0, 0) has 27 x 14 = 378 >= 91 pixels, token (0, 1) has 1 x 14 = 14 < 91
    box = torch.tensor([_box(-0.5, 27.5, -0.5, 13.5)], dtype=torch.float64)
    feats = pixel_share_features(patches, states, pixels.double(), box, REAL)
    centre = position_encoding(box[:, :3], torch.tensor([True]), d, dtype=torch.float64)[0]
    expected = ((0.0 + 1.0) / 2 + centre + 1000.0) / 2  # patches 0 and 1, token 0
    torch.testing.assert_close(feats[0], expected)
    empty = pixel_share_features(patches, states, pixels.double(), torch.tensor([_box(1000, 1001, 0, 1)]).double(),
                                 REAL)
    centre = position_encoding(torch.tensor([[1000.5, 0.5, 0.0]], dtype=torch.float64), torch.tensor([True]), d,
                               dtype=torch.float64)[0]
    torch.testing.assert_close(empty[0], centre / 2)  # no patch, no token: zeros, plus the centre's encoding


def test_pil_bicubic_gives_the_pixels_pil_resize_gives():
    from PIL import Image

    from threedrs.models.placeholder import pil_bicubic

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    theirs = np.asarray(Image.fromarray(image).resize((384, 384)))  # their VideoProcessor: PIL's default filter
    frame = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    ours = (pil_bicubic(frame, 384)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(ours, theirs)


def _sample(task: str, prompt: str) -> Sample:
    return Sample(id="x", task=task, scene_id="scene0000_00", prompt=prompt, answer="a")


def test_their_prompt_texts():
    refer = _sample("scanrefer", "Identify the object according to the following description.\nA chair.")
    qa = _sample("scanqa", "What is on the table? Answer the question simply.")
    assert video3dllm_prompt(refer, training=False) == refer.prompt  # "<image>Identify ...": no space
    assert video3dllm_prompt(qa, training=False) == " What is on the table? Answer the question simply."
    assert video3dllm_prompt(qa, training=True) == ("The video captures 3D spatial information of a scene. Please "
                                                    "focus on the spatial relationships in the video and answer the "
                                                    "following questions.\n What is on the table? Answer the "
                                                    "question simply.")
    assert video3dllm_prompt(refer, training=True) == SPATIAL_INSTRUCTION + refer.prompt
    assert styled([qa], "threedrs", training=True) == [qa]


@pytest.mark.parametrize("override, key", [
    (["align.posenc_points=pixel_blocks"], "align.posenc_points"),
    (["align.object_features=pixel_share"], "align.object_features"),
    (["model.resize=pil_bicubic"], "model.resize"),
])
def test_their_rules_belong_to_llava(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(None, ["model.family=qwen2_vl", *override])
    load_config(None, ["model.family=llava_onevision", *override])
