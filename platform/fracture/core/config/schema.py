"""The one config type: frozen dataclasses, one per section, and every knob's one default.

YAML is parsed with PyYAML, which reads `1e-5` as a string, so every field is coerced to its
annotated type and a value that cannot be coerced is an error naming the key. Unknown keys are
errors too (typos must not silently fall back to defaults).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracture.core.errors import UserError


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
    # A cluster whose autoscaler must first launch the nodes a trial needs (GPU workers from zero):
    # how long the study waits for room for one trial before it fails with one error line
    capacity_timeout_s: float = 900.0
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
        from fracture.core.config.validation import validate  # validation reads the schema: imported late

        cfg = build(cls, raw, prefix="")
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


def build(cls: type, raw: Any, prefix: str) -> Any:
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
            build(typ, raw[name], key + ".") if dataclasses.is_dataclass(typ) else _coerce(raw[name], typ, key)
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
