"""The search space: each search.space entry of the study (checked by config.distribution) as a Tune domain.

The trial config is `{"config": Config.to_dict()}` with each searched path replaced by a domain, so
every trial carries its whole resolved config.
"""

from __future__ import annotations

from typing import Any

import ray
import ray.tune

from fracture.core.config import Config, ConfigError, distribution

# config.distribution has parsed and checked every search.space entry; these make Tune domains of them.
DOMAINS = {
    "uniform": ray.tune.uniform,
    "loguniform": ray.tune.loguniform,
    "quniform": ray.tune.quniform,
    "randint": ray.tune.randint,
    "choice": lambda *options: ray.tune.choice(list(options)),
}


def _domain(dotted: str, spec: Any):
    dist = distribution(dotted, spec)
    return DOMAINS[dist.kind](*dist.args)


def search_space(cfg: Config) -> dict[str, Any]:
    """cfg.to_dict() with each searched path replaced by a Tune domain."""
    space = cfg.to_dict()
    for dotted, spec in cfg.search.space.items():
        section, key = dotted.split(".", 1)
        if section in ("data", "cluster", "tracking", "search"):
            # data.* would change the decoded cache per trial; the rest is infrastructure, not a hyperparameter
            raise ConfigError(f"search.space.{dotted}: {section}.* cannot be searched")
        space[section][key] = _domain(dotted, spec)
    return space


def points_to_evaluate(cfg: Config) -> list[dict[str, Any]]:
    """The study's first trials (e.g. the seed recipe), completed with the study's defaults.

    OptunaSearch enqueues points as flat "config/section/key" dicts covering every searched key.
    """
    base = cfg.to_dict()
    points = []
    for point in cfg.search.points_to_evaluate:
        flat = {}
        for dotted in cfg.search.space:
            section, key = dotted.split(".", 1)
            flat[f"config/{section}/{key}"] = point.get(dotted, base[section][key])
        points.append(flat)
    return points
