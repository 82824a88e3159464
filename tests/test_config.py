"""The typed config system: every YAML in configs/ loads, overrides convert types, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from threedrs.config import ConfigError, ExperimentConfig, dump_yaml, load_config, parse_override

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
    ("data=3", "data: expected a mapping"),
    ("frames", "must look like key=value"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
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
