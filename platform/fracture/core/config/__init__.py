"""The one config type (schema), loaded from a study YAML plus overrides (loading), checked (validation).

Every job and module takes its config from here: `from fracture.core.config import Config, load`.
"""

from fracture.core.config.loading import load, loads, resolve_paths, set_path
from fracture.core.config.schema import (
    ClusterConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
    flat,
)
from fracture.core.config.validation import DISTRIBUTIONS, Distribution, distribution, validate

__all__ = [
    "DISTRIBUTIONS",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "Distribution",
    "ModelConfig",
    "OptimConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "distribution",
    "flat",
    "load",
    "loads",
    "resolve_paths",
    "set_path",
    "validate",
]
