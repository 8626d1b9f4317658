"""The checks types alone cannot express: allowed choices, ranges, and every value search.space can sample."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fracture.core.config.loading import set_path
from fracture.core.config.schema import Config, ConfigError, build
from fracture.core.names import AUGMENTS

_CHOICES = {
    "data.augment": AUGMENTS,
    "model.arch": ("vgg16", "vgg16_bn"),
    "optim.name": ("adam", "adamw"),
    "optim.schedule": ("none", "cosine", "plateau"),
    "train.imbalance": ("pos_weight", "none"),
    "train.threshold": ("youden", "sensitivity"),
    "search.scheduler": ("asha", "none"),
    "search.objective": ("auroc", "specificity_at_sensitivity"),
    "search.rank_by": ("point", "lower_bound"),
    "cluster.runner": ("auto", "trainer"),
    "train.precision": ("auto", "bf16", "fp32"),
}


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express, including every value search.space can sample."""
    _check_values(cfg)
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise ConfigError("data.val_fraction + data.test_fraction must leave a train split")
    for dotted, spec in cfg.search.space.items():
        if dotted.count(".") != 1:
            raise ConfigError(f"search.space.{dotted}: expected a section.key path such as model.dropout")
        set_path({}, dotted, None)
        _check_sampled(cfg, dotted, distribution(dotted, spec))
    for point in cfg.search.points_to_evaluate:
        if not isinstance(point, dict):
            raise ConfigError(f"search.points_to_evaluate: expected mappings of section.key: value, got {point!r}")
        for dotted, value in point.items():
            if dotted not in cfg.search.space:
                raise ConfigError(f"search.points_to_evaluate: {dotted} is not a key of search.space")
            _check_sampled(cfg, dotted, Distribution("choice", (value,)), where="search.points_to_evaluate")


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One search.space entry, checked: `{loguniform: [1.0e-5, 1.0e-3]}` -> ("loguniform", (1e-05, 0.001))."""

    kind: str
    args: tuple

    def ends(self) -> tuple:
        """The values a trial can take at the extremes (every option of a choice)."""
        if self.kind == "choice":
            return self.args
        if self.kind == "randint":  # Tune's randint excludes its upper bound
            return (self.args[0], self.args[1] - 1)
        return self.args[:2]


DISTRIBUTIONS = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "choice": None}  # kind -> arity


def distribution(dotted: str, spec: Any) -> Distribution:
    """Parse and check one search.space entry; the one parser the tuner and the tracker use."""
    where = f"search.space.{dotted}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-3]}}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} (use one of {', '.join(DISTRIBUTIONS)})")
    args = tuple(args) if isinstance(args, list) else (args,)
    if kind == "choice":
        if not args:
            raise ConfigError(f"{where}: choice needs at least one option")
        return Distribution(kind, args)
    if len(args) != DISTRIBUTIONS[kind]:
        raise ConfigError(f"{where}: {kind} takes {DISTRIBUTIONS[kind]} numbers, got {list(args)!r}")
    try:
        nums = tuple(float(a) for a in args if not isinstance(a, bool))  # PyYAML reads 1e-5 as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {kind} takes numbers, got {list(args)!r}") from None
    if len(nums) != len(args) or not all(math.isfinite(n) for n in nums):
        raise ConfigError(f"{where}: {kind} takes finite numbers, got {list(args)!r}")
    low, high = nums[:2]
    if not low < high:
        raise ConfigError(f"{where}: {kind} bounds must be [low, high] with low < high, got {list(args)!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {list(args)!r}")
    if kind == "quniform" and nums[2] <= 0:
        raise ConfigError(f"{where}: quniform's step q must be > 0, got {list(args)!r}")
    if kind == "randint":
        if not all(n.is_integer() for n in nums):
            raise ConfigError(f"{where}: randint takes integers, got {list(args)!r}")
        nums = tuple(int(n) for n in nums)
    return Distribution(kind, nums)


def _check_sampled(cfg: Config, dotted: str, dist: Distribution, where: str = "search.space") -> None:
    """Refuse a space whose extremes would make an invalid trial config (dropout 1.5, 7 blocks)."""
    section, key = dotted.split(".", 1)
    for value in dist.ends():
        raw = cfg.to_dict()
        raw[section][key] = value
        try:
            # build, not replace: Config.from_dict would validate the search space again, for ever
            _check_values(build(Config, raw, prefix=""))
        except ConfigError as exc:
            raise ConfigError(f"{where}.{dotted}: a trial would get {dotted}={value!r}: {exc}") from None


def _check_values(cfg: Config) -> None:
    raw = cfg.to_dict()
    for dotted, allowed in _CHOICES.items():
        section, key = dotted.split(".")
        if raw[section][key] not in allowed:
            raise ConfigError(f"{dotted}: {raw[section][key]!r} is not one of {', '.join(allowed)}")
    checks = [
        ("data.image_size", cfg.data.image_size >= 32, "must be >= 32 (VGG16 pools 5 times)"),
        ("model.dropout", 0.0 <= cfg.model.dropout < 1.0, "must be in [0, 1)"),
        ("model.l2", cfg.model.l2 >= 0, "must be >= 0"),
        ("model.trainable_blocks", 0 <= cfg.model.trainable_blocks <= 5, "must be in 0..5"),
        ("optim.lr_head", cfg.optim.lr_head > 0, "must be > 0"),
        ("optim.lr_backbone", cfg.optim.lr_backbone >= 0, "must be >= 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.grad_clip", cfg.optim.grad_clip >= 0, "must be >= 0 (0 disables clipping)"),
        ("data.val_fraction", 0 < cfg.data.val_fraction < 1, "must be in (0, 1)"),
        ("data.test_fraction", 0 <= cfg.data.test_fraction < 1, "must be in [0, 1)"),
        ("train.epochs", cfg.train.epochs >= 1, "must be >= 1"),
        ("train.ema_decay", 0.0 <= cfg.train.ema_decay < 1.0, "must be in [0, 1) (0 disables the average)"),
        ("train.batch_size_per_worker", cfg.train.batch_size_per_worker >= 1, "must be >= 1"),
        ("cluster.num_workers", cfg.cluster.num_workers >= 1, "must be >= 1"),
        ("cluster.capacity_timeout_s", cfg.cluster.capacity_timeout_s >= 0, "must be >= 0 (0: no waiting)"),
        ("search.num_trials", cfg.search.num_trials >= 1, "must be >= 1"),
        ("search.target_sensitivity", 0 < cfg.search.target_sensitivity < 1, "must be in (0, 1)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why}")
