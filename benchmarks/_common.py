"""Helpers shared by the benchmark scripts (not a benchmark itself): data, config, load, tables.

The scripts put this folder on sys.path implicitly (Python adds a script's own directory), so
`import _common` works for `python benchmarks/<script>.py` run from the repository root.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# FracAtlas JPEGs are mostly 373 x 454 (some 819 x 1024): synthetic images of about that size make
# the JPEG decode cost, which dominates an uncached pipeline, comparable to the real data.
SYNTHETIC_MIN, SYNTHETIC_MAX = 373, 454
BATCH = 32


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def default_size() -> int:
    """224 px (the real model input) on CUDA; 64 px on CPU so a run takes minutes, not hours."""
    return 224 if has_cuda() else 64


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def quiet() -> None:
    """Ray Data progress bars and per-execution INFO lines would bury the tables."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for name in ("ray.data", "ray.train", "ray.tune", "fracture"):
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_data_context() -> None:
    """No progress bars, and Ray Data's per-execution INFO lines to its log file only (not the console)."""
    import ray.data
    from ray.data._internal.logging import SessionFileHandler

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.WARNING)


def add_niceness_arg(p) -> None:
    p.add_argument(
        "--ray-worker-niceness",
        type=int,
        default=0,
        metavar="N",
        help="nice level of Ray's worker processes (default 0, as the plain baselines; Ray's own "
        "default is 15, which on a busy machine starves the Ray side of CPU)",
    )


def init_ray(num_cpus: int, worker_niceness: int = 0) -> None:
    """A local Ray instance of `num_cpus` logical CPUs.

    Ray's raylet starts every worker process at nice 15 by default (`worker_niceness`), while the
    plain baselines here run at nice 0: when anything else wants the CPU (other users of a shared
    machine), the Ray side would get a fraction of the CPU share, and the ratio would measure the
    scheduler, not the framework. So both sides run at the same priority unless asked otherwise.
    Worker logs stay in Ray's log files (/tmp/ray/session_latest/logs): Train's per-report INFO
    lines would bury the tables, and a worker's exception still reaches the driver through fit().
    """
    import ray

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
        _system_config={"worker_niceness": worker_niceness},
    )
    quiet_data_context()


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fracture-bench-"))


def data_root(root: str | None, tmp: Path, n: int, seed: int = 0) -> Path:
    """`root` as given (real FracAtlas), else `n` fresh synthetic FracAtlas-layout images under tmp."""
    if root:
        return Path(root).expanduser().resolve()
    from fracture.data import synthetic

    return synthetic.generate(tmp / "data", n=n, seed=seed, min_size=SYNTHETIC_MIN, max_size=SYNTHETIC_MAX)


def make_config(tmp: Path, root: Path, *overrides: str):
    """The package defaults, with storage (manifest, decoded cache, runs) under `tmp`."""
    from fracture.core.config import load as load_config

    return load_config(
        None,
        ["name=bench", f"data.root={root}", f"cluster.storage_path={tmp / 'runs'}", "model.weights=none", *overrides],
    )


class InMemory:
    """Map-style dataset over decoded arrays: item i = (image uint8 (S, S, 3), label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


class Collate:
    """Stack items into an engine batch, augmenting with the train split's preset (a fresh generator per batch)."""

    def __init__(self, augment: str):
        self.augment = augment

    def __call__(self, items) -> dict:
        import torch

        from fracture.core.names import IMAGE, LABEL
        from fracture.data import presets

        images = np.stack([image for image, _ in items])  # (B, S, S, 3) uint8
        if self.augment != "none":
            images = presets.augment(images, rng=np.random.default_rng(), strength=self.augment)
        return {
            IMAGE: torch.from_numpy(images),
            LABEL: torch.from_numpy(np.asarray([label for _, label in items])),
        }


def loader(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    train: bool,
    augment: str = "seed",
    workers: int = 0,
    pin_memory: bool = False,
):
    """A plain torch DataLoader over in-memory arrays: shuffled + augmented for train, as is for val."""
    import torch

    return torch.utils.data.DataLoader(
        InMemory(images, labels),
        batch_size=batch_size,
        shuffle=train,
        collate_fn=Collate(augment if train else "none"),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(value) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1e5 else f"{value:,.0f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def mlflow_config(uri: str):
    """Config for logging benchmark figures with fracture.track: experiment "benchmarks" in
    `uri` ("" = $MLFLOW_TRACKING_URI, else sqlite under runs/benchmarks/ of the repository)."""
    from fracture.core.config import load as load_config

    return load_config(
        None,
        [
            "name=benchmarks",
            "tracking.experiment=benchmarks",
            f"cluster.storage_path={ROOT / 'runs'}",
            *([f"tracking.uri={uri}"] if uri else []),
        ],
    )
