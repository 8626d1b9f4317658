"""A Config from a study YAML plus `section.key=value` overrides, with its paths made absolute."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fracture.core.config.schema import Config, ConfigError


def set_path(raw: dict, dotted: str, value: Any) -> None:
    """Set `raw["a"]["b"] = value` for "a.b", refusing paths that are not config fields."""
    parts = dotted.split(".")
    node, cls = raw, Config
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(f"unknown config key {'.'.join(parts[: depth + 1])}")
        hint = typing.get_type_hints(cls)[part]
        if depth == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"unknown config key {dotted} ({'.'.join(parts[: depth + 1])} is not a section)")
        if node.get(part) is None:  # absent, or "train:" with nothing under it
            node[part] = {}
        if not isinstance(node[part], dict):
            section = ".".join(parts[: depth + 1])
            raise ConfigError(f"{section}: expected a mapping such as {{{parts[depth + 1]}: ...}}, got {node[part]!r}")
        node = node[part]
        cls = hint


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Study YAML (or the defaults when `path` is None), then `section.key=value` overrides.

    Args:
        path: a study YAML file.
        overrides: strings like "model.dropout=0.3"; values are parsed as YAML.
    Returns:
        The validated, frozen Config.
    """
    if path is None:
        return _overridden({}, overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    return loads(path.read_text(), overrides, where=str(path))


def loads(text: str, overrides: Sequence[str] = (), *, where: str = "config") -> Config:
    """load() of a study YAML's text, e.g. the config.yaml a study stored (where: its name, for errors)."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from None
    if raw is None:
        # Most likely a wrong or unsaved file; the defaults alone are a real study (hours on CPU).
        raise ConfigError(f"{where}: the study file is empty (leave out --config to run the default study)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return _overridden(raw, overrides)


def _overridden(raw: dict, overrides: Sequence[str]) -> Config:
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, value = item.split("=", 1)
        set_path(raw, dotted.strip(), yaml.safe_load(value) if value else "")
    return resolve_paths(Config.from_dict(raw))


def resolve_paths(cfg: Config) -> Config:
    """Make local paths absolute against the driver's working directory.

    Tune runs each trial in its own working directory, so a relative "runs" would land in a
    different place per trial; the driver resolves paths once and trials inherit them.
    """

    def absolute(path: str) -> str:
        return path if not path or "://" in path else str(Path(path).expanduser().resolve())

    return cfg.replace(
        data={
            "root": data_root(absolute(cfg.data.root)),
            "manifest": absolute(cfg.data.manifest),
            "cache_dir": absolute(cfg.data.cache_dir),
        },
        cluster={"storage_path": absolute(cfg.cluster.storage_path)},
        model={
            "weights": cfg.model.weights
            if cfg.model.weights in ("none", "imagenet", "")
            else absolute(cfg.model.weights)
        },
    )


def data_root(root: str) -> str:
    """`root`, or its one subfolder that holds dataset.csv: an archive unpacked into data.root
    (figshare's FracAtlas.zip holds a FracAtlas/ folder) names the folder above the data."""
    if not root or "://" in root or (Path(root) / "dataset.csv").is_file():
        return root
    found = sorted(Path(root).glob("*/dataset.csv"))
    return str(found[0].parent) if len(found) == 1 else root
