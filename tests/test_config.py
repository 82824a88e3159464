"""The typed config system: every YAML in configs/ loads, overrides convert types, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from threedrs.config import ConfigError, ExperimentConfig, dump_yaml, explicit_keys, load_config, parse_override

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
LAUNCHERS = Path(__file__).parent.parent / "configs" / "accelerate"


@pytest.mark.parametrize("path", [p for p in CONFIGS if LAUNCHERS not in p.parents], ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert load_config(path, []) == cfg


def test_there_are_config_files():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


def test_overrides_convert_to_field_types():
    cfg = load_config(None, ["data.frames=8", "correspondence.voxel=0.2", "correspondence.same_frame=true",
                             "name=run1", "data.sampling=max_coverage"])
    assert cfg.data.frames == 8 and isinstance(cfg.data.frames, int)
    assert cfg.correspondence.voxel == 0.2 and cfg.correspondence.same_frame is True
    assert cfg.name == "run1" and cfg.data.sampling == "max_coverage"


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["data.frames=5"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, message", [
    ("data.frame=8", r"unknown config key data.frame \(did you mean data.frames\?\)"),
    ("data.frames=eight", "data.frames: expected an integer, got 'eight'"),
    ("data.frames=0", "data.frames: must be at least 1"),
    ("data.sampling=random", "data.sampling: 'random' is not one of 'uniform', 'max_coverage'"),
    ("correspondence.same_frame=2", "correspondence.same_frame: expected true or false"),
    ("correspondence.recall_radius=0", "correspondence.recall_radius: must be a positive number of metres"),
    ("correspondence.recall_memory_mb=-1", "correspondence.recall_memory_mb: must be a positive number"),
    ("data=3", "data: expected a mapping"),
    ("frames", "must look like key=value"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("seed=-1", "seed"), ("seed=4294967296", "seed"), ("synth.seed=-3", "synth.seed"),
    ("synth.val_fraction=nan", "synth.val_fraction"), ("data.coverage_voxel=-0.1", "data.coverage_voxel"),
    ("data.coverage_voxel=inf", "data.coverage_voxel"), ("correspondence.voxel=0", "correspondence.voxel"),
    ("correspondence.voxel=nan", "correspondence.voxel"), ("teacher.channels=0", "teacher.channels"),
    ("correspondence.recall_radius=nan", "correspondence.recall_radius"),
    ("correspondence.recall_memory_mb=inf", "correspondence.recall_memory_mb"),
    ("teacher.batch_frames=-2", "teacher.batch_frames"), ("teacher.grid=[0,4]", "teacher.grid"),
    ("model.tiny_seed=-1", "model.tiny_seed"), ("model.lora_rank=-1", "model.lora_rank"),
    ("model.lora_alpha=0", "model.lora_alpha"), ("model.lora_dropout=1.0", "model.lora_dropout"),
    ("model.lora_dropout=-0.1", "model.lora_dropout"), ("model.image_size=[0,5]", "model.image_size"),
    ("align.weight=-1", "align.weight"), ("align.weight=inf", "align.weight"),
    ("align.infonce_temperature=0", "align.infonce_temperature"),
    ("align.grounding_temperature=-0.07", "align.grounding_temperature"), ("align.layers=[]", "align.layers"),
    ("train.lr_llm=-1e-5", "train.lr_llm"), ("train.lr_vision=-1", "train.lr_vision"),
    ("train.lr_projector=nan", "train.lr_projector"), ("train.lr_heads=inf", "train.lr_heads"),
    ("train.weight_decay=-0.1", "train.weight_decay"), ("train.max_grad_norm=-1", "train.max_grad_norm"),
    ("train.num_workers=-1", "train.num_workers"), ("train.warmup_ratio=1.5", "train.warmup_ratio"),
    ("train.steps=0", "train.steps"), ("train.batch_size=0", "train.batch_size"), ("train.grad_accum=0", "train.grad_accum"),
    ("train.save_every=0", "train.save_every"), ("eval.limit=0", "eval.limit"),
    ("eval.batch_size=0", "eval.batch_size"), ("eval.max_new_tokens=-3", "eval.max_new_tokens"), ("synth.width=8", "synth.width"),
    ("eval.probe_layers=[]", "eval.probe_layers"), ("probe.layers=[]", "probe.layers"),
    ("output_dir=' '", "output_dir"),
])
def test_every_number_is_checked_for_sign_range_and_finiteness(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}[:\[]"):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert load_config(None, ["correspondence.voxel=5e-2"]).correspondence.voxel == 0.05  # YAML reads 5e-2 as text
    assert parse_override("x=") == ("x", "")


def test_explicit_keys_name_the_leaves_of_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nprobe:\n  posenc: true\n  layers: [0]\n")
    keys = explicit_keys(path, ["data.frames=4", "correspondence={voxel: 0.2}"])
    assert keys == {"name", "probe.posenc", "probe.layers", "data.frames", "correspondence.voxel"}
    assert explicit_keys() == set()
    path.write_text("- not a mapping\n")  # the same one-line errors as load_config, not an AttributeError
    with pytest.raises(ConfigError, match=r"c.yaml: the top level must be a mapping of sections, got list"):
        explicit_keys(path)
    with pytest.raises(ConfigError, match="config file not found"):
        explicit_keys(tmp_path / "missing.yaml")


def test_recall_settings_in_the_provenance_records():
    """The recall never changes what training writes; its memory bound never changes what eval writes (only how
    it computes), while switching the recall on or its match radius does."""
    from threedrs.provenance import config_fields

    cfg = load_config(None, ["correspondence.recall=true", "correspondence.recall_radius=0.2"])
    assert not any(k.startswith("correspondence.recall") for k in config_fields(cfg, "train"))
    assert "correspondence.voxel" in config_fields(cfg, "train")
    fields = config_fields(cfg, "eval")
    assert fields["correspondence.recall"] is True and fields["correspondence.recall_radius"] == 0.2
    assert "correspondence.recall_memory_mb" not in fields
