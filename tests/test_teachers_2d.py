"""2D teachers through transformers: tiny random models saved to tmp_path, loaded back by the teachers.

Each test compares the teacher's tokens with the Hugging Face model's own output on the same normalised pixels,
so special-token dropping, layer choice and preprocessing are checked against an independent reference.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from threedrs.teachers.base import build_teacher
from threedrs.teachers.hf2d import ModelFolderError, naflex_grid

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def save_model(directory, model, processor: dict):
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": MEAN, "image_std": STD, "do_normalize": True, "resample": 3, **processor}))
    return directory


def normalise(images):
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def tiny(kind, directory):
    """(saved model in eval mode, number of special tokens written by hand) for each family."""
    if kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(image_size=28, patch_size=14, **SMALL))
        proc = {"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}, "do_center_crop": True}
        special = 1
    elif kind == "dinov2_reg":
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            image_size=28, patch_size=14, num_register_tokens=3, **SMALL))
        proc = {"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}, "do_center_crop": True}
        special = 4
    elif kind == "siglip":  # a full SigLIP (vision + text) folder: the teacher loads only the vision tower
        model = transformers.SiglipModel(transformers.SiglipConfig(
            vision_config=dict(image_size=28, patch_size=14, **SMALL),
            text_config=dict(vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0, **SMALL)))
        proc = {"size": {"height": 28, "width": 28}}
        special = 0
    elif kind == "mae":
        model = transformers.ViTMAEModel(transformers.ViTMAEConfig(image_size=28, patch_size=14, **SMALL))
        proc = {"size": {"height": 28, "width": 28}}
        special = 1
    else:
        raise AssertionError(kind)
    save_model(directory, model.eval(), proc)
    return model, special


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_reg", "siglip", "mae"])
def test_patch_tokens_match_the_model_without_special_tokens(tmp_path, kind):
    model, special = tiny(kind, tmp_path)
    teacher = build_teacher(kind, checkpoint=tmp_path)
    images = torch.rand(3, 3, 28, 28)  # already at the input size: no resize, the reference is the raw model
    tokens = teacher.encode(images)
    assert tokens.shape == (3, 2, 2, 32) and teacher.grid_for(28, 28) == (2, 2) and teacher.channels == 32
    vision = model.vision_model if kind == "siglip" else model
    if kind == "mae":  # saved with the default mask_ratio 0.75; the teacher turns masking off
        assert model.config.mask_ratio == 0.75
        model.config.mask_ratio = 0.0
    with torch.no_grad():
        extra = {"noise": torch.arange(4.0).expand(3, 4)} if kind == "mae" else {}
        ref = vision(pixel_values=normalise(images), **extra).last_hidden_state
    assert ref.shape[1] == 4 + special
    torch.testing.assert_close(tokens.reshape(3, 4, 32), ref[:, special:], rtol=1e-4, atol=1e-5)
    # frozen and staying in eval mode
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training


def test_layer_selects_hidden_state_and_resizes_frames(tmp_path):
    model, _ = tiny("dinov2_reg", tmp_path)
    teacher = build_teacher("dinov2_reg", checkpoint=tmp_path, layer=0)
    images = torch.rand(2, 3, 40, 60)
    with torch.no_grad():
        resized = F.interpolate(images, size=(28, 28), mode="bicubic", antialias=True).clamp(0, 1)
        ref = model(pixel_values=normalise(resized), output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(teacher.encode(images).reshape(2, 4, 32), ref[:, 4:], rtol=1e-4, atol=1e-5)


def test_mae_keeps_every_patch_in_raster_order(tmp_path):
    """With random noise the model shuffles its tokens; restoring them must give the teacher's order."""
    tiny("mae", tmp_path)
    teacher = build_teacher("mae", checkpoint=tmp_path)
    assert teacher.model.config.mask_ratio == 0.0
    images = torch.rand(2, 3, 28, 28)
    torch.manual_seed(3)
    with torch.no_grad():
        out = teacher.model(pixel_values=normalise(images))  # default: random noise -> shuffled order
    assert out.mask.sum() == 0 and not torch.equal(out.ids_restore, torch.arange(4).expand(2, 4))
    restored = torch.gather(out.last_hidden_state[:, 1:], 1, out.ids_restore[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(teacher.encode(images).reshape(2, 4, 32), restored, rtol=1e-4, atol=1e-5)


def test_siglip2_naflex_matches_the_processor_layout(tmp_path):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    model = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(num_patches=16, patch_size=7, **SMALL))
    save_model(tmp_path, model.eval(), {"max_num_patches": 12, "patch_size": 7, "resample": 2})
    teacher = build_teacher("siglip2", checkpoint=tmp_path)
    # 28x42 frames: the largest scale keeping ceil(28 s / 7) * ceil(42 s / 7) <= 12 is s = 2/3 -> 3 x 4 patches
    assert teacher.grid_for(28, 42) == (3, 4) and naflex_grid(28, 42, 7, 12) == (3, 4)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 21, 28, 3), dtype=np.uint8)  # already 3x4 patches
    proc = Siglip2ImageProcessorPil(patch_size=7, max_num_patches=12, image_mean=MEAN, image_std=STD)
    inputs = proc(images=list(pixels), return_tensors="pt")
    assert inputs["spatial_shapes"].tolist() == [[3, 4], [3, 4]]
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(teacher.encode(images).reshape(2, 12, 32), ref, rtol=1e-4, atol=1e-4)


def test_bad_model_folders(tmp_path):
    tiny("dinov2", tmp_path / "dino")
    with pytest.raises(ModelFolderError, match="holds a 'dinov2' model"):
        build_teacher("siglip", checkpoint=tmp_path / "dino")
    with pytest.raises(ValueError, match="needs teacher.checkpoint"):
        build_teacher("dinov2")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        build_teacher("dinov2", checkpoint=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino", layer=2)
    (tmp_path / "dino" / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino")
    tiny("mae", tmp_path / "mae")
    weights = tmp_path / "mae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelFolderError, match="cannot load ViTMAEModel"):
        build_teacher("mae", checkpoint=tmp_path / "mae")


def test_bad_preprocessing_and_configs(tmp_path):
    def edit(path, **changes):
        values = json.loads(path.read_text())
        values.update(changes)
        path.write_text(json.dumps(values))

    tiny("dinov2", tmp_path / "dino")
    proc = tmp_path / "dino" / "preprocessor_config.json"
    edit(proc, crop_size={"height": 30, "width": 30})
    with pytest.raises(ModelFolderError, match="not a multiple of the patch size 14"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino")
    edit(proc, image_mean=[0.5, 0.5])
    with pytest.raises(ModelFolderError, match="image_mean and image_std must be lists of 3"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino")
    edit(proc, image_mean=MEAN, crop_size=None, size=None)
    with pytest.raises(ModelFolderError, match="no input size"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino")
    edit(tmp_path / "dino" / "config.json", num_hidden_layers=3)  # the file holds weights for 2 blocks
    edit(proc, size={"height": 28, "width": 28})
    with pytest.raises(ModelFolderError, match="weights missing or of the wrong shape"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino")
    (tmp_path / "dino" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        build_teacher("dinov2", checkpoint=tmp_path / "dino")
    tiny("siglip", tmp_path / "siglip")
    edit(tmp_path / "siglip" / "preprocessor_config.json", size={"height": 42, "width": 42})
    with pytest.raises(ModelFolderError, match="differs from the model's image_size 28"):
        build_teacher("siglip", checkpoint=tmp_path / "siglip")
    model = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(num_patches=16, patch_size=7, **SMALL))
    save_model(tmp_path / "naflex", model, {"size": {"height": 28, "width": 28}})
    with pytest.raises(ModelFolderError, match="needs max_num_patches"):
        build_teacher("siglip2", checkpoint=tmp_path / "naflex")
