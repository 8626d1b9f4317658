"""The one config type: frozen dataclasses loaded from a study YAML plus `key=value` overrides.

Every knob has exactly one default, here. YAML is parsed with PyYAML, which reads `1e-5` as a
string, so every field is coerced to its annotated type and a value that cannot be coerced is an
error naming the key. Unknown keys are errors too (typos must not silently fall back to defaults).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture.core.errors import UserError
from fracture.core.names import AUGMENTS


class ConfigError(UserError, ValueError):
    """A study file or override that cannot become a Config; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/synthetic"  # a FracAtlas-layout folder: images/{Fractured,Non_fractured}, dataset.csv
    manifest: str = ""  # manifest Parquet; "" = <storage_path>/<name>/manifest.parquet, built on demand
    image_size: int = 224  # square side in pixels after resize
    split_seed: int = 17
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    balanced: bool = False  # the seed notebook's subset: all fractured + as many non-fractured
    allow_truncated: bool = False  # load truncated JPEGs with PIL's LOAD_TRUNCATED_IMAGES instead of excluding
    allow_leaky_split: bool = False  # train on a split that fails fracture.data.split_audit (warned, tagged in MLflow)
    augment: str = "light"  # per-epoch train augmentation: light (flips + 5% shifts) | seed (the notebook's) | none
    cache_dir: str = ""  # decoded-image cache; "" = <storage_path>/cache


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vgg16"  # vgg16 (the seed recipe) | vgg16_bn (batch norm: steadier from scratch)
    weights: str = "none"  # "imagenet" (torchvision download), a local .pth path, or "none"
    hidden: int = 128  # width of the Dense layer of the seed head
    dropout: float = 0.5
    l2: float = 1.0e-3  # Keras-style kernel_regularizer on the Dense-128 kernel: l2 * sum(w^2)
    flip_tta: bool = False  # at inference, average the logits of the image and its mirror (test-time augmentation)
    trainable_blocks: int = 5  # VGG16 conv blocks (of 5, counted from the top) trained after warm-up


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr_head: float = 1.0e-4
    lr_backbone: float = 1.0e-5
    weight_decay: float = 0.0  # decoupled decay for adamw; the seed's L2 is model.l2, not this
    schedule: str = "none"  # none | cosine | plateau
    grad_clip: float = 0.0  # max global grad norm; 0 disables


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size_per_worker: int = (
        32  # per DDP rank; VGG16 at 224 px, bf16: well inside a 24 GB GPU (estimate, no GPU measured yet)
    )
    warmup_epochs: int = 0  # head-only epochs with the backbone frozen
    imbalance: str = "pos_weight"  # pos_weight | none
    patience: int = 5  # epochs without val AUROC gain before stopping; 0 disables
    threshold: str = "youden"  # how the decision threshold is chosen on val: youden | sensitivity
    target_sensitivity: float = 0.9  # used when threshold == "sensitivity"
    # Rows in each worker's local shuffle buffer, seeded per (seed, epoch, rank); 0 = stored order.
    # At least a shard's rows means a full permutation every epoch, as a plain loop's sampler gives.
    # A smaller one mixes only the block(s) it holds, so over a cache of many blocks (224 px, or any
    # split over 128 MiB) the stored order recurs epoch after epoch (benchmarks/shuffle_order.py).
    # FracAtlas' train split is ~2.5k rows (380 MB at 224 px, 17 MB at 48 px).
    shuffle_buffer: int = 4096
    compile: bool = False  # torch.compile the training model (worth it on GPU for long runs)
    # The training forward pass: auto = bf16 autocast where the device computes bf16 natively (a
    # GPU; a CPU with AVX512-BF16 or AMX: ~1.9x fp32 on the 2-core EPYC here), else fp32; bf16; fp32.
    # Weights, the loss and every evaluation stay fp32 on CPU (engine.autocast).
    precision: str = "auto"
    # Exponential moving average of the weights, updated every step; 0 = off. When on, validation,
    # checkpoints' model.pt and the registered model are the average (steadier than the last step).
    ema_decay: float = 0.0


@dataclass(frozen=True)
class SearchConfig:
    num_trials: int = 1
    max_concurrent: int = 1  # trials at once: cluster GPUs (or CPUs) // resources per trial
    scheduler: str = "asha"  # asha | none
    grace_epochs: int = 1  # ASHA: epochs every trial gets before it can be stopped
    # What ASHA, Tune, checkpoint ranking, early stopping and @champion rank by (metrics.ranked):
    # auroc (val_auc) | specificity_at_sensitivity (val_spec_at_sens: val specificity where val
    # sensitivity reaches target_sensitivity, the clinical operating point).
    objective: str = "auroc"
    target_sensitivity: float = 0.90
    # point | lower_bound: rank by the objective on val, or by its bootstrap 95% lower bound
    # (<objective>_lower), which does not reward a score that one lucky val draw gave.
    rank_by: str = "point"
    space: dict = field(default_factory=dict)  # "section.key" -> {distribution: [args]}
    points_to_evaluate: list = field(default_factory=list)  # first trials: [{"section.key": value}]
    # A new study starts from an earlier one's finished trials (its dir, e.g. runs/demo): they are
    # copied into this study's Optuna storage, so the sampler knows them before the first trial.
    warm_start: str = ""


@dataclass(frozen=True)
class ClusterConfig:
    num_workers: int = 1  # Ray Train workers (DDP ranks) per trial
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"  # local dir for one node; shared FS or s3:// / gs:// on many
    storage_shared: bool = False  # true when storage_path is a mount that every node sees (NFS, EFS)
    max_failures: int = 0  # restarts of a failed trial (or its worker group) from its last checkpoint
    # auto: a one-worker trial trains in its Tune trial's own process (fracture.train.session.TrialSession,
    # ~1 s of overhead), several workers through a TorchTrainer (DDP); trainer: always a TorchTrainer
    runner: str = "auto"

    @property
    def in_trial(self) -> bool:
        """A trial trains in its Tune trial's own process (else its workers are a TorchTrainer's)."""
        return self.num_workers == 1 and self.runner == "auto"


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db
    experiment: str = "fracture"
    model_name: str = "fracture"  # registered model; the best version gets the @champion alias


@dataclass(frozen=True)
class Config:
    name: str = "demo"
    seed: int = 17
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build and validate: every Config in a process, a trial's sampled one included, passed `validate`."""
        cfg = _build(cls, raw, prefix="")
        validate(cfg)
        return cfg

    def replace(self, **sections: Any) -> Config:
        """Copy with whole fields or sections replaced, e.g. `cfg.replace(train={"epochs": 1})`."""
        raw = self.to_dict()
        for key, value in sections.items():
            raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
        return Config.from_dict(raw)

    @property
    def run_dir(self) -> Path:
        """Local directory for this study's default manifest, decoded cache and embedded MLflow store.

        With remote storage (s3://, gs://) checkpoints go there, but these defaults stay on the
        driver's disk under ~/.fracture; multi-node studies set data.manifest / data.cache_dir on
        shared storage and a tracking server explicitly.
        """
        if "://" in self.cluster.storage_path:
            return Path.home() / ".fracture" / self.name
        return Path(self.cluster.storage_path).expanduser().resolve() / self.name


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
        try:
            if typ is float:
                return float(value)
            if isinstance(value, str):
                value = float(value)  # "1e3" (a string to PyYAML) -> 1000.0
            if isinstance(value, float) and not value.is_integer():
                raise ValueError  # 1.5, "1.5", inf, nan
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from None
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is dict:
        if isinstance(value, dict):
            return dict(value)
    elif typ is list:
        if isinstance(value, list):
            return list(value)
    else:
        raise ConfigError(f"{key}: unsupported field type {typ!r}")
    raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(raw):
        typ = hints[name]
        if isinstance(typ, types.GenericAlias):
            typ = typing.get_origin(typ)
        key = f"{prefix}{name}"
        kwargs[name] = (
            _build(typ, raw[name], key + ".") if dataclasses.is_dataclass(typ) else _coerce(raw[name], typ, key)
        )
    return cls(**kwargs)


def flat(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict (Config.to_dict()) as {"section.key": value}; search.space stays one value."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key != "space":
            out |= {f"{key}.{k}": v for k, v in flat(value).items()}
        else:
            out[key] = value
    return out


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
            "root": absolute(cfg.data.root),
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
            # _build, not replace: Config.from_dict would validate the search space again, for ever
            _check_values(_build(Config, raw, prefix=""))
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
        ("search.num_trials", cfg.search.num_trials >= 1, "must be >= 1"),
        ("search.target_sensitivity", 0 < cfg.search.target_sensitivity < 1, "must be in (0, 1)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why}")
