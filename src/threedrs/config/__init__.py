"""Typed experiment configuration: a tree of dataclasses, YAML files that hold values, `key=value` overrides.

Every setting is a dataclass field with a default and a one-line comment. A YAML file under `configs/` names only
the values it changes; `load_config(path, ["train.lr=1e-5", ...])` merges file and overrides over the defaults,
converts each value to its field's type and runs `validate()`, so a typo or a bad value fails at start-up with one
line that names the key.

sections.py holds the sections (`ExperimentConfig` is the root) and their checks; loading.py reads YAML and
overrides into them and writes them back out. Import from here: `from threedrs.config import load_config`.
"""

from threedrs.config.loading import (dump_yaml, explicit_keys, from_dict, load_config, parse_override, to_dict,
                                     validate)
from threedrs.config.sections import (FAMILIES, TASK_NAMES, AlignConfig, ConfigError, CorrespondenceConfig,
                                      DataConfig, EvalConfig, ExperimentConfig, ModelConfig, ProbeConfig,
                                      SynthConfig, TeacherConfig, TrainConfig)

__all__ = ["FAMILIES", "TASK_NAMES", "AlignConfig", "ConfigError", "CorrespondenceConfig", "DataConfig", "EvalConfig",
           "ExperimentConfig", "ModelConfig", "ProbeConfig", "SynthConfig", "TeacherConfig", "TrainConfig",
           "dump_yaml", "explicit_keys", "from_dict", "load_config", "parse_override", "to_dict", "validate"]
