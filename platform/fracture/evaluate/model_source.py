"""Where a model to score comes from: a checkpoint directory or a `models:/<name>@<alias>` URI.

MLflow is reached only through fracture.track, imported when a URI has to be resolved, so a
checkpoint directory never needs a tracking server.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from fracture.core.config import Config, ConfigError
from fracture.model import checkpoint
from fracture.model.network import FractureNet

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^@/]+)@(?P<alias>[^@/]+)$")


def champion_uri(cfg: Config) -> str:
    """The default model to score: models:/<tracking.model_name>@champion."""
    from fracture.track.registry import CHAMPION

    return f"models:/{cfg.tracking.model_name}@{CHAMPION}"


def resolve(source: str, cfg: Config) -> tuple[Path, str]:
    """A local checkpoint directory for `source`, and what it really is.

    Args:
        source: a checkpoint directory, or `models:/<name>@<alias>` in the study's MLflow registry
            (tracking uri from tracking.tracking_uri(cfg)); the alias's files are downloaded.
    Returns:
        (directory, resolved): `resolved` is the directory, or `models:/<name>/<version>` that the
        alias pointed at when it was read (aliases move; a record of what was scored must not).
    Raises:
        ConfigError for a path that is not a checkpoint, TrackingError for a URI that cannot be had.
    """
    match = _MODEL_URI.match(source)
    if match:
        from fracture.track import registration, store

        uri = store.tracking_uri(cfg)
        store.check_reachable(uri)
        directory, version = registration.champion_checkpoint(uri, match["name"], match["alias"])
        log.info("%s is version %s (downloaded to %s)", source, version, directory)
        return directory, f"models:/{match['name']}/{version}"
    if source.startswith("models:/"):
        raise ConfigError(f"--model {source}: expected models:/<name>@<alias>, e.g. models:/fracture@champion")
    directory = Path(source).expanduser()
    if not (directory / checkpoint.STATE_FILE).is_file() or not (directory / checkpoint.MODEL_FILE).is_file():
        raise ConfigError(
            f"--model {source}: not a checkpoint directory (needs {checkpoint.MODEL_FILE} and "
            f"{checkpoint.STATE_FILE}), nor a models:/<name>@<alias> URI"
        )
    return directory.resolve(), str(directory.resolve())


def checkpoint_dir(source: str, cfg: Config) -> Path:
    """The local checkpoint directory of `source` (see `resolve`)."""
    return resolve(source, cfg)[0]


def load(source: str, cfg: Config) -> tuple[FractureNet, dict[str, Any]]:
    """The model (eval mode, on CPU) and its checkpoint state.

    state["source"] records `source` as given, state["resolved"] what it resolved to (see `resolve`).
    """
    directory, resolved = resolve(source, cfg)
    net, state = checkpoint.load_model(directory)
    return net, {**state, "source": source, "resolved": resolved}
