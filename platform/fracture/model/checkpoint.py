"""The checkpoint directory format, owned here and nowhere else.

    model.pt      FractureNet state_dict (loads with torch.load(weights_only=True)); with
                  train.ema_decay, the weight average: what is scored and registered
    train_model.pt with train.ema_decay only: the raw weights that training continues from
    optimizer.pt  optimizer + LR-scheduler state, for resuming
    state.json    epoch, resolved config, decision threshold, metrics, weights source, history
    train_order.npz  the cache rows each epoch so far trained on, in order (this rank's shard)

A checkpoint is self-describing: `load_model(path)` rebuilds the exact model from state.json alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fracture.core.config import Config
from fracture.core.errors import UserError
from fracture.model.network import FractureNet, build_model

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
ORDER_FILE = "train_order.npz"
TRAIN_MODEL_FILE = "train_model.pt"


def save(
    directory: str | Path,
    net: FractureNet,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    scheduler=None,
    train_order: list[np.ndarray] | None = None,
    train_net: FractureNet | None = None,
) -> Path:
    """Write a checkpoint into `directory`.

    Args:
        net: the model to score and register (the weight average when there is one).
        train_net: the raw trained weights, when they differ from net (a weight average).
        state: JSON-able dict; must hold "epoch" and "config" (Config.to_dict()).
        train_order: per epoch, the cache rows trained on in order. Kept so that anyone can replay
            or audit exactly which images each epoch saw (e.g. a plain loop given the same batches).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), directory / MODEL_FILE)
    if train_net is not None:
        torch.save(train_net.state_dict(), directory / TRAIN_MODEL_FILE)
    if optimizer is not None:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
            },
            directory / OPTIMIZER_FILE,
        )
    if train_order is not None:
        np.savez_compressed(directory / ORDER_FILE, **{f"epoch_{i}": rows for i, rows in enumerate(train_order)})
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2, default=float))
    return directory


def read_train_order(directory: str | Path) -> list[np.ndarray]:
    """The rows each epoch trained on, in order (see `save`); [] for a checkpoint without them."""
    path = Path(directory) / ORDER_FILE
    if not path.is_file():
        return []
    with np.load(path) as saved:
        return [saved[f"epoch_{i}"] for i in range(len(saved.files))]


class CheckpointError(UserError, ValueError):
    """A directory given as a checkpoint is not one, or its files do not load (the user can fix it)."""


def read_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a fracture checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a fracture checkpoint's state ({exc})") from None
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path}: not a fracture checkpoint's state (no config)")
    return state


def _load_weights(net: FractureNet, path: Path) -> None:
    """Load model.pt into net; a file that is not our state_dict is one clear error, not a traceback.

    weights_only=True already refuses pickled code (a crafted file); this names the file and why.
    """
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} is not a fracture checkpoint (no {path.name})") from None
    except Exception as exc:  # UnpicklingError, a bad zip (RuntimeError), EOFError, mismatched keys or shapes
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not loadable as this checkpoint's model ({type(exc).__name__}: {reason[:200]})"
        ) from None


def restore(ray_checkpoint, net: FractureNet, optimizer, scheduler=None, average=None) -> dict[str, Any] | None:
    """Load a ray.train.Checkpoint (or None) into net/optimizer/scheduler; return its state or None.

    Args:
        average: the run's weight average (engine.weight_average), or None. It gets model.pt, and
            net the raw weights of train_model.pt.
    The state also holds "train_order" (see read_train_order).
    """
    if ray_checkpoint is None:
        return None
    with ray_checkpoint.as_directory() as directory:
        state = read_state(directory)
        raw = Path(directory) / TRAIN_MODEL_FILE
        _load_weights(net, raw if raw.is_file() else Path(directory) / MODEL_FILE)
        if average is not None:
            _load_weights(average.module, Path(directory) / MODEL_FILE)
            average.n_averaged.fill_(1)  # go on averaging, not start again from the next step's weights
        opt_path = Path(directory) / OPTIMIZER_FILE
        if optimizer is not None and opt_path.is_file():
            saved = torch.load(opt_path, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
        state["train_order"] = read_train_order(directory)
    return state


def image_size(state: dict[str, Any]) -> int:
    """The input size a checkpoint (its state.json) was trained at, not the current study's data.image_size."""
    return int(state["config"]["data"]["image_size"])


def load_model(directory: str | Path) -> tuple[FractureNet, dict[str, Any]]:
    """Rebuild the model from a checkpoint directory, in eval mode.

    Returns:
        (net, state) where state holds "config", "threshold", "epoch" and the metrics.
    """
    state = read_state(directory)
    cfg = Config.from_dict(state["config"])
    # model.pt holds every weight, so the backbone's pretrained source (ImageNet, a file) is never fetched.
    net, _ = build_model(dataclasses.replace(cfg.model, weights="none"))
    _load_weights(net, Path(directory) / MODEL_FILE)
    return net.eval(), state
